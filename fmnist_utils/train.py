"""Train and evaluate a classifier on tensors that live on the device.

The split is one uint8 tensor on the device; an epoch is a seeded permutation sliced into
batches, scaled to [0, 1] on the device, in channels_last and (where the hardware runs it fast)
bf16 autocast. No DataLoader, no per-sample Python. The loop follows torchvision's reference
split: :func:`train_one_epoch` and :func:`evaluate` return metric dicts, :func:`fit` returns the
history, and progress display is a layer on top.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from .augment import augment_batch
from .data import iterate_batches, scale
from .models import MODELS


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


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run. Defaults are the study's recipe (90.8% test accuracy).

    lr: learning rate (> 0). batch_size: images per step. epochs: passes over the data.
    dropout: drop probability in the dense layers, [0, 1). weight_decay: L2 coefficient.
    l1: L1 coefficient on weights (0 = off). optimizer: one of :data:`OPTIMIZERS`.
    momentum / nesterov: SGD and RMSprop momentum. kernel_size: conv kernel (odd).
    model: a key of :data:`fmnist_utils.models.MODELS`.
    seed: initialisation, shuffling and dropout. precision: auto | fp32 | bf16.
    device: auto | cpu | cuda | cuda:N | mps. eval_batch_size: images per evaluation step.

    Beyond the study (all off by default; :data:`PRESETS` turns them on together):
    schedule: constant | onecycle | cosine (per step; cosine warms up for ``warmup_epochs``).
    label_smoothing: cross-entropy smoothing in [0, 1). decay_norm_bias: False exempts biases
    and norm weights from weight decay. aug_crop_pad: random-crop shift in pixels (0 = off).
    aug_flip: random horizontal flips. aug_erase: probability of random erasing.
    ema_decay: exponential moving average of the weights (0 = off; the final model is the
    average). tta_flip: evaluation averages the image and its mirror. compile: capture the
    model with ``torch.compile`` (CUDA graphs on a GPU), falling back to eager where it fails.
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
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            bad("kernel_size", "must be a positive odd integer")
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
) -> dict:
    """Run one epoch over on-device (x uint8 (N,1,28,28), y (N,)) and return
    ``{"train_loss", "train_accuracy"}`` (mean cross-entropy in nats on the augmented batches,
    without label smoothing; fraction correct).

    ``model`` may be a ``torch.compile``-d module; ``generator`` (CPU) drives shuffling and
    augmentation, so a seed fixes both.
    """
    dev = x.device
    model.train()
    loss_sum = torch.zeros((), device=dev)
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
        objective.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        # Accumulating on the device avoids a host sync every step.
        plain = F.cross_entropy(logits.detach(), yb) if config.label_smoothing else loss.detach()
        loss_sum += plain * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        if on_step is not None:
            on_step(step)
    return {"train_loss": loss_sum.item() / len(x), "train_accuracy": correct.item() / len(x)}


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
                mirrored = model(xb.flip(3)).float()
                logits = torch.logsumexp(
                    torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)]), dim=0
                ) - math.log(2)
        outs.append(logits.float())
    return torch.cat(outs).cpu()


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    precision: str = "auto",
    tta_flip: bool = False,
) -> dict:
    """Return ``{"accuracy", "loss"}`` of ``model`` on (x uint8 (N,1,28,28), y (N,))."""
    check_split(x, y, "evaluation")
    logits = predict_logits(model, x, batch_size, precision, tta_flip)
    y = y.cpu()
    return {
        "accuracy": (logits.argmax(1) == y).float().mean().item(),
        "loss": F.cross_entropy(logits, y).item(),
    }


def _progress_bar(enabled: bool | None, total: int):
    from tqdm.auto import tqdm

    if enabled is None:  # a bar only where someone watches a terminal
        enabled = sys.stderr.isatty()
    return tqdm(total=total, disable=not enabled, unit="step", leave=False, dynamic_ncols=True)


def capture(model: nn.Module, device: torch.device) -> tuple[nn.Module, str]:
    """Return (the model compiled for ``device``, how) or (``model``, reason) where capture fails.

    On CUDA ``mode="reduce-overhead"`` records CUDA graphs, so a small network is no longer
    bound by kernel launches; batch shapes are static (the last partial batch compiles once more).
    Compiled code is cached on disk by Inductor, so a second run skips most compilation.
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
) -> list[dict]:
    """Train ``model`` in place on (x uint8 (N,1,28,28), y int64 (N,)) and return its history.

    The history has one dict per epoch: ``epoch``, ``train_loss``, ``train_accuracy``,
    ``val_loss`` / ``val_accuracy`` (when ``val`` is given), ``seconds`` (wall time of the
    epoch's training and evaluation), ``lr`` (at the epoch's end). ``progress``: True/False, or
    None for a bar only on a terminal. ``checkpoint``: a file written after every epoch; when it
    exists and was made with the same config (``epochs`` may be larger), training resumes after
    its last finished epoch. With ``ema_decay`` the model ends holding the averaged weights.
    With ``compile`` the first epoch's row also has ``compile_seconds`` (the first step, which
    includes compilation) and ``capture`` (how the step ran).
    """
    check_split(x, y, "training")
    if val is not None:
        check_split(*val, "validation")
    dev = devices.resolve_device(config.device)
    precision = devices.resolve_precision(config.precision, dev)
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
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks
    history: list[dict] = []
    if checkpoint is not None and Path(checkpoint).is_file():
        history = _resume(Path(checkpoint), model, optimizer, scheduler, ema, generator, config)
    step_model, how = capture(model, dev) if config.compile else (model, "eager")
    first_step: list[float] = []

    def on_step(step: int) -> None:
        bar.update()
        if config.compile and not first_step:
            first_step.append(time.perf_counter() - start)

    bar = _progress_bar(progress, steps_per_epoch * max(0, config.epochs - len(history)))
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            bar.set_description(f"epoch {epoch}/{config.epochs}")
            start = time.perf_counter()
            row = {"epoch": epoch}
            row.update(
                train_one_epoch(step_model, optimizer, x, y, config, generator, precision, scheduler, ema, on_step)
            )
            if val is not None:
                scored = ema.module if ema is not None else model
                metrics = evaluate(scored, *val, config.eval_batch_size, precision, config.tta_flip)
                row.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            row["seconds"] = time.perf_counter() - start
            row["lr"] = optimizer.param_groups[0]["lr"]
            if config.compile and epoch == len(history) + 1 and first_step:
                row.update(compile_seconds=first_step[0], capture=how)
            history.append(row)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                acc=f"{row['train_accuracy']:.3f}",
                **({"val_acc": f"{row['val_accuracy']:.3f}"} if val is not None else {}),
            )
            if checkpoint is not None:
                _save(Path(checkpoint), model, optimizer, scheduler, ema, generator, config, history)
    finally:
        bar.close()
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return history


def _save(path: Path, model, optimizer, scheduler, ema, generator, config: TrainConfig, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-write never leaves a half checkpoint


def _resume(path: Path, model, optimizer, scheduler, ema, generator, config: TrainConfig) -> list[dict]:
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    # A longer run may continue a shorter one; any other difference would mix two experiments.
    # (A schedule's length depends on epochs, so it must match when a schedule is used.)
    ignore = {"epochs"} if config.schedule == "constant" else set()
    theirs = {k: v for k, v in state["config"].items() if k not in ignore}
    ours = {k: v for k, v in config.to_dict().items() if k not in ignore}
    if theirs != ours:
        raise ValueError(
            f"{path} was written by a run with another config; delete it or choose another "
            f"checkpoint path.\n  its config: {state['config']}\n  this run:   {config.to_dict()}"
        )
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
    state = torch.load(path, map_location=map_location, weights_only=False)
    config = TrainConfig(**state["config"])
    model = build_model(config)
    if state.get("ema") is not None:
        averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
        model.load_state_dict(averaged)
    else:
        model.load_state_dict(state["model"])
    return model, config, list(state["history"])
