"""Train and evaluate a classifier on tensors that live on the device: the one epoch loop.

The split is one uint8 tensor on the device; an epoch is a seeded permutation sliced into
batches, scaled to [0, 1] on the device, in channels_last and (where the hardware runs it fast)
bf16 autocast. No DataLoader, no per-sample Python. The loop follows torchvision's reference
split: :func:`train_one_epoch` and :func:`evaluate` return metric dicts, :func:`fit` returns the
history, and progress display is a layer on top.

This module holds the epoch loop (:func:`_train_units`) and its two callers, :func:`fit` (one
model) and :func:`fit_many` (M units, stacked where they can be). Its parts live beside it, and
their names stay importable as ``train.X``: the configuration (:mod:`~fmnist_utils.train_config`),
one epoch's steps and training state (:mod:`~fmnist_utils.train_epoch`), the evaluation
(:mod:`~fmnist_utils.evaluation`), divergence (:mod:`~fmnist_utils.divergence`) and checkpoints
(:mod:`~fmnist_utils.checkpoints`).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import checkpoints, stacked
from . import device as devices
from .progress import bar as progress_bar
# The configuration, one epoch's steps, the evaluation, divergence and checkpoints live in their
# own modules; their names stay train.X.
from .train_config import (  # noqa: F401
    MAX_KERNEL_SIZE, OPTIMIZERS, PRESETS, SCHEDULES, TrainConfig, build_model, build_optimizer, ema_multi_avg_fn,
    l1_penalty, preset,
)
from .train_epoch import Units, capture, new_units, prepare_model, run_epoch, train_one_epoch  # noqa: F401
from .evaluation import (  # noqa: F401
    _inputs, chance_check, check_split, evaluate, flip_averaged_logits, pack_correct, predict_logits, val_correctness, _flag_chance,
)
from .divergence import (  # noqa: F401
    DIVERGENCE_CHECK_STEPS, NON_FINITE_WEIGHTS, TrainingDiverged, divergence_hint, finite_weights,
)
from .checkpoints import (  # noqa: F401
    CheckpointError, check_checkpoint_path, data_fingerprint, load_checkpoint,
)


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
    if dev.type == "cuda":
        # Kernels chosen by rule, not by timing them (benchmark mode picks by how fast each ran,
        # so a busy GPU, or a notebook beside this one, would change the numbers), and of those,
        # cuDNN's deterministic ones.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    precision = devices.resolve_precision(c.precision, dev)
    if precision == "fp16" and dev.type == "cpu":
        warnings.warn(FP16_ON_CPU, stacklevel=3)
    n = len(x) if train_idx is None else len(train_idx[0])
    steps_per_epoch = math.ceil(n / c.batch_size)
    units = new_units(models, configs, dev, precision, steps_per_epoch)
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
            losses, accuracies = run_epoch(units, x, y, orders, c.batch_size, training,
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


def _scored(units: Units, m: int, shell: nn.Module) -> nn.Module:
    """Return the model fit validates for unit m: its moving average where there is one."""
    if units.M == 1:
        return units.ema.module if units.ema is not None else units.module
    return units.load_unit(m, shell, units.ema.module.state_dict() if units.ema is not None else None)


def _final_model(units: Units, m: int, shell: nn.Module, validated: bool) -> nn.Module:
    """Return ``shell`` holding unit m (M > 1) as fit leaves its model: the moving average where
    there is one, in evaluation mode when fit validated the model itself."""
    return _scored(units, m, shell).train(not (validated and units.ema is None))


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
