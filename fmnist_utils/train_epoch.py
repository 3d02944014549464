"""One epoch of M >= 1 units trained as one: their training state and the step loop.

:class:`Units` holds what a step needs (the module: the model itself, or a
:class:`~fmnist_utils.stacked.StackedModule` of M models; torch's optimizer, schedule, moving
average and loss scaler over it; each unit's generators), :func:`new_units` builds it as
:func:`fmnist_utils.train.fit` does, and :func:`run_epoch` trains every unit once over its images.
:func:`train_one_epoch` is that epoch for one model and the caller's optimizer. The epoch loop
around it, with validation, history and checkpoints, is :mod:`fmnist_utils.train`'s.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from . import stacked
from .augment import augment_batch
from .divergence import DIVERGENCE_CHECK_STEPS, TrainingDiverged, divergence_hint, finite_weights
from .evaluation import _inputs
from .train_config import SCHEDULES, TrainConfig, build_optimizer, ema_multi_avg_fn, l1_penalty


def prepare_model(model: nn.Module, dev: torch.device) -> nn.Module:
    """Return ``model`` moved to ``dev`` in channels_last memory format (in place, as ``.to`` does)."""
    # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels.
    return model.to(dev, memory_format=torch.channels_last)


class Units:
    """The training state of M >= 1 units sharing :func:`stacked.stack_key`: what one step needs.

    ``module``: the model itself when M = 1 (``step_module``: it, or its ``torch.compile`` capture),
    else a :class:`stacked.StackedModule` of the M models; ``optimizer``, ``scheduler``, ``ema``
    (an ``AveragedModel``) and ``scaler`` (fp16, M = 1 only) are torch's own, over ``module``.
    ``generators``: each unit's CPU generator seeded with its seed (shuffling, then augmentation,
    as fit draws them); ``drop_generators``: each unit's dropout masks (M > 1; one unit draws
    from torch's global generator, seeded as fit seeds it). ``fold``: per-unit (lr, weight decay)
    (M,) vectors folded into the gradients when they differ between SGD units, else None.
    """

    def __init__(self, module: nn.Module, configs: list[TrainConfig], dev: torch.device, precision: str,
                 optimizer: torch.optim.Optimizer, scheduler, ema=None, scaler=None, fold=None,
                 generators: list[torch.Generator] | None = None, step_module: nn.Module | None = None,
                 capture: str = "eager"):
        self.module, self.configs, self.M, self.dev, self.precision = module, configs, len(configs), dev, precision
        self.optimizer, self.scheduler, self.ema, self.scaler, self.fold = optimizer, scheduler, ema, scaler, fold
        self.generators = generators or [torch.Generator().manual_seed(u.seed) for u in configs]
        self.step_module, self.capture = (module if step_module is None else step_module), capture
        if self.M > 1:
            self.drop_generators = [torch.Generator(device=dev).manual_seed(u.seed) for u in configs]
            self.dropout_p = [u.dropout for u in configs]
            self.mask_dtype = devices.AUTOCAST_DTYPES.get(precision, next(module.parameters()).dtype)
            self.mask_shapes: dict[str, tuple] | None = None

    def lrs(self) -> list[float]:
        """Return each unit's learning rate now (fit's ``lr`` history entry)."""
        lr = self.optimizer.param_groups[0]["lr"]
        return [lr * u.lr for u in self.configs] if self.fold is not None else [lr] * self.M

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """Return logits (M, B, C) of the units in training on their images ``xs`` (M of (B, 1, 28, 28))."""
        if self.M == 1:
            return self.step_module(xs[0]).unsqueeze(0)
        if self.mask_shapes is None:
            self.mask_shapes = self.module.dropout_shapes(xs[0])
        masks = {}
        for name, shape in self.mask_shapes.items():  # in the modules' order: fit's order of draws in SeedCNN
            mask = stacked.dropout_masks(self.drop_generators, self.dropout_p, (len(xs[0]),) + shape,
                                         self.mask_dtype, self.dev)
            if mask is not None:
                masks[name] = mask
        return self.step_module(torch.stack(xs), masks)

    def l1(self) -> torch.Tensor:
        """Return each unit's L1 penalty (M,): :func:`l1_penalty` of its weights."""
        if self.M == 1:
            return l1_penalty(self.module).unsqueeze(0)
        return sum(p.abs().flatten(1).sum(1) for p in self.module.parameters() if p.ndim > 2)

    @torch.no_grad()
    def fold_gradients(self) -> None:
        """Turn each unit's gradient g into lr_i (g + wd_i p) (weight decay where fit decays)."""
        lr, wd = self.fold
        decay_all = self.configs[0].decay_norm_bias
        for p in self.module.parameters():
            if p.grad is None:
                continue
            shape = (self.M,) + (1,) * (p.ndim - 1)
            if decay_all or p.ndim > 2:
                p.grad.addcmul_(p, wd.view(shape))
            p.grad.mul_(lr.view(shape))

    def finite_units(self) -> list[bool]:
        """Return, per unit, whether all its weights are finite (one host sync)."""
        return finite_weights(self.module, self.M)

    def load_unit(self, i: int, shell: nn.Module, state: dict | None = None) -> nn.Module:
        """Return ``shell`` (unit i's own model) holding unit i's weights (M > 1), or the moving
        average's where ``state`` is its state dict."""
        shell.load_state_dict(self.module.unit_state(i, state))
        return shell


def run_epoch(units: Units, x: torch.Tensor, y: torch.Tensor, orders: list[torch.Tensor], batch_size: int,
              live: list[bool], diverged: Callable[[int, int, float], None],
              on_step: Callable[[int], None] | None = None) -> tuple[list[float], list[float]]:
    """Train every unit once over its images in ``orders`` (M index tensors of equal length N into
    on-device x uint8 (., 1, 28, 28) and y); return (mean training loss, accuracy) per unit.

    The loss is cross-entropy in nats on the augmented batches, without label smoothing. Each
    step's losses stay on the device; every :data:`DIVERGENCE_CHECK_STEPS` steps (and at the end)
    the host looks, and ``diverged(unit, step, loss)`` is called at a live unit's first non-finite
    loss (1-based step); it raises, or the unit is no longer live (``live[unit]`` set False) and
    its loss no longer counts.
    """
    c, dev, M = units.configs[0], x.device, units.M
    units.module.train()
    n = len(orders[0])
    steps = math.ceil(n / batch_size)
    losses = torch.empty(steps, M, device=dev)
    weights = torch.full((steps, 1), float(batch_size), device=dev)  # the last batch may be smaller
    weights[-1] = n - batch_size * (steps - 1)
    correct = torch.zeros(M, device=dev, dtype=torch.int64)
    check_every, checked = DIVERGENCE_CHECK_STEPS.get(dev.type, 32), 0
    augmenting = c.aug_crop_pad or c.aug_flip or c.aug_erase > 0
    optimizer, scaler = units.optimizer, units.scaler
    alive = None if all(live) else torch.tensor(live, device=dev)  # (M,) bool once a unit has stopped
    for step, start in enumerate(range(0, n, batch_size)):
        idx = [o[start:start + batch_size] for o in orders]
        xs, yb = [_inputs(x[i]) for i in idx], torch.stack([y[i] for i in idx])  # M x (B, 1, 28, 28), (M, B)
        if augmenting:
            xs = [augment_batch(xm, g, c.aug_crop_pad, c.aug_flip, c.aug_erase) for xm, g in zip(xs, units.generators)]
        with devices.autocast(dev, units.precision):
            logits = units.forward(xs)
        logits = logits.float()  # (M, B, C)
        flat_logits, flat_y = logits.flatten(0, 1), yb.flatten()
        loss = F.cross_entropy(flat_logits, flat_y, reduction="none", label_smoothing=c.label_smoothing)
        loss = loss.view(M, -1).mean(1)  # (M,)
        objective = loss + c.l1 * units.l1() if c.l1 > 0 else loss
        total = objective.sum() if alive is None else torch.where(alive, objective, 0.0).sum()
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            total.backward()
            if units.fold is not None:
                units.fold_gradients()
            optimizer.step()
        units.scheduler.step()
        if units.ema is not None:
            units.ema.update_parameters(units.module)
        with torch.no_grad():
            plain = (F.cross_entropy(flat_logits, flat_y, reduction="none").view(M, -1).mean(1)
                     if c.label_smoothing else loss.detach())
            losses[step] = plain
            correct += (logits.argmax(-1) == yb).sum(1)
        if (step + 1) % check_every == 0 or step + 1 == steps:
            bad = ~torch.isfinite(losses[checked:step + 1])  # (k, M)
            if bool(bad.any()):
                for m in range(M):
                    rows = bad[:, m].nonzero()
                    if live[m] and len(rows):
                        first = checked + int(rows[0, 0])
                        diverged(m, first + 1, float(losses[first, m]))
                        live[m] = False
                alive = torch.tensor(live, device=dev)
                if not any(live):
                    break
            checked = step + 1
        if on_step is not None:
            on_step(step)
    train_loss = ((losses * weights).sum(0) / n).tolist()
    return train_loss, (correct / n).tolist()


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
    """Run one epoch of ``model`` over on-device (x uint8 (N,1,28,28), y (N,)) and return
    ``{"train_loss", "train_accuracy"}`` (mean cross-entropy in nats on the augmented batches,
    without label smoothing; fraction correct): the engine's epoch (:func:`run_epoch`) with one
    unit and the caller's optimizer, scheduler, moving average and loss scaler.

    ``generator`` (CPU) drives shuffling and augmentation, so a seed fixes both. Raises
    :class:`TrainingDiverged` (naming ``epoch`` and the first bad step) at the first non-finite
    loss, noticed within :data:`DIVERGENCE_CHECK_STEPS` steps (every step on the CPU).
    """
    units = Units(model, [config], x.device, precision, optimizer, scheduler or _NoSchedule(), ema, scaler,
                  generators=[generator])
    order = torch.randperm(len(x), generator=generator).to(x.device)  # as data.iterate_batches draws it

    def diverged(unit: int, step: int, loss: float) -> None:
        raise TrainingDiverged(epoch, step, loss, hint=divergence_hint(config))

    loss, accuracy = run_epoch(units, x, y, [order], config.batch_size, [True], diverged, on_step)
    return {"train_loss": loss[0], "train_accuracy": accuracy[0]}


class _NoSchedule:
    """A scheduler that keeps the learning rate (train_one_epoch called without one)."""

    def step(self) -> None:
        pass


def new_units(models: list[nn.Module], configs: list[TrainConfig], dev: torch.device, precision: str,
              steps_per_epoch: int) -> Units:
    """Return the fresh training state of ``models`` (M >= 1, sharing a stack key): one module
    (the model itself, or the stack of all), torch's optimizer, schedule, moving average and loss
    scaler over it, as fit builds them for one unit."""
    c, M = configs[0], len(models)
    models = [prepare_model(m, dev) for m in models]
    module = models[0] if M == 1 else stacked.StackedModule(models).to(dev)
    shared, fold = c, None
    lrs, wds = [u.lr for u in configs], [u.weight_decay for u in configs]
    if M > 1 and (len(set(lrs)) > 1 or len(set(wds)) > 1):
        # torch's SGD with lr 1 and no decay on g' = lr_i (g + wd_i p) is each unit's own update:
        # its momentum buffer holds lr_i times fit's, and the schedule's factor is the group lr.
        dtype = next(module.parameters()).dtype
        fold = (torch.tensor(lrs, dtype=dtype, device=dev), torch.tensor(wds, dtype=dtype, device=dev))
        shared = c.replace(lr=1.0, weight_decay=0.0)
    optimizer = build_optimizer(module, shared, lead=int(M > 1))
    scheduler = SCHEDULES[c.schedule](optimizer, shared, steps_per_epoch)
    ema = None
    if c.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(module, multi_avg_fn=ema_multi_avg_fn(c.ema_decay), use_buffers=True)
    # fp16 needs loss scaling (a stack of one: stacked.stack_unsupported); a resumed run starts a
    # fresh scale, which re-calibrates in a few steps.
    scaler = torch.amp.GradScaler(dev.type) if devices.needs_grad_scaler(precision) else None
    step_module, how = capture(module, dev) if c.compile else (module, "eager")
    return Units(module, configs, dev, precision, optimizer, scheduler, ema, scaler, fold,
                 step_module=step_module, capture=how)


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
