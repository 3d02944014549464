"""The notebooks' shared scaffolding, the profiles they read, their smoke runs and JupyterLab."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest
from matplotlib.figure import Figure

from fmnist_utils import notebook, pipeline, profiles, provenance, report, train

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob(pipeline.NOTEBOOK_PATTERN))
# 03 belongs to another change (issue 10's statistics); its install cell and "" defaults follow there.
NOT_YET = {"03_resnet_compare"}


def _marked(paths):
    return [pytest.param(p, id=p.stem, marks=pytest.mark.xfail(strict=True, reason="being rewritten elsewhere"))
            if p.stem in NOT_YET else pytest.param(p, id=p.stem) for p in paths]


# --------------------------------------------------------------------------------------------
# Profiles


def test_every_setting_has_a_meaning_and_every_profile_is_complete():
    meanings = profiles.meanings()
    assert meanings["train.epochs"] == "training epochs" and "sweep.k" in meanings and "compare.per_class" in meanings
    assert all(text and len(text) < 90 for text in meanings.values())
    for name, p in profiles.PROFILES.items():
        assert p.name == name
        rows = report.profile_rows(p.to_dict())
        assert [r["setting"] for r in rows] == list(meanings)  # every leaf, in declaration order
        assert all(r["meaning"] == meanings[r["setting"]] for r in rows)
        assert {r["setting"]: r["value"] for r in rows}["train.epochs"] == p.train.epochs
    assert {r["setting"]: r["value"] for r in report.profile_rows(profiles.get("full").to_dict())}["train.subset"] == "None"


def test_zero_is_a_value_that_is_checked_not_a_way_of_saying_all():
    quick = profiles.get("quick")
    for sub, field in ((quick.train, "subset"), (quick.train, "epochs"), (quick.sweep, "k"),
                       (quick.sweep, "test_subset"), (quick.compare, "per_class")):
        changes = {field: 0}
        with pytest.raises(ValueError, match=rf"{type(sub).__name__}\.{field}=0"):
            type(sub)(**{**vars(sub), **changes})
    with pytest.raises(ValueError, match="val_fraction"):
        profiles.TrainProfile(subset=None, val_fraction=1.0, epochs=1, test_subset=None)


# --------------------------------------------------------------------------------------------
# Scaffolding


def test_setup_saves_figures_and_writes_one_results_record(tmp_path, capsys):
    nb = notebook.setup("07_demo", "smoke", tmp_path / "run")
    assert nb.out == tmp_path / "run" / "07_demo" and nb.out.is_dir()
    assert nb.profile is profiles.get("smoke")
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    path = nb.save_figure(fig, "curve")
    assert path == nb.out / "curve.png" and path.read_bytes().startswith(b"\x89PNG")
    assert nb.figures == {"curve": "curve.png"}
    for bad in ("", "a/b", "curve.png"):
        with pytest.raises(ValueError, match="plain file stem"):
            nb.save_figure(fig, bad)

    written = nb.write_results({"score": 0.5}, {"seed": 3}, device="cpu")
    record = provenance.read_json(written)
    assert record["notebook"] == "07_demo" and record["score"] == 0.5
    assert record["profile"] == json.loads(json.dumps(profiles.get("smoke").to_dict()))
    assert record["parameters"] == {"profile": "smoke", "run_dir": str(tmp_path / "run"), "seed": 3}
    assert record["figures"] == {"curve": "curve.png"} and record["seconds"] >= 0
    assert record["environment"]["device"] == "cpu"
    with pytest.raises(ValueError, match=r"must not set \['figures'\]"):
        nb.write_results({"figures": {}}, {})


def test_base_config_reads_presets_and_the_sweeps_choice_whatever_its_number(tmp_path):
    run = tmp_path / "run"
    assert notebook.base_config("study", run) == train.TrainConfig()
    assert notebook.base_config("modern", run) == train.preset("modern")
    with pytest.raises(FileNotFoundError, match="NN_sweep.ipynb"):
        notebook.base_config("sweep", run)
    chosen = train.TrainConfig(lr=0.003, batch_size=64, dropout=0.1)
    provenance.write_json(run / "01_sweep" / "results.json", {"best_config": chosen.to_dict()})
    assert notebook.base_config("sweep", run) == chosen
    with pytest.raises(ValueError, match="choose 'sweep' or one of"):
        notebook.base_config("fancy", run)


@pytest.mark.parametrize("path", _marked(NOTEBOOKS))
def test_notebook_starts_with_the_install_cell_and_says_none_for_not_set(path):
    import papermill

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == notebook.INSTALL_CELL
    assert "parameters" in code[1].metadata.get("tags", [])
    defaults = {name: p["default"] for name, p in papermill.inspect_notebook(str(path)).items()}
    assert defaults["run_dir"] == "None"
    empty = [name for name, value in defaults.items() if value in ('""', "''")]
    assert not empty, f"{path.name}: {empty} default to an empty string; None is the only 'not set'"


# --------------------------------------------------------------------------------------------
# Smoke runs of the notebooks that need nothing beyond the kit (02 and 03 have their own)


@pytest.mark.slow
def test_train_notebook_runs_with_the_smoke_profile_and_prints_each_epoch(tmp_path, fmnist):
    lines = []
    run = tmp_path / "run"
    pipeline.execute(ROOT / "notebooks" / "01_train.ipynb", tmp_path / "01_train.ipynb",
                     {"profile": "smoke", "run_dir": str(run)}, log=lines.append)
    results = provenance.read_json(run / "01_train" / "results.json")
    smoke = profiles.get("smoke").train
    assert len(results["history"]) == smoke.epochs and results["config"]["epochs"] == smoke.epochs
    assert results["parameters"]["epochs"] == smoke.epochs and results["parameters"]["config_source"] == "study"
    assert results["data"]["test_images"] == smoke.test_subset
    assert results["data"]["train_images"] + results["data"]["val_images"] == smoke.subset
    for name, file in results["figures"].items():
        assert (run / "01_train" / file).read_bytes().startswith(b"\x89PNG"), name
    assert set(results["figures"]) == {"learning_curves", "confusion_matrix", "per_class_accuracy", "misclassified"}
    # One progress line per epoch, with the elapsed time and the time left, streamed as it ran.
    epochs = [line for line in lines if re.match(r"01_train \| epoch \d+/\d+: +\d+% .*\[\d\d:\d\d<\d\d:\d\d", line)]
    assert len(epochs) == smoke.epochs, lines
    assert any(line.startswith("01_train | test accuracy") for line in lines)
    assert os.environ.get("FMNIST_PROGRESS") is None  # set for the kernel only

    # Zero epochs is a value, refused like any other, not read as "the profile's".
    with pytest.raises(pipeline.NotebookFailed, match=r"TrainConfig.epochs=0"):
        pipeline.execute(ROOT / "notebooks" / "01_train.ipynb", tmp_path / "zero.ipynb",
                         {"profile": "smoke", "run_dir": str(tmp_path / "zero"), "epochs": 0})


# --------------------------------------------------------------------------------------------
# make lab


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_serves_the_notebooks_headless(tmp_path):
    # The command `make lab` runs (without its install and data steps), made headless.
    dry = subprocess.run(["make", "-s", "-n", "-o", ".venv/.installed", "-o", "data", "lab", f"PY={sys.executable}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    command = shlex.split(dry.stdout.strip().splitlines()[-1])
    assert command[:4] == [sys.executable, "-m", "jupyter", "lab"] and command[-1] == "notebooks/"
    port, token = _free_port(), "kit-test-token"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(
        [*command, "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--IdentityProvider.token={token}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        listing, deadline = None, time.monotonic() + 90
        while listing is None and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
                    listing = json.load(r)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert listing is not None, f"the server did not answer within 90 s (exit status {server.poll()})"
        served = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
        assert {p.name for p in NOTEBOOKS} <= served
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as r:
            assert r.status == 200 and "JupyterLab" in r.read().decode()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
    assert server.returncode is not None
