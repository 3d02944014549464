"""The offline GPU kit: the wheelhouse's requirement closure, verify-gpu's stages and budgets, bench_gpu's split."""

import json
import os
import subprocess
import sys
import time
import zipfile
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_gpu  # noqa: E402
import verify_gpu  # noqa: E402
import wheelhouse  # noqa: E402
from process_helpers import assert_gone  # noqa: E402


def make_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """Write a minimal wheel whose METADATA lists ``requires`` as Requires-Dist."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = "".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
                   + [f"Requires-Dist: {r}\n" for r in requires] + ["\nRequires-Dist: not-a-header (description)\n"])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


# --------------------------------------------------------------------------------------------
# wheelhouse.py


def test_runtime_requirements_are_pyprojects_without_torch():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["pipeline"]
    got = wheelhouse.runtime_requirements()
    kept = [d for d in deps if not d.startswith(("torch", "torchvision"))]
    names = {wheelhouse.requirement_name(d) for d in kept}
    assert got == kept + [e for e in wheelhouse.EXTRA if wheelhouse.requirement_name(e) not in names]
    assert not any(wheelhouse.requirement_name(r) in ("torch", "torchvision") for r in got)
    assert {"papermill", "nbconvert", "optuna", "ipykernel", "jinja2", "tqdm", "ipywidgets"} <= {
        wheelhouse.requirement_name(r) for r in got}


def test_platform_tags_name_every_manylinux_up_to_the_glibc():
    tags = wheelhouse.platform_tags("2.35")
    assert [f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)] == tags[:19]
    assert "manylinux_2_36_x86_64" not in tags and "manylinux2014_x86_64" in tags
    with pytest.raises(ValueError, match="glibc"):
        wheelhouse.platform_tags("2.5")
    with pytest.raises(ValueError, match="Python"):
        wheelhouse.download_command(["x"], Path("w"), "/usr/bin/python3", "2.35")


def test_names_are_normalised():
    assert wheelhouse.wheel_name("Jinja2-3.1.6-py3-none-any.whl") == "jinja2"
    assert wheelhouse.wheel_name("jupyter_client-8.10.0-py3-none-any.whl") == "jupyter-client"
    assert wheelhouse.requirement_name("typing_extensions>=4; python_version<'3.11'") == "typing-extensions"
    with pytest.raises(ValueError, match="wheel"):
        wheelhouse.wheel_name("numpy-2.0.tar.gz")


def test_closure_follows_target_markers_and_extras(tmp_path):
    make_wheel(tmp_path, "app", "1.0", ['net>=3; python_version == "3.12"', 'old; python_version < "3.0"', "lib[fast]"])
    make_wheel(tmp_path, "lib", "1.0", ['speedup; extra == "fast"', 'docs; extra == "docs"', "nvidia-cublas"])
    py312 = wheelhouse.target_environment("3.12")
    # net is needed on 3.12 only; speedup through the requested extra; docs and nvidia-* never.
    assert wheelhouse.unmet_requirements(tmp_path, ["app"], py312) == ["net>=3", "speedup"]
    assert wheelhouse.unmet_requirements(tmp_path, ["app"], wheelhouse.target_environment("3.11")) == ["speedup"]
    assert wheelhouse.unmet_requirements(tmp_path, ["app"], py312, leave_out=["net", "speedup"]) == []
    make_wheel(tmp_path, "net", "3.1", [])
    make_wheel(tmp_path, "speedup", "0.1", ["app"])  # a cycle ends
    assert wheelhouse.unmet_requirements(tmp_path, ["app"], py312) == []


def test_prune_removes_skipped_and_cuda_wheels_only(tmp_path):
    for name in ("numpy", "nvidia_cudnn_cu13", "triton", "papermill", "Pillow"):
        make_wheel(tmp_path, name, "1.0", [])
    removed = wheelhouse.prune(tmp_path, ["numpy", "pillow"])
    assert sorted(removed) == sorted(["numpy-1.0-py3-none-any.whl", "nvidia_cudnn_cu13-1.0-py3-none-any.whl",
                                      "triton-1.0-py3-none-any.whl", "Pillow-1.0-py3-none-any.whl"])
    assert [p.name for p in tmp_path.glob("*.whl")] == ["papermill-1.0-py3-none-any.whl"]


def test_make_passes_the_target_python_not_the_venv():
    # Run under `make test`, the inner make inherits MAKELEVEL and would print "Entering directory".
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}

    def dry(*args):
        return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True).stdout

    assert "wheelhouse.py --python 3.12 " in dry("wheelhouse", "PY=3.12")
    assert "wheelhouse.py --python 3.12 " in dry("wheelhouse")
    assert "verify_gpu.py --profile full" in dry("verify-gpu")
    assert "verify_gpu.py --profile smoke --stages report" in dry("verify-gpu", "PROFILE=smoke", "STAGES=report")
    # On a machine without .venv it runs the Python that has torch there.
    assert dry("verify-gpu", "PY=/nonexistent/python").startswith("python3 benchmarks/verify_gpu.py")


# --------------------------------------------------------------------------------------------
# verify_gpu.py


def test_missing_requirements_checks_presence_and_version():
    installed = {"papermill": "2.7.0", "optuna": "3.6.1", "tqdm": "4.67.0rc1"}

    def version_of(name):
        if name not in installed:
            raise PackageNotFoundError(name)
        return installed[name]

    reqs = ["papermill>=2.6", "optuna>=4.0", "nbconvert>=7.16", "tqdm>=4.66", "ipywidgets"]
    assert verify_gpu.missing_requirements(reqs, version_of) == ["optuna>=4.0", "nbconvert>=7.16", "ipywidgets"]


def test_read_requirements_prefers_the_wheelhouse_list(tmp_path):
    assert verify_gpu.read_requirements(tmp_path) == wheelhouse.runtime_requirements()
    (tmp_path / "requirements.txt").write_text("# made by make wheelhouse\npapermill>=2.6\n\noptuna\n")
    assert verify_gpu.read_requirements(tmp_path) == ["papermill>=2.6", "optuna"]


def install_stage(folder: Path) -> dict:
    import argparse

    args = argparse.Namespace(wheelhouse=str(folder), profile="smoke", budget=None)
    return verify_gpu.Verify(args, folder / "logs", dict(os.environ), time.perf_counter()).install(60)


def test_install_stage_needs_nothing_when_everything_is_there(tmp_path):
    (tmp_path / "requirements.txt").write_text("pytest>=7\nnumpy\n")
    record = install_stage(tmp_path)
    assert record["status"] == "ok" and record["figures"]["missing_before"] == []


def test_install_stage_says_how_to_get_what_is_missing(tmp_path):
    (tmp_path / "requirements.txt").write_text("pytest>=7\nfmnist-no-such-package>=1\n")
    record = install_stage(tmp_path)
    assert record["status"] == "failed" and record["figures"]["missing_before"] == ["fmnist-no-such-package>=1"]
    assert "holds no wheels" in record["error"] and "make wheelhouse PY=" in record["error"]
    # Wheels for another Python cannot help either, and the error says so.
    (tmp_path / "manifest.json").write_text(json.dumps({"python": "2.7"}))
    make_wheel(tmp_path, "fmnist_no_such_package", "1.0", [])
    assert "wheels for Python 2.7" in install_stage(tmp_path)["error"]


def test_run_command_kills_the_whole_group_at_its_budget(tmp_path):
    # The stage's child starts a grandchild (as papermill starts a kernel); both must go.
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)")
    start = time.perf_counter()
    done = verify_gpu.run_command([sys.executable, "-c", script], 3, tmp_path / "x.log", dict(os.environ), echo=lambda s: None)
    assert done["timed_out"] and done["returncode"] is None
    assert time.perf_counter() - start < 3 + verify_gpu.KILL_GRACE_S + 5
    assert done["tail"] == ["started"] and "started" in (tmp_path / "x.log").read_text()
    grandchild = int(pid_file.read_text())
    assert_gone(grandchild, f"the stage's grandchild {grandchild} survived the kill", seconds=5)  # reaped by init


def test_run_command_reports_exit_status_and_output(tmp_path):
    done = verify_gpu.run_command([sys.executable, "-c", "print('a'); print('b'); raise SystemExit(4)"], None,
                                  tmp_path / "y.log", dict(os.environ), echo=lambda s: None)
    assert done == {**done, "returncode": 4, "timed_out": False, "tail": ["a", "b"]}


def test_accuracy_figures_pick_accuracies_from_nested_dicts():
    results = {"seconds": 12.5, "test": {"accuracy": 0.9, "loss": 0.3}, "history": [{"val_accuracy": 0.5}],
               "best_cv": {"accuracy_mean": 0.8, "n_folds": 5}, "final": {"test_accuracy": 0.88}, "flag": True}
    assert verify_gpu.accuracy_figures(results) == {
        "seconds": 12.5, "test.accuracy": 0.9, "best_cv.accuracy_mean": 0.8, "final.test_accuracy": 0.88}


def _history(losses, accuracies, correct):
    """Epoch rows as fit writes them: losses, accuracies, packed per-image correctness, seconds, lr."""
    from fmnist_utils import train

    return [{"epoch": e + 1, "train_loss": loss, "train_accuracy": acc, "val_loss": loss * 1.1, "val_accuracy": acc,
             "val_correct": train.pack_correct(c), "seconds": 9.0 + e, "lr": 0.05}
            for e, (loss, acc, c) in enumerate(zip(losses, accuracies, correct))]


def test_compare_histories_measures_losses_accuracies_and_images():
    right = np.ones(40, bool)
    want = [_history([2.0, 1.5], [0.25, 0.5], [right, right])]
    flipped = right.copy()
    flipped[[3, 17]] = False
    # One loss off by 2e-5 relative, one accuracy by 3 of 80 training images, 2 validation images flipped.
    got = [_history([2.0, 1.5 * (1 + 2e-5)], [0.25, 0.5 + 3 / 80], [right, flipped])]
    got[0][1]["seconds"] = 123.0  # wall time is never compared
    diffs = verify_gpu.compare_histories(got, want, [80], [40])
    assert diffs["same_rows"]
    assert diffs["max_loss_rel_diff"] == pytest.approx(2e-5, rel=1e-6)
    assert diffs["max_accuracy_diff_images"] == pytest.approx(3.0) and diffs["max_val_images_differing"] == 2
    assert verify_gpu.compare_histories(want, want, [80], [40]) == {
        "same_rows": True, "max_loss_rel_diff": 0.0, "max_accuracy_diff_images": 0.0, "max_val_images_differing": 0}
    assert not verify_gpu.compare_histories([want[0][:1]], want, [80], [40])["same_rows"]  # an epoch missing
    renamed = [[{**r, "extra": 1} for r in want[0]]]
    assert not verify_gpu.compare_histories(renamed, want, [80], [40])["same_rows"]


def test_stack_verdict_holds_fit_many_to_fp32_tolerances():
    ok = {"same_rows": True, "max_loss_rel_diff": 3e-6, "max_accuracy_diff_images": 1.0, "max_val_images_differing": 0}
    equal, line = verify_gpu.stack_verdict(ok, 0)
    assert equal and line.startswith("fit_many equals fit") and "(tolerance 0.0001)" in line
    loss = {**ok, "max_loss_rel_diff": 2 * verify_gpu.LOSS_RTOL}
    assert verify_gpu.stack_verdict(loss, 0) == (False, "fit_many differs from fit: a loss differs by 0.0002 relative "
                                                        "(tolerance 0.0001)")
    images = {**ok, "max_val_images_differing": verify_gpu.ACCURACY_IMAGES + 1}
    assert not verify_gpu.stack_verdict(images, 0)[0] and "2 images" in verify_gpu.stack_verdict(images, 0)[1]
    assert not verify_gpu.stack_verdict({**ok, "max_loss_rel_diff": float("nan")}, 0)[0]  # NaN is no agreement
    assert not verify_gpu.stack_verdict({**ok, "same_rows": False}, 0)[0]
    assert "not in one stack" in verify_gpu.stack_verdict(ok, 2)[1] and not verify_gpu.stack_verdict(ok, 2)[0]


def test_stack_verdict_widens_to_fits_own_layout_gap_and_no_further():
    # fit moved 5e-4 by its memory layout alone (tests/test_stacked.py's one-cycle unit): a stack
    # 5e-4 from fit passes, one 1e-3 away does not; a narrower gap keeps LOSS_RTOL.
    ok = {"same_rows": True, "max_loss_rel_diff": 5e-4, "max_accuracy_diff_images": 0.0, "max_val_images_differing": 1}
    wide = {"same_rows": True, "max_loss_rel_diff": 5e-4, "max_accuracy_diff_images": 0.0, "max_val_images_differing": 3}
    equal, line = verify_gpu.stack_verdict(ok, 0, wide)
    assert equal and "fit's own layout gap: 0.0005 relative, 3 image(s), times 1.1" in line, line
    assert "(tolerance 0.00055)" in line
    assert not verify_gpu.stack_verdict({**ok, "max_loss_rel_diff": 1e-3}, 0, wide)[0]
    assert not verify_gpu.stack_verdict({**ok, "max_val_images_differing": 4}, 0, wide)[0]
    narrow = {**wide, "max_loss_rel_diff": 1e-6, "max_val_images_differing": 0}
    assert verify_gpu.stack_verdict(ok, 0, narrow) == verify_gpu.stack_verdict(ok, 0)  # no wider than the fixed bar
    assert not verify_gpu.stack_verdict(ok, 0, narrow)[0]


@pytest.mark.parametrize("profile", sorted(verify_gpu.STACK_SIZES))
def test_stack_units_are_disjoint_with_partial_batches_and_share_one_stack(profile):
    from fmnist_utils import stacked

    sizes, n_val, batch, epochs = verify_gpu.STACK_SIZES[profile]
    assert all(n % batch for n in sizes), "every unit ends on a partial batch"
    assert epochs >= 2  # reshuffled, the optimizer's state carried over
    y = torch.arange(10).repeat(200)
    train_sets, val_sets = verify_gpu.stack_units(y, sizes, n_val)
    assert [len(s) for s in train_sets] == list(sizes) and [len(s) for s in val_sets] == [n_val] * len(sizes)
    everything = np.concatenate(train_sets + val_sets)
    assert len(set(everything.tolist())) == len(everything)
    configs = verify_gpu.stack_configs(batch, epochs, "cpu")
    assert len({c.seed for c in configs}) == 2 and len({(c.lr, c.weight_decay) for c in configs}) == 2
    assert all(c.precision == "fp32" and c.dropout == 0 and c.batch_size == batch for c in configs)
    # one stack of all three, so the check compares stacked training (per-unit lr and decay included)
    assert stacked.plan_stacks(configs, list(sizes), len(configs), "fp32") == [[0, 1, 2]]


def test_check_stack_on_this_cpu_finds_fit_many_equal_to_fit(tmp_path):
    out = tmp_path / "stack.json"
    assert verify_gpu.check_stack("smoke", out) == 0
    fig = json.loads(out.read_text())
    assert fig["equal"] and fig["units_through_fit"] == 0 and fig["bn_steps_equal"] and fig["stacks"] == [[0, 1, 2]]
    assert fig["max_loss_rel_diff"] <= verify_gpu.LOSS_RTOL and fig["verdict"].startswith("fit_many equals fit")
    assert set(fig["layout_gap"]) == {"max_loss_rel_diff", "max_accuracy_diff_images", "max_val_images_differing"}
    assert fig["device"] == "cpu" and fig["precision"] == "fp32" and fig["units"] == 3
    assert len(set(fig["final_train_loss"]["fit"])) == 3  # three units that learned different things
    line = verify_gpu.summarize("stack_check", {"status": "ok", "figures": fig})
    assert line.startswith("3 units on cpu, fp32, 2 epochs: fit_many equals fit")


def test_results_name_names_device_date_and_profile():
    assert verify_gpu.results_name("NVIDIA H100 80GB HBM3", "2026-11-27", "full") == "nvidia-h100-80gb-hbm3-2026-11-27.json"
    assert verify_gpu.results_name("cpu", "2026-11-27", "smoke") == "cpu-2026-11-27-smoke.json"


# --------------------------------------------------------------------------------------------
# bench_gpu.py


def test_bench_split_is_a_stratified_holdout_of_the_training_set():
    y = torch.arange(10).repeat(100)  # 1,000 labels, 100 per class
    train, val = bench_gpu.split_train_val(y, 500, 0.1, seed=3)
    assert len(train) == 450 and len(val) == 50 and not set(train) & set(val)
    assert np.bincount(y[val].numpy(), minlength=10).tolist() == [5] * 10
    assert np.bincount(y[train].numpy(), minlength=10).tolist() == [45] * 10
    with pytest.raises(ValueError, match="val_fraction"):
        bench_gpu.split_train_val(y, 500, 0.0)


def test_time_to_target_sums_epochs_until_first_reached():
    history = [{"seconds": 3.0, "val_accuracy": 0.7}, {"seconds": 1.0, "val_accuracy": 0.93},
               {"seconds": 1.0, "val_accuracy": 0.91}]
    assert bench_gpu.time_to_target(history, 0.92) == 4.0
    assert bench_gpu.time_to_target(history, 0.95) is None
    assert bench_gpu.steady_seconds([9.0, 2.0, 4.0]) == 3.0 and bench_gpu.steady_seconds([5.0]) == 5.0


# --------------------------------------------------------------------------------------------
# End to end on this CPU


@pytest.mark.slow
def test_verify_gpu_smoke_runs_every_stage_and_records_figures(tmp_path, smoke_build):
    # The report stage gets the session's finished smoke run (tests/conftest.py): the runner reuses
    # every notebook, which the stage must record as reused, and renders the report again.
    results = tmp_path / "results"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "verify_gpu.py"), "--profile", "smoke",
           "--results-dir", str(results), "--run-dir", str(smoke_build["run"]), "--report-dir", str(tmp_path / "report")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    (written,) = results.glob("cpu-*-smoke.json")
    doc = json.loads(written.read_text())
    stages = doc["stages"]
    assert list(stages) == list(verify_gpu.STAGES), done.stdout[-3000:]
    for name, record in stages.items():
        assert record["status"] == "ok", f"{name}: {record.get('error')}\n{done.stdout[-3000:]}"
        assert record["seconds"] >= 0 and record["budget_s"] <= verify_gpu.BUDGETS["smoke"][name]
    assert doc["runs"][-1]["seconds"] <= verify_gpu.TOTAL_BUDGET_S["smoke"]  # the whole command within its budget
    assert done.returncode == 0 and doc["ok"]
    for stage in verify_gpu.STAGES:  # one progress line when each stage starts and one when it ends
        assert f"] {stage}: started" in done.stdout and f"] {stage}: ok in " in done.stdout

    bench = stages["bench_gpu"]["figures"]
    assert bench["accuracy_split"] == "validation" and bench["n_train"] + bench["n_val"] == bench_gpu.SIZES["smoke"].subset
    assert [r["loop"] for r in bench["loops"]] == ["tutorial", "kit eager"] and "kit captured" in bench["skipped"]
    for row in bench["loops"]:
        assert row["seconds_per_epoch"] > 0 and 0 <= row["final_val_accuracy"] <= 1
    assert 0 <= bench["modern"]["final_val_accuracy"] <= 1
    assert stages["estimate"]["figures"]["full_cnn_train_passes"] <= 25_000_000
    check = stages["stack_check"]["figures"]
    assert check["equal"] and check["device"] == "cpu" and check["max_loss_rel_diff"] <= verify_gpu.LOSS_RTOL
    sweep = stages["bench_sweep"]["figures"]
    assert sweep["size"] == "smoke" and any(r["way"].startswith("fit_many") for r in sweep["rows"])
    assert all(r["units_per_hour"] > 0 for r in sweep["rows"])

    report = stages["report"]["figures"]
    assert report["report_files_bytes"]["report.html"] > 0
    notebooks = report["notebooks"]
    assert len(notebooks) >= 3 and all(nb["status"] == "ok" and nb["seconds"] > 0 for nb in notebooks.values())
    assert not any(nb["executed_now"] for nb in notebooks.values()), notebooks  # reused, and said so
    assert any(0 <= v <= 1 for nb in notebooks.values() for k, v in nb["accuracies"].items() if "accuracy" in k)
    assert "stage        status" in done.stdout  # the summary table

    # The README's GPU block is written from this file; a CPU smoke file only where allowed.
    import readme_figures

    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    with pytest.raises(SystemExit, match="not a GPU measurement"):
        readme_figures.main(["--gpu", str(written), "--readme", str(readme)])
    assert readme_figures.main(["--gpu", str(written), "--readme", str(readme), "--allow-cpu"]) == 0
    source, block = readme_figures.gpu_block(readme.read_text())
    assert source == str(written.resolve()) and block == readme_figures.render_gpu(doc, source)
    from fmnist_utils import report as reports

    assert f"{reports.num(stages['estimate']['figures']['full_cnn_train_passes'] / 1e6, 1)} million" in block


def test_the_estimate_stage_writes_pace_and_full_estimate_and_the_summary_names_them(tmp_path, monkeypatch):
    from fmnist_utils import budget, estimate

    pace = dict(budget.REFERENCE_PACE)
    monkeypatch.setattr(estimate, "measure_seconds_per_image", lambda **kw: pace)
    out = tmp_path / "estimate.json"
    assert budget.main(["--json", str(out), "--device", "cpu"]) == 0
    fig = json.loads(out.read_text())
    assert fig["seconds_per_image"] == pace
    assert fig["full_cnn_train_passes"] <= 25_000_000
    full = estimate.estimate("full", pace, "cpu")
    assert fig["full_seconds"] == pytest.approx(full["total_seconds"])
    line = verify_gpu.summarize("estimate", {"status": "ok", "figures": fig})
    assert f"cnn_train {pace['cnn_train'] * 1e3:.3g} ms" in line and "M SeedCNN training passes" in line
