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
from .data import iterate_batches, scale
from .models import MODELS


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


def build_model(config: TrainConfig) -> nn.Module:
    """Return a freshly initialised ``config.model`` (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    return MODELS[config.model](dropout=config.dropout, kernel_size=config.kernel_size)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Return the optimizer ``config.optimizer`` over the model's parameters."""
    return OPTIMIZERS[config.optimizer](model.parameters(), config)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Return the sum of |w| over weight matrices and kernels (biases and norms excluded)."""
    return sum(p.abs().sum() for name, p in model.named_parameters() if p.ndim > 1)


def _check_split(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"{what} images must be (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"{what} images must be uint8 0..255 (scaling happens on the device), got {x.dtype}")
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
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Run one epoch over on-device (x uint8 (N,1,28,28), y (N,)) and return
    ``{"train_loss", "train_accuracy"}`` (mean cross-entropy in nats, fraction correct).
    """
    dev = x.device
    model.train()
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    for step, idx in enumerate(iterate_batches(len(x), config.batch_size, generator, dev)):
        xb, yb = _inputs(x[idx]), y[idx]
        with devices.autocast(dev, precision):
            logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb)
        objective = loss + config.l1 * l1_penalty(model) if config.l1 > 0 else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        # Accumulating on the device avoids a host sync every step.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.detach().argmax(1) == yb).sum()
        if on_step is not None:
            on_step(step)
    return {"train_loss": loss_sum.item() / len(x), "train_accuracy": correct.item() / len(x)}


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = 2048, precision: str = "auto"
) -> torch.Tensor:
    """Return float32 logits (N, n_classes) on the CPU for uint8 images (N, 1, 28, 28).

    Runs on the model's device in large batches; ``x`` is moved there once.
    """
    dev = next(model.parameters()).device
    precision = devices.resolve_precision(precision, dev)
    model.eval()
    x = x.to(dev)
    outs = []
    for idx in iterate_batches(len(x), batch_size, device=dev):
        with devices.autocast(dev, precision):
            outs.append(model(_inputs(x[idx])).float())
    return torch.cat(outs).cpu()


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048, precision: str = "auto"
) -> dict:
    """Return ``{"accuracy", "loss"}`` of ``model`` on (x uint8 (N,1,28,28), y (N,))."""
    _check_split(x, y, "evaluation")
    logits = predict_logits(model, x, batch_size, precision)
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
    epoch's training and evaluation). ``progress``: True/False, or None for a bar only on a
    terminal. ``checkpoint``: a file written after every epoch; when it exists and was made with
    the same config (``epochs`` may be larger), training resumes after its last finished epoch.
    """
    _check_split(x, y, "training")
    if val is not None:
        _check_split(*val, "validation")
    dev = devices.resolve_device(config.device)
    precision = devices.resolve_precision(config.precision, dev)
    model = _prepare(model, dev)
    x, y = x.to(dev), y.to(dev)
    if val is not None:
        val = (val[0].to(dev), val[1].to(dev))
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks
    history: list[dict] = []
    if checkpoint is not None and Path(checkpoint).is_file():
        history = _resume(Path(checkpoint), model, optimizer, generator, config)

    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    bar = _progress_bar(progress, steps_per_epoch * (config.epochs - len(history)))
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            bar.set_description(f"epoch {epoch}/{config.epochs}")
            start = time.perf_counter()
            row = {"epoch": epoch}
            row.update(
                train_one_epoch(
                    model, optimizer, x, y, config, generator, precision, on_step=lambda _: bar.update()
                )
            )
            if val is not None:
                metrics = evaluate(model, *val, batch_size=config.eval_batch_size, precision=precision)
                row.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"])
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                acc=f"{row['train_accuracy']:.3f}",
                **({"val_acc": f"{row['val_accuracy']:.3f}"} if val is not None else {}),
            )
            if checkpoint is not None:
                _save(Path(checkpoint), model, optimizer, generator, config, history)
    finally:
        bar.close()
    return history


def _save(path: Path, model, optimizer, generator, config: TrainConfig, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-write never leaves a half checkpoint


def _resume(path: Path, model, optimizer, generator, config: TrainConfig) -> list[dict]:
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=False)
    # A longer run may continue a shorter one; any other difference would mix two experiments.
    theirs = {k: v for k, v in state["config"].items() if k != "epochs"}
    ours = {k: v for k, v in config.to_dict().items() if k != "epochs"}
    if theirs != ours:
        raise ValueError(
            f"{path} was written by a run with another config; delete it or choose another "
            f"checkpoint path.\n  its config: {state['config']}\n  this run:   {config.to_dict()}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return list(state["history"])


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Return (model, config, history) from a checkpoint written by :func:`fit`."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    config = TrainConfig(**state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model, config, list(state["history"])
