"""Stacked training: fit_many gives each unit what fit gives it, with M units at once."""

import base64
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist_utils import data, evaluation, stacked, train, train_epoch
from fmnist_utils.train import TrainConfig, TrainingDiverged, fit_many

BASE = TrainConfig(batch_size=32, epochs=2, dropout=0.0, precision="fp32", device="cpu")
# The momentum settings SGD units of one stack share (each its own stacks).
MOMENTA = {
    "plain": dict(),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "heavy_ball": dict(momentum=0.5),
}


def units_of(momentum="nesterov"):
    """Three SGD units differing in everything a stack lets differ: lr, weight decay, seed."""
    base = BASE.replace(**MOMENTA[momentum])
    return [base.replace(lr=0.05, weight_decay=1e-3, seed=0), base.replace(lr=0.02, weight_decay=0.0, seed=1),
            base.replace(lr=0.1, weight_decay=5e-4, seed=2)]


CONFIGS = units_of()


@pytest.fixture(scope="module")
def pool(fmnist):
    """(x, y) of 600 stratified training images and disjoint per-unit train / validation indices."""
    idx = data.stratified_subset(fmnist.y_train, 600, seed=0)
    x, y = fmnist.x_train[idx], fmnist.y_train[idx]
    order = np.random.default_rng(0).permutation(600)
    # Units of one stack hold as many images (equal step counts): 80 = 2 x 32 + 16, a partial last batch.
    train_sets = [order[:80], order[80:160], order[160:240]]
    val_sets = [order[240:300], order[300:340], order[340:420]]
    return x, y, train_sets, val_sets


def separate(configs, x, y, train_sets, val_sets):
    histories, models = [], []
    for c, tr, va in zip(configs, train_sets, val_sets):
        model = train.build_model(c)
        val = None if va is None else (x[va], y[va])
        histories.append(train.fit(model, x[tr], y[tr], c, val=val, progress=False))
        models.append(model)
    return histories, models


def assert_same_histories(got, want, accuracy_atol=0.0, rtol=1e-4):
    for unit, (g, w) in enumerate(zip(got, want)):
        assert len(g) == len(w), f"unit {unit}: {len(g)} epochs, fit has {len(w)}"
        for row_g, row_w in zip(g, w):
            assert list(row_g) == list(row_w), f"unit {unit}: keys {list(row_g)} vs fit's {list(row_w)}"
            for key in row_w:
                if key == "val_correct":  # per-image correctness: as many images may differ as the accuracy may
                    n = len(base64.b64decode(row_w[key])) * 8  # whole bytes: the padding bits are zero in both
                    bits_g, bits_w = (train.val_correctness([{"epoch": 1, key: r[key]}], n)[0] for r in (row_g, row_w))
                    assert np.mean(bits_g != bits_w) <= accuracy_atol, f"unit {unit} {key}"
                elif key != "seconds":
                    atol = accuracy_atol if key.endswith("accuracy") else 0.0
                    np.testing.assert_allclose(row_g[key], row_w[key], rtol=rtol, atol=atol, err_msg=f"unit {unit} {key}")


def assert_same_models(got, want, weights=True):
    for unit, (g, w) in enumerate(zip(got, want)):
        gs, ws = g.state_dict(), w.state_dict()
        assert list(gs) == list(ws)
        for name, tensor in ws.items():
            if not tensor.is_floating_point():  # BatchNorm step counts
                assert torch.equal(gs[name], tensor), f"unit {unit} {name}"
            elif weights:
                assert gs[name].dtype == tensor.dtype and gs[name].device == tensor.device
                torch.testing.assert_close(gs[name], tensor, rtol=1e-4, atol=1e-8, msg=f"unit {unit} {name}")


@pytest.fixture()
def float64(monkeypatch):
    """Run fit and fit_many in float64 arithmetic: the same code, where rounding flips nothing."""
    build = train.build_model
    monkeypatch.setattr(train, "build_model", lambda c: build(c).double())
    monkeypatch.setattr(evaluation, "scale", lambda images: images.double().div_(255.0))  # the one _inputs


def small(pool, batch=16, epochs=1, configs=CONFIGS):
    """Half-size units at batch 16 (kept small for speed): 40 = 2 x 16 + 8 images each, validated
    on 30, 20 and 40 images."""
    x, y, train_sets, val_sets = pool
    sets = [s[:40] for s in train_sets]
    vals = [v[:n] for v, n in zip(val_sets, (30, 20, 40))]
    return x, y, sets, vals, [c.replace(batch_size=batch, epochs=epochs) for c in configs]


def test_stack_equals_separate_fit_runs_fp32(pool):
    # The path that runs: fp32, channels_last. Per-epoch losses agree to rtol 1e-4; an accuracy
    # may differ by one image, whose nearly tied logits (the networks are barely trained) fall
    # the other way under float rounding. Final weights are compared in float64 below: in fp32,
    # two equally exact implementations of fit (with and without channels_last) already end up
    # 1e-3 apart in relative norm after a few steps, because rounding flips a few ReLU and
    # max-pool decisions.
    x, y, sets, vals, configs = small(pool, epochs=2)  # two epochs: reshuffled, momentum carried over
    want_h, want_m = separate(configs, x, y, sets, vals)
    got_h, got_m = fit_many(configs, x, y, sets, vals, stack_size=3, return_models=True, progress=False)
    assert_same_histories(got_h, want_h, accuracy_atol=1 / 20 + 1e-9)
    assert_same_models(got_m, want_m, weights=False)
    assert all(not m.training for m in got_m)  # evaluated last, as fit leaves them
    # The three units really learned different things: the comparison is not trivially true.
    assert len({round(h[-1]["train_loss"], 4) for h in got_h}) == 3


@pytest.mark.parametrize("momentum", list(MOMENTA))
def test_stack_equals_separate_fit_runs_float64(pool, float64, monkeypatch, momentum):
    # Histories, final weights and BatchNorm running statistics agree elementwise to rtol 1e-4,
    # with per-unit lr and weight decay folded into torch's SGD, for each momentum setting.
    x, y, sets, vals, configs = small(pool, configs=units_of(momentum))
    want_h, want_m = separate(configs, x, y, sets, vals)
    got_h, got_m = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=3, return_models=True)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)


def stacked_only(monkeypatch, configs, *args, **kwargs):
    """Return fit_many(configs, *args, **kwargs), failing if any unit went through fit rather
    than a stack (fit is replaced by a function that fails while fit_many runs)."""
    stacks = []
    real = train._train_units

    def counted(models, configs, *a, unit_ids=None, **k):
        stacks.append(list(unit_ids))
        return real(models, configs, *a, unit_ids=unit_ids, **k)

    def no_fit(*a, **k):
        raise AssertionError("fit_many trained a unit with fit instead of a stack")

    with monkeypatch.context() as patch:
        patch.setattr(train, "_train_units", counted)
        patch.setattr(train, "fit", no_fit)
        out = fit_many(configs, *args, progress=False, **kwargs)
    assert stacks == [list(range(len(configs)))], f"stacks {stacks}"
    return out


def tiny(pool, configs, vals=(16, 12)):
    """Units of 20 = 8 + 8 + 4 images each at batch 8 (a partial batch), over two epochs, so that a
    schedule, a moving average and the augmentation draws carry over."""
    x, y, train_sets, val_sets = pool
    sets = [s[:20] for s in train_sets[:len(configs)]]
    val = [v[:n] for v, n in zip(val_sets, vals)]
    return x, y, sets, val, [c.replace(batch_size=8, epochs=2) for c in configs]


# Each option of the modern recipe on its own (ema_decay 0.3: the warm-up's (1 + n) / (10 + n)
# passes 0.3 at the third update, so both the warm-up and the decay cap are used).
MODERN_OPTIONS = {
    "onecycle": dict(schedule="onecycle"),
    "cosine": dict(schedule="cosine", warmup_epochs=0.5),
    "label_smoothing": dict(label_smoothing=0.1),
    "decay_norm_bias": dict(decay_norm_bias=False),
    "crop": dict(aug_crop_pad=2),
    "flip": dict(aug_flip=True),
    "erase": dict(aug_erase=0.5),
    "ema": dict(ema_decay=0.3),
    "tta_flip": dict(tta_flip=True),
}


def test_modern_recipe_stacks():
    assert stacked.stack_unsupported(train.preset("modern")) is None
    assert "compile" in stacked.stack_unsupported(train.preset("modern", compile=True))
    assert "fp16" in stacked.stack_unsupported(train.preset("modern", precision="fp16"))
    # An adaptive optimizer stacks too, but only units sharing lr and weight decay (they cannot
    # be folded into its gradient); SGD units may differ in both.
    adamw = train.preset("modern", optimizer="adamw", nesterov=False)
    assert stacked.stack_unsupported(adamw) is None and "lr" not in stacked.per_unit_fields(adamw)
    assert stacked.stack_key(adamw, 100) != stacked.stack_key(adamw.replace(lr=0.2), 100)
    assert stacked.stack_key(adamw, 100) == stacked.stack_key(adamw.replace(seed=3, dropout=0.1), 100)
    sgd = train.preset("modern")
    assert stacked.stack_key(sgd, 100) == stacked.stack_key(sgd.replace(lr=0.2, weight_decay=0.0, seed=3), 100)
    assert stacked.stack_key(sgd, 100) != stacked.stack_key(sgd, 101)  # equal step counts only


@pytest.mark.parametrize("option", list(MODERN_OPTIONS))
def test_stack_with_modern_option_equals_separate_fit_runs_float64(pool, float64, monkeypatch, option):
    # Units differing in lr, weight decay and seed; histories (with the lr fit reports after each
    # epoch), final weights (the averages with EMA) and BatchNorm statistics agree elementwise to rtol 1e-4.
    x, y, sets, vals, configs = tiny(pool, [c.replace(**MODERN_OPTIONS[option]) for c in CONFIGS[:2]])
    want_h, want_m = separate(configs, x, y, sets, vals)
    got_h, got_m = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=2, return_models=True)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)
    assert [m.training for m in got_m] == [m.training for m in want_m]  # with EMA fit validates the average
    if option in ("onecycle", "cosine"):  # one schedule, each unit at its own lr (folded into its gradient)
        fractions = [h[0]["lr"] / c.lr for h, c in zip(got_h, configs)]
        assert fractions[0] == pytest.approx(fractions[1]) and got_h[0][0]["lr"] != pytest.approx(got_h[1][0]["lr"])
        assert got_h[0][0]["lr"] != pytest.approx(got_h[0][1]["lr"])  # the schedule moved between epochs


def test_stack_evaluates_as_evaluate_with_tta_flip(pool, float64):
    # Barely trained networks give nearly uniform logits, on which flip TTA moves the loss by less
    # than the histories' tolerance; heads scaled up give large, unit-specific logits.
    x, y, _, val_sets = pool
    configs = [BASE.replace(seed=s, tta_flip=True) for s in (0, 1)]
    # fit_many validates unit i with evaluate on its own model holding the stack's unit i
    # (StackedModule.unit_state): the stack's state must round-trip, and vmap's forward must be
    # each unit's own.
    models = [train.build_model(c).eval() for c in configs]
    with torch.no_grad():
        for scale_up, model in zip((500.0, 800.0), models):
            model.head.weight.mul_(scale_up)
    stack = stacked.StackedModule(models).eval()
    vals = [torch.as_tensor(v[:n]) for v, n in zip(val_sets, (50, 30))]
    with torch.no_grad():
        both = stack(torch.stack([x[v[:30]].double().div(255) for v in vals]))  # (2, 30, 10)
        for unit, (model, v) in enumerate(zip(models, vals)):
            torch.testing.assert_close(both[unit], model(x[v[:30]].double().div(255)), rtol=1e-9, atol=1e-9)
    for unit, (model, v, c) in enumerate(zip(models, vals, configs)):
        shell = train.build_model(c)
        shell.load_state_dict(stack.unit_state(unit))
        g = train.evaluate(shell, x[v], y[v], batch_size=32, precision="fp32", tta_flip=True)  # several batches
        want = train.evaluate(model, x[v], y[v], precision="fp32", tta_flip=True)
        plain = train.evaluate(model, x[v], y[v], precision="fp32")
        assert g["loss"] == pytest.approx(want["loss"], rel=1e-9) and g["accuracy"] == want["accuracy"], unit
        # The mirror moves the loss (by about 0.1% on these images) far beyond the 1e-9 above.
        assert plain["loss"] != pytest.approx(want["loss"], rel=1e-4)


def modern_units():
    """Three units of the modern recipe differing in seed, lr and (through tiny's sets) size."""
    base = train.preset("modern", precision="fp32", device="cpu")
    return [base.replace(seed=0), base.replace(seed=1, lr=0.05), base.replace(seed=2, lr=0.2)]


def test_stack_of_modern_recipe_equals_separate_fit_runs_float64(pool, float64, monkeypatch):
    x, y, sets, vals, configs = tiny(pool, modern_units()[:2])
    want_h, want_m = separate(configs, x, y, sets, vals)
    got_h, got_m = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=2, return_models=True)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)


def weight_gap(a, b):
    """Return the largest relative norm ||a - b|| / ||b|| over two models' floating tensors."""
    return max(((p.double() - q.double()).norm() / (q.double().norm() + 1e-30)).item()
               for p, q in zip(a.state_dict().values(), b.state_dict().values()) if p.is_floating_point())


def test_stack_of_modern_recipe_equals_separate_fit_runs_fp32(pool, monkeypatch):
    # All the options at once, fp32. fit trains in channels_last; the stack's vmapped kernels
    # compute as fit does on contiguous tensors. Both layouts are exact but round differently, and
    # after two epochs of one-cycle at lr 0.2 that alone moves fit's own loss by 5e-4 and its
    # weights by 1e-1 (relative norm). So: in one layout the stack is fit at the strict
    # tolerance, and as it runs it is no farther from fit than fit is from itself in the other.
    x, y, sets, vals, configs = tiny(pool, modern_units(), vals=(16, 12, 20))
    as_runs_h, as_runs_m = separate(configs, x, y, sets, vals)
    stack_h, stack_m = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=3, return_models=True)
    with monkeypatch.context() as patch:
        patch.setattr(train_epoch, "prepare_model", lambda model, dev: model.to(dev))  # both contiguous
        want_h, want_m = separate(configs, x, y, sets, vals)
        got_h, got_m = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=3, return_models=True)
    assert_same_histories(got_h, want_h)  # rtol 1e-4, every accuracy to the image
    for unit in range(3):
        assert weight_gap(got_m[unit], want_m[unit]) < 1e-5, unit  # the folded lr_i (g + wd p) rounds apart
        layout = weight_gap(want_m[unit], as_runs_m[unit])
        assert weight_gap(stack_m[unit], as_runs_m[unit]) <= 1.1 * layout, unit
        for row_s, row_w, row_r in zip(stack_h[unit], want_h[unit], as_runs_h[unit]):
            for key in ("train_loss", "val_loss"):
                layout = abs(row_w[key] - row_r[key])
                assert abs(row_s[key] - row_r[key]) <= 1.1 * layout + 1e-6 * abs(row_r[key]), (unit, key)
    assert len({round(h[-1]["train_loss"], 4) for h in got_h}) == 3


def test_stack_with_dropout_draws_fits_masks_on_cpu(pool, float64):
    # On a CPU each unit's dropout generator reproduces the masks fit draws, so with dropout too
    # the stack gives fit's weights; without val (no val keys, models left in training mode).
    x, y, sets, _, configs = small(pool)
    configs = [configs[0].replace(dropout=0.5), configs[1].replace(dropout=0.2)]
    sets = [sets[0][:24], sets[1][:24]]  # 16 + 8: a partial batch
    want_h, want_m = separate(configs, x, y, sets, [None, None])
    got_h, got_m = fit_many(configs, x, y, sets, stack_size=2, return_models=True, progress=False)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)
    assert all(m.training for m in got_m)


def test_dropout_masks_drop_p_independently_per_unit():
    p, batch, features = (0.1, 0.5, 0.7, 0.0), 256, 2048
    gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2, 3)]
    untouched = gens[3].get_state()
    masks = stacked.dropout_masks(gens, p, (batch, features), torch.float32, torch.device("cpu"))
    assert masks.shape == (4, batch, features)
    dropped = masks == 0
    for m, pm in enumerate(p[:3]):
        assert abs(dropped[m].float().mean().item() - pm) < 0.01
        assert torch.allclose(masks[m][~dropped[m]], torch.tensor(1 / (1 - pm)))
    # p = 0 keeps every feature and draws nothing, as F.dropout (the unit's next masks stay fit's).
    assert (masks[3] == 1).all() and torch.equal(gens[3].get_state(), untouched)
    both = (dropped[0] & dropped[1]).float().mean().item()
    assert abs(both - p[0] * p[1]) < 0.01  # independent: P(both dropped) = p0 * p1
    assert stacked.dropout_masks(gens, (0.0,) * 4, (batch, features), torch.float32, "cpu") is None


@pytest.fixture(scope="module")
def diverging(pool):
    """Configs of a stack whose unit 1 diverges (lr 1e30), and what unit 0 gives alone."""
    x, y, train_sets, val_sets = pool
    configs = [BASE.replace(epochs=1, seed=5), BASE.replace(epochs=1, lr=1e30, seed=6)]
    sets = [train_sets[2], train_sets[2]]
    vals = [val_sets[0], val_sets[0]]
    alone, _ = separate(configs[:1], x, y, sets[:1], vals[:1])
    return configs, sets, vals, alone[0]


def test_on_diverged_raise_names_the_unit(pool, diverging):
    x, y, *_ = pool
    configs, sets, vals, _ = diverging
    with pytest.raises(TrainingDiverged, match="unit 1, epoch 1") as caught:
        fit_many(configs, x, y, sets, vals, stack_size=2, progress=False)
    assert caught.value.unit == 1 and caught.value.step >= 1 and not math.isfinite(caught.value.loss)
    assert "lr=1e+30" in str(caught.value)


def test_on_diverged_record_stops_only_that_unit(pool, diverging):
    x, y, *_ = pool
    configs, sets, vals, alone = diverging
    histories, models = fit_many(configs, x, y, sets, vals, stack_size=2, on_diverged="record",
                                 return_models=True, progress=False)
    last = histories[1][-1]
    assert set(last) == {"epoch", "step", "diverged"} and "diverged" in last["diverged"] and last["epoch"] == 1
    assert models[1] is None
    assert_same_histories(histories[:1], [alone], accuracy_atol=1 / 60 + 1e-9)  # the healthy unit never noticed


def test_a_unit_alone_records_divergence_as_a_stack_does(pool, diverging):
    # A stack of one is the same engine: the diverged unit's history ends with the same row
    # (named by its index in configs), the healthy unit is fit's, and "raise" names the unit.
    x, y, *_ = pool
    configs, sets, vals, alone = diverging
    stacked_h = fit_many(configs, x, y, sets, vals, stack_size=2, on_diverged="record", progress=False)
    histories, models = fit_many(configs, x, y, sets, vals, stack_size=1, on_diverged="record",
                                 return_models=True, progress=False)
    assert histories[1] == stacked_h[1] and "unit 1, epoch 1" in histories[1][-1]["diverged"]
    assert models[1] is None and models[0] is not None
    assert_same_histories(histories[:1], [alone])
    with pytest.raises(TrainingDiverged, match="unit 1"):
        fit_many(configs, x, y, sets, vals, stack_size=1, progress=False)


def routed(monkeypatch, configs, sets, **kwargs):
    """Return the units (indices into configs) of each stack fit_many trains, training none."""
    stacks = []

    def record(models, configs, *a, unit_ids=None, **k):
        stacks.append(list(unit_ids))
        return [[{"unit": u}] for u in unit_ids], [None] * len(unit_ids)

    monkeypatch.setattr(train, "_train_units", record)
    x = torch.zeros(100, 1, 28, 28, dtype=torch.uint8)
    histories = fit_many(configs, x, torch.zeros(100, dtype=torch.int64), sets, **kwargs)
    assert [h[0]["unit"] for h in histories] == list(range(len(configs)))
    return sorted(stacks)


def test_routing_stacks_what_it_can_and_trains_the_rest_alone(monkeypatch):
    configs = [BASE.replace(seed=s, lr=0.01 * (s + 1), dropout=0.1 * s) for s in range(5)]
    configs[2] = configs[2].replace(compile=True)  # not stackable: a stack of its own
    configs[4] = configs[4].replace(label_smoothing=0.1)  # stackable, but not with the others
    sets = [np.arange(40)] * 5
    # Units 0, 1, 3 share a stack key: stacks of at most 2 are [0, 1] and [3]; 2 and 4 train alone.
    assert routed(monkeypatch, configs, sets, stack_size=2) == [[0, 1], [2], [3], [4]]
    assert routed(monkeypatch, configs, sets, stack_size=1) == [[0], [1], [2], [3], [4]]
    # Units of other sizes (step counts) or another momentum never stack together.
    assert routed(monkeypatch, configs[:2], [np.arange(40), np.arange(41)], stack_size=2) == [[0], [1]]
    other = [configs[0], configs[1].replace(momentum=0.9)]
    assert routed(monkeypatch, other, sets[:2], stack_size=2) == [[0], [1]]
    adam = [c.replace(optimizer="adam") for c in configs[:2]]  # an adaptive optimizer: lr must match
    assert routed(monkeypatch, adam, sets[:2], stack_size=2) == [[0], [1]]
    assert routed(monkeypatch, [adam[0], adam[0].replace(seed=9)], sets[:2], stack_size=2) == [[0, 1]]


def test_fp16_units_never_stack(monkeypatch):
    # A stack shares one loss scale, so one unit's overflow would skip another's step: fp16 units
    # train alone, each with its own torch.amp.GradScaler, whatever the stack size or plan.
    configs = [BASE.replace(seed=s, precision="fp16") for s in range(3)]
    assert routed(monkeypatch, configs, [np.arange(40)] * 3, stack_size=3) == [[0], [1], [2]]
    assert stacked.plan_stacks(configs, [40] * 3, 3, "fp16") == [[0], [1], [2]]
    auto = [c.replace(precision="auto") for c in configs]  # auto resolved to fp16 (a GPU without bf16)
    assert stacked.plan_stacks(auto, [40] * 3, 3, "fp16") == [[0], [1], [2]]
    assert stacked.plan_stacks(auto, [40] * 3, 3, "bf16") == [[0, 1, 2]]
    monkeypatch.setattr(stacked.devices, "resolve_device", lambda d: torch.device("cuda"))
    monkeypatch.setattr(stacked.devices, "resolve_precision", lambda p, d: "fp16")
    plan = stacked.plan_stack_size(configs[0], "cuda", total_bytes=1 << 40)
    assert plan.size == 1 and "fp16" in plan.reason


def test_configs_must_share_the_named_fields(pool):
    x, y, train_sets, _ = pool
    with pytest.raises(ValueError, match="share 'batch_size'"):
        fit_many([BASE, BASE.replace(batch_size=64)], x, y, train_sets[:2])
    with pytest.raises(ValueError, match="as many train_indices"):
        fit_many([BASE, BASE], x, y, train_sets[:1])
    with pytest.raises(ValueError, match=r"train_indices\[1\] holds indices outside"):
        fit_many([BASE, BASE], x, y, [train_sets[0], np.array([0, 10_000])])
    with pytest.raises(ValueError, match="on_diverged"):
        fit_many([BASE], x, y, train_sets[:1], on_diverged="ignore")


def bench_sweep():
    """Return benchmarks/bench_sweep.py as a module (the stack timings live with the benchmarks)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sweep.py"
    spec = importlib.util.spec_from_file_location("bench_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choose_stack_size():
    # Stacking wins only when clearly faster per unit, and never beyond what memory allows.
    choose = bench_sweep().choose_stack_size
    assert choose({1: 1.0, 2: 1.2}, max_by_memory=64) == 1
    assert choose({1: 1.0, 2: 0.97}, max_by_memory=64) == 1  # within noise
    assert choose({1: 1.0, 2: 0.6, 4: 0.3, 8: 0.29}, max_by_memory=64) == 4
    assert choose({1: 1.0, 2: 0.6, 4: 0.3}, max_by_memory=3) == 2
    assert choose({1: 1.0, 2: 0.6}, max_by_memory=0) == 1


def test_plan_stack_size_is_a_decision_not_a_timing(monkeypatch):
    # The plan rests on the device and the config alone: nothing is trained or timed, so the
    # machine's load cannot change it (and with it the bf16 rounding of the results).
    config = BASE.replace(batch_size=8)
    monkeypatch.setattr(train, "_train_units", lambda *a, **k: pytest.fail("a plan must not time steps"))
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("a plan must not time steps"))
    plan = stacked.plan_stack_size(config, "cpu")
    assert plan.size == 1 and "CPU" in plan.reason and plan.to_dict()["precision"] == "fp32"
    assert stacked.plan_stack_size(config, "cpu") == plan  # the same answer every time
    per_unit = stacked._estimated_bytes_per_unit(config)
    assert plan.bytes_per_unit == per_unit
    assert stacked.plan_stack_size(config, "cpu", total_bytes=per_unit).max_by_memory == 1
    unsupported = stacked.plan_stack_size(config.replace(model="resnet18", dropout=0.0), "cpu")
    assert unsupported.size == 1 and "model" in unsupported.reason


def test_plan_stack_size_on_cuda_is_bounded_by_total_memory(monkeypatch):
    config = BASE.replace(batch_size=128, precision="fp32")
    per_unit = stacked._estimated_bytes_per_unit(config)
    monkeypatch.setattr(stacked.devices, "resolve_device", lambda d: torch.device("cuda"))
    monkeypatch.setattr(stacked.devices, "resolve_precision", lambda p, d: "fp32")
    fits_ten = int(10 * per_unit / stacked.MEMORY_FRACTION) + 1
    plan = stacked.plan_stack_size(config, "cuda", total_bytes=fits_ten)
    assert plan.size == plan.max_by_memory == 10 and "stack of 10" in plan.reason
    assert stacked.plan_stack_size(config, "cuda", total_bytes=fits_ten, max_size=4).size == 4
    assert stacked.plan_stack_size(config, "cuda", total_bytes=per_unit // 2).size == 1


def test_time_stack_sizes_times_real_steps():
    # The benchmarks' measurement: real steps at sizes 1 and 2 (doubling stops at max_size).
    bench = bench_sweep()
    timings = bench.time_stack_sizes(BASE.replace(batch_size=8), "cpu", steps=1, max_size=2)
    assert set(timings) <= {1, 2} and 1 in timings and all(t > 0 for t in timings.values())
    assert bench.choose_stack_size(timings, max_by_memory=2) in timings


@pytest.mark.parametrize("stack_size", [2, 1])
def test_on_epoch_true_stops_only_that_unit(pool, float64, stack_size):
    # on_epoch(i, row) sees each unit's rows; True stops unit i after that epoch (its history and
    # model are fit's stopped there), the other unit trains on to fit's full run. stack_size 1: the
    # units go through fit, with the same calls.
    x, y, sets, vals, configs = small(pool, epochs=2)
    configs = configs[:2]
    calls = []

    def stop_unit_0(unit, row):
        calls.append((unit, row["epoch"]))
        return unit == 0

    got_h, got_m = fit_many(configs, x, y, sets[:2], vals[:2], stack_size=stack_size, return_models=True,
                            progress=False, on_epoch=stop_unit_0)
    assert sorted(calls) == [(0, 1), (1, 1), (1, 2)]
    want_h, want_m = [], []
    for c, tr, va, stop in zip(configs, sets, vals, (True, False)):
        model = train.build_model(c)
        want_h.append(train.fit(model, x[tr], y[tr], c, val=(x[va], y[va]), progress=False,
                                on_epoch=lambda row, stop=stop: stop))
        want_m.append(model)
    assert [len(h) for h in got_h] == [1, 2]
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)
