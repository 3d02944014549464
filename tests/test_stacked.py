"""Stacked training: fit_many gives each unit what fit gives it, with M units at once."""

import base64
import math

import numpy as np
import pytest
import torch

from fmnist_utils import data, stacked, train
from fmnist_utils.train import TrainConfig, TrainingDiverged, fit_many

BASE = TrainConfig(batch_size=32, epochs=2, dropout=0.0, precision="fp32", device="cpu")
# Units differing in everything a stack lets differ: lr, weight decay, momentum, Nesterov, seed.
CONFIGS = [
    BASE.replace(lr=0.05, weight_decay=1e-3, seed=0),  # plain SGD
    BASE.replace(lr=0.02, weight_decay=0.0, momentum=0.9, nesterov=True, seed=1),  # Nesterov
    BASE.replace(lr=0.1, weight_decay=5e-4, momentum=0.5, seed=2),  # heavy ball
]


@pytest.fixture(scope="module")
def pool(fmnist):
    """(x, y) of 600 stratified training images and disjoint per-unit train / validation indices."""
    idx = data.stratified_subset(fmnist.y_train, 600, seed=0)
    x, y = fmnist.x_train[idx], fmnist.y_train[idx]
    order = np.random.default_rng(0).permutation(600)
    # Unit sizes 80 = 2 x 32 + 16 (a partial last batch), 40 = 32 + 8 (one step fewer: it sits
    # out the stack's last step) and 64 = 2 x 32 (no partial batch).
    train_sets = [order[:80], order[80:120], order[120:184]]
    val_sets = [order[200:260], order[260:300], order[300:380]]
    return x, y, train_sets, val_sets


def separate(configs, x, y, train_sets, val_sets):
    histories, models = [], []
    for c, tr, va in zip(configs, train_sets, val_sets):
        model = train.build_model(c)
        val = None if va is None else (x[va], y[va])
        histories.append(train.fit(model, x[tr], y[tr], c, val=val, progress=False))
        models.append(model)
    return histories, models


def assert_same_histories(got, want, accuracy_atol=0.0):
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
                    np.testing.assert_allclose(row_g[key], row_w[key], rtol=1e-4, atol=atol, err_msg=f"unit {unit} {key}")


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
    for module in (train, stacked):
        monkeypatch.setattr(module, "scale", lambda images: images.double().div_(255.0))


def small(pool, batch=16, epochs=1):
    """Half-size units at batch 16 with the same step structure (kept small for speed):
    40 = 2 x 16 + 8, 20 = 16 + 4 (sits out the last step), 32 = 2 x 16."""
    x, y, train_sets, val_sets = pool
    sets = [s[:n] for s, n in zip(train_sets, (40, 20, 32))]
    vals = [v[:n] for v, n in zip(val_sets, (30, 20, 40))]
    return x, y, sets, vals, [c.replace(batch_size=batch, epochs=epochs) for c in CONFIGS]


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


def test_stack_equals_separate_fit_runs_float64(pool, float64):
    # Histories, final weights and BatchNorm running statistics agree elementwise to rtol 1e-4.
    x, y, sets, vals, configs = small(pool)
    want_h, want_m = separate(configs, x, y, sets, vals)
    got_h, got_m = fit_many(configs, x, y, sets, vals, stack_size=3, return_models=True, progress=False)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)


def stacked_only(monkeypatch, configs, *args, **kwargs):
    """Return fit_many(configs, *args, **kwargs), failing if any unit went through fit rather
    than a stack (fit is replaced by a function that fails while fit_many runs)."""
    stacks = []
    real = stacked._train_stack

    def counted(configs, units, *a):
        stacks.append(list(units))
        return real(configs, units, *a)

    def no_fit(*a, **k):
        raise AssertionError("fit_many trained a unit with fit instead of a stack")

    with monkeypatch.context() as patch:
        patch.setattr(stacked, "_train_stack", counted)
        patch.setattr(train, "fit", no_fit)
        out = fit_many(configs, *args, progress=False, **kwargs)
    assert stacks == [list(range(len(configs)))], f"stacks {stacks}"
    return out


def tiny(pool, configs, sizes=(20, 12), vals=(16, 12)):
    """Units of 20 = 8 + 8 + 4 and 12 = 8 + 4 images at batch 8 (three steps per epoch against two:
    schedules of different lengths, a partial batch, a unit that sits out the last step), over
    two epochs, so that a schedule, a moving average and the augmentation draws carry over."""
    x, y, train_sets, val_sets = pool
    sets = [s[:n] for s, n in zip(train_sets, sizes)]
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
    assert "optimizer" in stacked.stack_unsupported(train.preset("modern", optimizer="adamw", nesterov=False))


@pytest.mark.parametrize("option", list(MODERN_OPTIONS))
def test_stack_with_modern_option_equals_separate_fit_runs_float64(pool, float64, monkeypatch, option):
    # Units differing in lr, weight decay, momentum, Nesterov, seed and size; histories (with
    # the lr fit reports after each epoch), final weights (the averages with EMA) and BatchNorm
    # statistics agree elementwise to rtol 1e-4.
    x, y, sets, vals, configs = tiny(pool, [c.replace(**MODERN_OPTIONS[option]) for c in CONFIGS[:2]])
    want_h, want_m = separate(configs, x, y, sets, vals)
    got_h, got_m = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=2, return_models=True)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)
    assert [m.training for m in got_m] == [m.training for m in want_m]  # with EMA fit validates the average
    if option in ("onecycle", "cosine"):  # 6 steps against 4: after epoch 1 at different points
        fractions = [h[0]["lr"] / c.lr for h, c in zip(got_h, configs)]
        assert fractions[0] != pytest.approx(fractions[1])


def test_stack_evaluates_as_evaluate_with_tta_flip(pool, float64):
    # Barely trained networks give nearly uniform logits, on which flip TTA moves the loss by less
    # than the histories' tolerance; heads scaled up give large, unit-specific logits.
    x, y, _, val_sets = pool
    configs = [BASE.replace(seed=s, tta_flip=True) for s in (0, 1)]
    models = [train.build_model(c) for c in configs]
    with torch.no_grad():
        for scale_up, model in zip((500.0, 800.0), models):
            model.head.weight.mul_(scale_up)
    stack = stacked._Stack(configs, [m.state_dict() for m in models], models[0], torch.device("cpu"), "fp32")
    vals = [torch.as_tensor(v[:n]) for v, n in zip(val_sets, (50, 30))]
    got = stack.evaluate(x, y, vals, batch_size=64)  # several chunks of 32 images per unit
    for unit, (model, v, g) in enumerate(zip(models, vals, got)):
        want = train.evaluate(model, x[v], y[v], precision="fp32", tta_flip=True)
        plain = train.evaluate(model, x[v], y[v], precision="fp32")
        assert g["loss"] == pytest.approx(want["loss"], rel=1e-9) and g["accuracy"] == want["accuracy"], unit
        # The mirror moves the loss (by about 0.4% at initialisation) far beyond the 1e-9 above.
        assert plain["loss"] != pytest.approx(want["loss"], rel=1e-3)


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


def test_stack_of_modern_recipe_equals_separate_fit_runs_fp32(pool, monkeypatch):
    # All the options at once, fp32 as it runs; an accuracy may differ by one image (see the fp32
    # test above).
    x, y, sets, vals, configs = tiny(pool, modern_units(), sizes=(20, 12, 16), vals=(16, 12, 20))
    want_h, _ = separate(configs, x, y, sets, vals)
    got_h = stacked_only(monkeypatch, configs, x, y, sets, vals, stack_size=3)
    assert_same_histories(got_h, want_h, accuracy_atol=1 / 12 + 1e-9)
    assert len({round(h[-1]["train_loss"], 4) for h in got_h}) == 3


def test_stack_with_dropout_draws_fits_masks_on_cpu(pool, float64):
    # On a CPU each unit's dropout generator reproduces the masks fit draws, so with dropout too
    # the stack gives fit's weights; without val (no val keys, models left in training mode).
    x, y, sets, _, configs = small(pool)
    configs = [configs[0].replace(dropout=0.5), configs[1].replace(dropout=0.2)]
    sets = [sets[0][:24], sets[1][:16]]  # 16 + 8 and 16: a partial batch, and a unit that sits out
    want_h, want_m = separate(configs, x, y, sets, [None, None])
    got_h, got_m = fit_many(configs, x, y, sets, stack_size=2, return_models=True, progress=False)
    assert_same_histories(got_h, want_h)
    assert_same_models(got_m, want_m)
    assert all(m.training for m in got_m)


def test_dropout_masks_drop_p_independently_per_unit():
    p, rows, batch, features = (0.1, 0.5, 0.7), (256, 256, 100), 256, 2048
    gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
    masks = stacked.dropout_masks(gens, p, rows, batch, features, torch.float32, torch.device("cpu"))
    assert masks.shape == (3, batch, features)
    dropped = masks == 0
    for m, (pm, n) in enumerate(zip(p, rows)):
        assert abs(dropped[m, :n].float().mean().item() - pm) < 0.01
        assert torch.allclose(masks[m, :n][~dropped[m, :n]], torch.tensor(1 / (1 - pm)))
        assert (masks[m, n:] == 1).all()  # padding rows are left alone
    both = (dropped[0, :100] & dropped[1, :100]).float().mean().item()
    assert abs(both - p[0] * p[1]) < 0.01  # independent: P(both dropped) = p0 * p1
    assert stacked.dropout_masks(gens, (0.0, 0.0, 0.0), rows, batch, features, torch.float32, "cpu") is None


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


def test_units_through_fit_record_divergence(pool, monkeypatch):
    x, y, train_sets, _ = pool

    def fake_fit(model, x, y, config, val=None, progress=None):
        if config.seed == 1:
            raise TrainingDiverged(2, 7, float("nan"), hint="lower it")
        return [{"epoch": 1, "train_loss": 0.0}]

    monkeypatch.setattr(train, "fit", fake_fit)
    configs = [BASE.replace(seed=0), BASE.replace(seed=1)]
    histories = fit_many(configs, x, y, train_sets[:2], stack_size=1, on_diverged="record")
    assert histories[0] == [{"epoch": 1, "train_loss": 0.0}]
    assert histories[1][0]["step"] == 7 and "unit 1, epoch 2" in histories[1][0]["diverged"]
    with pytest.raises(TrainingDiverged, match="unit 1"):
        fit_many(configs, x, y, train_sets[:2], stack_size=1)


def test_routing_stacks_what_it_can_and_fits_the_rest(pool, monkeypatch):
    x, y, train_sets, _ = pool
    stacks, fitted = [], []
    monkeypatch.setattr(stacked, "_train_stack", lambda configs, units, *a: (
        stacks.append(list(units)) or ([[{"unit": u}] for u in units], [None] * len(units))))
    monkeypatch.setattr(train, "fit", lambda model, x, y, config, **k: fitted.append(config.seed) or [{"seed": config.seed}])
    configs = [BASE.replace(seed=s, lr=0.01 * (s + 1)) for s in range(5)]
    configs[2] = configs[2].replace(compile=True)  # not stackable: trained by fit
    configs[4] = configs[4].replace(label_smoothing=0.1)  # stackable, but not with the others
    sets = [train_sets[0]] * 5
    histories = fit_many(configs, x, y, sets, stack_size=2)
    # Units 0, 1, 3 share a stack key: stacks of at most 2 are [0, 1] and [3], and a stack of
    # one is plain fit, as are unit 2 (compile) and unit 4 (alone with its smoothing).
    assert stacks == [[0, 1]]
    assert sorted(fitted) == [2, 3, 4]
    assert [h[0].get("unit", h[0].get("seed")) for h in histories] == [0, 1, 2, 3, 4]
    stacks.clear(), fitted.clear()
    fit_many(configs, x, y, sets, stack_size=1)
    assert stacks == [] and sorted(fitted) == [0, 1, 2, 3, 4]


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


def test_choose_stack_size():
    # Stacking wins only when clearly faster per unit, and never beyond what memory allows.
    assert stacked.choose_stack_size({1: 1.0, 2: 1.2}, max_by_memory=64) == 1
    assert stacked.choose_stack_size({1: 1.0, 2: 0.97}, max_by_memory=64) == 1  # within noise
    assert stacked.choose_stack_size({1: 1.0, 2: 0.6, 4: 0.3, 8: 0.29}, max_by_memory=64) == 4
    assert stacked.choose_stack_size({1: 1.0, 2: 0.6, 4: 0.3}, max_by_memory=3) == 2
    assert stacked.choose_stack_size({1: 1.0, 2: 0.6}, max_by_memory=0) == 1


def test_plan_stack_size_is_a_decision_not_a_timing(monkeypatch):
    # The plan rests on the device and the config alone: nothing is timed, so the machine's load
    # cannot change it (and with it the bf16 rounding of the results).
    config = BASE.replace(batch_size=8)
    monkeypatch.setattr(stacked, "_time_single", lambda *a, **k: pytest.fail("a plan must not time steps"))
    monkeypatch.setattr(stacked, "_time_stack", lambda *a, **k: pytest.fail("a plan must not time steps"))
    plan = stacked.plan_stack_size(config, "cpu")
    assert plan.size == 1 and "CPU" in plan.reason and plan.to_dict()["precision"] == "fp32"
    assert stacked.plan_stack_size(config, "cpu") == plan  # the same answer every time
    per_unit = stacked._estimated_bytes_per_unit(config)
    assert plan.bytes_per_unit == per_unit
    assert stacked.plan_stack_size(config, "cpu", total_bytes=per_unit).max_by_memory == 1
    unsupported = stacked.plan_stack_size(config.replace(optimizer="adam"), "cpu")
    assert unsupported.size == 1 and "optimizer" in unsupported.reason


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
    timings = stacked.time_stack_sizes(BASE.replace(batch_size=8), "cpu", steps=1, max_size=2)
    assert set(timings) <= {1, 2} and 1 in timings and all(t > 0 for t in timings.values())
    assert stacked.choose_stack_size(timings, max_by_memory=2) in timings


def test_unit_loss_scaling_follows_grad_scaler_per_unit(monkeypatch):
    # fp16: each unit's scale evolves as its own torch.amp.GradScaler's would; an overflow in one
    # unit backs off only that unit's scale (and skips only its step).
    monkeypatch.setattr(stacked, "_SCALE_INTERVAL", 3)  # reach a growth within a few steps
    overflow = {0: {1}, 1: {0, 2, 3}}  # steps at which each unit's gradient is inf
    mine = stacked._UnitScaler(2, torch.device("cpu"))
    theirs = [torch.amp.GradScaler("cpu", growth_interval=3) for _ in range(2)]
    params = [torch.zeros(3, requires_grad=True) for _ in range(2)]
    optimizers = [torch.optim.SGD([p], lr=0.0) for p in params]
    stacked_param = torch.zeros(2, 3, requires_grad=True)
    for step in range(8):
        grads = torch.tensor([[float("inf") if step in overflow[u] else 0.5] * 3 for u in range(2)])
        stacked_param.grad = grads * mine.scale.view(2, 1)
        found = mine.unscale({"w": stacked_param})
        mine.update(found, torch.tensor([True, True]))
        for u in range(2):
            theirs[u].scale(torch.ones(()))  # initialises the scale, as a backward pass would
            params[u].grad = grads[u] * theirs[u].get_scale()
            theirs[u].step(optimizers[u])
            theirs[u].update()
            assert bool(found[u]) == (step in overflow[u])
            assert mine.scale[u].item() == theirs[u].get_scale(), f"step {step} unit {u}"
            if step not in overflow[u]:
                torch.testing.assert_close(stacked_param.grad[u], params[u].grad)
    frozen = mine.scale.clone()
    mine.update(torch.tensor([True, True]), torch.tensor([False, True]))
    assert mine.scale[0] == frozen[0] and mine.scale[1] == frozen[1] / 2  # an inactive unit keeps its scale


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
