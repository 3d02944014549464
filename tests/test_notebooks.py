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

import report_fixtures as F
from fmnist_utils import notebook, pipeline, profiles, provenance, records, report, settings, train

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob(pipeline.NOTEBOOK_PATTERN))


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
    # The run's one settings tree: the smoke profile's sizes, every other setting at its default, printed once.
    assert nb.settings == settings.from_profile(profiles.get("smoke")) and nb.profile is nb.settings
    assert "train.epochs" in capsys.readouterr().out
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    assert nb.save_figure(fig, "curve") is None  # a cell ending with the call shows no PosixPath repr
    assert nb.figures == {"curve": "curve.png"}
    assert (nb.out / "curve.png").read_bytes().startswith(b"\x89PNG")
    for bad in ("", "a/b", "curve.png"):
        with pytest.raises(ValueError, match="plain file stem"):
            nb.save_figure(fig, bad)

    assert nb.write_results({"score": 0.5}, {"seed": 3}, device="cpu") is None  # no PosixPath repr in the cell
    record = provenance.read_json(nb.out / "results.json")
    assert record["notebook"] == "07_demo" and record["score"] == 0.5
    assert record["profile"] == json.loads(json.dumps(nb.settings.to_dict()))
    assert record["schema"] == records.SCHEMA and record["code_hash"] == provenance.code_hash()
    assert record["data_fingerprint"] is None  # no data given
    assert record["parameters"] == {"profile": "smoke", "run_dir": str(tmp_path / "run"), "seed": 3}
    assert record["figures"] == {"curve": "curve.png"} and record["seconds"] >= 0
    assert record["environment"]["device"] == "cpu"
    with pytest.raises(ValueError, match=r"must not set \['figures'\]"):
        nb.write_results({"figures": {}}, {})


def test_base_config_reads_presets_and_the_sweeps_choice_whatever_its_number(tmp_path):
    run = tmp_path / "run"
    assert notebook.base_config("study", run) == train.TrainConfig()
    assert notebook.base_config("modern", run) == train.preset("modern")
    with pytest.raises(FileNotFoundError, match=r"run notebooks/01_sweep\.ipynb with the same profile"):
        notebook.base_config("sweep", run)
    chosen = train.TrainConfig(lr=0.003, batch_size=64, dropout=0.1)
    provenance.write_json(run / "01_sweep" / "results.json", {"best_config": chosen.to_dict()})
    assert notebook.base_config("sweep", run) == chosen
    with pytest.raises(ValueError, match="choose 'sweep' or one of"):
        notebook.base_config("fancy", run)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
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


def test_papermill_kernels_talk_over_ipc_without_the_tcp_warning(tmp_path, capfd):
    source = tmp_path / "tiny.ipynb"
    cell = nbformat.v4.new_code_cell("profile = 'smoke'\nrun_dir = None")
    cell.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_code_cell(
        "from ipykernel.kernelapp import IPKernelApp\nprint('transport', IPKernelApp.instance().transport)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, source)
    lines = []
    pipeline.execute(source, tmp_path / "out.ipynb", {}, log=lines.append)
    assert lines == ["tiny | transport ipc"]
    captured = capfd.readouterr()
    assert "without encryption" not in captured.err + captured.out


# --------------------------------------------------------------------------------------------
# Smoke runs of the notebooks that need nothing beyond the kit (the sweep and 03 have their own)


def test_the_sweep_runs_before_the_notebook_that_trains_its_choice():
    import papermill

    stems = [p.stem for p in NOTEBOOKS]
    assert stems.index("01_sweep") < stems.index("02_train") < stems.index("03_resnet_compare")
    defaults = {name: p["default"] for name, p in papermill.inspect_notebook(str(ROOT / "notebooks" / "02_train.ipynb")).items()}
    assert settings.resolve("smoke").train.source == "sweep" and defaults["settings"] == "None"


@pytest.mark.slow
def test_train_notebook_trains_the_sweeps_choice_beside_the_study_recipe(tmp_path, fmnist):
    run = tmp_path / "run"
    # Without the sweep's results the default refuses to start, and says what to do.
    with pytest.raises(pipeline.NotebookFailed, match=r"run notebooks/01_sweep\.ipynb .*\(overrides=\{'train.source': 'study'\}\)"):
        pipeline.execute(ROOT / "notebooks" / "02_train.ipynb", tmp_path / "nosweep.ipynb",
                         {"profile": "smoke", "run_dir": str(run)})

    chosen = train.TrainConfig(lr=0.1, dropout=0.3)  # what 01_sweep writes as best_config
    provenance.write_json(run / "01_sweep" / "results.json", {"notebook": "01_sweep", "best_config": chosen.to_dict()})
    lines = []
    pipeline.execute(ROOT / "notebooks" / "02_train.ipynb", tmp_path / "02_train.ipynb",
                     {"profile": "smoke", "run_dir": str(run)}, log=lines.append)
    results = provenance.read_json(run / "02_train" / "results.json")
    smoke = profiles.get("smoke").train
    # The keys the report's section reads (tests/report_fixtures.py), the resolved parameters, and
    # whether the data passed its SHA-256 check (write_results adds both).
    # One schema: the notebook writes the record the fixtures build (fmnist_utils.records).
    assert set(results) == set(F.train_results())
    assert results["data_verified"] is True and results["schema"] == records.SCHEMA
    assert results["data_fingerprint"] and results["code_hash"] == provenance.code_hash()
    assert results["config_source"] == "sweep" and results["parameters"]["config_source"] == "sweep"
    assert (results["config"]["lr"], results["config"]["dropout"]) == (0.1, 0.3)
    assert len(results["history"]) == smoke.epochs and results["config"]["epochs"] == smoke.epochs
    assert results["data"]["test_images"] == smoke.test_subset
    assert results["data"]["train_images"] + results["data"]["val_images"] == smoke.subset
    for name, file in results["figures"].items():
        assert (run / "02_train" / file).read_bytes().startswith(b"\x89PNG"), name
    assert set(results["figures"]) == {"learning_curves", "confusion_matrix", "per_class_accuracy", "misclassified"}
    # The reference: the study's recipe on the same images, epochs and seed.
    reference = results["study_recipe"]
    assert reference["config"] == {**train.TrainConfig().to_dict(), "epochs": smoke.epochs, "device": "auto"}
    assert len(reference["history"]) == smoke.epochs and 0 <= reference["test"]["accuracy"] <= 1
    assert reference["training_seconds"] == pytest.approx(sum(row["seconds"] for row in reference["history"]))
    verdicts = results["verdicts"]
    assert set(verdicts) == {"overfitting", "above_chance", "chosen_vs_study_recipe"}
    mcnemar = verdicts["chosen_vs_study_recipe"]
    assert mcnemar["n"] == smoke.test_subset and mcnemar["test"].startswith("McNemar's exact test")
    assert mcnemar["value"] == pytest.approx(results["test"]["accuracy"] - reference["test"]["accuracy"])
    assert verdicts["above_chance"]["value"] == pytest.approx(results["test"]["accuracy"])
    assert verdicts["overfitting"]["verdict"] == "n/a"  # one epoch: no curve to read
    # One progress line per epoch of each training, with the elapsed time and the time left, streamed as it ran.
    epochs = [line for line in lines if re.match(r"02_train \| epoch \d+/\d+: +\d+% .*\[\d\d:\d\d<\d\d:\d\d", line)]
    assert len(epochs) == 2 * smoke.epochs, lines
    assert any(line.startswith("02_train | test accuracy") for line in lines)
    assert os.environ.get("FMNIST_PROGRESS") is None  # set for the kernel only

    # The study's recipe as the headline (interactive use): one training, and the verdict says why there is no other.
    study_run = tmp_path / "study"
    pipeline.execute(ROOT / "notebooks" / "02_train.ipynb", tmp_path / "study.ipynb",
                     {"profile": "smoke", "run_dir": str(study_run), "overrides": {"train.source": "study"}})
    results = provenance.read_json(study_run / "02_train" / "results.json")
    assert results["study_recipe"] is None and not (study_run / "02_train" / "study_recipe_checkpoint.pt").exists()
    assert results["verdicts"]["chosen_vs_study_recipe"]["verdict"] == "n/a"
    assert results["verdicts"]["chosen_vs_study_recipe"]["reason"] == "the headline CNN is the study's recipe"

    # Zero epochs is a value, refused like any other (by the settings tree, before anything trains).
    with pytest.raises(pipeline.NotebookFailed, match=r"TrainSettings.epochs=0"):
        pipeline.execute(ROOT / "notebooks" / "02_train.ipynb", tmp_path / "zero.ipynb",
                         {"profile": "smoke", "run_dir": str(tmp_path / "zero"),
                          "overrides": {"train.source": "study", "train.epochs": 0}})


# --------------------------------------------------------------------------------------------
# make lab


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lab_serves_the_notebooks_headless(tmp_path):
    # The command `make lab` runs (without its install and data steps), made headless.
    dry = subprocess.run(["make", "-s", "--no-print-directory", "-n", "-o", ".venv/.installed", "-o", "data", "lab", f"PY={sys.executable}"],
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


def test_a_parameter_the_notebook_does_not_declare_is_refused_naming_the_dotted_path(tmp_path):
    # Papermill alone would only warn, and the notebook would run with the value ignored.
    with pytest.raises(ValueError, match=r"02_train.ipynb declares no parameter epochs .*overrides=\{'train.epochs': 3\}"):
        pipeline.execute(ROOT / "notebooks" / "02_train.ipynb", tmp_path / "out.ipynb", {"profile": "smoke", "epochs": 3})
    assert not (tmp_path / "out.ipynb").exists()
