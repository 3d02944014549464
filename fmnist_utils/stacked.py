"""M copies of one ``nn.Module`` run as one: :class:`StackedModule`, and which units to stack, how many.

A *unit* is one training run: one (configuration, fold), or one seed. A sweep trains hundreds of
small ``SeedCNN`` units; one at a time at batch 128 a GPU is bound by kernel launches, not by
arithmetic. Stacking M units turns every launch into M units' work. The training loop is
:func:`fmnist_utils.train.fit`'s (``train._train_units``); this module only knows modules.

How the units are stacked
    The architecture is the module's own, written once in :mod:`fmnist_utils.models`:
    ``torch.func.stack_module_state`` stacks the M units' parameters and buffers into (M, ...)
    tensors, and ``torch.func.functional_call`` of the module inside ``torch.vmap`` runs them on
    inputs (M, B, ...). vmap lowers a convolution with batched weights to one grouped convolution,
    a linear layer to a batched matmul, and BatchNorm with batched running statistics to per-unit
    statistics updated in place (``num_batches_tracked`` included). The (M, ...) tensors are the
    parameters of one ordinary module (:class:`StackedModule`), so torch's own optimizer,
    scheduler and ``AveragedModel`` train and average them as they would one unit.

Dropout
    Random draws cannot be per unit inside vmap, so each ``nn.Dropout`` of the stacked copy is a
    :class:`MaskDropout` that multiplies by a mask fed in as a batched buffer. The masks come
    from one generator per unit seeded like fit's ``torch.manual_seed(seed)`` and are drawn as
    ``F.dropout`` draws them (:func:`dropout_masks`): on a CPU they are the very masks fit draws,
    on CUDA (whose fused dropout kernel draws differently) independent masks with the same
    probability. A unit's drop probability is its own.

A stack of one is the module itself
    With M = 1 nothing is stacked: the plain module runs (the CPU pace of ``fit`` is the pace of
    the bare training step).

Stack size
    :func:`plan_stack_size` decides from the device, its total memory and the configuration alone,
    never from a timing taken during the run: a planner that timed steps made the numbers depend on
    the machine's load (a grouped and a plain convolution round differently in bf16, so the same
    seeds gave 44.6% trained one by one on an idle CPU and 40.0% stacked on a loaded one). On a CPU
    the plan is 1 (stacking measured slower on the kit's 2-core CPU, see ``make bench-sweep``); on
    CUDA, as many units as :data:`MEMORY_FRACTION` of the device's total memory holds, up to
    :data:`MAX_STACK`. ``benchmarks/bench_sweep.py`` times stacks, where a timing belongs.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from . import device as devices

# Largest stack plan_stack_size plans.
MAX_STACK = 64
# Share of the device's total memory a stack may plan to use.
MEMORY_FRACTION = 0.8
# Models whose memory per unit _estimated_bytes_per_unit knows (only these are planned above 1).
PLANNED_MODELS = ("seedcnn",)


class MaskDropout(nn.Module):
    """Dropout by a given mask: (B, ...) -> input * ``mask`` (the mask already scaled by 1/(1-p)),
    or the input itself when no mask is set (evaluation, or p = 0 for every unit)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", None, persistent=False)

    def forward(self, x):
        return x if self.mask is None else x * self.mask


def _with_mask_dropout(module: nn.Module) -> nn.Module:
    """Return a deep copy of ``module`` on the meta device with every ``nn.Dropout`` a :class:`MaskDropout`."""
    template = copy.deepcopy(module).to("meta")
    for parent in list(template.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, MaskDropout())
    return template


class StackedModule(nn.Module):
    """M units of one architecture as one module: ``units`` holds the template's parameters and
    buffers stacked to (M, ...) under the template's names; ``forward(x (M, B, ...), masks)``
    returns (M, B, ...) outputs, unit m's from its own parameters and BatchNorm statistics.

    ``masks``: {dropout module name: (M, B, *features)} (see :func:`dropout_masks`) in training.
    """

    def __init__(self, modules: Sequence[nn.Module]):
        super().__init__()
        self.M = len(modules)
        params, buffers = stack_module_state(list(modules))  # (M, ...) leaves, detached copies
        self.units = copy.deepcopy(modules[0])
        for name, value in params.items():
            owner, attr = _owner(self.units, name)
            setattr(owner, attr, nn.Parameter(value))
        for name, value in buffers.items():
            owner, attr = _owner(self.units, name)
            owner.register_buffer(attr, value)
        # Not a submodule: the meta template only describes the computation (no state, no copy in
        # state_dict, parameters() or AveragedModel's average).
        self._template = (_with_mask_dropout(modules[0]),)
        self.dropout_names = [n for n, m in self._template[0].named_modules() if isinstance(m, MaskDropout)]

    def forward(self, x: torch.Tensor, masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        template = self._template[0].train(self.training)
        params = dict(self.units.named_parameters())
        buffers = dict(self.units.named_buffers())
        if masks:
            buffers.update({f"{name}.mask": mask for name, mask in masks.items()})

        def one(p, b, xm):
            return functional_call(template, (p, b), (xm,))

        return torch.vmap(one)(params, buffers, x)

    def dropout_shapes(self, sample: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Return {dropout module name: its input's shape after the batch dimension} for inputs
        shaped like ``sample`` (B, ...), found by running the meta template once."""
        template, shapes, hooks = self._template[0], {}, []
        for name in self.dropout_names:
            def record(module, args, name=name):
                shapes[name] = tuple(args[0].shape[1:])
            hooks.append(template.get_submodule(name).register_forward_pre_hook(record))
        try:
            with torch.no_grad():
                template.eval()(sample[:1].to("meta"))
        finally:
            for h in hooks:
                h.remove()
        return shapes

    def unit_state(self, i: int, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Return unit ``i``'s state dict as its own module's ``state_dict()`` would hold it (from
        ``state``, a state dict of this module such as its moving average's, or its own)."""
        state = self.state_dict() if state is None else state
        return {k.removeprefix("units."): v[i].detach().clone() for k, v in state.items()}


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attr


def dropout_masks(generators: Sequence[torch.Generator], p: Sequence[float], shape: tuple[int, ...],
                  dtype: torch.dtype, dev: torch.device) -> torch.Tensor | None:
    """Return dropout masks (M, *shape): unit m's drawn from its own generator with keep
    probability 1 - p[m] and scaled by 1/(1 - p[m]), as ``F.dropout`` draws them on a CPU (a unit
    with p = 0 draws nothing and gets ones); None when every p is 0 (nothing is drawn)."""
    if not any(p):
        return None
    masks = torch.ones(len(p), *shape, dtype=dtype, device=dev)
    for m, (gen, pm) in enumerate(zip(generators, p)):
        if pm > 0:
            masks[m] = torch.empty(shape, dtype=dtype, device=dev).bernoulli_(1 - pm, generator=gen).div_(1 - pm)
    return masks


# --------------------------------------------------------------------------------------------
# Which units stack, and how many


def stack_unsupported(config, precision: str | None = None) -> str | None:
    """Return why units of ``config`` are trained one at a time (a stack of one), or None.

    ``compile`` captures one module's step; fp16 needs a loss scale per unit, and one unit's
    overflow must never skip another's step (``precision``: the resolved one, else the config's);
    the memory per unit is estimated for :data:`PLANNED_MODELS` only.
    """
    reasons = {
        "compile": config.compile,
        "fp16": (precision or config.precision) == "fp16",
        "model": config.model not in PLANNED_MODELS,
    }
    found = [name for name, bad in reasons.items() if bad]
    return f"stacking does not implement {', '.join(found)}" if found else None


def per_unit_fields(config) -> tuple[str, ...]:
    """Return the TrainConfig fields that may differ between units of one stack of ``config``.

    Seeds and dropout always (each unit draws its own masks). With SGD also lr and weight decay:
    the engine folds them into each unit's gradient (g' = lr_i (g + wd_i p), with the schedule's
    factor as the optimizer's lr), which is SGD's update exactly; adaptive optimizers normalise
    the gradient, so their units must share them.
    """
    return ("seed", "dropout", "lr", "weight_decay") if config.optimizer == "sgd" else ("seed", "dropout")


def stack_key(config, n_train: int) -> tuple:
    """Return what units stacked together must share: every field but :func:`per_unit_fields`,
    and the number of training images (equal step counts, so no batch is ragged)."""
    free = per_unit_fields(config)
    return (n_train,) + tuple(sorted((k, v) for k, v in config.to_dict().items() if k not in free))


def plan_stacks(configs: Sequence, n_train: Sequence[int], size: int, precision: str) -> list[list[int]]:
    """Return the units (indices into ``configs``) of each stack, in order of their first unit:
    units sharing :func:`stack_key` in the fewest stacks of at most ``size``, as equal as possible;
    every unit :func:`stack_unsupported` rejects in a stack of its own."""
    groups: dict[tuple, list[int]] = {}
    for u, (c, n) in enumerate(zip(configs, n_train)):
        key = ("alone", u) if stack_unsupported(c, precision) else stack_key(c, n)
        groups.setdefault(key, []).append(u)
    stacks = []
    for units in groups.values():
        n_stacks = -(-len(units) // max(1, size))
        stacks += [list(map(int, part)) for part in np.array_split(units, n_stacks)]
    return sorted(stacks)


@dataclass(frozen=True)
class StackPlan:
    """The stack size chosen for one (model, batch size, precision, device) and what it rests on.

    size: units per stack. bytes_per_unit: device memory one unit needs (estimated from the
    parameters and the batch, :func:`_estimated_bytes_per_unit`). total_bytes: the device's total
    memory (not its free memory, which other processes change). max_by_memory: the largest stack
    that fits. reason: one line saying why. Recorded in the results of whatever trained with it.
    """

    size: int
    bytes_per_unit: int
    total_bytes: int
    max_by_memory: int
    reason: str
    device: str
    precision: str
    batch_size: int

    def to_dict(self) -> dict:
        """Return the plan as a plain dict (for results and benchmark JSON)."""
        return dataclasses.asdict(self)


def plan_stack_size(config, device: str | torch.device | None = None, *,
                    max_size: int = MAX_STACK, total_bytes: int | None = None) -> StackPlan:
    """Return the :class:`StackPlan` for ``config``'s model, batch size and precision on ``device``.

    A pure decision, the same whatever else runs on the machine: 1 where
    :func:`stack_unsupported` rejects the config and on a CPU; on CUDA the most units that fit in
    :data:`MEMORY_FRACTION` of the device's total memory (``total_bytes``, read from the device
    when None), at most ``max_size``.
    """
    dev = devices.resolve_device(device if device is not None else config.device)
    precision = devices.resolve_precision(config.precision, dev)
    total = _total_bytes(dev) if total_bytes is None else int(total_bytes)
    per_unit = _estimated_bytes_per_unit(config)
    max_by_memory = max(1, int(MEMORY_FRACTION * total // per_unit))
    why_not = stack_unsupported(config, precision)
    if why_not is not None:
        size, reason = 1, why_not
    elif dev.type != "cuda":
        size, reason = 1, ("one unit at a time on a CPU: stacking measured slower than separate steps on the "
                           "kit's 2-core CPU (make bench-sweep)")
    else:
        size = max(1, min(max_size, max_by_memory))
        reason = (f"stack of {size}: as many units as {MEMORY_FRACTION:.0%} of the device's memory holds "
                  f"({per_unit / 2**20:.0f} MiB per unit at batch {config.batch_size}), at most {max_size}")
    return StackPlan(size, int(per_unit), int(total), max_by_memory, reason, str(dev), precision, config.batch_size)


def _total_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # a platform without sysconf: assume a laptop's 8 GiB


def _estimated_bytes_per_unit(config) -> int:
    """Return a rough memory need of one SeedCNN unit: weights, gradients, momentum and an autocast
    copy (4 copies of the parameters; a 5th for an EMA) plus activations kept for the backward
    pass (about 2 MB per image in fp32 at 28x28)."""
    from .models import SEED_CNN_PARAMETERS

    copies = 5 if config.ema_decay > 0 else 4
    return copies * 4 * SEED_CNN_PARAMETERS + config.batch_size * 2_000_000
