"""Train M units of one model at once on one device: :func:`fit_many`.

A *unit* is one training run: one (configuration, fold), or one seed. A sweep trains hundreds of
small ``SeedCNN`` units; one at a time at batch 128 a GPU is bound by kernel launches, not by
arithmetic. Stacking M units turns every launch into M units' work.

How the units are stacked
    Each unit's images go into its own input channel, so every convolution runs once as a grouped
    convolution (``groups=M``: input (B, M*C_in, H, W), weight (M*C_out, C_in, k, k)); BatchNorm
    runs on the M*C channels, so each unit gets its own batch statistics and running statistics
    from the ordinary fused kernel; the dense layers are batched matmuls (``baddbmm`` on
    (M, B, d)). Weights, gradients and momentum buffers are (M, ...) tensors and one SGD update
    with per-unit (M,) vectors of lr, weight decay, momentum and Nesterov flags updates them all.

Why grouped convolutions rather than ``torch.func.stack_module_state`` + ``vmap``
    Measured on this kit's 2-core CPU (SeedCNN, M=4 units of batch 128, forward + backward, fp32,
    machine nearly idle, load 0.7): four separate steps 1.39 s, grouped 1.78 s, vmap 3.35 s. vmap's batching
    rule for a convolution whose weight is batched lowers it to the same grouped convolution, so at
    best it matches it, and it leaves the per-unit details to work-arounds: BatchNorm's in-place
    running-statistics update fails under vmap unless the buffers are batched too
    (``replace_all_batch_norm_modules_`` simply drops running statistics), a ragged last batch
    cannot be vmapped, and dropout probabilities differ per unit. Written out, each is a few
    explicit lines. (In bf16 on this CPU, oneDNN's grouped convolution is much slower still:
    6.3 s against 0.93 s for four separate steps, which is why :func:`plan_stack_size` keeps a CPU
    to one unit at a time.)

What each unit keeps, exactly as :func:`fmnist_utils.train.fit` would give it
    - initial weights: ``train.build_model(config)`` (seeded by ``config.seed``);
    - data: its own indices, reshuffled every epoch by ``torch.Generator().manual_seed(seed)``
      exactly as ``fit`` does, so it sees the same batches in the same order;
    - lr, weight decay, dropout p, momentum, Nesterov: per-unit vectors; momentum buffers per unit;
    - its learning-rate schedule (``onecycle``, ``cosine``): the lr vector follows, step by step,
      the values fit's scheduler sets, read up front from ``train.SCHEDULES`` run on a stand-in
      optimizer per unit (a schedule's length is epochs x the unit's own steps per epoch);
    - augmentation: each step its real rows go through ``augment_batch`` with its own generator,
      the one that shuffled it (fit's: the epoch's permutation, then each step's draws, in fit's
      order), so it sees the same crops, flips and erasures (one small call per unit and step: on
      a GPU that is M times augment_batch's few kernel launches, the price of fit's exact draws);
    - label smoothing in its loss, with the unsmoothed cross-entropy in its history, as fit records;
      ``decay_norm_bias=False`` exempts its biases and norm weights from weight decay;
    - EMA: a moving average of its weights and BatchNorm running statistics after each of its
      steps, with ``train.ema_multi_avg_fn``'s warm-up (its own update count); validation and the
      returned model use the average, as fit's do; ``tta_flip``: validation averages the softmax
      of the image and its mirror as ``train.predict_logits`` does;
    - BatchNorm: batch statistics over its own rows, its own running statistics and step count;
    - its last partial batch: units may hold different numbers of images, hence different step
      counts. In a step where some unit has fewer rows than the batch (or none left), padded rows
      are masked out of its loss and BatchNorm statistics (computed there by a masked BatchNorm)
      and a unit with no rows is not updated at all;
    - dropout masks come from a per-unit generator seeded like fit's ``torch.manual_seed(seed)``;
      on a CPU they are the very masks ``fit`` draws, on CUDA (whose fused dropout kernel draws
      differently) they are independent masks with the same probability;
    - fp16 loss scaling: one scale per unit with ``torch.amp.GradScaler``'s rules, so an overflow
      in one unit skips only that unit's step.
    The tests check it against separate ``fit`` runs: in fp32 the per-epoch losses agree to
    rtol 1e-4; in float64 arithmetic the histories, final weights and BatchNorm running
    statistics agree elementwise to rtol 1e-4. (In fp32 final weights drift apart like those of
    any two correct implementations: fit itself with and without channels_last ends up 1e-3
    apart in relative norm after a few steps, as rounding flips a few ReLU and max-pool ties.)

What goes through ``fit`` one by one instead
    Configurations the stack does not implement (see :func:`stack_unsupported`: models other than
    SeedCNN, optimizers other than SGD, and ``compile``, as capturing the stack's step is not
    implemented) and stacks of one unit. Correctness first: they are trained, not refused. The
    modern recipe (``train.PRESETS["modern"]``: Nesterov SGD, one-cycle, label smoothing, no decay
    on norms and biases, crop + flip + erase, EMA, flip TTA) stacks.

Divergence
    Every step checks each unit's loss on the device; the host looks every
    :data:`CHECK_EVERY` steps and at the end of each epoch (a check is a sync). A diverged unit
    is reported with its true epoch and step. ``on_diverged="raise"`` raises
    :class:`~fmnist_utils.train.TrainingDiverged` (``unit`` = its index in ``configs``);
    ``"record"`` stops that unit (it no longer updates; its rows of the stack are dead weight) and
    ends its history with ``{"epoch", "step", "diverged": reason}``; the others train on.

Stack size
    :func:`plan_stack_size` decides from the device, its total memory and the configuration alone,
    never from a timing taken during the run: a planner that timed steps made the numbers depend on
    the machine's load (a grouped and a plain convolution round differently in bf16, so the same
    seeds gave 44.6% trained one by one on an idle CPU and 40.0% stacked on a loaded one). On a CPU
    the plan is 1 (plain ``fit``; stacking measured slower on the kit's 2-core CPU, see
    ``make bench-sweep``); on CUDA, as many units as :data:`MEMORY_FRACTION` of the device's total
    memory holds, up to :data:`MAX_STACK`. :func:`time_stack_sizes` still times stacks for the
    benchmarks, where a timing belongs.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from . import train
from .augment import augment_batch
from .data import scale
from .progress import bar as progress_bar

# TrainConfig fields that may differ between the units of one stack; every other field is shared
# by a stack (units differing in one are put in different stacks).
PER_UNIT_FIELDS = ("lr", "weight_decay", "dropout", "momentum", "nesterov", "seed")
# Fields all configs of one fit_many call must share (ValueError naming the field otherwise).
SHARED_FIELDS = ("model", "batch_size", "epochs", "precision", "device", "optimizer")
# Steps between host checks for divergence (each check waits for the device).
CHECK_EVERY = 50
# Largest stack plan_stack_size plans, and time_stack_sizes tries.
MAX_STACK = 64
# A larger stack is reported faster only when it is this much faster per unit (timings are noisy).
MIN_GAIN = 0.05
# Share of the device's total memory a stack may plan to use.
MEMORY_FRACTION = 0.8
# torch.amp.GradScaler's defaults, applied per unit.
_SCALE_INIT, _SCALE_GROWTH, _SCALE_BACKOFF, _SCALE_INTERVAL = 2.0**16, 2.0, 0.5, 2000


def stack_unsupported(config: train.TrainConfig) -> str | None:
    """Return why ``config`` cannot be trained in a stack (it then goes through ``fit``), or None."""
    reasons = {
        "model": config.model != "seedcnn",
        "optimizer": config.optimizer != "sgd",
        "compile": config.compile,
    }
    found = [name for name, bad in reasons.items() if bad]
    return f"stacking does not implement {', '.join(found)}" if found else None


def _stack_key(config: train.TrainConfig) -> tuple:
    return tuple(sorted((k, v) for k, v in config.to_dict().items() if k not in PER_UNIT_FIELDS))


def divergence_hint(config: train.TrainConfig) -> str:
    """Return the usual causes of a diverged run of ``config``, with its values."""
    return (f"the learning rate (lr={config.lr:g}) or weight decay (weight_decay={config.weight_decay:g}) "
            "is probably too large for this model; lower it")


# --------------------------------------------------------------------------------------------
# The stacked network


class _SeedCNNStack:
    """M SeedCNNs as (M, ...) tensors: grouped convolutions, per-unit BatchNorm, batched matmuls.

    ``params`` / ``buffers``: {SeedCNN state-dict name: (M, *shape)}; ``batches``: (M,) BatchNorm
    step counts (``num_batches_tracked``). Built from M state dicts (one per unit).
    """

    def __init__(self, states: Sequence[dict], template: nn.Module, dev: torch.device):
        self.template = template  # one unit's module: names, shapes and BatchNorm settings
        self.M = len(states)
        names = [n for n, _ in template.named_parameters()]
        self.params = {n: torch.stack([s[n] for s in states]).to(dev).requires_grad_() for n in names}
        norms = [n for n, m in template.named_modules() if isinstance(m, nn.BatchNorm2d)]
        self.norm = {n: (template.get_submodule(n).momentum, template.get_submodule(n).eps) for n in norms}
        self.buffers = {f"{n}.{b}": torch.stack([s[f"{n}.{b}"] for s in states]).to(dev)
                        for n in norms for b in ("running_mean", "running_var")}
        counts = [int(s[f"{norms[0]}.num_batches_tracked"]) for s in states] if norms else [0] * self.M
        self.batches = torch.tensor(counts, dtype=torch.int64, device=dev)
        self.momentum: dict[str, torch.Tensor] = {}  # SGD momentum buffers, made at the first step that needs them

    def with_state(self, params: dict, buffers: dict) -> "_SeedCNNStack":
        """Return this network with other weights and running statistics (same shapes), e.g. their
        moving averages; BatchNorm step counts stay shared (an average copies them, as fit's does)."""
        view = copy.copy(self)
        view.params, view.buffers = params, buffers
        return view

    def unit_state(self, i: int) -> dict:
        """Return unit ``i``'s state dict, as its SeedCNN's ``state_dict()`` would hold it."""
        state = {n: p[i].detach().clone() for n, p in self.params.items()}
        state.update({n: b[i].clone() for n, b in self.buffers.items()})
        state.update({f"{n}.num_batches_tracked": self.batches[i].clone() for n in self.norm})
        return state

    # forward ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, active: torch.Tensor | None,
                drop: list[torch.Tensor | None], training: bool) -> torch.Tensor:
        """Return logits (M, B, 10) for images x (B, M, 28, 28), unit m's images in channel m.

        ``valid`` (B, M) bool: the rows that are unit m's real images (None: all are, and the
        fused BatchNorm kernel runs); ``active`` (M,) bool: units whose running statistics update;
        ``drop``: the fc1 and fc2 dropout masks, (M, B, 2048) already scaled by 1/(1-p), or None.
        """
        h = self._conv(x, "block1", valid, active, training, norm=True, pool=True)  # (B, M*96, 13, 13)
        h = self._conv(h, "block2", valid, active, training, norm=True, pool=True)  # (B, M*256, 6, 6)
        h = self._conv(h, "block3", valid, active, training)  # (B, M*384, 6, 6)
        h = self._conv(h, "block4", valid, active, training)  # (B, M*384, 6, 6)
        h = self._conv(h, "block5", valid, active, training, pool=True)  # (B, M*256, 2, 2)
        h = h.reshape(len(h), self.M, -1).transpose(0, 1)  # (M, B, 1024), each unit's flatten order
        h = self._dense(h, "fc1.linear", drop[0])  # (M, B, 2048)
        h = self._dense(h, "fc2.linear", drop[1])  # (M, B, 2048)
        return self._linear(h, "head")  # (M, B, 10)

    def _conv(self, h, block, valid, active, training, norm=False, pool=False):
        w = self.params[f"{block}.conv.weight"]  # (M, C_out, C_in, k, k)
        weight = w.reshape(-1, *w.shape[2:])  # (M*C_out, C_in, k, k): group m is unit m
        h = F.conv2d(h, weight, self.params[f"{block}.conv.bias"].reshape(-1), padding=w.shape[-1] // 2, groups=self.M)
        if norm:
            h = self._batch_norm(h, f"{block}.norm", valid, active, training)
        h = torch.relu(h)
        return F.max_pool2d(h, kernel_size=3, stride=2) if pool else h

    def _batch_norm(self, h, name, valid, active, training):
        momentum, eps = self.norm[name]
        weight, bias = self.params[f"{name}.weight"], self.params[f"{name}.bias"]  # (M, C)
        mean, var = self.buffers[f"{name}.running_mean"], self.buffers[f"{name}.running_var"]  # (M, C)
        if not training or valid is None:
            # Channels are unit-major, so the fused kernel computes per-unit statistics and updates
            # each unit's running statistics in place through the flat views.
            return F.batch_norm(h, mean.view(-1), var.view(-1), weight.reshape(-1), bias.reshape(-1),
                                training=training, momentum=momentum, eps=eps)
        return _masked_batch_norm(h, valid, weight, bias, mean, var, active, momentum, eps)

    def _linear(self, h, name):
        w, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]  # (M, d_out, d_in), (M, d_out)
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (M, B, d_out)

    def _dense(self, h, name, mask):
        h = torch.relu(self._linear(h, name))
        return h * mask if mask is not None else h

    # update -------------------------------------------------------------------------------

    @torch.no_grad()
    def sgd_step(self, lr, weight_decay, momentum, nesterov, active, decay_1d: bool) -> None:
        """Apply torch.optim.SGD's update to the units where ``active`` (all (M,) vectors;
        ``momentum`` None when every unit's is 0, ``nesterov`` None when no unit uses it).
        Gradients are used up (modified in place).

        Per unit: g = grad + wd * p; buf = momentum * buf + g (buf starts at 0, so the first
        step gives buf = g as torch does); p -= lr * (g + momentum * buf) with Nesterov, else
        p -= lr * buf; with momentum 0, p -= lr * g. An inactive unit's coefficients are 0 (its
        buffer's decay 1), so it is left exactly as it was. Every operation is one in-place
        multiply-add over all units (memory traffic, not launches, bounds this on a GPU).
        ``decay_1d`` False exempts biases and norm weights from weight decay (``decay_norm_bias``).
        """
        on = active.to(lr.dtype)
        decay, rate = weight_decay * on, -lr * on
        if momentum is not None:
            keep = torch.where(active, momentum, torch.ones_like(momentum))  # buffer decay
            if nesterov is not None:
                rate_g = rate * nesterov.to(lr.dtype)  # Nesterov's gradient term, 0 for heavy ball
                rate_buf = rate * torch.where(nesterov, momentum, torch.ones_like(momentum))
            else:
                rate_buf = rate
        for name, p in self.params.items():
            if p.grad is None:
                continue
            shape = (self.M,) + (1,) * (p.ndim - 1)
            grad = p.grad
            if decay_1d or p.ndim > 2:
                grad.addcmul_(p, decay.view(shape))
            if momentum is None:
                p.addcmul_(grad, rate.view(shape))
                continue
            buf = self.momentum.setdefault(name, torch.zeros_like(p))
            buf.mul_(keep.view(shape)).addcmul_(grad, on.view(shape))
            if nesterov is not None:
                p.addcmul_(grad, rate_g.view(shape))
            p.addcmul_(buf, rate_buf.view(shape))


def _masked_batch_norm(h, valid, weight, bias, running_mean, running_var, active, momentum, eps):
    """BatchNorm of h (B, M*C, H, W) in training mode, unit m's statistics over its valid rows only.

    ``valid`` (B, M) bool; weight, bias, running_mean, running_var (M, C); ``active`` (M,) bool:
    units whose running statistics update (as in BatchNorm: momentum-weighted, unbiased variance).
    Rows that are not valid get normalised too (with their unit's statistics) but count nowhere.
    """
    b, mc, hh, ww = h.shape
    m = valid.shape[1]
    # Statistics in at least fp32, as the fused kernel computes them under autocast.
    x = h.to(torch.promote_types(h.dtype, torch.float32)).reshape(b, m, mc // m, hh, ww)  # (B, M, C, H, W)
    w = valid.reshape(b, m, 1, 1, 1).to(x.dtype)
    count = (valid.sum(0) * hh * ww).to(x.dtype)  # (M,) values per channel
    denominator = count.clamp(min=1).view(m, 1)
    mean = (x * w).sum((0, 3, 4)) / denominator  # (M, C)
    centred = x - mean[None, :, :, None, None]
    var = (centred.square() * w).sum((0, 3, 4)) / denominator  # (M, C), biased, as normalisation uses
    out = centred * torch.rsqrt(var + eps)[None, :, :, None, None]
    out = out * weight[None, :, :, None, None] + bias[None, :, :, None, None]
    with torch.no_grad():
        update = (active & (count > 1)).view(m, 1)
        unbiased = var * (count / (count - 1).clamp(min=1)).view(m, 1)
        running_mean.copy_(torch.where(update, (1 - momentum) * running_mean + momentum * mean, running_mean))
        running_var.copy_(torch.where(update, (1 - momentum) * running_var + momentum * unbiased, running_var))
    return out.reshape(b, mc, hh, ww).to(h.dtype)


def dropout_masks(generators: Sequence[torch.Generator], p: Sequence[float], rows: Sequence[int], batch: int,
                  features: int, dtype: torch.dtype, dev: torch.device) -> torch.Tensor | None:
    """Return dropout masks (M, batch, features): unit m's first ``rows[m]`` rows drawn from its own
    generator with keep probability 1 - p[m] and scaled by 1/(1 - p[m]) (as ``F.dropout`` draws
    them on a CPU), its other rows 1; None when every p is 0 (nothing is drawn, as in ``F.dropout``).
    """
    if not any(p):
        return None
    masks = torch.ones(len(p), batch, features, dtype=dtype, device=dev)
    for m, (gen, pm, n) in enumerate(zip(generators, p, rows)):
        if pm > 0 and n > 0:
            noise = torch.empty(n, features, dtype=dtype, device=dev).bernoulli_(1 - pm, generator=gen)
            masks[m, :n] = noise.div_(1 - pm)
    return masks


class _UnitScaler:
    """torch.amp.GradScaler's loss scaling with one scale per unit (fp16 only)."""

    def __init__(self, m: int, dev: torch.device):
        self.scale = torch.full((m,), _SCALE_INIT, device=dev)
        self.tracker = torch.zeros(m, dtype=torch.int64, device=dev)

    def unscale(self, params: dict) -> torch.Tensor:
        """Divide every gradient by its unit's scale; return (M,) True where one is not finite."""
        found = torch.zeros_like(self.tracker, dtype=torch.bool)
        inverse = self.scale.double().reciprocal().float()
        for p in params.values():
            if p.grad is None:
                continue
            p.grad.mul_(inverse.view((-1,) + (1,) * (p.ndim - 1)))
            found |= ~torch.isfinite(p.grad).flatten(1).all(1)
        return found

    def update(self, found: torch.Tensor, active: torch.Tensor) -> None:
        grown = self.tracker + 1
        grow = ~found & (grown == _SCALE_INTERVAL)
        new_scale = torch.where(found, self.scale * _SCALE_BACKOFF, torch.where(grow, self.scale * _SCALE_GROWTH, self.scale))
        new_tracker = torch.where(found | grow, torch.zeros_like(grown), grown)
        self.scale = torch.where(active, new_scale, self.scale)
        self.tracker = torch.where(active, new_tracker, self.tracker)


class _UnitEMA:
    """Each unit's exponential moving average of its weights and BatchNorm running statistics, as
    fit's ``AveragedModel(model, multi_avg_fn=train.ema_multi_avg_fn(decay), use_buffers=True)``.

    ``params`` / ``buffers``: the averages, shaped like the stack's (M, ...) tensors; ``count``
    (M,) int64: updates so far per unit (AveragedModel's ``n_averaged``: units may take different
    numbers of steps). BatchNorm step counts are not averaged but copied, so they are the stack's.
    """

    def __init__(self, net: _SeedCNNStack, decay: float):
        self.decay = decay
        # AveragedModel starts from a copy of the model; its first update overwrites it anyway.
        self.params = {n: p.detach().clone() for n, p in net.params.items()}
        self.buffers = {n: b.clone() for n, b in net.buffers.items()}
        self.count = torch.zeros(net.M, dtype=torch.int64, device=net.batches.device)

    @torch.no_grad()
    def update(self, net: _SeedCNNStack, active: torch.Tensor) -> None:
        """Average in the units where ``active`` (M,) bool, as one ``update_parameters`` call each:
        the first copies the unit's weights, the n-th (n >= 1) moves them by
        1 - min(decay, (1 + n) / (10 + n)), computed in float32 as ``ema_multi_avg_fn`` does."""
        n = self.count
        keep = torch.clamp((1 + n) / (10 + n), max=self.decay)  # (M,) float32, int / int as in fit
        weight = torch.where(active, torch.where(n == 0, 1.0, 1 - keep), 0.0)  # lerp by 1 is a copy, by 0 a no-op
        for averages, current in ((self.params, net.params), (self.buffers, net.buffers)):
            for name, e in averages.items():
                e.lerp_(current[name].detach(), weight.to(e.dtype).view((-1,) + (1,) * (e.ndim - 1)))
        self.count += active.long()


def _lr_schedules(configs: Sequence[train.TrainConfig], steps_per_epoch: Sequence[int]) -> list[list[float]]:
    """Return each unit's learning rates, step by step, as fit's scheduler sets them.

    Unit m's list has ``epochs * steps_per_epoch[m] + 1`` entries: entry k is the lr after k
    scheduler steps (the lr of its step k; the last is what fit's history reports after the
    last epoch). Built by running ``train.SCHEDULES[schedule]`` on a stand-in optimizer with the
    unit's lr: the same arithmetic on the same floats, so the very values fit uses.
    """
    made: dict[tuple, list[float]] = {}
    out = []
    for c, steps in zip(configs, steps_per_epoch):
        total = c.epochs * steps
        if c.schedule == "constant":  # LambdaLR's factor 1.0 gives lr itself: a sweep's units skip the loop
            out.append([c.lr] * (total + 1))
            continue
        key = (c.replace(seed=0), steps)  # seeds of one setting share their schedule
        if key not in made:
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr)
            scheduler = train.SCHEDULES[c.schedule](optimizer, c, steps)
            lrs = [optimizer.param_groups[0]["lr"]]
            for _ in range(total):
                optimizer.step()  # no gradient, so no change; a scheduler step expects one first
                scheduler.step()
                lrs.append(optimizer.param_groups[0]["lr"])
            made[key] = lrs
        out.append(made[key])
    return out


def _lr_table(schedules: Sequence[list[float]], steps_per_epoch: Sequence[int], epochs: int, steps: int,
              dtype: torch.dtype, dev: torch.device) -> torch.Tensor:
    """Return (epochs, steps, M) learning rates: [e, s, m] is unit m's lr at step s of epoch e + 1
    (0 where unit m has no step s: it is inactive there). Moved to the device once."""
    table = torch.zeros(epochs, steps, len(schedules), dtype=torch.float64)
    for m, (lrs, n) in enumerate(zip(schedules, steps_per_epoch)):
        table[:, :n, m] = torch.tensor(lrs[:-1], dtype=torch.float64).view(epochs, n)
    return table.to(dev, dtype)  # float64 -> dtype rounds each value as torch.tensor(lr, dtype) would


# --------------------------------------------------------------------------------------------
# Training a stack


class _Stack:
    """The state of one stack's training: network, per-unit hyperparameters and generators."""

    def __init__(self, configs: Sequence[train.TrainConfig], states: Sequence[dict], template: nn.Module,
                 dev: torch.device, precision: str):
        c0 = configs[0]
        self.configs, self.dev, self.precision, self.M = list(configs), dev, precision, len(configs)
        self.net = _SeedCNNStack(states, template, dev)

        dtype = next(iter(self.net.params.values())).dtype  # hyperparameters in the weights' precision

        def vector(field, dtype=dtype):
            return torch.tensor([getattr(c, field) for c in configs], dtype=dtype, device=dev)

        self.lr, self.wd, self.mom = vector("lr"), vector("weight_decay"), vector("momentum")
        self.mom = self.mom if any(c.momentum > 0 for c in configs) else None
        self.nesterov = vector("nesterov", torch.bool) if any(c.nesterov for c in configs) else None
        self.p = [c.dropout for c in configs]
        self.batch, self.l1, self.smoothing, self.decay_1d = c0.batch_size, c0.l1, c0.label_smoothing, c0.decay_norm_bias
        self.augment = (c0.aug_crop_pad, c0.aug_flip, c0.aug_erase)
        self.augmenting = bool(c0.aug_crop_pad or c0.aug_flip or c0.aug_erase > 0)  # as train_one_epoch decides
        self.tta_flip = c0.tta_flip
        # fit's CPU generator, seeded with the unit's seed, shuffles each epoch and then draws each
        # step's augmentation: one per unit, drawn in that order.
        self.data_generators = [torch.Generator().manual_seed(c.seed) for c in configs]
        # fit seeds the global generator with the unit's seed for dropout; each unit gets its own.
        self.drop_generators = [torch.Generator(device=dev).manual_seed(c.seed) for c in configs]
        self.ema = _UnitEMA(self.net, c0.ema_decay) if c0.ema_decay > 0 else None
        self.scaler = _UnitScaler(self.M, dev) if devices.needs_grad_scaler(precision) else None
        # Dropout masks in the dtype the dense layers compute in, as F.dropout draws them.
        self.mask_dtype = devices.AUTOCAST_DTYPES.get(precision, dtype)
        self._masks: dict[tuple, torch.Tensor] = {}

    def _device_mask(self, flags: tuple[bool, ...]) -> torch.Tensor:
        if flags not in self._masks:  # a handful of distinct masks per run: made once each
            self._masks[flags] = torch.tensor(flags, dtype=torch.bool, device=self.dev)
        return self._masks[flags]

    def step(self, xb: torch.Tensor, yb: torch.Tensor, rows: Sequence[int], live: Sequence[bool],
             lr: torch.Tensor | None = None):
        """Train one step: xb uint8 (M, B, 1, 28, 28), yb (M, B), ``rows[m]`` of unit m's B rows
        real (the rest padding), ``live[m]`` False for a unit that stopped (diverged), ``lr`` (M,)
        this step's learning rates (None: each config's lr).

        Returns device tensors (M,): summed plain cross-entropy and correct count over the real
        rows, and the objective (mean loss, + L1) that the divergence check reads.
        """
        m, b = self.M, self.batch
        active_flags = tuple(bool(lv and r > 0) for lv, r in zip(live, rows))
        active = self._device_mask(active_flags)
        # A stopped unit (diverged, or stopped by on_epoch) must keep its running statistics, which
        # the fused BatchNorm would update: any stopped unit takes the masked path.
        full = all(live) and all(r == b for r in rows)
        rows_t = torch.tensor(rows, device=self.dev) if not full else None
        valid = None if full else torch.arange(b, device=self.dev)[:, None] < rows_t[None, :]  # (B, M)
        x = scale(xb)  # (M, B, 1, 28, 28)
        if self.augmenting:
            x = self._augmented(x, rows, active_flags)
        x = x.squeeze(2).transpose(0, 1).contiguous(memory_format=torch.channels_last)  # (B, M, 28, 28)
        drop = [dropout_masks(self.drop_generators, self.p, [r if a else 0 for r, a in zip(rows, active_flags)],
                              b, self.net.params[f"{layer}.linear.weight"].shape[1], self.mask_dtype, self.dev)
                for layer in ("fc1", "fc2")]
        with devices.autocast(self.dev, self.precision):
            logits = self.net.forward(x, valid, active, drop, training=True)
        logits = logits.float()  # (M, B, 10)
        flat_logits, flat_y = logits.reshape(m * b, -1), yb.reshape(-1)
        ce = F.cross_entropy(flat_logits, flat_y, reduction="none", label_smoothing=self.smoothing).view(m, b)
        if full:
            loss = ce.mean(1)  # (M,)
        else:
            loss = torch.where(valid.T, ce, 0.0).sum(1) / rows_t.clamp(min=1)
        objective = loss + self.l1 * self._l1() if self.l1 > 0 else loss
        total = (objective * self.scaler.scale).sum() if self.scaler is not None else objective.sum()
        for p in self.net.params.values():
            p.grad = None
        total.backward()
        if self.scaler is not None:
            found = self.scaler.unscale(self.net.params)
            self.scaler.update(found, active)
            active = active & ~found
            for p in self.net.params.values():  # a skipped unit's inf gradients must not reach 0 * inf
                if p.grad is not None:
                    p.grad.masked_fill_(found.view((-1,) + (1,) * (p.ndim - 1)), 0.0)
        self.net.sgd_step(self.lr if lr is None else lr, self.wd, self.mom, self.nesterov, active, self.decay_1d)
        self.net.batches += self._device_mask(active_flags).long()
        if self.ema is not None:  # fit averages after every step, even one the loss scaler skipped
            self.ema.update(self.net, self._device_mask(active_flags))
        with torch.no_grad():
            plain = F.cross_entropy(flat_logits, flat_y, reduction="none").view(m, b) if self.smoothing else ce
            right = logits.argmax(-1) == yb  # (M, B)
            if not full:
                plain, right = torch.where(valid.T, plain, 0.0), right & valid.T
        return plain.detach().sum(1), right.sum(1), objective.detach()

    def _augmented(self, x: torch.Tensor, rows: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        """Return images x (M, B, 1, 28, 28) with each active unit's real rows through
        ``augment_batch`` drawn from its own generator, exactly as fit augments that batch.

        One call per unit, not one over the stack: the draws are per unit anyway, and on a CPU a
        transcendental kernel may round an element differently by its position in the tensor
        (vectorised body against scalar tail), which would move an erased rectangle's edge.
        """
        crop, flip, erase = self.augment
        for m, (gen, n, on) in enumerate(zip(self.data_generators, rows, active)):
            if on:
                x[m, :n] = augment_batch(x[m, :n], gen, crop, flip, erase)
        return x

    def scored(self) -> _SeedCNNStack:
        """Return the network fit would validate and return: the moving average where there is one."""
        return self.net if self.ema is None else self.net.with_state(self.ema.params, self.ema.buffers)

    def _l1(self) -> torch.Tensor:
        # Weight matrices and kernels only (per unit ndim > 1), as train.l1_penalty.
        return sum(p.abs().flatten(1).sum(1) for p in self.net.params.values() if p.ndim > 2)

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, indices: Sequence[torch.Tensor], batch_size: int) -> list[dict]:
        """Return each unit's ``{"accuracy", "loss", "correct"}`` on its own indices into (x, y), as
        train.evaluate with ``per_image`` (of the moving average with EMA; with ``tta_flip`` over the
        image and its mirror)."""
        net = self.scored()
        longest = max(len(i) for i in indices)
        padded = torch.stack([torch.cat([i, i[:1].expand(longest - len(i))]) for i in indices]).to(self.dev)  # (M, N)
        chunk = max(1, batch_size // self.M)
        outs = []
        for start in range(0, longest, chunk):
            idx = padded[:, start:start + chunk]  # (M, n)
            xb = scale(x[idx]).squeeze(2).transpose(0, 1).contiguous(memory_format=torch.channels_last)  # (n, M, 28, 28)
            with devices.autocast(self.dev, self.precision):
                logits = net.forward(xb, None, None, [None, None], training=False).float()  # (M, n, 10)
                if self.tta_flip:  # as train.predict_logits
                    mirrored = net.forward(xb.flip(3), None, None, [None, None], training=False).float()
                    logits = train.flip_averaged_logits(logits, mirrored)
            outs.append(logits.float())
        logits = torch.cat(outs, dim=1).cpu()  # (M, N, 10)
        results = []
        for m, i in enumerate(indices):
            unit_logits, labels = logits[m, : len(i)], y[i].cpu()
            right = unit_logits.argmax(1) == labels
            results.append({"accuracy": right.float().mean().item(), "correct": right.numpy(),
                            "loss": F.cross_entropy(unit_logits, labels).item()})
        return results


def _epoch_orders(generators, indices, length: int, dev) -> torch.Tensor:
    """Return (M, length) indices into x: each unit's indices in this epoch's seeded order (as
    ``iterate_batches`` permutes them in fit), padded with its first index."""
    rows = []
    for gen, idx in zip(generators, indices):
        order = idx[torch.randperm(len(idx), generator=gen)]
        rows.append(torch.cat([order, order[:1].expand(length - len(order))]))
    return torch.stack(rows).to(dev)


def _train_stack(configs, units, x, y, train_idx, val_idx, dev, precision, progress, on_diverged, return_models,
                 on_epoch=None):
    """Train one stack (all configs stackable, sharing their stack key); return (histories, models)."""
    c0 = configs[0]
    models = [train.build_model(c) for c in configs]  # each seeded: fit's initial weights
    stack = _Stack(configs, [m.state_dict() for m in models], models[0], dev, precision)
    if not return_models:
        models = [None] * len(configs)
    sizes = [len(i) for i in train_idx]
    b, m = c0.batch_size, len(configs)
    unit_steps = [math.ceil(n / b) for n in sizes]  # each unit's steps per epoch, as in fit
    steps = max(unit_steps)
    schedules = _lr_schedules(configs, unit_steps)
    lrs = _lr_table(schedules, unit_steps, c0.epochs, steps, stack.lr.dtype, dev)  # (epochs, steps, M)
    live = [True] * m
    stopped = [False] * m  # stopped by on_epoch (not diverged): history and model are kept
    histories: list[list[dict]] = [[] for _ in configs]
    bar = progress_bar(steps * c0.epochs, unit="step", enabled=progress)
    try:
        for epoch in range(1, c0.epochs + 1):
            bar.set_description(f"{m} stacked units, epoch {epoch}/{c0.epochs}", refresh=False)
            start = time.perf_counter()
            # Each unit's permutation before its epoch's augmentation draws, as in fit.
            orders = _epoch_orders(stack.data_generators, train_idx, steps * b, dev)  # (M, steps*B)
            loss_sum = torch.zeros(m, device=dev)
            correct = torch.zeros(m, dtype=torch.int64, device=dev)
            bad_step = torch.full((m,), -1, dtype=torch.int64, device=dev)
            bad_loss = torch.zeros(m, device=dev)
            for s in range(steps):
                rows = [min(b, max(0, n - s * b)) for n in sizes]
                idx = orders[:, s * b:(s + 1) * b]  # (M, B)
                step_loss, step_correct, objective = stack.step(x[idx], y[idx], rows, live, lrs[epoch - 1, s])
                loss_sum += step_loss
                correct += step_correct
                newly = ~torch.isfinite(objective) & (bad_step < 0) & stack._device_mask(tuple(live))
                bad_step = torch.where(newly, s, bad_step)
                bad_loss = torch.where(newly, objective, bad_loss)
                bar.update()
                if (s + 1) % CHECK_EVERY == 0 or s == steps - 1:
                    _check_divergence(bad_step, bad_loss, live, epoch, configs, units, histories, on_diverged)
            if not any(live):
                break
            if val_idx is not None:
                scored = stack.evaluate(x, y, val_idx, c0.eval_batch_size)
            train_loss, train_correct = loss_sum.tolist(), correct.tolist()
            seconds = (time.perf_counter() - start) / m  # the stack's wall time, shared by its units
            for i in range(m):
                if not live[i]:
                    continue
                row = {"epoch": epoch, "train_loss": train_loss[i] / sizes[i], "train_accuracy": train_correct[i] / sizes[i]}
                if val_idx is not None:  # the same row as fit's (train.fit), per-image correctness included
                    row.update(val_loss=scored[i]["loss"], val_accuracy=scored[i]["accuracy"],
                               val_correct=train.pack_correct(scored[i]["correct"]))
                row.update(seconds=seconds, lr=schedules[i][epoch * unit_steps[i]])  # fit's lr at the epoch's end
                histories[i].append(row)
                if on_epoch is not None and on_epoch(units[i], row):
                    live[i], stopped[i] = False, True  # it no longer updates; its history ends here
            bar.set_postfix(live=f"{sum(live)}/{m}")
    finally:
        bar.close()
    for i in range(m):  # fit's closing check: a unit that ends not distinguishable from chance is flagged
        if (live[i] or stopped[i]) and histories[i]:
            split, n = ("val", len(val_idx[i])) if val_idx is not None else ("train", sizes[i])
            train._flag_chance(histories[i], n, split, int(torch.unique(y[train_idx[i]]).numel()))
    out_models = []
    final = stack.scored()  # fit ends holding the moving average, where there is one
    for i, model in enumerate(models):
        if model is None or not (live[i] or stopped[i]):
            out_models.append(None)
            continue
        model.load_state_dict(final.unit_state(i))
        model = train._prepare(model, dev)
        # fit leaves the model in evaluation mode when it validated the model itself (with EMA it
        # validated the average, and the model keeps its training mode).
        out_models.append(model.eval() if val_idx is not None and stack.ema is None else model.train())
    return histories, out_models


def _check_divergence(bad_step, bad_loss, live, epoch, configs, units, histories, on_diverged) -> None:
    steps, losses = bad_step.tolist(), bad_loss.tolist()  # one sync
    for i, (s, loss) in enumerate(zip(steps, losses)):
        if s < 0 or not live[i]:
            continue
        error = train.TrainingDiverged(epoch, s + 1, loss, unit=units[i], hint=divergence_hint(configs[i]))
        if on_diverged == "raise":
            raise error
        live[i] = False
        histories[i].append({"epoch": epoch, "step": s + 1, "diverged": str(error)})


# --------------------------------------------------------------------------------------------
# The public entry point


def _as_indices(indices, n: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices))
    if idx.ndim != 1 or len(idx) == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"{what} must be a non-empty 1-D array of integer indices, got shape {tuple(idx.shape)} "
                         f"{idx.dtype}")
    idx = idx.long()
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{what} holds indices outside [0, {n}): min {int(idx.min())}, max {int(idx.max())}")
    return idx


def _check_shared(configs: Sequence[train.TrainConfig]) -> None:
    for field in SHARED_FIELDS:
        values = sorted({repr(getattr(c, field)) for c in configs})
        if len(values) > 1:
            raise ValueError(f"fit_many: all configs must share {field!r}, got {', '.join(values)}; "
                             f"call fit_many once per {field}")


def _balanced_chunks(units: list[int], size: int) -> list[list[int]]:
    """Split ``units`` into the fewest stacks of at most ``size``, as equal as possible."""
    n_stacks = math.ceil(len(units) / size)
    return [list(part) for part in np.array_split(units, n_stacks)]


def fit_many(
    configs: Sequence[train.TrainConfig],
    x: torch.Tensor,
    y: torch.Tensor,
    train_indices: Sequence,
    val_indices: Sequence | None = None,
    *,
    progress: bool | None = None,
    on_diverged: str = "raise",
    return_models: bool = False,
    stack_size: int | None = None,
    on_epoch=None,
) -> list[list[dict]] | tuple[list[list[dict]], list[nn.Module | None]]:
    """Train one unit per config, stacked where possible; return their histories (in order).

    Unit i trains on ``x[train_indices[i]]`` (x uint8 (N, 1, 28, 28), y (N,)) and is validated
    after every epoch on ``x[val_indices[i]]``; its history is what
    ``fit(build_model(configs[i]), x[train_indices[i]], y[train_indices[i]], configs[i],
    val=(x[val_indices[i]], y[val_indices[i]]))`` returns, to float rounding (``seconds`` is the
    stack's epoch time divided by its units). Configs must share :data:`SHARED_FIELDS`
    (ValueError naming the field); :data:`PER_UNIT_FIELDS` and the indices may differ; units that
    differ in any other field train in separate stacks. ``on_diverged``: "raise" raises
    :class:`~fmnist_utils.train.TrainingDiverged` with ``unit=i``; "record" stops that unit and
    ends its history with a row ``{"epoch", "step", "diverged": reason}`` (a unit trained
    through ``fit`` keeps only that row). ``return_models``: also return each unit's model as
    ``fit`` leaves it (None for a diverged unit). ``stack_size``: units per stack; None plans it
    with :func:`plan_stack_size` (from the device, never a timing); 1 trains every unit with ``fit``. ``progress`` as in ``fit``.
    ``on_epoch``: called as ``on_epoch(i, row)`` (``i`` an index into ``configs``) with each unit's
    finished epoch's history row; when it returns True unit i stops after that epoch (its history
    ends there, its model is returned as it then is) and the others train on.
    """
    configs = list(configs)
    if not configs:
        raise ValueError("fit_many needs at least one config")
    if on_diverged not in ("raise", "record"):
        raise ValueError(f"on_diverged must be 'raise' or 'record', got {on_diverged!r}")
    if stack_size is not None and (not isinstance(stack_size, int) or stack_size < 1):
        raise ValueError(f"stack_size must be an integer >= 1 or None (planned), got {stack_size!r}")
    train.check_split(x, y, "training")
    if len(train_indices) != len(configs) or (val_indices is not None and len(val_indices) != len(configs)):
        raise ValueError(f"fit_many: {len(configs)} configs need as many train_indices (got {len(train_indices)})"
                         + (f" and val_indices (got {len(val_indices)})" if val_indices is not None else ""))
    _check_shared(configs)
    train_idx = [_as_indices(i, len(x), f"train_indices[{u}]") for u, i in enumerate(train_indices)]
    val_idx = None if val_indices is None else [_as_indices(i, len(x), f"val_indices[{u}]")
                                                for u, i in enumerate(val_indices)]
    dev = devices.resolve_device(configs[0].device)
    if dev.type == "cuda":  # fixed shapes within a stack: cuDNN times its kernels once, as fit does
        torch.backends.cudnn.benchmark = True
    precision = devices.resolve_precision(configs[0].precision, dev)

    groups: dict[tuple, list[int]] = {}
    alone: list[int] = []
    for u, c in enumerate(configs):
        if stack_unsupported(c) is None:
            groups.setdefault(_stack_key(c), []).append(u)
        else:
            alone.append(u)
    stacks: list[list[int]] = []
    if any(len(g) > 1 for g in groups.values()) and stack_size != 1:
        size = stack_size or plan_stack_size(configs[0], dev).size
        for g in groups.values():
            stacks += _balanced_chunks(g, size)
    else:
        stacks = [[u] for g in groups.values() for u in g]
    alone += [s[0] for s in stacks if len(s) == 1]
    stacks = [s for s in stacks if len(s) > 1]

    histories: list[list[dict] | None] = [None] * len(configs)
    models: list[nn.Module | None] = [None] * len(configs)
    if stacks:
        xd, yd = x.to(dev), y.to(dev)
        for units in stacks:
            hs, ms = _train_stack([configs[u] for u in units], units, xd, yd, [train_idx[u] for u in units],
                                  None if val_idx is None else [val_idx[u] for u in units], dev, precision,
                                  progress, on_diverged, return_models, on_epoch)
            for u, h, mod in zip(units, hs, ms):
                histories[u], models[u] = h, mod
    for u in sorted(alone):
        histories[u], models[u] = _fit_one(configs[u], u, x, y, train_idx[u],
                                           None if val_idx is None else val_idx[u], progress, on_diverged, on_epoch)
    return (histories, models) if return_models else histories


def _fit_one(config, unit, x, y, tr, va, progress, on_diverged, on_epoch=None):
    model = train.build_model(config)
    val = None if va is None else (x[va], y[va])
    each = None if on_epoch is None else (lambda row: on_epoch(unit, row))
    try:
        if each is None:  # fit's signature before on_epoch: tests replace fit with such functions
            return train.fit(model, x[tr], y[tr], config, val=val, progress=progress), model
        return train.fit(model, x[tr], y[tr], config, val=val, progress=progress, on_epoch=each), model
    except train.TrainingDiverged as exc:
        error = train.TrainingDiverged(exc.epoch, exc.step, exc.loss, unit=unit, hint=exc.hint)
        if on_diverged == "raise":
            raise error from exc
        return [{"epoch": exc.epoch, "step": exc.step, "diverged": str(error)}], None


# --------------------------------------------------------------------------------------------
# How many units per stack


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


def choose_stack_size(seconds_per_unit_step: dict[int, float], max_by_memory: int, min_gain: float = MIN_GAIN) -> int:
    """Return the fastest stack size of measured seconds per unit per step at each size tried.

    For the benchmarks (:func:`time_stack_sizes`), never for a run's plan. A larger stack
    replaces a smaller one only when it is faster per unit by more than ``min_gain`` (a fraction),
    so timing noise never picks stacking; the result never exceeds ``max_by_memory`` (and is at
    least 1).
    """
    if not seconds_per_unit_step:
        raise ValueError("choose_stack_size needs at least one measurement")
    best = min(seconds_per_unit_step)
    for size in sorted(seconds_per_unit_step):
        if size <= max_by_memory and seconds_per_unit_step[size] < seconds_per_unit_step[best] * (1 - min_gain):
            best = size
    return max(1, min(best, max_by_memory))


def plan_stack_size(config: train.TrainConfig, device: str | torch.device | None = None, *,
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
    why_not = stack_unsupported(config)
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


def time_stack_sizes(config: train.TrainConfig, device: str | torch.device | None = None, *, steps: int = 3,
                     max_size: int = MAX_STACK) -> dict[int, float]:
    """Return measured seconds per unit per training step at stack sizes 1, 2, 4, ... (benchmarks only).

    Times ``steps`` real training steps (after one warm-up step; the fastest counts) of one unit
    through ``fit``'s step, then of stacks of 2, 4, 8, ... units, doubling while a stack is faster
    per unit (by :data:`MIN_GAIN`) and fits the memory of :func:`plan_stack_size`, up to
    ``max_size``. A run never calls this: its plan must not depend on the machine's load.
    """
    dev = devices.resolve_device(device if device is not None else config.device)
    precision = devices.resolve_precision(config.precision, dev)
    probe = config.replace(device=str(dev), precision=precision, epochs=1)
    limit = min(max_size, plan_stack_size(probe, dev, max_size=MAX_STACK).max_by_memory)
    timings = {1: _time_single(probe, dev, steps)[0]}
    size = 2
    while size <= limit:
        timings[size] = _time_stack(probe, dev, size, steps)[0]
        if timings[size] >= timings[size // 2] * (1 - MIN_GAIN):
            break
        size *= 2
    return timings


def _total_bytes(dev: torch.device) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory)
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30  # a platform without sysconf: assume a laptop's 8 GiB


def _estimated_bytes_per_unit(config: train.TrainConfig) -> int:
    """Return a rough memory need of one SeedCNN unit: weights, gradients, momentum and an autocast
    copy (4 copies of the parameters; a 5th for an EMA) plus activations kept for the backward
    pass (about 2 MB per image in fp32 at 28x28)."""
    from .models import SEED_CNN_PARAMETERS

    copies = 5 if config.ema_decay > 0 else 4
    return copies * 4 * SEED_CNN_PARAMETERS + config.batch_size * 2_000_000


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _random_images(n: int, dev: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(dev), y.to(dev)


def _fastest_step(step, steps: int, dev: torch.device) -> float:
    """Return the shortest of ``steps`` timed calls of ``step(i)`` after one warm-up call.

    On a GPU, wall time. On a CPU, this process's CPU time (all its threads), which other jobs
    on a shared machine disturb far less than wall time; the minimum is the step's cost when
    nothing else competes. Either way the sizes compared are timed alike.
    """
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    step(0)  # warm-up: kernel selection, allocation
    times = []
    for i in range(1, steps + 1):
        _sync(dev)
        start = clock()
        step(i)
        _sync(dev)
        times.append(clock() - start)
    return min(times)


def _time_single(config: train.TrainConfig, dev: torch.device, steps: int) -> tuple[float, int]:
    """Return (seconds per step of fit's own training step, peak bytes or 0 off CUDA)."""
    b = config.batch_size
    x, y = _random_images(b * (steps + 1), dev)
    model = train._prepare(train.build_model(config), dev)
    optimizer = train.build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)

    def step(i):  # one batch is one epoch of train_one_epoch: exactly fit's step
        train.train_one_epoch(model, optimizer, x[i * b:(i + 1) * b], y[i * b:(i + 1) * b], config, generator,
                              config.precision)

    seconds = _fastest_step(step, steps, dev)
    peak = torch.cuda.max_memory_allocated(dev) - base if dev.type == "cuda" else 0
    return seconds, int(peak)


def _time_stack(config: train.TrainConfig, dev: torch.device, size: int, steps: int) -> tuple[float, int | None]:
    """Return (seconds per unit per step of a stack of ``size``, peak bytes on CUDA or None)."""
    model = train.build_model(config)
    state = model.state_dict()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    stack = _Stack([config] * size, [state] * size, model, dev, config.precision)
    b = config.batch_size
    x, y = _random_images(size * b, dev)
    xb, yb = x.view(size, b, 1, 28, 28), y.view(size, b)
    rows, live = [b] * size, [True] * size
    seconds = _fastest_step(lambda i: stack.step(xb, yb, rows, live), steps, dev) / size
    peak = torch.cuda.max_memory_allocated(dev) - base if dev.type == "cuda" else None
    return seconds, peak
