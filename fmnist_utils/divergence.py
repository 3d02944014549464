"""Divergence: a non-finite loss or weight, where it happened, and what usually causes it.

The engine (:func:`fmnist_utils.train_epoch.run_epoch`, :func:`fmnist_utils.train.fit`) looks at
its step losses every :data:`DIVERGENCE_CHECK_STEPS` steps and at every unit's weights after each
epoch (:func:`finite_weights`); what it finds it raises, or records, as a :class:`TrainingDiverged`
whose message ends with :func:`divergence_hint`.
"""

from __future__ import annotations

import torch
from torch import nn

from .train_config import TrainConfig


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


def finite_weights(module: nn.Module, units: int = 1) -> list[bool]:
    """Return, for each of the ``units`` models ``module`` holds (stacked along the first dimension
    of every parameter when more than one), whether all its weights are finite (one host sync)."""
    if units == 1:
        return [bool(torch.stack([torch.isfinite(p.detach()).all() for p in module.parameters()]).all())]
    flags = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in module.parameters()])
    return flags.all(0).tolist()


NON_FINITE_WEIGHTS = "the weights became non-finite in the last update; "
