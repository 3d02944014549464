"""What one training run is: :class:`TrainConfig`, the named recipes (:data:`PRESETS`), the
optimizers and learning-rate schedules a config names, and the model and optimizer it builds.
:mod:`fmnist_utils.train` trains it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import device as devices
from .models import MODELS

MAX_KERNEL_SIZE = 27  # the largest odd kernel that fits inside a 28x28 image


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run. Defaults are the study's recipe (90.8% test accuracy).

    lr: learning rate (> 0). batch_size: images per step. epochs: passes over the data.
    dropout: drop probability in the dense layers, [0, 1). weight_decay: L2 coefficient.
    l1: L1 coefficient on weights (0 = off). optimizer: one of :data:`OPTIMIZERS`.
    momentum / nesterov: SGD and RMSprop momentum. kernel_size: conv kernel (odd).
    model: a key of :data:`fmnist_utils.models.MODELS`.
    seed: initialisation, shuffling and dropout. precision: auto | fp32 | bf16 | fp16.
    device: auto | cpu | cuda | cuda:N | mps. eval_batch_size: images per evaluation step.

    Beyond the study (all off by default; :data:`PRESETS` turns them on together):
    schedule: constant | onecycle | cosine (per step; cosine warms up for ``warmup_epochs``).
    label_smoothing: cross-entropy smoothing in [0, 1). decay_norm_bias: False exempts biases
    and norm weights from weight decay. aug_crop_pad: random-crop shift in pixels (0 = off).
    aug_flip: random horizontal flips. aug_erase: probability of random erasing.
    ema_decay: exponential moving average of the weights (0 = off; the final model is the
    average). tta_flip: evaluation averages the image and its mirror. compile: capture the
    model with ``torch.compile`` (CUDA graphs on a GPU); a backend that cannot compile raises at
    the first step (compilation is lazy), so leave it off where Inductor does not work.
    """

    model: str = "seedcnn"
    lr: float = 0.05
    batch_size: int = 128
    epochs: int = 10
    dropout: float = 0.5
    weight_decay: float = 1e-3
    l1: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    kernel_size: int = 3
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    eval_batch_size: int = 2048
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    decay_norm_bias: bool = True
    aug_crop_pad: int = 0
    aug_flip: bool = False
    aug_erase: float = 0.0
    ema_decay: float = 0.0
    tta_flip: bool = False
    compile: bool = False

    def __post_init__(self):
        def bad(field: str, why: str):
            raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r}: {why}")

        # Every float setting first: a NaN passes every "<" test below (all comparisons are
        # False), and an inf weight decay trains to NaN without a word.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("float", float) and (
                isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            ):
                bad(field.name, "must be a finite number")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            bad("lr", "the learning rate must be a finite number > 0")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad("batch_size", "must be an integer >= 1")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad("epochs", "must be an integer >= 1")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.l1 < 0:
            bad("l1", "must be >= 0")
        if self.model not in MODELS:
            bad("model", f"unknown model; choose one of {sorted(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"unknown optimizer; choose one of {sorted(OPTIMIZERS)}")
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", "must be in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            bad("nesterov", "Nesterov needs optimizer='sgd' and momentum > 0")
        if not isinstance(self.kernel_size, int) or self.kernel_size < 1 or self.kernel_size % 2 == 0:
            bad("kernel_size", "must be a positive odd integer")
        if self.kernel_size > MAX_KERNEL_SIZE:  # before any allocation: 1001 would ask for ~98 GB
            bad("kernel_size", f"must be at most {MAX_KERNEL_SIZE}: a kernel wider than the 28x28 image sees only padding")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**63:
            bad("seed", "must be an integer between 0 and 2**63 - 1 (torch and numpy take no negative seeds)")
        if str(self.device) != "auto":
            try:
                devices.parse_device(self.device)
            except ValueError as exc:
                bad("device", str(exc))
        if self.precision not in devices.PRECISIONS:
            bad("precision", f"must be one of {devices.PRECISIONS}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            bad("eval_batch_size", "must be an integer >= 1")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"unknown schedule; choose one of {sorted(SCHEDULES)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            bad("warmup_epochs", "must be between 0 and epochs")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", "must be in [0, 1)")
        if not isinstance(self.aug_crop_pad, int) or not 0 <= self.aug_crop_pad <= 8:
            bad("aug_crop_pad", "must be an integer between 0 and 8 pixels")
        if not 0.0 <= self.aug_erase <= 1.0:
            bad("aug_erase", "is a probability and must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            bad("ema_decay", "must be in [0, 1) (0 = off)")

    def replace(self, **changes) -> "TrainConfig":
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (for JSON results)."""
        return dataclasses.asdict(self)


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay
    ),
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "rmsprop": lambda params, c: torch.optim.RMSprop(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay
    ),
}


def _cosine_with_warmup(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# Learning-rate schedules by name: (optimizer, config, steps per epoch) -> per-step scheduler.
SCHEDULES: dict[str, Callable[..., torch.optim.lr_scheduler.LRScheduler]] = {
    "constant": lambda opt, c, steps: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0),
    # The schedule changes the learning rate only: OneCycleLR's default momentum cycling would
    # overwrite the config's momentum (0.95 -> 0.85 even where momentum=0), mixing two options.
    "onecycle": lambda opt, c, steps: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=c.lr, total_steps=c.epochs * steps, cycle_momentum=False
    ),
    "cosine": lambda opt, c, steps: torch.optim.lr_scheduler.LambdaLR(
        opt, _cosine_with_warmup(c.epochs * steps, round(c.warmup_epochs * steps))
    ),
}

# Named recipes. "study" reproduces the original; "modern" is the recipe of issue 6
# (Nesterov SGD, one-cycle, label smoothing, no decay on norms/biases, crop+flip+erase, EMA, TTA).
PRESETS: dict[str, dict] = {
    "study": {},
    "modern": dict(
        lr=0.1, batch_size=256, epochs=30, dropout=0.3, weight_decay=5e-4, momentum=0.9, nesterov=True,
        schedule="onecycle", label_smoothing=0.1, decay_norm_bias=False, aug_crop_pad=2, aug_flip=True,
        aug_erase=0.25, ema_decay=0.999, tta_flip=True,
    ),
    # The ResNet-18 with a 28x28 stem that 03_resnet_compare trains on Fashion-MNIST.
    "resnet": dict(
        model="resnet18", dropout=0.0, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle",
    ),
}


def preset(name: str, **overrides) -> "TrainConfig":
    """Return the TrainConfig of the named recipe in :data:`PRESETS`, with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


def build_model(config: TrainConfig) -> nn.Module:
    """Return a freshly initialised ``config.model`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    return MODELS[config.model](dropout=config.dropout, kernel_size=config.kernel_size)


def build_optimizer(model: nn.Module, config: TrainConfig, lead: int = 0) -> torch.optim.Optimizer:
    """Return the optimizer ``config.optimizer`` over the model's parameters.

    With ``decay_norm_bias=False``, biases and normalisation weights (1-D parameters) get no
    weight decay: decaying them only fights the normalisation and is a common modern default.
    ``lead``: leading dimensions that are not the parameter's own (1 for a stack's (M, ...) tensors).
    """
    if config.decay_norm_bias:
        return OPTIMIZERS[config.optimizer](model.parameters(), config)
    decay = [p for p in model.parameters() if p.ndim - lead > 1]
    no_decay = [p for p in model.parameters() if p.ndim - lead <= 1]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[config.optimizer](groups, config)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Return the sum of |w| over weight matrices and kernels (biases and norms excluded)."""
    return sum(p.abs().sum() for name, p in model.named_parameters() if p.ndim > 1)


def ema_multi_avg_fn(decay: float) -> Callable:
    """Return an ``AveragedModel`` update: an exponential moving average of the weights whose decay
    after ``n`` updates is ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's ExponentialMovingAverage
    with ``num_updates``).

    Without the warm-up a short run's average stays near its random initialisation: after 60
    steps at decay 0.999 the initial weights still carry 0.94 of it. Integer buffers (BatchNorm's
    batch count) take the model's value.
    """

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # A 0-d tensor on the device: no host synchronisation per step.
        keep = torch.clamp((1 + num_averaged) / (10 + num_averaged), max=decay)
        for e, p in zip(ema_params, params):
            if e.is_floating_point():
                e.lerp_(p, (1 - keep).to(e.dtype))
            else:
                e.copy_(p)

    return update
