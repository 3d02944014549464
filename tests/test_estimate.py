"""Estimates before spending: image-pass counts, timing on the device, the full profile refused on a CPU."""

import argparse
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fmnist_utils import data, estimate, improve, pipeline, profiles, study
from fmnist_utils.train import TrainConfig
from fmnist_utils.__main__ import main as cli_main

# Fake pace: one image-pass of every kind takes 1 ms (a slow CPU would be about this for the CNN).
MS = {kind: 1e-3 for kind in estimate.KINDS}


def reference_configs(space: str, factors) -> list[dict]:
    """The configurations a sweep of the study's values tries, listed one by one."""
    if space == "grid":
        return [dict(zip(factors, combo)) for combo in itertools.product(*(study.VALUES[f] for f in factors))]
    recipe = TrainConfig()
    seen = {tuple((f, getattr(recipe, f)) for f in factors)}
    for f in factors:
        for v in study.VALUES[f]:
            seen.add(tuple((g, v if g == f else getattr(recipe, g)) for g in factors))
    return [dict(c) for c in seen]


@pytest.mark.parametrize("space, factors", [("grid", ("lr", "batch_size", "dropout")), ("oat", ("lr", "batch_size", "dropout")),
                                            ("oat", ("lr",)), ("grid", ("dropout",))])
def test_count_configs_matches_the_listed_configurations(space, factors):
    assert estimate.count_configs(space, None, factors) == len(reference_configs(space, factors))


def test_sweep_passes_match_a_loop_over_real_folds():
    # Train on k-1 folds, validate on one, every epoch, for every configuration; then the final model.
    labels = np.repeat(np.arange(10), 60)  # a 600-image pool
    prof = profiles.PROFILES["quick"]
    sizes = estimate.profile_sizes(prof)
    sizes["sweep"].update(subset=len(labels), k=3, epochs=2)
    sizes["skip"] = ()  # quick leaves the sweep out; count it as if it ran
    trained = validated = 0
    for _config in reference_configs(sizes["sweep"]["space"], sizes["sweep"]["factors"]):
        for tr, va in data.stratified_kfold(labels, 3, seed=0):
            trained += len(tr) * 2
            validated += len(va) * 2
    passes = estimate.image_passes(sizes)["sweep"]
    s = sizes["sweep"]
    assert passes["cnn_train"] == trained + s["final_subset"] * s["final_epochs"]
    assert passes["cnn_eval"] == validated + (s["test_subset"] or estimate.TEST_IMAGES)


def test_full_profile_is_the_study_protocol_within_25_million_cnn_training_passes():
    passes = estimate.image_passes(estimate.profile_sizes(profiles.PROFILES["full"]))
    # The study's 10 one-factor-at-a-time configurations x 5 folds x 48,000 images, by successive halving up
    # to the study's 10 epochs: all 10 for 3 epochs, then at most 10 // 4 = 2 retrained for 10; plus the final model.
    assert estimate.count_configs("oat", None, ("lr", "batch_size", "dropout")) == 10
    sweep = profiles.PROFILES["full"].sweep
    assert (sweep.epochs, sweep.min_epochs, sweep.reduction_factor) == (10, 3, 4)
    assert passes["sweep"]["cnn_train"] == (10 * 3 + 2 * 10) * 5 * 48_000 + 60_000 * 10
    assert passes["sweep"]["cnn_eval"] == (10 * 3 + 2 * 10) * 60_000 + 10_000
    assert passes["train"]["cnn_train"] == 2 * 54_000 * 10  # chosen and study recipe; 10% held out
    assert passes["compare"]["resnet_train"] == 60_000 * 10
    # 04's primary comparisons: 6 CNN rows and ResNet-18 over 3 seeds, 54,000 images, 10 epochs.
    assert passes["improve"]["cnn_train"] == 3 * 6 * 54_000 * 10
    assert passes["improve"]["resnet_train"] == 3 * 54_000 * 10
    cnn = sum(p.get("cnn_train", 0) for p in passes.values())
    assert cnn <= 25_000_000


def test_the_grid_and_every_ablation_row_stay_reachable_and_counted():
    sizes = estimate.profile_sizes(profiles.PROFILES["full"])
    sizes["sweep"]["space"] = "grid"
    sizes["improve"]["rows"] = None
    passes = estimate.image_passes(sizes)
    # 60 configurations x 5 folds x 48,000 images: all for 3 epochs, then at most 60 // 4 = 15 for 10, plus the final model.
    assert passes["sweep"]["cnn_train"] == (60 * 3 + 15 * 10) * 5 * 48_000 + 60_000 * 10
    sizes["sweep"]["min_epochs"] = None  # the grid without halving: every configuration for 10 epochs
    assert estimate.image_passes(sizes)["sweep"]["cnn_train"] == 60 * 10 * 5 * 48_000 + 60_000 * 10
    cnn_rows = sum(1 for r in improve.ablation_rows().values() if r.settings is not None and r.settings.get("model") != "resnet18")
    assert passes["improve"]["cnn_train"] == 3 * cnn_rows * 54_000 * 10


def reference_halving_passes(n_configs: int, epochs: int, min_epochs: int, eta: int, k: int, pool: int) -> int:
    """Fold training passes of successive halving, simulated: every rung keeps the best n // eta (at
    least one) of random scores, and each promoted configuration is retrained from scratch."""
    rungs = [min_epochs * eta ** i for i in range(epochs) if min_epochs * eta ** i < epochs] + [epochs]
    rng = np.random.default_rng(0)
    alive, passes = list(range(n_configs)), 0
    for i, rung in enumerate(rungs):
        passes += len(alive) * (k - 1) * pool // k * k * rung
        if i < len(rungs) - 1:
            scores = rng.random(len(alive))
            alive = [alive[j] for j in np.argsort(-scores)[:max(1, len(alive) // eta)]]
    return passes


@pytest.mark.parametrize("space, epochs, min_epochs, eta", [("oat", 10, 3, 4), ("oat", 10, 1, 2), ("grid", 10, 3, 3),
                                                          ("oat", 5, 5, 2), ("oat", 2, None, 4), ("grid", 27, 1, 3)])
def test_sweep_passes_bound_what_the_rung_schedule_can_train(space, epochs, min_epochs, eta):
    sizes = estimate.profile_sizes(profiles.PROFILES["full"])
    sizes["sweep"].update(space=space, epochs=epochs, min_epochs=min_epochs, reduction_factor=eta)
    n = estimate.count_configs(space, None, sizes["sweep"]["factors"])
    passes = estimate.image_passes(sizes)["sweep"]["cnn_train"] - 60_000 * sizes["sweep"]["final_epochs"]
    if min_epochs is None or min_epochs >= epochs:  # no rung before the last: every configuration trains every epoch
        assert passes == n * epochs * 5 * 48_000
    else:
        assert passes == reference_halving_passes(n, epochs, min_epochs, eta, 5, 60_000)


def test_quick_improve_passes_count_the_profile_rows_seeds_and_tta():
    # The 04 sizes quick holds (it leaves 04 out within its 15 minutes; a larger budget starts from them).
    quick = dataclasses.replace(profiles.PROFILES["quick"], skip=())
    prof = quick.improve
    passes = estimate.image_passes(estimate.profile_sizes(quick))["improve"]
    assert not estimate.image_passes(estimate.profile_sizes(profiles.PROFILES["quick"]))["improve"]  # skipped: nothing
    n_val = round(prof.val_fraction * prof.subset)
    rows = improve.select_rows(prof.rows)
    assert passes["cnn_train"] == len(rows) * prof.seeds * (prof.subset - n_val) * prof.epochs
    reads = sum(2 if r.config().tta_flip else 1 for r in rows)
    assert passes["cnn_eval"] == reads * prof.seeds * (n_val + (prof.test_subset or estimate.TEST_IMAGES))
    assert "resnet_train" not in passes


def test_estimate_is_passes_times_pace():
    result = estimate.estimate("smoke", MS, "cpu")
    for name, counts in result["passes"].items():
        assert result["notebooks"][name] == pytest.approx(estimate.NOTEBOOK_OVERHEAD_S + 1e-3 * sum(counts.values()))
    assert result["total_seconds"] == pytest.approx(sum(result["notebooks"].values()))
    faster = estimate.estimate("smoke", MS, "cpu", sweep_speedup=4.0, notebooks=("sweep",))
    assert list(faster["notebooks"]) == ["sweep"]
    saved = 0.75 * result["passes"]["sweep"]["cnn_train"] * 1e-3
    assert faster["notebooks"]["sweep"] == pytest.approx(result["notebooks"]["sweep"] - saved)
    with pytest.raises(ValueError, match="lacks"):
        estimate.estimate("smoke", {"cnn_train": 1e-3}, "cpu")


def test_measure_times_real_steps_on_this_device():
    seconds = estimate.measure_seconds_per_image(("cnn_eval", "cnn_train"), "cpu", "fp32", steps=1)
    assert set(seconds) == {"cnn_eval", "cnn_train"}
    assert 0 < seconds["cnn_eval"] < seconds["cnn_train"] < 1.0  # a training pass costs more than inference


def test_check_budget_measures_only_the_full_profile_off_cuda(monkeypatch):
    monkeypatch.setattr(estimate, "measure_seconds_per_image", lambda *a, **k: pytest.fail("measured"))
    assert estimate.check_budget("quick", "cpu") is None
    assert estimate.check_budget("smoke", "cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert estimate.check_budget("full", torch.device("cuda")) is None


def test_full_profile_is_refused_on_cpu_with_the_estimate_and_the_way_out(monkeypatch):
    monkeypatch.delenv(estimate.IGNORE_ENV, raising=False)
    monkeypatch.setattr(estimate, "measure_seconds_per_image", lambda kinds, dev: {k: MS[k] for k in kinds})
    with pytest.raises(estimate.TooSlow) as caught:
        estimate.check_budget("full", "cpu", log=lambda m: None)
    message = str(caught.value)
    hours = caught.value.estimate["total_seconds"] / 3600
    assert hours > estimate.LIMIT_HOURS and f"{hours:.1f} h" in message
    assert "--ignore-estimate" in message and f"{estimate.IGNORE_ENV}=1" in message
    assert estimate.check_budget("full", "cpu", ignore=True, log=lambda m: None)["profile"] == "full"
    monkeypatch.setenv(estimate.IGNORE_ENV, "1")
    assert estimate.check_budget("full", "cpu", log=lambda m: None)["total_seconds"] > 3600


def test_report_command_refuses_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(estimate.IGNORE_ENV, raising=False)
    monkeypatch.setattr(estimate, "measure_seconds_per_image", lambda kinds, dev: {k: MS[k] for k in kinds})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pipeline, "run_notebooks", lambda *a, **k: pytest.fail("a notebook ran"))
    previous = tmp_path / "report" / "report.html"
    previous.parent.mkdir()
    previous.write_text("the last report")
    parser = argparse.ArgumentParser()
    pipeline.add_arguments(parser)
    argv = ["--profile", "full", "--run-dir", str(tmp_path / "run"), "--report-dir", str(previous.parent)]
    assert cli_main(["report", *argv]) == pipeline.EXIT_TOO_SLOW
    err = capsys.readouterr().err
    assert "full profile would take" in err and "--ignore-estimate" in err
    assert previous.read_text() == "the last report"  # nothing was touched
    forced = parser.parse_args(["--profile", "full", "--run-dir", str(tmp_path / "run"), "--ignore-estimate"])
    monkeypatch.setattr(pipeline, "run_notebooks", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("would train now")))
    with pytest.raises(RuntimeError, match="would train now"):
        pipeline.build(forced.profile, forced.run_dir, tmp_path / "r2", ignore_estimate=forced.ignore_estimate, log=lambda m: None)
