"""Units per hour of sweep training, three ways, in one run on one machine.

The same units (one unit = one configuration on one fold: the study's learning rates and dropout
probabilities crossed, at the study's batch size 128, on stratified folds) are trained:

(a) one by one with the tutorial loop: ``DataLoader`` over a ``TensorDataset`` of float images,
    shuffled, fp32, NCHW, validated through a ``DataLoader`` too;
(b) one by one with ``train.fit`` (on-device uint8 data, channels_last, precision ``auto``);
(c) stacked with ``train.fit_many``: the stack size planned by ``stacked.plan_stack_size`` (a
    decision from the device, never a timing), beside :func:`time_stack_sizes`'s timing of
    stacks of 1, 2, 4, ... (printed and saved, timed apart), and, where asked (``--force-stack``; by default 4 on a CPU, where the plan picks
    1), a fixed stack size, to show what stacking costs there.

Each way is warmed up first (one unit of one batch), so one-off kernel selection is not timed.
Prints wall seconds (and this process's CPU seconds, which other jobs disturb less), units per
hour and the ratios to (a) and (b), with the machine's load average before and after (wall
timings on a shared machine are only as good as its load).

Usage: ``python benchmarks/bench_sweep.py [--size smoke|cpu|full] [--json PATH] [--force-stack M ...]
[--precision auto|fp32|bf16|fp16]``. ``smoke`` takes well under a minute on a 2-core CPU;
``cpu`` (the default without CUDA) a few minutes; ``full`` (the default on CUDA) is sized for a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from fmnist_utils import data, device as devices, provenance, stacked, study
from fmnist_utils.train import TrainConfig, build_model, build_optimizer, fit, fit_many

# name: (learning rates, dropout probabilities, folds k, images cross-validated, epochs)
SIZES = {
    "smoke": (study.LRS[:2], (0.5,), 2, 256, 1),
    "cpu": (study.LRS[:2], (0.3, 0.5), 2, 1_024, 1),
    "full": (study.LRS, (0.1, 0.3, 0.5, 0.7), 2, 12_000, 1),
}


def sweep_units(fm: data.FashionMNIST, size: str, precision: str, device: str):
    """Return (configs, train indices, validation indices) into fm's training split: every
    (learning rate, dropout) on every fold, as a sweep trains them."""
    lrs, dropouts, k, pool_size, epochs = SIZES[size]
    pool = data.stratified_subset(fm.y_train, pool_size, seed=0)
    folds = data.stratified_kfold(fm.y_train[pool], k, seed=0)
    configs, train_sets, val_sets = [], [], []
    for lr in lrs:
        for dropout in dropouts:
            for tr, va in folds:
                configs.append(TrainConfig(lr=lr, dropout=dropout, epochs=epochs, precision=precision, device=device))
                train_sets.append(pool[tr])
                val_sets.append(pool[va])
    return configs, train_sets, val_sets


def tutorial_unit(config: TrainConfig, x_float: torch.Tensor, y: torch.Tensor, tr, va, dev) -> float:
    """Train one unit the tutorial way (DataLoader, fp32); return its final validation accuracy."""
    train_ds = torch.utils.data.TensorDataset(x_float[tr], y[tr])
    val_ds = torch.utils.data.TensorDataset(x_float[va], y[va])
    loader = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, shuffle=True)
    model = build_model(config).to(dev)
    optimizer = build_optimizer(model, config)
    for _ in range(config.epochs):
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(dev), yb.to(dev)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in torch.utils.data.DataLoader(val_ds, batch_size=1000):
                correct += (model(xb.to(dev)).argmax(1) == yb.to(dev)).sum().item()
    return correct / len(va)


# A larger stack is reported faster only when it is this much faster per unit (timings are noisy).
MIN_GAIN = 0.05


def choose_stack_size(seconds_per_unit_step: dict[int, float], max_by_memory: int, min_gain: float = MIN_GAIN) -> int:
    """Return the fastest stack size of measured seconds per unit per step at each size tried.

    For the benchmarks, never for a run's plan. A larger stack replaces a smaller one only when it
    is faster per unit by more than ``min_gain`` (a fraction), so timing noise never picks
    stacking; the result never exceeds ``max_by_memory`` (and is at least 1).
    """
    if not seconds_per_unit_step:
        raise ValueError("choose_stack_size needs at least one measurement")
    best = min(seconds_per_unit_step)
    for size in sorted(seconds_per_unit_step):
        if size <= max_by_memory and seconds_per_unit_step[size] < seconds_per_unit_step[best] * (1 - min_gain):
            best = size
    return max(1, min(best, max_by_memory))


def time_stack_size(config: TrainConfig, dev: torch.device, size: int, steps: int) -> float:
    """Return seconds per unit per training step of a stack of ``size`` units of ``config`` (seeds
    0 .. size-1) on random images: one epoch of ``steps`` batches through ``fit_many`` after a
    one-batch warm-up. Wall time on a GPU; on a CPU this process's CPU time, which other jobs
    on a shared machine disturb far less (sizes are timed alike either way)."""
    b = config.batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (b * steps, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (len(x),), generator=g)
    configs = [config.replace(seed=s) for s in range(size)]
    fit_many(configs, x, y, [np.arange(b)] * size, stack_size=size, progress=False)  # warm-up
    clock = time.perf_counter if dev.type == "cuda" else time.process_time
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    start = clock()
    fit_many(configs, x, y, [np.arange(len(x))] * size, stack_size=size, progress=False)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (clock() - start) / (size * steps)


def time_stack_sizes(config: TrainConfig, device: str | torch.device | None = None, *, steps: int = 3,
                     max_size: int = stacked.MAX_STACK) -> dict[int, float]:
    """Return measured seconds per unit per training step at stack sizes 1, 2, 4, ... (benchmarks only).

    Doubles the size while a stack is faster per unit (by :data:`MIN_GAIN`) and fits the memory of
    ``stacked.plan_stack_size``, up to ``max_size``. A run never calls this: its plan must not
    depend on the machine's load.
    """
    dev = devices.resolve_device(device if device is not None else config.device)
    precision = devices.resolve_precision(config.precision, dev)
    probe = config.replace(device=str(dev), precision=precision, epochs=1)
    limit = min(max_size, stacked.plan_stack_size(probe, dev, max_size=stacked.MAX_STACK).max_by_memory)
    timings = {1: time_stack_size(probe, dev, 1, steps)}
    size = 2
    while size <= limit:
        timings[size] = time_stack_size(probe, dev, size, steps)
        if timings[size] >= timings[size // 2] * (1 - MIN_GAIN):
            break
        size *= 2
    return timings


def timed(fn) -> tuple[float, float, object]:
    """Return (wall seconds, this process's CPU seconds, fn's result)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--size", choices=sorted(SIZES), default="full" if gpu else "cpu", help="how many units, how big")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--force-stack", type=int, nargs="*", default=None,
                        help="also time fit_many at these fixed stack sizes (default: 4 on a CPU, none on CUDA)")
    parser.add_argument("--precision", default="auto", choices=devices.PRECISIONS, help="of fit and fit_many")
    args = parser.parse_args(argv)

    dev = devices.resolve_device("auto")
    precision = devices.resolve_precision(args.precision, dev)
    fm = data.load_fashion_mnist()
    configs, train_sets, val_sets = sweep_units(fm, args.size, args.precision, str(dev))
    n = len(configs)
    forced = args.force_stack if args.force_stack is not None else ([] if gpu else [min(4, n)])
    load_before = os.getloadavg()
    print(f"device: {devices.describe(dev)}; {n} units ({len(SIZES[args.size][0])} lr x {len(SIZES[args.size][1])} "
          f"dropout x {SIZES[args.size][2]} folds), {len(train_sets[0])} training / {len(val_sets[0])} validation "
          f"images each, {configs[0].epochs} epoch(s), batch {configs[0].batch_size}; fit precision {precision} "
          f"({devices.precision_reason(dev)}); load average {load_before[0]:.1f}")

    x_float = data.scale(fm.x_train)  # the tutorial's ToTensor, done once
    x, y = fm.x_train, fm.y_train
    warm = [s[: configs[0].batch_size] for s in train_sets[:2]]
    tutorial_unit(configs[0], x_float, y, warm[0], val_sets[0][:100], dev)
    fit(build_model(configs[0]), x[warm[0]], y[warm[0]], configs[0], progress=False)
    plan = stacked.plan_stack_size(configs[0], dev)
    timing_seconds, _, timings = timed(lambda: time_stack_sizes(configs[0], dev))
    fastest = choose_stack_size(timings, plan.max_by_memory)
    words = ", ".join(f"M={k}: {v * 1000:.1f} ms" for k, v in timings.items())
    print(f"  plan: {plan.reason}; timed ({timing_seconds:.1f} s): {words} per unit-step, fastest M={fastest}")
    for size in forced:
        fit_many(configs[:2], x, y, warm, stack_size=max(2, size), progress=False)

    rows = []

    def record(way: str, seconds: float, cpu_seconds: float, accuracies: list[float], stack_size=None) -> None:
        rows.append({"way": way, "stack_size": stack_size, "seconds": seconds, "cpu_seconds": cpu_seconds,
                     "units": n, "units_per_hour": n / seconds * 3600, "mean_val_accuracy": float(np.mean(accuracies))})
        r = rows[-1]
        print(f"  {way:<28} {seconds:8.1f} s ({cpu_seconds:7.1f} CPU s)  {r['units_per_hour']:8.0f} units/h  "
              f"{rows[0]['seconds'] / seconds:6.2f}x tutorial  "
              + (f"{rows[1]['seconds'] / seconds:5.2f}x fit  " if len(rows) > 1 else " " * 13)
              + f"mean val accuracy {r['mean_val_accuracy']:.4f}")

    seconds, cpu, acc = timed(lambda: [tutorial_unit(c, x_float, y, tr, va, dev)
                                  for c, tr, va in zip(configs, train_sets, val_sets)])
    record("tutorial loop, one by one", seconds, cpu, acc)
    seconds, cpu, hs = timed(lambda: [fit(build_model(c), x[tr], y[tr], c, val=(x[va], y[va]), progress=False)
                                 for c, tr, va in zip(configs, train_sets, val_sets)])
    record("fit, one by one", seconds, cpu, [h[-1]["val_accuracy"] for h in hs])
    seconds, cpu, hs = timed(lambda: fit_many(configs, x, y, train_sets, val_sets, progress=False))
    record(f"fit_many, planned (M={plan.size})", seconds, cpu, [h[-1]["val_accuracy"] for h in hs], plan.size)
    for size in forced:
        seconds, cpu, hs = timed(lambda: fit_many(configs, x, y, train_sets, val_sets, stack_size=size, progress=False))
        record(f"fit_many, M={size}", seconds, cpu, [h[-1]["val_accuracy"] for h in hs], size)
    load_after = os.getloadavg()
    print(f"  load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"(on {os.cpu_count()} cores: above that, other jobs were competing)")
    if args.json:
        for r in rows:
            r.update(ratio_vs_tutorial=rows[0]["seconds"] / r["seconds"], ratio_vs_fit=rows[1]["seconds"] / r["seconds"],
                     cpu_ratio_vs_fit=rows[1]["cpu_seconds"] / r["cpu_seconds"])
        provenance.write_json(args.json, {
            "size": args.size, "units": n, "epochs": configs[0].epochs, "batch_size": configs[0].batch_size,
            "train_images_per_unit": [len(s) for s in train_sets], "val_images_per_unit": [len(s) for s in val_sets],
            "configs": [{"lr": c.lr, "dropout": c.dropout} for c in configs], "precision": precision,
            "rows": rows, "plan": plan.to_dict(), "stack_timings": timings, "stack_timing_seconds": timing_seconds,
            "load_average_before": load_before, "load_average_after": load_after,
            "torch_threads": torch.get_num_threads(), "environment": provenance.environment(),
        })
        print(f"  wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
