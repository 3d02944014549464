"""Configurations per hour of the cross-validated sweep with 1 and with N worker processes.

Each run sweeps the same configurations (drawn from the study's grid) over the same stratified
folds into a fresh journal file, on one machine, and times the whole call: worker start-up,
claiming, training and validating every (configuration, fold). One worker runs in this process
(as a notebook does); N workers are spawned processes sharing the journal, each with
cores // N torch threads on a CPU, all sharing the one GPU on CUDA. A short untimed sweep first
warms this process up, so the 1-worker figure carries no one-off kernel selection.

Usage: ``python benchmarks/bench_sweep.py [--workers 1 2] [--configs 4] [--k 2] [--subset 2400]
[--epochs 1] [--out F]``; defaults take about a minute on a 2-core CPU and are larger on a GPU.
Each spawned worker pays a few seconds to import torch and warm up; the units must be long enough
to amortise that. On a CPU whose cores one worker already keeps busy, more workers cannot help
(expect about 1x); on a GPU, several small models train concurrently and fill it better.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from fmnist_utils import data, device as devices, provenance, sweep
from fmnist_utils.train import TrainConfig


def time_sweep(fm, space, base, k, subset, workers, folder: Path) -> dict:
    """Return the timing of one sweep with ``workers`` processes into a fresh journal file."""
    run = sweep.run_sweep(fm.x_train, fm.y_train, space, folder / f"bench-{workers}.journal", base=base, k=k,
                          subset=subset, workers=workers, verbose=False)
    if run.trained != run.n_units:
        raise RuntimeError(f"{workers} workers trained {run.trained} of {run.n_units} units")
    n_configs = run.n_units // k
    return {"workers": workers, "seconds": run.seconds, "configs": n_configs, "units": run.n_units,
            "configs_per_hour": n_configs / run.seconds * 3600, "units_per_hour": run.n_units / run.seconds * 3600}


def main(argv=None) -> int:
    dev = devices.resolve_device("auto")
    gpu = dev.type == "cuda"
    cores = sweep._cpu_count()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4] if gpu else [1, max(2, cores)],
                        help="worker counts compared (default: 1 and 4 on a GPU, 1 and the cores on a CPU)")
    parser.add_argument("--configs", type=int, default=8 if gpu else 4, help="configurations swept")
    parser.add_argument("--k", type=int, default=2, help="folds")
    parser.add_argument("--subset", type=int, default=12_000 if gpu else 2_400, help="training images cross-validated")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per (configuration, fold)")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    fm = data.load_fashion_mnist()
    space = sweep.study_space("random", n_configs=args.configs, seed=0)
    base = TrainConfig(epochs=args.epochs)
    print(f"device: {devices.describe(dev)}; {args.configs} configurations x {args.k} folds of "
          f"{args.subset} images, {args.epochs} epoch(s) each")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = sweep.study_space("random", n_configs=1, seed=1)
        sweep.run_sweep(fm.x_train, fm.y_train, warm, Path(tmp) / "warm.journal", base=base, k=2,
                        subset=min(args.subset, 200), verbose=False)
        for workers in args.workers:
            rows.append(time_sweep(fm, space, base, args.k, args.subset, workers, Path(tmp)))
            r = rows[-1]
            print(f"  {workers:2d} worker(s): {r['seconds']:7.1f} s, {r['configs_per_hour']:8.0f} configurations/h "
                  f"({r['units_per_hour']:.0f} folds/h), {r['configs_per_hour'] / rows[0]['configs_per_hour']:.2f}x")
    if args.out:
        provenance.write_json(args.out, {
            "configs": args.configs, "k": args.k, "subset": args.subset, "epochs": args.epochs, "rows": rows,
            "torch_threads": torch.get_num_threads(), "environment": provenance.environment(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
