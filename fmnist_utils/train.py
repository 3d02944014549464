"""Train and evaluate a classifier on tensors that live on the device.

The split is one uint8 tensor on the device; an epoch is a seeded permutation sliced into
batches, scaled to [0, 1] on the device, in channels_last and (where the hardware runs it fast)
bf16 autocast. No DataLoader, no per-sample Python. The loop follows torchvision's reference
split: :func:`train_one_epoch` and :func:`evaluate` return metric dicts, :func:`fit` returns the
history, and progress display is a layer on top.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import errno
import numbers
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from .augment import augment_batch
from .data import iterate_batches, scale
from .models import MODELS
from .progress import bar as progress_bar


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss: where it happened and what usually causes it.

    ``epoch`` and ``step`` are 1-based; ``unit`` is the index of the stacked unit (``fit_many``)
    or None for a single run; ``loss`` is the offending value (nan or inf).
    """

    def __init__(self, epoch: int, step: int, loss: float, unit: int | None = None, hint: str = ""):
        self.epoch, self.step, self.loss, self.unit, self.hint = epoch, step, loss, unit, hint
        where = f"unit {unit}, " if unit is not None else ""
        message = f"training diverged ({where}epoch {epoch}, step {step}): loss is {loss}"
        super().__init__(message + (f"; {hint}" if hint else ""))


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


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Return the optimizer ``config.optimizer`` over the model's parameters.

    With ``decay_norm_bias=False``, biases and normalisation weights (1-D parameters) get no
    weight decay: decaying them only fights the normalisation and is a common modern default.
    """
    if config.decay_norm_bias:
        return OPTIMIZERS[config.optimizer](model.parameters(), config)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
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


def check_split(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Raise ValueError unless x is uint8 images (N, 1, 28, 28) and y is (N,) labels, N >= 1."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} images and labels must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"{what} images must be (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 {what} images, values 0..255 (scaling happens on the device), got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what} labels must be (N,) with N={len(x)}, got {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{what} split is empty")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or was written for another config or other data."""


def divergence_hint(config: TrainConfig) -> str:
    """Return, in words, the likely cause of a non-finite loss under ``config`` and what to try."""
    study = TrainConfig()
    causes, remedies = [], []
    if config.lr > 10 * study.lr:
        causes.append(f"the learning rate lr={config.lr:g} is {config.lr / study.lr:,.0f}x the study's {study.lr:g}")
        remedies.append("lower lr (e.g. 10x at a time)")
    # With SGD or AdamW each step scales the weights by (1 - lr * weight_decay): at 1 or more
    # the decay overshoots zero and the weights oscillate with growing size.
    if config.lr * config.weight_decay >= 1:
        causes.append(f"the weight decay is too strong for this learning rate (lr * weight_decay = "
                      f"{config.lr * config.weight_decay:g}, must stay well below 1)")
        remedies.append("lower weight_decay")
    if config.l1 > 0 and config.lr * config.l1 >= 1e-2:
        causes.append(f"the L1 penalty l1={config.l1:g} is large for lr={config.lr:g}")
        remedies.append("lower l1")
    if not causes:
        causes.append(f"the learning rate lr={config.lr:g} (or weight_decay={config.weight_decay:g}) "
                      f"is too large for this model ({config.model}) and batch size ({config.batch_size})")
        remedies.append("lower lr (e.g. 10x), then weight_decay")
    return "likely cause: " + "; ".join(causes) + ". Try: " + ", ".join(remedies)


# Steps between two looks at the step losses for a NaN or inf, by device type. On the CPU every
# step: reading a scalar costs ~20 us there, against ~10 ms or more for a step (no queue to wait
# for). On an accelerator each look waits for the queued work (a host sync), so it looks every
# 32 steps and at the epoch's end; the per-step losses stay on the device, so the first bad step
# is still named exactly, and at most 31 wasted steps run after it.
DIVERGENCE_CHECK_STEPS = {"cpu": 1, "cuda": 32, "mps": 32}


def _check_finite(losses: torch.Tensor, first_step: int, epoch: int, config: TrainConfig) -> None:
    """Raise TrainingDiverged at the first non-finite value of ``losses`` (steps from ``first_step``, 0-based)."""
    finite = torch.isfinite(losses)
    if bool(finite.all()):
        return
    bad = int((~finite).nonzero()[0, 0])
    raise TrainingDiverged(epoch, first_step + bad + 1, float(losses[bad]), hint=divergence_hint(config))


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """Return the SHA-256 (hex) of a split: shapes, dtypes and contents of images ``x`` and labels ``y``.

    Stored in checkpoints so that a run is never continued on other data. About 30 ms for the
    60,000 training images (SHA-256 runs at ~2 GB/s with the CPU's SHA extensions).
    """
    digest = hashlib.sha256()
    for t in (x, y):
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(memoryview(t.numpy()).cast("B"))
    return digest.hexdigest()


def _prepare(model: nn.Module, dev: torch.device) -> nn.Module:
    # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels.
    return model.to(dev, memory_format=torch.channels_last)


def _inputs(x_uint8: torch.Tensor) -> torch.Tensor:
    return scale(x_uint8).contiguous(memory_format=torch.channels_last)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    precision: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    on_step: Callable[[int], None] | None = None,
    epoch: int = 1,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    """Run one epoch over on-device (x uint8 (N,1,28,28), y (N,)) and return
    ``{"train_loss", "train_accuracy"}`` (mean cross-entropy in nats on the augmented batches,
    without label smoothing; fraction correct).

    ``model`` may be a ``torch.compile``-d module; ``generator`` (CPU) drives shuffling and
    augmentation, so a seed fixes both. Raises :class:`TrainingDiverged` (naming ``epoch`` and
    the first bad step) at the first non-finite loss, noticed within
    :data:`DIVERGENCE_CHECK_STEPS` steps (every step on the CPU). ``scaler``
    (fp16) scales the loss and skips steps whose gradients overflowed.
    """
    dev = x.device
    model.train()
    steps = math.ceil(len(x) / config.batch_size)
    # Each step's mean loss stays on the device: no host sync per step, and the divergence check
    # can name the exact step. The last batch may be smaller, hence the weights.
    losses = torch.empty(steps, device=dev)
    weights = torch.full((steps,), float(config.batch_size), device=dev)
    weights[-1] = len(x) - config.batch_size * (steps - 1)
    check_every = DIVERGENCE_CHECK_STEPS.get(dev.type, 32)
    checked = 0
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    augmenting = config.aug_crop_pad or config.aug_flip or config.aug_erase > 0
    for step, idx in enumerate(iterate_batches(len(x), config.batch_size, generator, dev)):
        xb, yb = _inputs(x[idx]), y[idx]
        if augmenting:
            xb = augment_batch(xb, generator, config.aug_crop_pad, config.aug_flip, config.aug_erase)
        with devices.autocast(dev, precision):
            logits = model(xb)
        logits = logits.float()
        loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
        objective = loss + config.l1 * l1_penalty(model) if config.l1 > 0 else loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            objective.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        plain = F.cross_entropy(logits.detach(), yb) if config.label_smoothing else loss.detach()
        losses[step] = plain
        correct += (logits.detach().argmax(1) == yb).sum()
        if (step + 1) % check_every == 0 or step + 1 == steps:
            _check_finite(losses[checked : step + 1], checked, epoch, config)
            checked = step + 1
        if on_step is not None:
            on_step(step)
    return {"train_loss": (losses * weights).sum().item() / len(x), "train_accuracy": correct.item() / len(x)}


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = 2048, precision: str = "auto", tta_flip: bool = False
) -> torch.Tensor:
    """Return float32 logits (N, n_classes) on the CPU for uint8 images (N, 1, 28, 28).

    Runs on the model's device in large batches; ``x`` is moved there once. With
    ``tta_flip`` the result is log of the mean of the softmax over the image and its mirror, so
    ``softmax`` of it is exactly the average of the two passes' probabilities.
    """
    dev = next(model.parameters()).device
    precision = devices.resolve_precision(precision, dev)
    model.eval()
    x = x.to(dev)
    outs = []
    for idx in iterate_batches(len(x), batch_size, device=dev):
        xb = _inputs(x[idx])
        with devices.autocast(dev, precision):
            logits = model(xb).float()
            if tta_flip:
                logits = flip_averaged_logits(logits, model(xb.flip(3)).float())
        outs.append(logits.float())
    return torch.cat(outs).cpu()


def flip_averaged_logits(logits: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Return log of the mean of the softmaxes of ``logits`` and ``mirrored`` (..., n_classes),
    the passes over the images and their mirrors: its softmax is exactly the average of the two
    passes' probabilities (flip test-time augmentation)."""
    return torch.logsumexp(torch.stack([logits.log_softmax(-1), mirrored.log_softmax(-1)]), dim=0) - math.log(2)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    precision: str = "auto",
    tta_flip: bool = False,
    per_image: bool = False,
) -> dict:
    """Return ``{"accuracy", "loss"}`` of ``model`` on (x uint8 (N,1,28,28), y (N,)); with
    ``per_image`` also ``"correct"``: (N,) numpy bool, whether each image was classified right."""
    check_split(x, y, "evaluation")
    logits = predict_logits(model, x, batch_size, precision, tta_flip)
    y = y.cpu()
    right = logits.argmax(1) == y
    out = {"accuracy": right.float().mean().item(), "loss": F.cross_entropy(logits, y).item()}
    if per_image:
        out["correct"] = right.numpy()
    return out


def pack_correct(correct) -> str:
    """Return (N,) per-image correctness as text for a history row: base64 of the bits, one per
    image (N / 6 characters: 10,000 images take about 1.7 kB per epoch)."""
    bits = np.asarray(correct, dtype=bool)
    return base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def val_correctness(history: list[dict], n_val: int) -> np.ndarray:
    """Return (epochs, n_val) bool: whether each validation image was right after each epoch, from
    the ``val_correct`` entries :func:`fit` writes into its history (the paired overfitting test,
    :func:`fmnist_utils.stats.verdict_overfitting`, reads it). Raises ValueError when a row lacks it
    (a history from before it was recorded, or trained without validation images)."""
    missing = [row.get("epoch") for row in history if "val_correct" not in row]
    if missing:
        raise ValueError(f"history rows of epochs {missing} have no val_correct: train with fit(..., val=...) "
                         "to record per-image validation correctness (a history resumed from a checkpoint written "
                         "before it was recorded lacks it: delete that checkpoint and train again)")
    return np.stack([np.unpackbits(np.frombuffer(base64.b64decode(row["val_correct"]), dtype=np.uint8),
                                   count=n_val).astype(bool) for row in history]) if history else np.zeros((0, n_val), bool)


def capture(model: nn.Module, device: torch.device) -> tuple[nn.Module, str]:
    """Return (the model compiled for ``device``, how), or (``model``, reason) where ``torch.compile``
    itself is unavailable.

    On CUDA ``mode="reduce-overhead"`` records CUDA graphs, so a small network is no longer
    bound by kernel launches; batch shapes are static (the last partial batch compiles once more).
    Compiled code is cached on disk by Inductor, so a second run skips most compilation.
    ``torch.compile`` is lazy: a backend that fails (no compiler, an unsupported GPU) raises at the
    model's first call, not here, and is not caught: a silent fall-back would time the wrong loop.
    """
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    try:
        compiled = torch.compile(model, mode=mode, dynamic=False)
    except Exception as exc:  # torch.compile raises many types where a backend is unusable
        return model, f"eager (torch.compile unavailable: {exc})"
    return compiled, f"torch.compile(mode={mode!r})"


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool | None = None,
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[dict], bool | None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on (x uint8 (N,1,28,28), y int64 (N,)) and return its history.

    The history has one dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
    ``val_loss`` / ``val_accuracy`` / ``val_correct`` (when ``val`` is given; ``val_correct`` is
    each validation image's correctness, packed by :func:`pack_correct`, read back by
    :func:`val_correctness` for the paired overfitting test), ``seconds`` (wall time of the
    epoch's training and evaluation), ``lr`` (at the epoch's end). ``progress``: False for none,
    True or None for :mod:`fmnist_utils.progress`'s bar (a widget in JupyterLab, a text bar on a
    terminal, one line per epoch elsewhere). ``checkpoint``: a file written after every epoch; when it
    exists and was made with the same config (``epochs`` may be larger), training resumes after
    its last finished epoch. With ``ema_decay`` the model ends holding the averaged weights.
    With ``compile`` the first epoch's row also has ``compile_seconds`` (the first step, which
    includes compilation) and ``capture`` (how the step ran). ``on_epoch``: called as
    ``on_epoch(row)`` with each finished epoch's history row, after the row is appended and the
    checkpoint written; when it returns True training stops after that epoch (the history ends
    there, and the checkpoint lets a later call with the same config continue it).

    Raises :class:`TrainingDiverged` at the first non-finite loss (or non-finite weights at an
    epoch's end), naming the epoch, the step and the likely cause; the checkpoint keeps the last
    finished epoch. Raises :class:`CheckpointError` when ``checkpoint`` is damaged, or was
    written with another config or on other data (training or validation split).
    """
    check_split(x, y, "training")
    if val is not None:
        check_split(*val, "validation")
    # What the checkpoint was trained on: resuming it on other data would mix two experiments.
    trained_on = None
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)  # before the first epoch, not after it
        trained_on = {"train": data_fingerprint(x, y), "val": data_fingerprint(*val) if val is not None else None}
    dev = devices.resolve_device(config.device)
    if dev.type == "cuda":  # fixed shapes (one batch size of 28x28 images): cuDNN times its kernels once
        torch.backends.cudnn.benchmark = True
    precision = devices.resolve_precision(config.precision, dev)
    if precision == "fp16" and dev.type == "cpu":
        warnings.warn(FP16_ON_CPU, stacklevel=2)
    model = _prepare(model, dev)
    x, y = x.to(dev), y.to(dev)
    if val is not None:
        val = (val[0].to(dev), val[1].to(dev))
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    optimizer = build_optimizer(model, config)
    scheduler = SCHEDULES[config.schedule](optimizer, config, steps_per_epoch)
    ema = None
    if config.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    # fp16 needs loss scaling; a resumed run starts a fresh scale, which re-calibrates in a few steps.
    scaler = torch.amp.GradScaler(dev.type) if devices.needs_grad_scaler(precision) else None
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks
    history: list[dict] = []
    if checkpoint is not None and Path(checkpoint).is_file():
        history = _resume(Path(checkpoint), model, optimizer, scheduler, ema, generator, config, trained_on)
    step_model, how = capture(model, dev) if config.compile else (model, "eager")
    first_step: list[float] = []

    def on_step(step: int) -> None:
        bar.update()
        if config.compile and not first_step:
            first_step.append(time.perf_counter() - start)

    bar = progress_bar(steps_per_epoch * max(0, config.epochs - len(history)), unit="step", enabled=progress)
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            bar.set_description(f"epoch {epoch}/{config.epochs}", refresh=False)
            start = time.perf_counter()
            row = {"epoch": epoch}
            row.update(
                train_one_epoch(step_model, optimizer, x, y, config, generator, precision, scheduler, ema, on_step,
                                epoch=epoch, scaler=scaler)
            )
            _check_parameters(model, epoch, steps_per_epoch, config)
            if val is not None:
                scored = ema.module if ema is not None else model
                metrics = evaluate(scored, *val, config.eval_batch_size, precision, config.tta_flip, per_image=True)
                row.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"],
                           val_correct=pack_correct(metrics["correct"]))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            row["seconds"] = time.perf_counter() - start
            row["lr"] = optimizer.param_groups[0]["lr"]
            if config.compile and epoch == len(history) + 1 and first_step:
                row.update(compile_seconds=first_step[0], capture=how)
            history.append(row)
            # One refresh per epoch: the line `make report` prints (see fmnist_utils.progress).
            bar.set_postfix({
                "loss": f"{row['train_loss']:.3f}",
                "acc": f"{row['train_accuracy']:.3f}",
                **({"val_acc": f"{row['val_accuracy']:.3f}"} if val is not None else {}),
            })
            if checkpoint is not None:
                _save(Path(checkpoint), model, optimizer, scheduler, ema, generator, config, history, trained_on)
            if on_epoch is not None and _call_isolated(on_epoch, dev, row):
                break
    finally:
        bar.close()
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    if history:
        _flag_chance(history, len(val[1]) if val is not None else len(y), "val" if val is not None else "train",
                     int(torch.unique(y).numel()))
    return history


def _call_isolated(callback: Callable, dev: torch.device, *args):
    """Return ``callback(*args)`` run with torch's global random state saved and restored: training
    draws its dropout masks from it, so a callback that builds a model (which seeds it) or draws
    random numbers must not change what the next epoch draws."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        return callback(*args)


FP16_ON_CPU = ("precision='fp16' on a CPU: CPUs have no fast fp16 arithmetic, so training runs about 10 times "
               "slower than in fp32; use precision='auto' (bf16 where the CPU has it, else fp32)")


def chance_check(accuracy: float, n: int, n_classes: int = 10, alpha: float = 0.05, what: str = "the accuracy") -> dict:
    """Return whether an accuracy on ``n`` images is distinguishable from guessing (1 / ``n_classes``).

    Exact one-sided binomial test (:func:`fmnist_utils.stats.binomial_vs_chance`). Keys:
    ``above_chance`` (p < ``alpha``), ``accuracy``, ``chance``, ``p``, ``n``, ``note`` (a
    warning line when not above chance, else "").
    """
    from . import stats

    n_correct = int(round(accuracy * n))
    result = stats.binomial_vs_chance(n_correct, n, 1 / n_classes)
    above = result["p"] < alpha
    note = "" if above else (
        f"{what} {accuracy:.4f} on {n:,} images is not distinguishable from chance ({1 / n_classes:.2f}, "
        f"p = {result['p']:.2g}): the training may have collapsed; check the learning rate and weight decay")
    return {"above_chance": above, "accuracy": accuracy, "chance": 1 / n_classes, "p": result["p"], "n": n,
            "note": note}


def _flag_chance(history: list[dict], n: int, split: str, n_classes: int) -> None:
    """Warn, and flag the last row ``not_above_chance``, when its accuracy on ``split`` is not above chance."""
    accuracy = history[-1].get(f"{split}_accuracy")
    if accuracy is None or n_classes < 2:
        return
    what = {"val": "the validation accuracy", "train": "the training accuracy"}[split]
    check = chance_check(accuracy, n, n_classes, what=f"{what} after epoch {history[-1]['epoch']},")
    if not check["above_chance"]:
        history[-1]["not_above_chance"] = True
        warnings.warn(check["note"], stacklevel=3)


def check_checkpoint_path(checkpoint: str | Path) -> None:
    """Raise OSError naming ``checkpoint`` when it is a folder or its folder cannot be written."""
    from . import paths

    path = Path(checkpoint)
    if path.is_dir():
        raise OSError(errno.EISDIR, "Is a directory (the checkpoint path must name a file)", str(path))
    paths.writable_dir(path.parent, "checkpoint's folder")


def _check_parameters(model: nn.Module, epoch: int, step: int, config: TrainConfig) -> None:
    """Raise TrainingDiverged when a weight is non-finite after ``epoch`` (one host sync an epoch).

    The losses are checked as they come; the last step's update is only seen here.
    """
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all()
    if not bool(finite):
        raise TrainingDiverged(epoch, step, float("nan"),
                               hint="the weights became non-finite in the last update; " + divergence_hint(config))


_CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "generator", "torch_rng", "history")


def _save(path: Path, model, optimizer, scheduler, ema, generator, config: TrainConfig, history: list[dict],
          trained_on: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {
        "config": config.to_dict(),
        "data": trained_on,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    try:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            raise _save_error(exc, tmp) from None
        tmp.replace(path)  # atomic: a kill mid-write never leaves a half checkpoint
    except BaseException:  # a full disk or an interrupt: no 30 MB of debris beside the checkpoint
        tmp.unlink(missing_ok=True)
        raise


def _save_error(exc: RuntimeError, path: Path) -> BaseException:
    """Return the OSError a failed ``torch.save`` stands for: torch reports a failed write (a full disk)
    as ``RuntimeError: [enforce fail at inline_container.cc] . unexpected pos ...``."""
    text = str(exc)
    if "unexpected pos" not in text and "PytorchStreamWriter failed" not in text:
        return exc
    try:
        full = shutil.disk_usage(path.parent).free < 64 * 2**20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, "No space left on device (torch.save could not finish the file)", str(path))
    return OSError(errno.EIO, f"torch.save could not finish the file ({text.splitlines()[0][:200]})", str(path))


def _load_state(path: Path, map_location) -> dict:
    """Return the dict :func:`_save` wrote to ``path``; raise CheckpointError naming the file when it is damaged."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except OSError:
        raise  # unreadable (permissions...): the CLI's error handler names the file and what to do
    except Exception as exc:  # torch raises many types for a truncated archive or a damaged pickle
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: cannot be read as a training checkpoint ({type(exc).__name__}: {detail}); it is truncated "
            "or corrupt (was the disk full, or the copy cut short?). Delete it: training then starts from epoch 1."
        ) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint written by fmnist_utils.train.fit (it lacks {', '.join(missing)}); "
                              "delete it or choose another checkpoint path")
    return state


def _resume(path: Path, model, optimizer, scheduler, ema, generator, config: TrainConfig,
            trained_on: dict | None = None) -> list[dict]:
    state = _load_state(path, next(model.parameters()).device)
    # A longer run may continue a shorter one; any other difference would mix two experiments.
    # (A schedule's length depends on epochs, so it must match when a schedule is used.)
    ignore = {"epochs"} if config.schedule == "constant" else set()
    theirs = {k: v for k, v in state["config"].items() if k not in ignore}
    ours = {k: v for k, v in config.to_dict().items() if k not in ignore}
    if theirs != ours:
        raise CheckpointError(
            f"{path} was written by a run with another config; delete it or choose another "
            f"checkpoint path.\n  its config: {state['config']}\n  this run:   {config.to_dict()}"
        )
    if trained_on is not None and state.get("data") != trained_on:
        if state.get("data") is None:
            what = "has no record of its training data (written by an older version of the kit)"
        elif state["data"].get("train") == trained_on["train"]:
            what = "was written with another validation split"
        else:
            what = "was trained on other data (the images, the labels or their order differ)"
        raise CheckpointError(f"{path} {what}; continuing it here would mix two experiments. "
                              "Delete it to train from epoch 1, or choose another checkpoint path.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return list(state["history"])


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Return (model, config, history) from a checkpoint written by :func:`fit`.

    With EMA the model holds the averaged weights, as :func:`fit` leaves it.
    """
    state = _load_state(Path(path), map_location)
    config = TrainConfig(**state["config"])
    model = build_model(config)
    if state.get("ema") is not None:
        averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
        model.load_state_dict(averaged)
    else:
        model.load_state_dict(state["model"])
    return model, config, list(state["history"])


def fit_many(
    configs,
    x: torch.Tensor,
    y: torch.Tensor,
    train_indices,
    val_indices=None,
    *,
    progress: bool | None = None,
    on_diverged: str = "raise",
    return_models: bool = False,
    stack_size: int | None = None,
    on_epoch: Callable[[int, dict], bool | None] | None = None,
):
    """Train one unit per config, M at a time on one device; return their histories, each what
    :func:`fit` returns for that unit (see :func:`fmnist_utils.stacked.fit_many`)."""
    from .stacked import fit_many as stacked_fit_many  # stacked imports this module

    return stacked_fit_many(configs, x, y, train_indices, val_indices, progress=progress, on_diverged=on_diverged,
                            return_models=return_models, stack_size=stack_size, on_epoch=on_epoch)
