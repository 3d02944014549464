"""Precision by capability: what "auto" resolves to on each kind of GPU and CPU, and why."""

import pytest
import torch

from fmnist_utils import data, device, provenance
from fmnist_utils.train import TrainConfig, fit


@pytest.mark.parametrize(
    "capability, expected",
    [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")],
)
def test_cuda_auto_precision_follows_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: capability)
    # torch answers True on a T4 through emulation: the choice must not depend on it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = torch.device("cuda")
    assert device.resolve_precision("auto", cuda) == expected
    reason = device.precision_reason(cuda)
    assert reason.startswith(expected) and f"{capability[0]}.{capability[1]}" in reason
    assert device.needs_grad_scaler(expected) == (expected == "fp16")


@pytest.mark.parametrize("flag, expected", [("1", "bf16"), ("0", "fp32")])
def test_cpu_auto_precision_and_its_reason(monkeypatch, flag, expected):
    monkeypatch.setenv("FMNIST_CPU_BF16", flag)
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) == expected
    assert device.precision_reason(cpu).startswith(expected)
    assert "FMNIST_CPU_BF16" in device.precision_reason(cpu)


def test_explicit_precision_is_kept_and_unknown_is_refused():
    cpu = torch.device("cpu")
    for p in ("fp32", "bf16", "fp16"):
        assert device.resolve_precision(p, cpu) == p
    with pytest.raises(ValueError, match="precision must be one of"):
        device.resolve_precision("fp8", cpu)


def test_environment_records_the_reason():
    env = provenance.environment("cpu")
    assert env["precision_reason"].startswith(env["precision_auto"])


def test_fp16_training_uses_loss_scaling(fmnist, monkeypatch):
    # fp16 convolutions on a CPU are very slow, so a linear model stands in for the CNN: what is
    # tested is that fit scales the loss through a GradScaler and still learns.
    created = []
    real = torch.amp.GradScaler

    def spy(*args, **kwargs):
        created.append(real(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", spy)
    idx = data.stratified_subset(fmnist.y_train, 512, seed=0)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.1, precision="fp16", device="cpu", seed=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    history = fit(model, fmnist.x_train[idx], fmnist.y_train[idx], config, progress=False)
    assert len(created) == 1 and created[0].get_scale() > 0
    assert history[1]["train_loss"] < history[0]["train_loss"]
    fit(model, fmnist.x_train[idx], fmnist.y_train[idx], config.replace(precision="fp32", epochs=1), progress=False)
    assert len(created) == 1  # no scaler outside fp16
