"""Issue 11, tried as a hostile user would: every case listed under "Why" is a test here.

Stale reuse (inputs in the key), silent divergence, zero meaning "not given", filesystem faults
(a full disk is simulated by making a write raise ENOSPC half-way), two runs on one run folder,
a profile change on a run folder, and the smaller cases (device names, checkpoints, data sums).

Issue 17, below its heading: folders in another's role, check-then-touch (the data-loss cases
compared byte for byte), the report folder's lock, faults inside notebooks with the CLI's status,
SIGTERM and Ctrl-C, messages naming the real path and cause, and labels that tell the truth.
"""

import errno
import gzip
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist_utils import checkpoints, data, device, paths, pipeline, provenance, report, train
from fmnist_utils.__main__ import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FILESYSTEM, EXIT_INTERRUPTED, EXIT_TERMINATED, main
from fmnist_utils.data import DataError
from fmnist_utils.train import CheckpointError, TrainConfig, TrainingDiverged

from process_helpers import assert_gone
from test_pipeline import results_cell, write_notebook

FLOAT_FIELDS = [f.name for f in __import__("dataclasses").fields(TrainConfig) if f.type in ("float", float)]


def run_build(tmp_path, notebooks, profile="smoke", **kw):
    logged = []
    out = pipeline.build(profile, tmp_path / "run", tmp_path / "report", notebooks, pdf=False, progress=False,
                         log=logged.append, **kw)
    return out, logged


def report_args(tmp_path, nbs, profile="smoke", *extra):
    return ["report", "--profile", profile, "--run-dir", str(tmp_path / "run"), "--report-dir", str(tmp_path / "report"),
            "--notebooks", str(nbs), "--no-pdf", *extra]


@pytest.fixture(scope="module")
def tiny(fmnist):
    """300 training images (stratified) as (x, y)."""
    idx = data.stratified_subset(fmnist.y_train, 300, seed=0)
    return fmnist.x_train[idx], fmnist.y_train[idx]


# --------------------------------------------------------------------------------------------
# 2. Divergence is an error; every float setting is finite; results are strict JSON


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_float_setting_rejects_non_finite_values_naming_the_field(field, value):
    assert {"lr", "weight_decay", "l1", "dropout", "momentum"} <= set(FLOAT_FIELDS)
    with pytest.raises(ValueError, match=f"TrainConfig.{field}=.*finite"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, True])
def test_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(ValueError, match="TrainConfig.seed="):
        TrainConfig(seed=seed)


@pytest.mark.parametrize("flag, value, field", [("--weight-decay", "nan", "weight_decay"), ("--weight-decay", "inf", "weight_decay"),
                                                ("--l1", "nan", "l1"), ("--lr", "inf", "lr"), ("--seed", "-1", "seed")])
def test_cli_names_the_field_of_a_non_finite_or_negative_value(flag, value, field, capsys):
    assert main(["train", flag, value]) == EXIT_BAD_INPUT
    assert f"TrainConfig.{field}=" in capsys.readouterr().err


def test_fit_stops_at_the_first_non_finite_loss_naming_epoch_step_and_cause(tiny):
    x, y = tiny
    config = TrainConfig(lr=1e10, batch_size=20, epochs=3, device="cpu", precision="fp32")
    steps = []
    model = train.build_model(config)
    with pytest.raises(TrainingDiverged) as info:
        train.train_one_epoch(model, train.build_optimizer(model, config), x, y, config,
                              torch.Generator().manual_seed(0), "fp32", on_step=steps.append)
    err = info.value
    # Reference: the same steps by hand, stopping at the first non-finite loss.
    model = train.build_model(config)
    optimizer = train.build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    for step, idx in enumerate(data.iterate_batches(len(x), config.batch_size, generator), start=1):
        loss = torch.nn.functional.cross_entropy(model(train._inputs(x[idx])), y[idx])
        if not torch.isfinite(loss):
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (err.epoch, err.step) == (1, step) and not math.isfinite(err.loss)
    assert len(steps) == step - 1  # nothing ran after the bad step on the CPU
    assert "learning rate lr=1e+10" in str(err) and "epoch 1, step" in str(err)

    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train.fit(train.build_model(config), x, y, config, progress=False)


def test_device_cadence_names_the_exact_step_and_stops_soon_after(tiny, monkeypatch):
    """On an accelerator the host looks every few steps; the per-step losses still name the first bad one."""
    x, y = tiny
    config = TrainConfig(lr=1e10, batch_size=10, epochs=1, device="cpu", precision="fp32")

    def diverge(every):
        monkeypatch.setitem(train.DIVERGENCE_CHECK_STEPS, "cpu", every)
        model, steps = train.build_model(config), []
        with pytest.raises(TrainingDiverged) as info:
            train.train_one_epoch(model, train.build_optimizer(model, config), x, y, config,
                                  torch.Generator().manual_seed(0), "fp32", on_step=steps.append, epoch=2)
        return info.value, len(steps)

    exact, ran_exact = diverge(1)
    late, ran_late = diverge(8)
    assert (late.epoch, late.step) == (2, exact.step) and ran_exact == exact.step - 1
    assert ran_late == 8 * math.ceil(exact.step / 8) - 1 and ran_late < len(x) // 10 - 1  # noticed within 8 steps, not at the end


def test_weights_that_turn_non_finite_after_the_last_step_are_caught(fmnist, monkeypatch):
    # The losses are checked as they come; an update that makes a weight non-finite after the
    # epoch's last loss is seen only by the loop's check at the epoch's end.
    config = TrainConfig(epochs=3, batch_size=20, device="cpu", precision="fp32", dropout=0.0)
    real, epochs = train.run_epoch, []

    def then_poison(units, *args, **kwargs):
        out = real(units, *args, **kwargs)
        epochs.append(len(epochs) + 1)
        if epochs[-1] == 2:
            with torch.no_grad():
                next(units.module.parameters())[0].fill_(math.inf)
        return out

    monkeypatch.setattr(train, "run_epoch", then_poison)
    model = train.build_model(config)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3.*non-finite in the last update"):
        train.fit(model, fmnist.x_train[:60], fmnist.y_train[:60], config, progress=False)


def test_cli_divergence_exits_non_zero_and_writes_no_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["train", "--lr", "1e10", "--epochs", "1", "--subset", "200", "--batch-size", "20", "--no-progress",
               "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr()
    assert rc == EXIT_DIVERGED
    assert "training diverged (epoch 1, step" in err.err and "learning rate" in err.err
    assert "test accuracy" not in err.out and not out.exists()


def test_results_are_strict_json_and_a_nan_names_its_key(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ValueError, match=r"results.json.history\[1\].train_loss is nan"):
        provenance.write_json(path, {"history": [{"train_loss": 0.5}, {"train_loss": float("nan")}]})
    with pytest.raises(ValueError, match=r"results.json.m\[0\]\[1\] is inf"):
        provenance.write_json(path, {"m": np.array([[1.0, np.inf]])})
    with pytest.raises(ValueError, match=r"results.json.t is nan"):
        provenance.write_json(path, {"t": torch.tensor(float("nan"))})
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing written, no temporary file
    # Where a value is missing, the caller says so explicitly; then it is written as null.
    provenance.write_json(path, {"std": provenance.missing_as_none([float("nan"), 0.25]), "p": Path("a"), "n": np.int64(3)})
    assert json.loads(path.read_text()) == {"std": [None, 0.25], "p": "a", "n": 3}


# --------------------------------------------------------------------------------------------
# 3. None is the only "not given"


def test_subset_zero_is_validated_not_all(capsys):
    assert main(["train", "--subset", "0", "--epochs", "1"]) == EXIT_BAD_INPUT
    err = capsys.readouterr()
    assert "--subset 0: must be between 1 and the 60000" in err.err and "training" not in err.out


# --------------------------------------------------------------------------------------------
# 6. Smaller cases: devices, checkpoints, data


@pytest.mark.parametrize("name, words", [("foo", "not a device name"), ("cuda:abc", "not a device name"),
                                         ("meta", "the kit runs on cpu, cuda, mps only")])
def test_misspelt_device_is_one_clear_error(name, words, capsys):
    with pytest.raises(ValueError, match=f"device='{name}': {words}"):
        device.resolve_device(name)
    with pytest.raises(ValueError, match=f"TrainConfig.device='{name}': {words}"):
        TrainConfig(device=name)
    assert main(["train", "--device", name]) == EXIT_BAD_INPUT
    assert f"TrainConfig.device='{name}'" in capsys.readouterr().err


@pytest.mark.skipif(torch.backends.mps.is_available() or torch.cuda.is_available(), reason="needs a machine without MPS and CUDA")
@pytest.mark.parametrize("name", ["mps", "cuda", "cuda:1"])
def test_unavailable_device_is_one_clear_error(name, capsys):
    assert str(TrainConfig(device=name).device) == name  # a config may be written for another machine
    assert main(["train", "--device", name, "--epochs", "1", "--subset", "100"]) == EXIT_BAD_INPUT
    err = capsys.readouterr()
    assert f"device={name!r}:" in err.err and "not available" in err.err and "training" not in err.out


def test_resuming_on_other_data_is_refused(tiny, tmp_path):
    x, y = tiny
    config = TrainConfig(epochs=2, batch_size=100, device="cpu")
    ckpt = tmp_path / "ckpt.pt"
    train.fit(train.build_model(config), x, y, config.replace(epochs=1), progress=False, checkpoint=ckpt)
    assert train.data_fingerprint(x, y) == train.data_fingerprint(x.clone(), y.clone())
    for other_x, other_y in ((x.flip(0), y.flip(0)), (x, y.roll(1)), (x[:-1], y[:-1])):
        assert train.data_fingerprint(other_x, other_y) != train.data_fingerprint(x, y)
        with pytest.raises(CheckpointError, match="was trained on other data"):
            train.fit(train.build_model(config), other_x, other_y, config, progress=False, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="was written with another validation split"):
        train.fit(train.build_model(config), x, y, config, val=(x[:50], y[:50]), progress=False, checkpoint=ckpt)
    assert len(train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=ckpt)) == 2  # same data: resumes

    # A checkpoint from before fingerprints cannot vouch for its data.
    state = torch.load(ckpt, weights_only=False)
    state["data"] = None
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="no record of its training data"):
        train.fit(train.build_model(config), x, y, config.replace(epochs=3), progress=False, checkpoint=ckpt)


def test_truncated_checkpoint_is_a_clear_error_naming_the_file(tiny, tmp_path):
    x, y = tiny
    config = TrainConfig(epochs=1, batch_size=100, device="cpu")
    ckpt = tmp_path / "ckpt.pt"
    train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=ckpt)
    whole = ckpt.read_bytes()
    ckpt.write_bytes(whole[: len(whole) // 2])
    for attempt in (lambda: train.load_checkpoint(ckpt),
                    lambda: train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=ckpt)):
        with pytest.raises(CheckpointError, match=f"{ckpt}: cannot be read as a training checkpoint.*truncated.*Delete it"):
            attempt()
    torch.save({"weights": 1}, ckpt)
    with pytest.raises(CheckpointError, match="not a checkpoint written by fmnist_utils.train.fit"):
        train.load_checkpoint(ckpt)


def test_full_disk_while_checkpointing_leaves_the_last_checkpoint_and_no_debris(tiny, tmp_path, monkeypatch):
    x, y = tiny
    config = TrainConfig(epochs=2, batch_size=100, device="cpu")
    ckpt = tmp_path / "ckpt.pt"
    train.fit(train.build_model(config), x, y, config.replace(epochs=1), progress=False, checkpoint=ckpt)
    before = ckpt.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=ckpt)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"] and ckpt.read_bytes() == before
    monkeypatch.setattr(torch, "save", real_save)
    assert len(train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=ckpt)) == 2


def test_the_debian_copy_has_the_official_sums(fmnist):
    """Reference: each file decompressed by gzip directly and hashed, against the recorded sums."""
    import hashlib

    files = data.find_files(fmnist.source)
    for key, path in files.items():
        raw = Path(path).read_bytes()
        content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert hashlib.sha256(content).hexdigest() == data.OFFICIAL_SHA256[key] == data.content_sha256(path)


def _copy_with(folder: Path, real: str, replaced: dict[str, np.ndarray]) -> Path:
    """A data folder: links to the real files, except the ``replaced`` ones, written raw."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in data.FILES.items():
        if key in replaced:
            data.write_idx(folder / stem, replaced[key])
        else:
            source = data.find_files(real)[key]
            os.symlink(source, folder / source.name)
    return folder


def test_shuffled_labels_or_blank_images_are_caught_by_the_sums(fmnist, tmp_path, monkeypatch):
    monkeypatch.delenv(data.UNVERIFIED_ENV, raising=False)
    labels = fmnist.y_test.numpy().astype(np.uint8)
    shuffled = _copy_with(tmp_path / "shuffled", fmnist.source, {"test_labels": np.random.default_rng(0).permutation(labels)})
    blank = _copy_with(tmp_path / "blank", fmnist.source, {"test_images": np.zeros((10_000, 28, 28), np.uint8)})
    for folder, stem in ((shuffled, "t10k-labels-idx1-ubyte"), (blank, "t10k-images-idx3-ubyte")):
        with pytest.raises(DataError, match=f"{folder / stem}: its content differs from Fashion-MNIST's {stem}"):
            data.load_fashion_mnist(folder)
        # Opting out, for data modified on purpose: by argument or environment variable.
        assert data.load_fashion_mnist(folder, verify=False).source == str(folder)
        monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
        assert data.load_fashion_mnist(folder).source == str(folder)
        monkeypatch.delenv(data.UNVERIFIED_ENV)
    loaded = data.load_fashion_mnist(shuffled, verify=False)
    assert sorted(loaded.y_test.tolist()) == sorted(labels.tolist()) and loaded.y_test.tolist() != labels.tolist()


def test_raw_and_gz_twins_that_differ_are_an_error(fmnist, tmp_path):
    folder = _copy_with(tmp_path / "twins", fmnist.source, {})
    stem = data.FILES["test_labels"]
    labels = fmnist.y_test.numpy().astype(np.uint8)
    data.write_idx(folder / stem, labels)  # the same content, raw, beside the .gz: fine
    assert data.load_fashion_mnist(folder).y_test.tolist() == fmnist.y_test.tolist()
    changed = labels.copy()
    changed[[0, 1]] = changed[[1, 0]]
    data.write_idx(folder / stem, changed)
    with pytest.raises(DataError, match=f"{folder / stem} and {folder / stem}.gz both exist but hold different data"):
        data.load_fashion_mnist(folder, verify=False)


# --------------------------------------------------------------------------------------------
# 1. Reuse keys cover every input


@pytest.fixture
def inputs_env(tmp_path, monkeypatch, fmnist):
    """Data from a folder of links to the real files; no ResNet weights anywhere (private torch home)."""
    folder = _copy_with(tmp_path / "data_a", fmnist.source, {})
    monkeypatch.setenv("FMNIST_DATA", str(folder))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("FMNIST_RESNET18_WEIGHTS", data.UNVERIFIED_ENV, "FMNIST_CPU_BF16"):
        monkeypatch.delenv(var, raising=False)
    return folder


def test_reuse_covers_data_location_content_weights_and_environment(tmp_path, monkeypatch, inputs_env, fmnist):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_reads_data.ipynb", results_cell("01_reads_data", 0.5))
    write_notebook(nbs / "02_reads_all.ipynb", results_cell("02_reads_all", 0.25))  # declares nothing: every input
    nb = json.loads((nbs / "01_reads_data.ipynb").read_text())
    nb["metadata"]["fmnist"] = {"inputs": ["data"]}
    (nbs / "01_reads_data.ipynb").write_text(json.dumps(nb))

    def executed_and_reasons():
        out, logged = run_build(tmp_path, nbs)
        return [s["executed"] for s in out["stamps"]], " | ".join(m for m in logged if "running (" in m)

    assert executed_and_reasons()[0] == [True, True]
    assert executed_and_reasons() == ([False, False], "")

    # Another data folder with the same files: its location is an input.
    monkeypatch.setenv("FMNIST_DATA", str(_copy_with(tmp_path / "data_b", fmnist.source, {})))
    ran, why = executed_and_reasons()
    assert ran == [True, True]
    assert f"the data's location ({inputs_env.resolve()} -> {(tmp_path / 'data_b').resolve()})" in why
    assert f"$FMNIST_DATA ({inputs_env} -> {tmp_path / 'data_b'})" in why

    # Same folder, other content (one label swapped, on purpose: unverified): named by file.
    monkeypatch.setenv(data.UNVERIFIED_ENV, "1")
    labels = fmnist.y_test.numpy().astype(np.uint8).copy()
    labels[[0, 1]] = labels[[1, 0]]
    (tmp_path / "data_b" / "t10k-labels-idx1-ubyte.gz").unlink()
    data.write_idx(tmp_path / "data_b" / "t10k-labels-idx1-ubyte", labels)
    ran, why = executed_and_reasons()
    assert ran == [True, True] and "the data's content (test_labels)" in why

    # Weights appear (an offline run got the random init before): only the notebook that reads them reruns.
    # (The runner refuses a file without torchvision's prefix; these stand-ins are let through.)
    from fmnist_utils import models

    monkeypatch.setattr(models, "RESNET18_SHA256_PREFIX", "")
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"not loaded by these notebooks, only hashed")
    monkeypatch.setenv("FMNIST_RESNET18_WEIGHTS", str(weights))
    ran, why = executed_and_reasons()
    assert ran == [False, True] and "02_reads_all: running (changed since its last run: the ResNet-18 weights" in why
    assert "$FMNIST_RESNET18_WEIGHTS (unset -> " in why and "01_reads_data" not in why
    weights.write_bytes(b"other weights")
    ran, why = executed_and_reasons()
    assert ran == [False, True] and f"the ResNet-18 weights at {weights.resolve()} (SHA-256" in why

    # The torchvision cache file counts when no file is named.
    monkeypatch.delenv("FMNIST_RESNET18_WEIGHTS")
    assert executed_and_reasons()[0] == [False, True]
    cached = models.resnet18_cache_file()
    assert str(cached).startswith(str(tmp_path / "torch_home"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached weights")
    ran, why = executed_and_reasons()
    assert ran == [False, True] and f"the ResNet-18 weights at {cached.resolve()} (no file -> SHA-256" in why

    # An environment variable that changes how inputs are read.
    monkeypatch.setenv("FMNIST_CPU_BF16", "0")
    ran, why = executed_and_reasons()
    assert ran == [True, True] and "$FMNIST_CPU_BF16 (unset -> 0)" in why
    assert executed_and_reasons()[0] == [False, False]


def test_input_hashes_are_reused_while_files_are_unchanged(inputs_env, monkeypatch):
    first = pipeline.snapshot_inputs(("data",))
    calls = []
    monkeypatch.setattr(data, "content_sha256", lambda p: calls.append(p) or "x")
    assert pipeline.snapshot_inputs(("data",), first) == first and calls == []
    touched = json.loads(json.dumps(first))
    touched["data"]["files"]["test_labels"]["mtime_ns"] += 1  # as if the file had been rewritten
    again = pipeline.snapshot_inputs(("data",), touched)
    assert len(calls) == 1 and again["data"]["files"]["test_labels"]["sha256"] == "x"


def test_an_input_the_notebook_fetched_itself_is_recorded_as_used():
    before = {"data": {"location": None, "files": None}, "resnet18_weights": {"path": "/w", "sha256": None}, "environment": {}}
    after = {"data": {"location": "/d", "files": {}}, "resnet18_weights": {"path": "/w", "sha256": "ab"}, "environment": {}}
    assert pipeline.settle_inputs(before, after) == after
    present = {**after, "data": {"location": "/e", "files": {}}}
    # Present before: what was read is what the key says; a change during the run shows next time.
    assert pipeline.settle_inputs(present, {**after, "resnet18_weights": {"path": "/w", "sha256": "cd"}}) == present


# --------------------------------------------------------------------------------------------
# 5. One writer per run folder; a profile change does not delete silently


def _hold_lock(run: str, ready, release) -> None:
    with pipeline.run_folder_lock(run):
        ready.set()
        release.wait(120)


def test_a_second_run_on_a_locked_folder_names_the_holder_and_exits(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    run = tmp_path / "run"
    run.mkdir()
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(run), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        (tmp_path / "report").mkdir()
        (tmp_path / "report" / "report.html").write_text("the holder's report")
        with pytest.raises(pipeline.RunFolderBusy) as info:
            run_build(tmp_path, nbs)
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in message and "--run-dir" in message
        assert not (run / "notebooks").exists()  # nothing ran
        assert (tmp_path / "report" / "report.html").read_text() == "the holder's report"  # nothing removed
        assert main(report_args(tmp_path, nbs)) == pipeline.EXIT_BUSY
        assert f"is in use by another run: pid {holder.pid}" in capsys.readouterr().err
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # killed, not released: the kernel frees the lock anyway
        holder.join(30)
    out, _ = run_build(tmp_path, nbs)
    assert [s["executed"] for s in out["stamps"]] == [True]


def test_lock_is_reentrant_within_a_process(tmp_path):
    with pipeline.run_folder_lock(tmp_path) as lock:
        with pipeline.run_folder_lock(tmp_path):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert pipeline._HELD[str(lock.resolve())] == 1
    assert not pipeline._HELD


def test_another_profile_in_the_run_folder_needs_force(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    run_build(tmp_path, nbs, profile="smoke")
    results = tmp_path / "run" / "01_a" / "results.json"
    smoke_results = results.read_bytes()
    with pytest.raises(pipeline.RunFolderConflict, match=r"holds results of another profile: 01_a \(smoke\).*--force"):
        run_build(tmp_path, nbs, profile="quick")
    assert results.read_bytes() == smoke_results
    assert main(report_args(tmp_path, nbs, "quick")) == EXIT_BAD_INPUT
    assert "runs/quick" in capsys.readouterr().err and results.read_bytes() == smoke_results
    # A notebook run by hand (no stamp) is recognised by the profile in its results.json.
    (tmp_path / "run" / "notebooks" / "01_a.stamp.json").unlink()
    with pytest.raises(pipeline.RunFolderConflict, match=r"01_a \(smoke\)"):
        run_build(tmp_path, nbs, profile="quick")
    out, logged = run_build(tmp_path, nbs, profile="quick", force=True)
    assert out["stamps"][0]["executed"] and any("replacing the results of another profile" in m for m in logged)
    assert json.loads(results.read_text())["profile"]["name"] == "quick"


# --------------------------------------------------------------------------------------------
# 4. Filesystem faults: one message naming the path and what to do, no debris


def test_run_folder_that_is_a_file_is_one_clear_error(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    (tmp_path / "run").write_text("a file")
    assert main(report_args(tmp_path, nbs)) == EXIT_FILESYSTEM
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot use {tmp_path / 'run'}: the run folder is a file, not a folder; ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_report_folder_under_proc_fails_before_any_notebook_runs(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    args = report_args(tmp_path, nbs)
    args[args.index("--report-dir") + 1] = "/proc/fmnist-report"
    assert main(args) == EXIT_FILESYSTEM
    err = capsys.readouterr().err
    assert "cannot use /proc/fmnist-report" in err and "(the report folder)" in err and "choose another folder" in err
    assert not (tmp_path / "run" / "notebooks").exists()


def test_unwritable_run_folder_says_so(tmp_path, monkeypatch, capsys):
    # Tests may run as root, who may write anywhere: the refusal is simulated where it happens.
    import tempfile

    real = tempfile.TemporaryFile

    def refuse(*a, dir=None, **k):
        if Path(dir) == tmp_path / "run":
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(paths.tempfile, "TemporaryFile", refuse)
    assert main(report_args(tmp_path, tmp_path)) == EXIT_FILESYSTEM
    assert f"cannot use {tmp_path / 'run'}: Permission denied (the run folder); no permission to write there" in capsys.readouterr().err


def _fill_disk_on(monkeypatch, target, *, after: int = 0):
    """Make writes of files named like ``target`` fail with ENOSPC after ``after`` successful ones,
    having written half of the content (as a full disk does)."""
    import pathlib

    import papermill.iorw

    real_write_text = pathlib.Path.write_text
    real_local_write = papermill.iorw.LocalHandler.write
    count = {"n": 0}

    def failing(path, text):
        if target(Path(path)):
            count["n"] += 1
            if count["n"] > after:
                real_write_text(Path(path), text[: len(text) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return None

    def write_text(self, text, *a, **k):
        failing(self, text)
        return real_write_text(self, text, *a, **k)

    def local_write(self, buf, path):
        failing(Path(path), buf)
        return real_local_write(self, buf, path)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(papermill.iorw.LocalHandler, "write", local_write)
    return count


def test_full_disk_while_saving_the_executed_notebook(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5), "print('more')")
    run = tmp_path / "run"
    _fill_disk_on(monkeypatch, lambda p: p == run / "notebooks" / "01_a.ipynb", after=2)
    rc = main(report_args(tmp_path, nbs))
    err = capsys.readouterr().err
    assert rc == EXIT_FILESYSTEM
    assert f"error: cannot use {run / 'notebooks' / '01_a.ipynb'}: No space left on device; the disk holding it is full" in err
    assert len(err.strip().splitlines()) == 1
    assert not (run / "notebooks" / "01_a.ipynb").exists()  # half a notebook is not kept
    stamp = json.loads((run / "notebooks" / "01_a.stamp.json").read_text())
    assert stamp["status"] == "failed"
    assert not list(run.rglob("*.tmp"))


def test_full_disk_for_the_bookkeeping_too_keeps_the_original_error(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_fail.ipynb", 'raise RuntimeError("the original error")')
    run = tmp_path / "run"
    # The "running" stamp is written; the disk is full from then on (the "failed" stamp, the notebook).
    _fill_disk_on(monkeypatch, lambda p: p.name in ("01_fail.stamp.json.tmp",), after=1)
    assert main(report_args(tmp_path, nbs)) == pipeline.EXIT_NOTEBOOK_FAILED
    captured = capsys.readouterr()
    assert "notebook 01_fail failed: RuntimeError: the original error" in captured.err
    assert "could not record the failed run" in captured.out and "No space left on device" in captured.out
    assert json.loads((run / "notebooks" / "01_fail.stamp.json").read_text())["status"] == "running"
    assert not list(run.rglob("*.tmp"))
    # Space again, the notebook fixed: the run goes on.
    monkeypatch.undo()
    write_notebook(nbs / "01_fail.ipynb", results_cell("01_fail", 0.5))
    assert main(report_args(tmp_path, nbs)) == 0


def test_full_disk_for_the_final_stamp(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    run = tmp_path / "run"
    _fill_disk_on(monkeypatch, lambda p: p.name == "01_a.stamp.json.tmp", after=1)
    assert main(report_args(tmp_path, nbs)) == EXIT_FILESYSTEM
    err = capsys.readouterr().err
    assert f"cannot use {run / 'notebooks' / '01_a.stamp.json.tmp'}: No space left on device" in err
    assert not list(run.rglob("*.tmp")) and len(err.strip().splitlines()) == 1


def test_interrupted_run_is_recorded_and_reported(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "execute", interrupted)
    assert main(report_args(tmp_path, nbs)) == EXIT_INTERRUPTED
    assert "Finished work is kept" in capsys.readouterr().err
    assert json.loads(pipeline.stamp_path(tmp_path / "run", "01_a").read_text())["status"] == "interrupted"


def test_train_out_is_checked_before_training_and_never_leaves_a_tmp(tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    start = time.perf_counter()
    assert main(["train", "--out", str(folder), "--epochs", "1"]) == EXIT_FILESYSTEM
    captured = capsys.readouterr()
    assert f"cannot use {folder}: Is a directory (--out)" in captured.err and "training" not in captured.out
    assert main(["train", "--out", "/proc/fmnist/r.json", "--epochs", "1"]) == EXIT_FILESYSTEM
    captured = capsys.readouterr()
    assert "cannot use /proc/fmnist" in captured.err and "training" not in captured.out
    assert time.perf_counter() - start < 60  # no epoch was trained first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and not list(folder.iterdir())


def test_write_json_over_a_folder_leaves_no_tmp(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError):
        provenance.write_json(tmp_path / "out", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_killed_pdf_print_leaves_no_temporary_pdf(tmp_path, monkeypatch):
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in --print-to-pdf=*) echo '%PDF-1.4 half' > \"${a#--print-to-pdf=}\";; esac; done\n"
                    "exec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv(report.CHROMIUM_ENV, str(fake))
    page = tmp_path / "report.html"
    page.write_text("<p>x</p>")
    with pytest.raises(report.PdfUnavailable, match="could not print it"):
        report.write_pdf(page, tmp_path / "report.pdf", timeout=2, log=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chromium", "report.html"]
    # A leftover from a print killed with its process is removed with the old report.
    (tmp_path / "report.pdf.tmp.pdf").write_text("debris")
    assert tmp_path / "report.pdf.tmp.pdf" in pipeline.remove_report(tmp_path)


# ============================================================================================
# Issue 17: nothing of the user's is ever deleted; check, then touch; one status per fault


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the lock file aside: taking it rewrites its holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != pipeline.LOCK_NAME}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def finished(tmp_path, inputs_env):
    """A finished report: two notebooks (one reads the data, one reads everything), run and report folders."""
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    write_notebook(nbs / "02_b.ipynb", results_cell("02_b", 0.25))
    nb = json.loads((nbs / "01_a.ipynb").read_text())
    nb["metadata"]["fmnist"] = {"inputs": ["data"]}
    (nbs / "01_a.ipynb").write_text(json.dumps(nb))
    assert main(report_args(tmp_path, nbs)) == 0
    (tmp_path / "run" / "01_a" / "sweep.sqlite3").write_bytes(b"finished folds")  # what a sweep keeps
    return nbs


def _refused_unchanged(tmp_path, args, status, capsys) -> str:
    """Run the CLI, expect ``status`` and one line; the run and report folders must be byte for byte as before."""
    capsys.readouterr()
    before = {name: _tree(tmp_path / name) for name in ("run", "report")}
    assert main(args) == status
    line = _one_line(capsys.readouterr().err)
    assert {name: _tree(tmp_path / name) for name in ("run", "report")} == before
    return line


def test_folders_of_the_checkout_are_refused_in_every_role(tmp_path, capsys, monkeypatch):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    checkout = paths.checkout_folders()
    root = checkout["the kit's checkout"]
    sources = _tree(root / "notebooks")
    cases = [("--report-dir", root, "is the kit's checkout"), ("--run-dir", root, "is the kit's checkout"),
             ("--report-dir", root / "notebooks", "is the kit's source notebooks"),
             ("--run-dir", root / "tests", "is the kit's tests"),
             ("--run-dir", root / "fmnist_utils" / "templates", "lies inside the kit's package"),
             ("--report-dir", tmp_path / "run", "is the report folder"), ("--report-dir", nbs, "is the notebooks folder (--notebooks)"),
             ("--run-dir", tmp_path, "holds the notebooks folder (--notebooks)")]
    for flag, folder, words in cases:
        args = report_args(tmp_path, nbs)
        args[args.index(flag) + 1] = str(folder)
        assert main(args) == EXIT_BAD_INPUT, (flag, folder)
        line = _one_line(capsys.readouterr().err)
        assert words in line and str(folder) in line and ("--report-dir" in line or "--run-dir" in line), line
    # FMNIST_REPORT=. from the checkout: the same refusal.
    monkeypatch.chdir(root)
    monkeypatch.setenv("FMNIST_REPORT", ".")
    args = [a for a in report_args(tmp_path, nbs)]
    del args[args.index("--report-dir"):args.index("--report-dir") + 2]
    assert main(args) == EXIT_BAD_INPUT
    assert "is the kit's checkout" in _one_line(capsys.readouterr().err)
    assert _tree(root / "notebooks") == sources and not (root / "notebooks" / "notebooks").exists()
    assert not (tmp_path / "run" / "notebooks").exists()  # nothing ran


def test_a_run_folder_given_as_the_report_folder_is_refused_byte_for_byte(tmp_path, finished, capsys):
    other = tmp_path / "other_run"
    args = report_args(tmp_path, finished)
    args[args.index("--run-dir") + 1] = str(other)
    args[args.index("--report-dir") + 1] = str(tmp_path / "run")
    line = _refused_unchanged(tmp_path, args, EXIT_BAD_INPUT, capsys)
    assert f"{tmp_path / 'run'} is a run folder of the kit, not a report folder" in line
    args = report_args(tmp_path, finished)  # and the other way round
    args[args.index("--run-dir") + 1] = str(tmp_path / "report")
    args[args.index("--report-dir") + 1] = str(tmp_path / "other_report")
    line = _refused_unchanged(tmp_path, args, EXIT_BAD_INPUT, capsys)
    assert f"{tmp_path / 'report'} is a report folder of the kit, not a run folder" in line


def test_a_folder_holding_the_users_files_is_not_adopted(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    for role in ("run", "report"):
        folder = tmp_path / role
        folder.mkdir(exist_ok=True)
        (folder / "thesis.tex").write_text("years of work")
        assert main(report_args(tmp_path, nbs)) == EXIT_BAD_INPUT
        line = _one_line(capsys.readouterr().err)
        assert f"the {role} folder {folder} holds files the kit did not make (thesis.tex)" in line
        assert (folder / "thesis.tex").read_text() == "years of work"
        (folder / "thesis.tex").unlink()
    assert main(report_args(tmp_path, nbs)) == 0
    assert paths.is_owned(tmp_path / "run", "run folder") and paths.is_owned(tmp_path / "report", "report folder")


@pytest.mark.parametrize("fault", ["shuffled data", "bad weights", "missing weights", "empty notebooks folder",
                                   "another profile"])
def test_a_refusal_leaves_the_finished_run_and_report_byte_for_byte(tmp_path, finished, fault, fmnist, monkeypatch,
                                                                    capsys):
    args, words = report_args(tmp_path, finished), None
    if fault == "shuffled data":
        labels = np.random.default_rng(0).permutation(fmnist.y_test.numpy().astype(np.uint8))
        monkeypatch.setenv("FMNIST_DATA", str(_copy_with(tmp_path / "shuffled", fmnist.source, {"test_labels": labels})))
        status, words = EXIT_BAD_INPUT, "t10k-labels-idx1-ubyte: its content differs from Fashion-MNIST's"
    elif fault == "bad weights":
        (tmp_path / "w.pth").write_bytes(b"not ResNet-18 weights")
        monkeypatch.setenv("FMNIST_RESNET18_WEIGHTS", str(tmp_path / "w.pth"))
        status, words = EXIT_BAD_INPUT, f"{tmp_path / 'w.pth'}: SHA-256"
    elif fault == "missing weights":
        monkeypatch.setenv("FMNIST_RESNET18_WEIGHTS", str(tmp_path / "nope.pth"))
        status, words = EXIT_BAD_INPUT, "nope.pth: ResNet-18 weights file not found"
    elif fault == "empty notebooks folder":
        (tmp_path / "empty").mkdir()
        args[args.index("--notebooks") + 1] = str(tmp_path / "empty")
        status, words = EXIT_BAD_INPUT, "no notebooks named like"
    else:
        args[args.index("--profile") + 1] = "quick"
        status, words = EXIT_BAD_INPUT, "holds results of another profile"
    assert words in _refused_unchanged(tmp_path, args, status, capsys)


def test_a_damaged_stamp_keeps_the_finished_work_and_says_why(tmp_path, finished, capsys):
    stamp = pipeline.stamp_path(tmp_path / "run", "01_a")
    stamp.write_text(stamp.read_text()[:40])  # cut short
    assert main(report_args(tmp_path, finished)) == 0
    printed = capsys.readouterr().out
    assert f"01_a: running (its stamp {stamp} is unreadable (" in printed and "no earlier run" not in printed
    assert (tmp_path / "run" / "01_a" / "sweep.sqlite3").read_bytes() == b"finished folds"  # resumed, not wiped


def test_results_are_set_aside_until_their_successor_exists(tmp_path, finished, capsys):
    run = tmp_path / "run"
    old_results = (run / "01_a" / "results.json").read_bytes()
    write_notebook(finished / "01_a.ipynb", 'raise RuntimeError("the new version fails")')
    assert main(report_args(tmp_path, finished)) == pipeline.EXIT_NOTEBOOK_FAILED
    captured = capsys.readouterr()
    aside = run / pipeline.REPLACED / "01_a"
    assert (aside / "results.json").read_bytes() == old_results and (aside / "sweep.sqlite3").is_file()
    assert f"its last finished results are kept in {aside}" in captured.out
    assert "the previous one, from an earlier run, is kept" in captured.out and (tmp_path / "report" / "report.html").is_file()
    write_notebook(finished / "01_a.ipynb", results_cell("01_a", 0.75))
    assert main(report_args(tmp_path, finished)) == 0
    assert not (run / pipeline.REPLACED).exists() and json.loads((run / "01_a" / "results.json").read_text())["score"] == 0.75


def test_the_report_folder_has_a_lock_of_its_own(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    report_folder = tmp_path / "report"
    report_folder.mkdir()
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_folder_lock, args=(str(report_folder), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        args = report_args(tmp_path, nbs)
        args[args.index("--run-dir") + 1] = str(tmp_path / "another_run")  # another run folder, the same report
        assert main(args) == pipeline.EXIT_BUSY
        line = _one_line(capsys.readouterr().err)
        assert f"the report folder {report_folder} is in use by another run: pid {holder.pid}" in line and "--report-dir" in line
        assert not (tmp_path / "another_run" / "notebooks").exists()
    finally:
        release.set()
        holder.join(30)


def _hold_folder_lock(folder: str, ready, release) -> None:
    with pipeline.folder_lock(folder, "report folder"):
        ready.set()
        release.wait(120)


@pytest.mark.parametrize("raised, status, words", [
    ("from fmnist_utils.data import DataError\nraise DataError('/d/x.gz: its content differs; set FMNIST_DATA_UNVERIFIED=1')",
     EXIT_BAD_INPUT, "/d/x.gz: its content differs; set FMNIST_DATA_UNVERIFIED=1 [notebook 01_f; the executed notebook is kept: "),
    ("from fmnist_utils.models import WeightsError\nraise WeightsError('/w.pth: SHA-256 ab... does not start with')",
     EXIT_BAD_INPUT, "/w.pth: SHA-256 ab... does not start with [notebook 01_f"),
    ("from fmnist_utils.train import TrainingDiverged\nraise TrainingDiverged(2, 7, float('nan'), hint='lower the learning rate')",
     EXIT_DIVERGED, "training diverged (epoch 2, step 7): loss is nan; lower the learning rate [notebook 01_f"),
    ("import errno\nraise OSError(errno.ENOSPC, 'No space left on device', '/full/disk/f.png')",
     EXIT_FILESYSTEM, "cannot use /full/disk/f.png: No space left on device; the disk holding it is full"),
])
def test_a_fault_inside_a_notebook_has_the_clis_status_and_one_line(tmp_path, raised, status, words, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_f.ipynb", raised)
    assert main(report_args(tmp_path, nbs)) == status
    line = _one_line(capsys.readouterr().err)
    assert words in line and str(tmp_path / "run" / "notebooks" / "01_f.ipynb") in line
    assert (tmp_path / "run" / "notebooks" / "01_f.ipynb").is_file()  # kept for inspection


@pytest.mark.parametrize("signum, status, words", [
    (signal.SIGTERM, EXIT_TERMINATED, "error: terminated (SIGTERM). Finished work is kept"),
    (signal.SIGINT, EXIT_INTERRUPTED, "error: interrupted. Finished work is kept"),
])
def test_sigterm_and_sigint_give_their_status_one_line_and_a_clean_kernel_shutdown(tmp_path, signum, status, words):
    import subprocess
    import sys

    nbs = tmp_path / "nbs"
    started, cleaned = tmp_path / "kernel.pid", tmp_path / "cleaned"
    # The cell's own clean-up (a sweep re-queues its trials there) must run before the kernel goes.
    write_notebook(nbs / "01_slow.ipynb", f"import os, time\nopen({str(started)!r}, 'w').write(str(os.getpid()))\n"
                   f"try:\n    time.sleep(120)\nfinally:\n    time.sleep(1)\n    open({str(cleaned)!r}, 'w').write('yes')")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_utils", *report_args(tmp_path, nbs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (started.is_file() and started.read_text()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    kernel = int(started.read_text())
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status
    assert err.strip().splitlines() == [err.strip()] and err.startswith(words), err  # the kernel's noise is in its log
    assert pipeline.kernel_log_path(pipeline.executed_path(tmp_path / "run", "01_slow")).is_file()
    assert json.loads(pipeline.stamp_path(tmp_path / "run", "01_slow").read_text())["status"] == "interrupted"
    assert cleaned.read_text() == "yes"
    assert_gone(kernel, f"the kernel {kernel} outlived its runner")  # shut down with its runner


def test_a_symlink_loop_as_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5))
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    for var in ("FMNIST_RUNS", "FMNIST_REPORT"):
        monkeypatch.setenv(var, str(tmp_path / "loop_a"))
        args = ["report", "--profile", "smoke", "--notebooks", str(nbs), "--no-pdf"]
        assert main(args) == EXIT_FILESYSTEM
        line = _one_line(capsys.readouterr().err)
        assert f"cannot use {tmp_path / 'loop_a'}" in line and "symbolic links" in line
        monkeypatch.delenv(var)


def test_a_folder_check_names_the_folder_not_its_probe_file(tmp_path, monkeypatch):
    import tempfile

    real = tempfile.TemporaryFile

    def refuse(*a, dir=None, prefix="", **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / f"{prefix}abc123"))

    monkeypatch.setattr(paths.tempfile, "TemporaryFile", refuse)
    with pytest.raises(OSError) as info:
        paths.writable_dir(tmp_path / "out", "run folder")
    assert info.value.filename == str(tmp_path / "out") and ".write-test" not in str(info.value)
    monkeypatch.setattr(paths.tempfile, "TemporaryFile", real)


def test_an_unreadable_file_is_not_told_it_cannot_be_written(tmp_path, monkeypatch):
    from fmnist_utils.__main__ import describe_os_error

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == weights else real_access(p, mode))
    message = describe_os_error(PermissionError(errno.EACCES, "Permission denied", str(weights)))
    assert message == f"cannot use {weights}: Permission denied; it cannot be read: make it readable (chmod u+r), or give another file"
    assert "write" not in describe_os_error(PermissionError(errno.EACCES, "Permission denied", str(weights)))
    assert "no permission to write" in describe_os_error(PermissionError(errno.EACCES, "Permission denied", str(tmp_path)))
    assert "(the system did not say which)" in describe_os_error(OSError(errno.ENOSPC, "No space left on device"))


def test_torchs_unexpected_pos_is_a_full_disk_naming_the_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    x, y = tiny
    config = TrainConfig(epochs=1, batch_size=100, device="cpu")
    ckpt = tmp_path / "ckpt.pt"

    def torch_full(obj, f, *a, **k):
        Path(f).write_bytes(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 3008 vs 2942")

    monkeypatch.setattr(torch, "save", torch_full)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(OSError) as info:
        train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=ckpt)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpt) + ".tmp"
    assert not list(tmp_path.iterdir())  # no half checkpoint


def test_a_checkpoint_path_that_is_a_folder_is_refused_before_training(tiny, tmp_path, monkeypatch, capsys):
    from fmnist_utils.__main__ import explain

    x, y = tiny
    epochs = []
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: epochs.append(1) or {})
    config = TrainConfig(epochs=1, batch_size=100, device="cpu")
    with pytest.raises(OSError, match="the checkpoint path must name a file") as info:
        train.fit(train.build_model(config), x, y, config, progress=False, checkpoint=tmp_path)
    assert not epochs and info.value.filename == str(tmp_path)
    message, status = explain(info.value)
    assert status == EXIT_FILESYSTEM and message.startswith(f"cannot use {tmp_path}: Is a directory") and "file name" in message


def test_a_write_that_names_no_file_is_reported_with_its_file(tmp_path, monkeypatch):
    import pathlib

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write() says it: no file name

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    with pytest.raises(OSError) as info:
        provenance.write_json(tmp_path / "results.json", {"a": 1})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "results.json.tmp")
    assert not list(tmp_path.iterdir())


def test_absurd_kernel_size_is_refused_before_any_allocation(capsys):
    assert main(["train", "--kernel-size", "1001", "--epochs", "1"]) == EXIT_BAD_INPUT
    line = _one_line(capsys.readouterr().err)
    assert "TrainConfig.kernel_size=1001: must be at most 27" in line
    assert TrainConfig(kernel_size=27).kernel_size == 27


def test_train_out_ending_in_a_slash_is_a_folder_and_records_the_data(tmp_path, capsys, fmnist):
    out = tmp_path / "newdir"
    assert main(["train", "--epochs", "1", "--subset", "200", "--batch-size", "50", "--no-progress", "--out", f"{out}/"]) == 0
    written = json.loads((out / "train_results.json").read_text())
    assert written["data"] == {"source": fmnist.source, "verified": True}
    assert set(written["chance"]) >= {"above_chance", "p", "n"} and written["chance"]["n"] == 10_000


def test_unverified_data_is_recorded_in_train_results(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["train", "--epochs", "1", "--subset", "200", "--batch-size", "50", "--no-progress", "--no-verify",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["data"]["verified"] is False
    assert "loaded without the SHA-256 check" in capsys.readouterr().err


def test_an_interrupted_train_promises_no_resume():
    from fmnist_utils.__main__ import EXIT_TERMINATED, Terminated, explain

    message, status = explain(KeyboardInterrupt(), "train")
    assert status == EXIT_INTERRUPTED and "nothing was saved" in message and "go on from there" not in message
    message, status = explain(Terminated(), "report")
    assert status == EXIT_TERMINATED and message.startswith("terminated (SIGTERM). Finished work is kept")


def test_a_collapse_to_chance_is_flagged_and_warned(tiny):
    x, y = tiny
    config = TrainConfig(optimizer="adam", weight_decay=1e5, epochs=1, batch_size=50, device="cpu", precision="fp32")
    with pytest.warns(UserWarning, match="not distinguishable from chance"):
        history = train.fit(train.build_model(config), x, y, config, progress=False)
    assert history[-1]["not_above_chance"] is True
    healthy = train.chance_check(0.85, 300)
    assert healthy["above_chance"] and healthy["note"] == "" and not train.chance_check(0.11, 300)["above_chance"]
    # Reference: the exact one-sided binomial tail by hand.
    from math import comb

    n, k = 300, 33
    p = sum(comb(n, i) * 0.1**i * 0.9 ** (n - i) for i in range(k, n + 1))
    assert train.chance_check(k / n, n)["p"] == pytest.approx(p, rel=1e-9)


def test_fp16_on_a_cpu_is_warned_about():
    config = TrainConfig(epochs=1, batch_size=50, precision="fp16", device="cpu")
    x = torch.zeros(100, 1, 28, 28, dtype=torch.uint8)
    y = torch.arange(100) % 10
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.warns(UserWarning, match="precision='fp16' on a CPU.*10 times slower"):
        train.fit(model, x, y, config, progress=False)


def test_weights_are_called_imagenet_only_for_torchvisions_file(tmp_path, monkeypatch):
    from fmnist_utils import models

    torch.manual_seed(0)
    path = tmp_path / "mine.pth"
    torch.save(models.ImageNetResNet18().state_dict(), path)
    digest = models.sha256_of(path)
    _, info = models.imagenet_resnet18(path, sha256_prefix="", cache_dir=tmp_path, allow_download=False)
    assert info.source == models.USER_SUPPLIED_SOURCE == "user-supplied weights (not verified as ImageNet)"
    assert not info.verified and info.title != "ResNet-18 (ImageNet)" and info.sha256 == digest
    monkeypatch.setattr(models, "RESNET18_SHA256", digest)  # as if it were torchvision's file
    _, info = models.imagenet_resnet18(path, sha256_prefix="", cache_dir=tmp_path, allow_download=False)
    assert info.verified and info.source == models.LOCAL_SOURCE.format(path=path) and info.title == "ResNet-18 (ImageNet)"


@pytest.mark.parametrize("storage, words", [
    ("{tmp}/sweep.sqlite3", "not a readable SQLite database (its first bytes are not SQLite's header): the file is damaged. "
                            "Move it aside (mv {tmp}/sweep.sqlite3 {tmp}/sweep.sqlite3.damaged)"),
    ("foo://host/db", "sweep storage foo://host/db: the scheme 'foo' is not supported"),
    ("postgresql://user:secret@127.0.0.1:1/db", "sweep storage postgresql://user:***@127.0.0.1:1/db: cannot connect"),
])
def test_a_storage_fault_is_one_line_naming_it_and_the_way_out(tmp_path, storage, words, monkeypatch):
    from fmnist_utils import sweep
    from fmnist_utils.__main__ import explain

    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)  # no pause between connection attempts
    storage = storage.format(tmp=tmp_path)
    if storage.endswith(".sqlite3"):
        Path(storage).write_bytes(b"a file cut short, not a database")
    with pytest.raises(sweep.StorageError) as info:
        sweep.open_storage(storage)
    message, status = explain(info.value)
    assert status == EXIT_BAD_INPUT and words.format(tmp=tmp_path) in message and "\n" not in message
    assert "secret" not in message
    if storage.endswith(".sqlite3"):
        assert Path(storage).read_bytes() == b"a file cut short, not a database"  # the user's to move, not deleted


def test_trials_of_a_dead_worker_on_this_host_are_requeued_at_once(tmp_path):
    import subprocess

    from fmnist_utils import sweep

    st = sweep.open_storage(tmp_path / "s.sqlite3", heartbeat_interval=10, grace_period=60)
    study = __import__("optuna").create_study(storage=st, study_name="sweep", direction="maximize")
    study.enqueue_trial({"lr": 0.1})
    study.enqueue_trial({"lr": 0.2})
    dead = subprocess.Popen(["true"])  # a process that has ended: its pid names no one
    dead.wait()
    held = []
    for pid in (dead.pid, os.getppid()):  # a finished process, and a live one
        trial = study.ask()
        trial.report(0.5, step=0)  # a finished fold
        st.record_heartbeat(trial._trial_id)
        st.set_trial_system_attr(trial._trial_id, sweep.HOLDER_ATTR, {"host": socket.gethostname(), "pid": pid})
        held.append(trial.number)
    assert sweep.requeue_dead_holders(study, st) == 1  # now, not after the 60 s grace period
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[held[0]] == "FAIL" and states[held[1]] == "RUNNING"
    requeued = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert len(requeued) == 1 and requeued[0].intermediate_values == {0: 0.5}  # with its finished fold


def test_the_report_names_unverified_data_and_a_training_not_above_chance(tmp_path):
    import report_fixtures as F

    sweep, trained = F.sweep_results(), F.train_results()
    assert "not distinguishable" not in F.text_of(F.render(tmp_path / "a", {"01_sweep": sweep, "02_train": trained}))
    trained["history"][-1]["not_above_chance"] = True
    sweep["data_verified"] = False
    text = F.text_of(F.render(tmp_path / "b", {"01_sweep": sweep, "02_train": trained}))
    assert "Unverified data. 01_sweep loaded Fashion-MNIST without its SHA-256 check" in text
    assert "In 02_train the last epoch's accuracy is not distinguishable from chance" in text


def test_make_data_never_installs_over_a_copy_it_found_and_refused(tmp_path, fmnist):
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    if shutil.which("make") is None:
        pytest.skip("needs make")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than pyproject.toml: make builds no environment
    os.utime(venv / ".installed", (time.time() + 3600, time.time() + 3600))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    (bin_dir / "apt-get").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "apt-get").chmod(0o755)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")  # as root, where the recipe would install
    (bin_dir / "id").chmod(0o755)
    labels = np.random.default_rng(0).permutation(fmnist.y_test.numpy().astype(np.uint8))
    bad = _copy_with(tmp_path / "shuffled", fmnist.source, {"test_labels": labels})
    env = {**os.environ, "FMNIST_DATA": str(bad), "PYTHONPATH": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop(data.UNVERIFIED_ENV, None)
    done = subprocess.run(["make", "-s", "-C", str(root), "data", f"VENV={venv}", f"PY={sys.executable}"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "its content differs from Fashion-MNIST's" in done.stderr
    assert not calls.exists() and "installing" not in done.stdout


def test_a_leftover_staging_folder_is_removed_only_when_the_kit_made_it(tmp_path, monkeypatch):
    from fmnist_utils import report

    report_dir = tmp_path / "report"
    foreign = report_dir / pipeline.STAGING
    foreign.mkdir(parents=True)
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(paths.FolderRoleError, match=r"refusing to delete .*\.building: it carries no"):
        pipeline.replace_report(tmp_path / "run", [], report_dir, log=lambda m: None)
    assert (foreign / "thesis.tex").read_text() == "years of work"

    (foreign / "thesis.tex").unlink()
    (foreign / pipeline.STAGING_MARKER).write_text("a build cut short")  # the kit's own leftover
    monkeypatch.setattr(report, "write_report",
                        lambda run, stamps, folder, log, title: (Path(folder) / "report.html").write_text("<p>new</p>"))
    assert pipeline.replace_report(tmp_path / "run", [], report_dir, log=lambda m: None).read_text() == "<p>new</p>"
    assert not foreign.exists() and (report_dir / "notebooks" / paths.RENDERED_MARKER).is_file()


def test_a_rendered_notebooks_folder_is_replaced_only_when_it_carries_the_kits_marker(tmp_path, finished, capsys):
    # Exported notebooks of the user's own, .html files only, where the report's rendered ones go:
    # refused before anything runs, left byte for byte, whatever they look like.
    rendered = tmp_path / "report" / "notebooks"
    shutil.rmtree(rendered)
    rendered.mkdir()
    (rendered / "lecture.html").write_text("<p>my notes</p>")
    (rendered / "01_a.html").write_text("<p>my export</p>")
    (finished / "02_b.ipynb").write_text((finished / "02_b.ipynb").read_text().replace("0.25", "0.5"))  # work to do
    line = _refused_unchanged(tmp_path, report_args(tmp_path, finished), EXIT_BAD_INPUT, capsys)
    assert f"{rendered} carries no {paths.RENDERED_MARKER} marker, so the kit did not render it and will not delete it" in line
    assert (rendered / "lecture.html").read_text() == "<p>my notes</p>"
    with pytest.raises(paths.FolderRoleError, match="carries no"):
        pipeline.remove_report(tmp_path / "report")  # the removal checks again, whoever calls it
    assert (rendered / "01_a.html").read_text() == "<p>my export</p>"

    (rendered / paths.RENDERED_MARKER).write_text("rendered by the kit")  # the kit's own: replaced
    assert main(report_args(tmp_path, finished)) == 0
    assert not (rendered / "lecture.html").exists() and (rendered / paths.RENDERED_MARKER).is_file()
    assert (rendered / "02_b.html").is_file()


def test_clean_removes_only_the_kits_marked_folders(tmp_path):
    from fmnist_utils import run_folders

    runs, report_dir = tmp_path / "runs", tmp_path / "report"
    ours = runs / "quick"
    ours.mkdir(parents=True)
    paths.mark(ours, "run folder")
    (ours / "02_train").mkdir()
    theirs = runs / "my-notes"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("mine")
    report_dir.mkdir()
    paths.mark(report_dir, "report folder")
    (report_dir / "report.html").write_text("<html>")
    (report_dir / "draft.md").write_text("mine")
    removed, left = run_folders.clean(runs, report_dir)
    assert not ours.exists() and (theirs / "thesis.tex").read_text() == "mine"
    assert not (report_dir / "report.html").exists() and (report_dir / "draft.md").read_text() == "mine"
    assert ours in removed and theirs in left
    unmarked = tmp_path / "elsewhere"
    unmarked.mkdir()
    (unmarked / "report.html").write_text("someone else's")
    assert run_folders.clean(tmp_path / "none", unmarked) == ([], [unmarked])
    assert (unmarked / "report.html").read_text() == "someone else's"
