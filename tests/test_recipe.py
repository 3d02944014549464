"""Options beyond the study: augmentation, schedules, EMA, flip-TTA, capture and the ensemble."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fmnist_utils import augment, ensemble
from fmnist_utils.train import (
    PRESETS, SCHEDULES, TrainConfig, build_model, build_optimizer, capture, evaluate, fit, predict_logits, preset,
)

X = torch.rand(16, 1, 28, 28)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, g: augment.random_crop(x, 3, g),
        lambda x, g: augment.random_flip(x, g),
        lambda x, g: augment.random_erase(x, g, p=1.0),
        lambda x, g: augment.augment_batch(x, g, crop_pad=2, flip=True, erase=0.5),
    ],
    ids=["crop", "flip", "erase", "all"],
)
def test_augmentation_keeps_shape_dtype_range_and_is_seeded(fn):
    x = X.clone()
    a = fn(x, torch.Generator().manual_seed(1))
    b = fn(x, torch.Generator().manual_seed(1))
    c = fn(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(x, X)  # input untouched


def test_crop_is_a_shift_of_the_image():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 12] = 1.0
    out = augment.random_crop(x, 2, torch.Generator().manual_seed(0))
    (r, c), = torch.nonzero(out[0, 0]).tolist()
    assert abs(r - 10) <= 2 and abs(c - 12) <= 2 and out.sum() == 1


def test_flip_mirrors_exactly_the_chosen_images():
    out = augment.random_flip(X, torch.Generator().manual_seed(0))
    for i in range(len(X)):
        assert torch.equal(out[i], X[i]) or torch.equal(out[i], X[i].flip(2))


def test_erase_zeroes_one_rectangle():
    out = augment.random_erase(torch.ones(8, 1, 28, 28), torch.Generator().manual_seed(0), p=1.0)
    for img in out[:, 0]:
        rows, cols = torch.nonzero(img == 0, as_tuple=True)
        assert len(rows) > 0
        area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert area == len(rows)  # the zeros form a full rectangle


def test_flip_tta_is_the_mean_of_two_passes():
    model = build_model(TrainConfig()).eval()
    x = (torch.rand(20, 1, 28, 28) * 255).to(torch.uint8)
    tta = predict_logits(model, x, precision="fp32", tta_flip=True).softmax(1)
    plain = predict_logits(model, x, precision="fp32").softmax(1)
    mirrored = predict_logits(model, x.flip(3), precision="fp32").softmax(1)
    torch.testing.assert_close(tta, (plain + mirrored) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedules_run_and_end_where_they_should(schedule):
    config = TrainConfig(epochs=2, schedule=schedule, warmup_epochs=0.5 if schedule == "cosine" else 0.0)
    opt = build_optimizer(nn.Linear(2, 2), config)
    sched = SCHEDULES[schedule](opt, config, 10)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    if schedule == "constant":
        assert set(lrs) == {config.lr}
    else:
        assert max(lrs) == pytest.approx(config.lr, rel=0.05) and lrs[-1] < config.lr / 10
        assert lrs[0] < config.lr  # a warm-up


def test_no_decay_on_norms_and_biases():
    model = build_model(TrainConfig())
    opt = build_optimizer(model, TrainConfig(decay_norm_bias=False))
    decayed, free = opt.param_groups
    assert decayed["weight_decay"] == 1e-3 and free["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in free["params"])


def test_modern_preset_trains_with_every_option(fmnist, tmp_path):
    config = preset("modern", epochs=2, batch_size=64)
    assert PRESETS["study"] == {} and config.ema_decay > 0 and config.tta_flip
    x, y = fmnist.x_train[:192], fmnist.y_train[:192]
    model = build_model(config)
    history = fit(model, x, y, config, val=(fmnist.x_test[:100], fmnist.y_test[:100]), progress=False,
                  checkpoint=tmp_path / "c.pt")
    assert len(history) == 2 and all(math.isfinite(r["train_loss"]) for r in history)
    assert history[-1]["lr"] < history[0]["lr"] < config.lr  # one-cycle is annealing
    # The model ends with the averaged weights, which is what the last validation scored.
    again = evaluate(model, fmnist.x_test[:100], fmnist.y_test[:100], config.eval_batch_size, tta_flip=True)
    assert again["accuracy"] == pytest.approx(history[-1]["val_accuracy"])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        return self.head(self.conv(x).relu().flatten(1))


@pytest.mark.slow
def test_captured_step_matches_eager():
    torch.manual_seed(0)
    eager = Tiny()
    compiled, how = capture(Tiny(), torch.device("cpu"))
    compiled.load_state_dict(eager.state_dict()) if how == "eager" else compiled._orig_mod.load_state_dict(eager.state_dict())
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = []
    for m in (eager, compiled):
        try:
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
        except Exception as exc:  # a machine without a C++ compiler: capture must not be required
            pytest.skip(f"torch.compile cannot run here: {exc}")
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    grads = [eager.head.weight.grad, (compiled._orig_mod if how != "eager" else compiled).head.weight.grad]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_capture_falls_back_cleanly(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no backend")

    monkeypatch.setattr(torch, "compile", broken)
    model = Tiny()
    out, how = capture(model, torch.device("cpu"))
    assert out is model and how.startswith("eager") and "no backend" in how


def test_ensemble_weight_is_chosen_on_validation_only():
    rng = np.random.default_rng(0)
    y_val = rng.integers(0, 3, 200)
    onehot = np.eye(3)[y_val]
    good = 0.8 * onehot + 0.2 / 3  # model A is right on validation
    bad = np.full((200, 3), 1 / 3)
    bad[np.arange(200), (y_val + 1) % 3] += 0.3
    bad /= bad.sum(1, keepdims=True)  # model B is confidently wrong on validation
    choice = ensemble.choose_weight(good, bad, y_val)
    assert choice["weight"] > 0.5 and choice["val_accuracy"] == 1.0
    # Swapping the models on validation swaps the choice: nothing else informs it.
    assert ensemble.choose_weight(bad, good, y_val)["weight"] == pytest.approx(1 - choice["weight"])
    np.testing.assert_allclose(ensemble.combine(good, bad, 1.0), good)


def test_ensemble_rejects_logits():
    with pytest.raises(ValueError, match="softmax"):
        ensemble.combine(np.array([[2.0, -1.0]]), np.array([[0.5, 0.5]]), 0.5)
