"""Train and evaluate a classifier on tensors that live on the device.

The split is one uint8 tensor on the device; an epoch is a seeded permutation sliced into
batches, scaled to [0, 1] on the device, in channels_last and (where the hardware runs it fast)
bf16 autocast. No DataLoader, no per-sample Python. The loop follows torchvision's reference
split: :func:`train_one_epoch` and :func:`evaluate` return metric dicts, :func:`fit` returns the
history, and progress display is a layer on top.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints, stacked
from . import device as devices
from .augment import augment_batch
from .checkpoints import CheckpointError, check_checkpoint_path, data_fingerprint  # noqa: F401  (train.X names)
from .progress import bar as progress_bar
# The configuration and the evaluation live in their own modules; their names stay train.X.
from .train_config import (  # noqa: F401
    MAX_KERNEL_SIZE, OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig, build_model, build_optimizer, ema_multi_avg_fn,
    l1_penalty, preset,
)
from .evaluation import (  # noqa: F401
    _inputs, chance_check, check_split, evaluate, flip_averaged_logits, pack_correct, predict_logits, val_correctness, _flag_chance,
)


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


def _prepare(model: nn.Module, dev: torch.device) -> nn.Module:
    # channels_last lets oneDNN and cuDNN pick their fastest convolution kernels.
    return model.to(dev, memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# The engine: M >= 1 units trained as one (fit is M = 1)


class _Units:
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


def _run_epoch(units: _Units, x: torch.Tensor, y: torch.Tensor, orders: list[torch.Tensor], batch_size: int,
               epoch: int, live: list[bool], diverged: Callable[[int, int, float], None],
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
    without label smoothing; fraction correct): the engine's epoch (:func:`_run_epoch`) with one
    unit and the caller's optimizer, scheduler, moving average and loss scaler.

    ``generator`` (CPU) drives shuffling and augmentation, so a seed fixes both. Raises
    :class:`TrainingDiverged` (naming ``epoch`` and the first bad step) at the first non-finite
    loss, noticed within :data:`DIVERGENCE_CHECK_STEPS` steps (every step on the CPU).
    """
    units = _Units(model, [config], x.device, precision, optimizer, scheduler or _NoSchedule(), ema, scaler,
                   generators=[generator])
    order = torch.randperm(len(x), generator=generator).to(x.device)  # as data.iterate_batches draws it

    def diverged(unit: int, step: int, loss: float) -> None:
        raise TrainingDiverged(epoch, step, loss, hint=divergence_hint(config))

    loss, accuracy = _run_epoch(units, x, y, [order], config.batch_size, epoch, [True], diverged, on_step)
    return {"train_loss": loss[0], "train_accuracy": accuracy[0]}


class _NoSchedule:
    """A scheduler that keeps the learning rate (train_one_epoch called without one)."""

    def step(self) -> None:
        pass


def _new_units(models: list[nn.Module], configs: list[TrainConfig], dev: torch.device, precision: str,
               steps_per_epoch: int) -> _Units:
    """Return the fresh training state of ``models`` (M >= 1, sharing a stack key): one module
    (the model itself, or the stack of all), torch's optimizer, schedule, moving average and loss
    scaler over it, as fit builds them for one unit."""
    c, M = configs[0], len(models)
    models = [_prepare(m, dev) for m in models]
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
    return _Units(module, configs, dev, precision, optimizer, scheduler, ema, scaler, fold,
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
    epoch's training and evaluation), ``lr`` (at the epoch's end); the last row gets
    ``not_above_chance: True`` (and a warning) when its accuracy is not distinguishable from
    chance. ``progress``: False for none, True or None for :mod:`fmnist_utils.progress`'s bar (a
    widget in JupyterLab, a text bar on a terminal, one line per epoch elsewhere). ``checkpoint``:
    a file written after every epoch; when it exists and was made with the same config
    (``epochs`` may be larger), training resumes after its last finished epoch. With
    ``ema_decay`` the model ends holding the averaged weights. With ``compile`` the first epoch's
    row also has ``compile_seconds`` (the first step, which includes compilation) and ``capture``
    (how the step ran). ``on_epoch``: called as ``on_epoch(row)`` with each finished epoch's
    history row, after the row is appended and the checkpoint written; when it returns True
    training stops after that epoch (the history ends there, and the checkpoint lets a later call
    with the same config continue it). It runs with torch's random state saved and restored.

    Raises :class:`TrainingDiverged` at the first non-finite loss (or non-finite weights at an
    epoch's end), naming the epoch, the step and the likely cause; the checkpoint keeps the last
    finished epoch. Raises :class:`CheckpointError` when ``checkpoint`` is damaged, or was
    written with another config or on other data (training or validation split).
    """
    check_split(x, y, "training")
    if val is not None:
        check_split(*val, "validation")
    if checkpoint is not None:
        checkpoints.check_checkpoint_path(checkpoint)  # before the first epoch, not after it
    dev = devices.resolve_device(config.device)
    x, y = x.to(dev), y.to(dev)
    val_sets = None if val is None else [(val[0].to(dev), val[1].to(dev))]
    histories, _ = _train_units([model], [config], x, y, None, val_sets, dev, progress=progress,
                                checkpoint=checkpoint, on_epoch=None if on_epoch is None else (lambda i, row: on_epoch(row)))
    return histories[0]


def fit_many(
    configs: Sequence[TrainConfig],
    x: torch.Tensor,
    y: torch.Tensor,
    train_indices: Sequence,
    val_indices: Sequence | None = None,
    *,
    progress: bool | None = None,
    on_diverged: str = "raise",
    return_models: bool = False,
    stack_size: int | None = None,
    on_epoch: Callable[[int, dict], bool | None] | None = None,
) -> list[list[dict]] | tuple[list[list[dict]], list[nn.Module | None]]:
    """Train one unit per config, M at a time on one device; return their histories (in order).

    Unit i trains on ``x[train_indices[i]]`` (x uint8 (N, 1, 28, 28), y (N,)) and is validated
    after every epoch on ``x[val_indices[i]]``; its history is what
    ``fit(build_model(configs[i]), x[train_indices[i]], y[train_indices[i]], configs[i],
    val=(x[val_indices[i]], y[val_indices[i]]))`` returns, to float rounding (``seconds`` is the
    stack's epoch time divided by its units): the same engine trains both. Units stack where they
    share :func:`stacked.stack_key` (every setting but the seed and dropout, and with SGD the lr
    and weight decay, and the number of training images); :func:`stacked.stack_unsupported`
    units (``compile``, fp16) train alone. Configs must share :data:`SHARED_FIELDS` (ValueError
    naming the field). ``on_diverged``: "raise" raises :class:`TrainingDiverged` with ``unit=i``;
    "record" stops that unit and ends its history with a row ``{"epoch", "step", "diverged":
    reason}``; the others train on. ``return_models``: also return each unit's model as ``fit``
    leaves it (None for a diverged unit). ``stack_size``: units per stack; None plans it with
    :func:`stacked.plan_stack_size` (from the device, never a timing); 1 trains every unit alone.
    ``on_epoch``: called as ``on_epoch(i, row)`` (``i`` an index into ``configs``) with each
    unit's finished epoch's row; when it returns True unit i stops after that epoch (its history
    ends there, its model is returned as it then is) and the others train on. ``progress`` as in ``fit``.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("fit_many needs at least one config")
    if on_diverged not in ("raise", "record"):
        raise ValueError(f"on_diverged must be 'raise' or 'record', got {on_diverged!r}")
    if stack_size is not None and (not isinstance(stack_size, int) or stack_size < 1):
        raise ValueError(f"stack_size must be an integer >= 1 or None (planned), got {stack_size!r}")
    check_split(x, y, "training")
    if len(train_indices) != len(configs) or (val_indices is not None and len(val_indices) != len(configs)):
        raise ValueError(f"fit_many: {len(configs)} configs need as many train_indices (got {len(train_indices)})"
                         + (f" and val_indices (got {len(val_indices)})" if val_indices is not None else ""))
    for field in SHARED_FIELDS:
        values = sorted({repr(getattr(c, field)) for c in configs})
        if len(values) > 1:
            raise ValueError(f"fit_many: all configs must share {field!r}, got {', '.join(values)}; "
                             f"call fit_many once per {field}")
    train_idx = [_as_indices(i, len(x), f"train_indices[{u}]") for u, i in enumerate(train_indices)]
    val_idx = None if val_indices is None else [_as_indices(i, len(x), f"val_indices[{u}]")
                                                for u, i in enumerate(val_indices)]
    dev = devices.resolve_device(configs[0].device)
    precision = devices.resolve_precision(configs[0].precision, dev)
    if stack_size is None:
        stack_size = min(stacked.plan_stack_size(c, dev).size for c in configs)
    plan = stacked.plan_stacks(configs, [len(i) for i in train_idx], stack_size, precision)
    xd, yd = x.to(dev), y.to(dev)
    histories: list[list[dict] | None] = [None] * len(configs)
    models: list[nn.Module | None] = [None] * len(configs)
    for units in plan:
        vals = None if val_idx is None else [(xd[val_idx[u].to(dev)], yd[val_idx[u].to(dev)]) for u in units]
        each = None if on_epoch is None else (lambda i, row, units=units: on_epoch(units[i], row))
        hs, ms = _train_units([build_model(configs[u]) for u in units], [configs[u] for u in units], xd, yd,
                              [train_idx[u].to(dev) for u in units], vals, dev, progress=progress, unit_ids=units,
                              on_diverged=on_diverged, on_epoch=each)
        for u, h, m in zip(units, hs, ms):
            histories[u], models[u] = h, m
    return (histories, models) if return_models else histories


# TrainConfig fields all configs of one fit_many call must share (ValueError naming the field otherwise).
SHARED_FIELDS = ("model", "batch_size", "epochs", "precision", "device", "optimizer")


def _as_indices(indices, n: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices))
    if idx.ndim != 1 or len(idx) == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"{what} must be a non-empty 1-D array of integer indices, got shape {tuple(idx.shape)} "
                         f"{idx.dtype}")
    idx = idx.long()
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{what} holds indices outside [0, {n}): min {int(idx.min())}, max {int(idx.max())}")
    return idx


def _train_units(models: list[nn.Module], configs: list[TrainConfig], x: torch.Tensor, y: torch.Tensor,
                 train_idx: list[torch.Tensor] | None, vals: list[tuple[torch.Tensor, torch.Tensor]] | None,
                 dev: torch.device, *, progress: bool | None = None, checkpoint: str | Path | None = None,
                 unit_ids: Sequence[int] | None = None, on_diverged: str = "raise",
                 on_epoch: Callable[[int, dict], bool | None] | None = None,
                 ) -> tuple[list[list[dict]], list[nn.Module | None]]:
    """The one epoch loop: train M >= 1 units (``models``, ``configs`` sharing a stack key) as one
    and return (histories, models as fit leaves them; None for a diverged unit).

    Unit m trains on ``x[train_idx[m]]`` (all of on-device x when ``train_idx`` is None: fit) and
    is validated on ``vals[m]``. ``checkpoint`` (M = 1 only): see :func:`fit`. ``unit_ids``:
    the units' names in errors and ``on_epoch`` calls (None: fit's single unit, unnamed).
    """
    c, M = configs[0], len(models)
    if dev.type == "cuda":  # fixed shapes (one batch size of 28x28 images): cuDNN times its kernels once
        torch.backends.cudnn.benchmark = True
    precision = devices.resolve_precision(c.precision, dev)
    if precision == "fp16" and dev.type == "cpu":
        warnings.warn(FP16_ON_CPU, stacklevel=3)
    n = len(x) if train_idx is None else len(train_idx[0])
    steps_per_epoch = math.ceil(n / c.batch_size)
    units = _new_units(models, configs, dev, precision, steps_per_epoch)
    if M == 1:
        torch.manual_seed(c.seed)  # one unit draws its dropout masks from torch's generator, as fit always has
    trained_on = None
    history: list[dict] = []
    if checkpoint is not None:
        # What the checkpoint was trained on: resuming it on other data would mix two experiments.
        trained_on = {"train": checkpoints.data_fingerprint(x, y),
                      "val": checkpoints.data_fingerprint(*vals[0]) if vals is not None else None}
        if Path(checkpoint).is_file():
            history = checkpoints.resume(Path(checkpoint), units.module, units.optimizer, units.scheduler, units.ema,
                                         units.generators[0], c, trained_on)
    histories = [list(history) for _ in range(M)]
    live, done = [True] * M, [False] * M  # done: stopped by on_epoch, its model kept as it then was
    kept: list[nn.Module | None] = list(models) if M > 1 else [units.module]

    def name(m: int) -> int | None:
        return None if unit_ids is None else unit_ids[m]

    def diverged(m: int, epoch: int, step: int, loss: float, why: str = "") -> None:
        error = TrainingDiverged(epoch, step, loss, unit=name(m), hint=why + divergence_hint(configs[m]))
        if on_diverged == "raise":
            raise error
        live[m], kept[m] = False, None
        histories[m].append({"epoch": epoch, "step": step, "diverged": str(error)})

    first_step: list[float] = []

    def on_step(step: int) -> None:
        bar.update()
        if c.compile and not first_step:
            first_step.append(time.perf_counter() - start)

    resumed = len(history)
    label = "" if M == 1 else f"{M} stacked units, "
    bar = progress_bar(steps_per_epoch * max(0, c.epochs - resumed), unit="step", enabled=progress)
    try:
        for epoch in range(resumed + 1, c.epochs + 1):
            bar.set_description(f"{label}epoch {epoch}/{c.epochs}", refresh=False)
            start = time.perf_counter()
            orders = []
            for m, g in enumerate(units.generators):  # each unit's permutation, then its augmentation draws
                perm = torch.randperm(n, generator=g).to(dev)  # as data.iterate_batches draws it
                orders.append(perm if train_idx is None else train_idx[m][perm])
            # A stopped unit's slot trains on unseen (a stack steps as one), its results already kept.
            training = [lv and not d for lv, d in zip(live, done)]
            losses, accuracies = _run_epoch(units, x, y, orders, c.batch_size, epoch, training,
                                            lambda m, step, loss: diverged(m, epoch, step, loss), on_step)
            for m, finite in enumerate(units.finite_units()):
                if training[m] and live[m] and not finite:
                    diverged(m, epoch, steps_per_epoch, float("nan"), NON_FINITE_WEIGHTS)
            if not any(live):
                break
            rows = {m: {"epoch": epoch, "train_loss": losses[m], "train_accuracy": accuracies[m]}
                    for m in range(M) if live[m] and not done[m]}
            if vals is not None:
                for m, row in rows.items():
                    metrics = evaluate(_scored(units, m, kept[m]), *vals[m], c.eval_batch_size, precision, c.tta_flip,
                                       per_image=True)
                    row.update(val_loss=metrics["loss"], val_accuracy=metrics["accuracy"],
                               val_correct=pack_correct(metrics["correct"]))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = (time.perf_counter() - start) / M  # the stack's wall time, shared by its units
            lrs = units.lrs()
            for m, row in rows.items():
                row.update(seconds=seconds, lr=lrs[m])
                if c.compile and epoch == resumed + 1 and first_step:
                    row.update(compile_seconds=first_step[0], capture=units.capture)
                histories[m].append(row)
                if checkpoint is not None:
                    checkpoints.save(Path(checkpoint), units.module, units.optimizer, units.scheduler, units.ema,
                                     units.generators[0], c, histories[0], trained_on)
                if on_epoch is not None and _call_isolated(on_epoch, dev, m, row):
                    done[m] = True
                    if M > 1:  # freeze what fit would return now; its slot of the stack trains on unseen
                        kept[m] = _final_model(units, m, kept[m], vals is not None)
            # One refresh per epoch: the line `make report` prints (see fmnist_utils.progress).
            bar.set_postfix(_postfix(histories, live, done, vals is not None))
            if all(d or not lv for d, lv in zip(done, live)):
                break
    finally:
        bar.close()
    for m in range(M):
        if live[m] and not done[m] and M > 1:
            kept[m] = _final_model(units, m, kept[m], vals is not None)
    if M == 1 and units.ema is not None and live[0]:
        units.module.load_state_dict(units.ema.module.state_dict())
    for m in range(M):  # fit's closing check: a unit that ends not distinguishable from chance is flagged
        if live[m] and histories[m]:
            n_check, split = (len(vals[m][1]), "val") if vals is not None else (n, "train")
            labels = y if train_idx is None else y[train_idx[m]]
            _flag_chance(histories[m], n_check, split, int(torch.unique(labels).numel()))
    return histories, kept


def _scored(units: _Units, m: int, shell: nn.Module) -> nn.Module:
    """Return the model fit validates for unit m: its moving average where there is one."""
    if units.M == 1:
        return units.ema.module if units.ema is not None else units.module
    return units.load_unit(m, shell, units.ema.module.state_dict() if units.ema is not None else None)


def _final_model(units: _Units, m: int, shell: nn.Module, validated: bool) -> nn.Module:
    """Return ``shell`` holding unit m (M > 1) as fit leaves its model: the moving average where
    there is one, in evaluation mode when fit validated the model itself."""
    units.load_unit(m, shell, units.ema.module.state_dict() if units.ema is not None else None)
    return shell.train(not (validated and units.ema is None))


def _postfix(histories: list[list[dict]], live: list[bool], done: list[bool], validated: bool) -> dict:
    """Return the progress bar's epoch line: one unit's loss and accuracies, or a stack's live count."""
    if len(histories) > 1:
        return {"live": f"{sum(lv and not d for lv, d in zip(live, done))}/{len(live)}"}
    row = histories[0][-1]
    return {"loss": f"{row['train_loss']:.3f}", "acc": f"{row['train_accuracy']:.3f}",
            **({"val_acc": f"{row['val_accuracy']:.3f}"} if validated else {})}


def _call_isolated(callback: Callable, dev: torch.device, *args):
    """Return ``callback(*args)`` run with torch's global random state saved and restored: training
    draws its dropout masks from it, so a callback that builds a model (which seeds it) or draws
    random numbers must not change what the next epoch draws."""
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        return callback(*args)


FP16_ON_CPU = ("precision='fp16' on a CPU: CPUs have no fast fp16 arithmetic, so training runs about 10 times "
               "slower than in fp32; use precision='auto' (bf16 where the CPU has it, else fp32)")


def finite_weights(module: nn.Module, units: int = 1) -> list[bool]:
    """Return, for each of the ``units`` models ``module`` holds (stacked along the first dimension
    of every parameter when more than one), whether all its weights are finite (one host sync)."""
    if units == 1:
        return [bool(torch.stack([torch.isfinite(p.detach()).all() for p in module.parameters()]).all())]
    flags = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in module.parameters()])
    return flags.all(0).tolist()


def _check_parameters(model: nn.Module, epoch: int, step: int, config: TrainConfig) -> None:
    """Raise TrainingDiverged when a weight is non-finite after ``epoch`` (one host sync an epoch).

    The losses are checked as they come; the last step's update is only seen here.
    """
    if not finite_weights(model)[0]:
        raise TrainingDiverged(epoch, step, float("nan"), hint=NON_FINITE_WEIGHTS + divergence_hint(config))


NON_FINITE_WEIGHTS = "the weights became non-finite in the last update; "


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Return (model, config, history) from a checkpoint written by :func:`fit`.

    With EMA the model holds the averaged weights, as :func:`fit` leaves it.
    """
    state = checkpoints.load_state(Path(path), map_location)
    config = TrainConfig(**state["config"])
    model = build_model(config)
    if state.get("ema") is not None:
        averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
        model.load_state_dict(averaged)
    else:
        model.load_state_dict(state["model"])
    return model, config, list(state["history"])


