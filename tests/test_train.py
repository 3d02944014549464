"""The trainer: config validation, learning, determinism, resumption."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fmnist_utils import data, device
from fmnist_utils.train import (TrainConfig, build_model, evaluate, fit, l1_penalty, load_checkpoint, predict_logits,
                                 val_correctness)


@pytest.fixture(scope="module")
def small(fmnist):
    """(x, y) of a 2,000-image stratified training subset and (x, y) of 1,000 test images."""
    tr = data.stratified_subset(fmnist.y_train, 2_000, seed=0)
    te = data.stratified_subset(fmnist.y_test, 1_000, seed=0)
    return (fmnist.x_train[tr], fmnist.y_train[tr]), (fmnist.x_test[te], fmnist.y_test[te])


@pytest.mark.parametrize(
    "field, value",
    [("lr", 0.0), ("lr", -0.1), ("batch_size", 0), ("epochs", 0), ("dropout", 1.0), ("dropout", -0.1),
     ("optimizer", "lbfgs"), ("precision", "fp8"), ("weight_decay", -1.0), ("model", "vgg"),
     ("kernel_size", 2), ("nesterov", True)],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
        TrainConfig(**{field: value})


def test_study_defaults():
    c = TrainConfig()
    assert (c.lr, c.batch_size, c.dropout, c.epochs, c.weight_decay, c.optimizer) == (0.05, 128, 0.5, 10, 1e-3, "sgd")


def test_one_epoch_learns(small):
    (x, y), (xt, yt) = small
    # Batch 32 with momentum gives enough steps in one epoch of 2,000 images to learn visibly;
    # the study's recipe needs more data per epoch.
    config = TrainConfig(epochs=1, batch_size=32, lr=0.02, momentum=0.9, seed=0)
    model = build_model(config)
    before = evaluate(model, x, y)
    history = fit(model, x, y, config, val=(xt, yt), progress=False)
    after = evaluate(model, x, y)
    assert after["loss"] < before["loss"] - 0.3
    assert history[0]["val_accuracy"] > 0.4  # chance is 0.1
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_correct",
                               "seconds", "lr"}
    # One bool per validation image per epoch, for the paired overfitting test; it matches the accuracy.
    right = val_correctness(history, len(yt))
    assert right.shape == (1, len(yt)) and right.dtype == bool
    assert right.mean() == pytest.approx(history[0]["val_accuracy"])
    np.testing.assert_array_equal(right[0], evaluate(model, xt, yt, per_image=True)["correct"])
    with pytest.raises(ValueError, match="val_correct"):
        val_correctness([{"epoch": 1, "val_accuracy": 0.5}], len(yt))


def test_same_seed_same_history(small):
    (x, y), _ = small
    config = TrainConfig(epochs=2, batch_size=100, seed=5)
    runs = []
    for _ in range(2):
        model = build_model(config)
        history = fit(model, x[:400], y[:400], config, progress=False)
        runs.append(([{k: v for k, v in row.items() if k != "seconds"} for row in history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for name, tensor in runs[0][1].items():
        torch.testing.assert_close(tensor, runs[1][1][name], rtol=0, atol=0, msg=name)
    other = build_model(config.replace(seed=6))
    assert fit(other, x[:400], y[:400], config.replace(seed=6), progress=False)[0]["train_loss"] != runs[0][0][0]["train_loss"]


def test_checkpoint_resumes_exactly(small, tmp_path):
    (x, y), _ = small
    x, y = x[:300], y[:300]
    config = TrainConfig(epochs=2, batch_size=100, seed=1)
    straight = fit(build_model(config), x, y, config, progress=False)

    ckpt = tmp_path / "run" / "ckpt.pt"
    first = fit(build_model(config), x, y, config.replace(epochs=1), progress=False, checkpoint=ckpt)
    resumed_model = build_model(config)
    resumed = fit(resumed_model, x, y, config, progress=False, checkpoint=ckpt)
    assert len(first) == 1 and len(resumed) == 2
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed) == strip(straight)

    model, loaded_config, history = load_checkpoint(ckpt)
    assert loaded_config == config and strip(history) == strip(straight)
    torch.testing.assert_close(model.state_dict()["head.weight"], resumed_model.state_dict()["head.weight"].cpu())

    with pytest.raises(ValueError, match="another config"):
        fit(build_model(config), x, y, config.replace(lr=0.1), progress=False, checkpoint=ckpt)


def test_evaluate_matches_a_plain_forward(small):
    _, (xt, yt) = small
    model = build_model(TrainConfig()).eval()
    metrics = evaluate(model, xt[:300], yt[:300], batch_size=64, precision="fp32")
    with torch.no_grad():
        logits = model(xt[:300].float() / 255)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == yt[:300]).float().mean().item())
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, yt[:300]).item(), rel=1e-4)


def test_predict_logits_is_batch_size_independent(small):
    _, (xt, _) = small
    model = build_model(TrainConfig())
    a = predict_logits(model, xt[:130], batch_size=17, precision="fp32")
    b = predict_logits(model, xt[:130], batch_size=1000, precision="fp32")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("optimizer, reference", [
    ("sgd", lambda params: torch.optim.SGD(params, lr=0.05, weight_decay=0.1)),
    ("adam", lambda params: torch.optim.Adam(params, lr=0.05, weight_decay=0.1)),
    ("adamw", lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)),
    ("rmsprop", lambda params: torch.optim.RMSprop(params, lr=0.05, weight_decay=0.1)),
])
def test_every_optimizer_takes_its_own_step(small, optimizer, reference):
    # One epoch of one full batch is one step: fit's weights must be exactly torch's optimizer's
    # step on the same gradient. The reference repeats fit's arithmetic: the batch in fit's
    # seeded order (torch.randperm from a generator seeded with config.seed), channels_last, fp32,
    # no dropout; otherwise float noise in near-zero gradients becomes a full step under Adam's
    # lr * sign(grad). A large weight decay tells Adam's coupled decay from AdamW's decoupled one.
    (x, y), _ = small
    x, y = x[:64], y[:64]
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, optimizer=optimizer, dropout=0.0, precision="fp32",
                         weight_decay=0.1)
    model = build_model(config)
    history = fit(model, x, y, config, progress=False)
    expected = build_model(config).to(memory_format=torch.channels_last)
    start = {k: v.detach().clone() for k, v in expected.named_parameters()}
    opt = reference(expected.parameters())
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
    F.cross_entropy(expected((x[order].float() / 255).contiguous(memory_format=torch.channels_last)), y[order]).backward()
    opt.step()
    got = dict(model.named_parameters())
    assert history[0]["train_loss"] > 0
    for name, value in expected.named_parameters():
        assert not torch.equal(start[name], value.detach())  # the step moved every parameter
        torch.testing.assert_close(got[name].detach().cpu(), value.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_l1_penalty_counts_weights_not_biases():
    model = build_model(TrainConfig())
    manual = sum(p.abs().sum() for n, p in model.named_parameters() if n.endswith("weight") and p.ndim > 1)
    torch.testing.assert_close(l1_penalty(model), manual)


def test_l1_shrinks_weights(small):
    (x, y), _ = small
    norms = []
    for l1 in (0.0, 1e-3):
        config = TrainConfig(epochs=1, batch_size=64, l1=l1)
        model = build_model(config)
        fit(model, x[:256], y[:256], config, progress=False)
        norms.append(l1_penalty(model).item())
    assert norms[1] < norms[0]


def test_bad_training_input():
    config = TrainConfig(epochs=1)
    model = build_model(config)
    with pytest.raises(ValueError, match="uint8"):
        fit(model, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), config)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        fit(model, torch.zeros(4, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), config)


def test_precision_detection(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("FMNIST_CPU_BF16", "0")
    assert device.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setenv("FMNIST_CPU_BF16", "1")
    assert device.resolve_precision("auto", cpu) == "bf16"
    assert device.resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        device.resolve_precision("int8", cpu)


def test_on_epoch_sees_each_row_and_true_stops_training(small, tmp_path):
    # on_epoch gets each finished row after the checkpoint is written; True ends the history there,
    # and the checkpoint continues it to what an uninterrupted run gives.
    (x, y), _ = small
    x, y = x[:300], y[:300]
    config = TrainConfig(epochs=3, batch_size=100, seed=2)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    straight = fit(build_model(config), x, y, config, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    seen = []

    def stop_after_two(row):
        assert ckpt.is_file() and len(load_checkpoint(ckpt)[2]) == row["epoch"]  # written before the call
        seen.append(row)
        return row["epoch"] == 2

    stopped = fit(build_model(config), x, y, config, progress=False, checkpoint=ckpt, on_epoch=stop_after_two)
    assert [r["epoch"] for r in seen] == [1, 2] and stopped == seen  # the very rows, and nothing after
    assert strip(stopped) == strip(straight[:2])
    continued = fit(build_model(config), x, y, config, progress=False, checkpoint=ckpt, on_epoch=lambda row: None)
    assert strip(continued) == strip(straight)
