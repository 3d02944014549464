"""Measure the study's recipe's test accuracy against optimizer steps, to choose the step floor.

SeedCNN is trained with the study's recipe (:class:`fmnist_utils.train.TrainConfig`'s defaults:
SGD lr 0.05, batch 128, dropout 0.5, weight decay 0.001) on the whole training split, with
``fit``'s own epoch (:func:`fmnist_utils.train.train_one_epoch`: the same seeded shuffling,
optimizer and precision), and scored on a fixed stratified test subset after log-spaced step
counts. The curve is in steps, not seconds, so the machine's load does not change it, only how
long it takes to measure. :data:`fmnist_utils.budget.FLOOR_STEPS` is chosen from its output.

Every measured point is written to the JSON at once, so an interrupted run keeps what it measured.
Usage: ``python benchmarks/steps_curve.py [--max-steps 2400] [--seeds 0] [--test 2000] [--out F]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import re
import time
from pathlib import Path

import torch

from fmnist_utils import data, device as devices, provenance, train

RESULTS = Path(__file__).resolve().parent / "results"


def checkpoints(max_steps: int, per_octave: int = 2, first: int = 25) -> list[int]:
    """Return log-spaced step counts from ``first`` to ``max_steps`` (``per_octave`` per doubling), ascending."""
    n = int(math.floor(math.log2(max_steps / first) * per_octave))
    steps = sorted({round(first * 2 ** (i / per_octave)) for i in range(n + 1)} | {max_steps})
    return [s for s in steps if s <= max_steps]


def slug(text: str) -> str:
    """Return ``text`` as a lower-case file-name part (letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def curve(fm: data.FashionMNIST, seed: int, at: list[int], test_idx, config: train.TrainConfig, record) -> list[dict]:
    """Train one seed of ``config`` and return ``[{"steps", "epochs", "test_accuracy", "seconds"}]`` at the steps ``at``.

    ``record(points)`` is called after each point (the caller writes its JSON there).
    """
    config = train.TrainConfig(**{**config.to_dict(), "seed": seed})
    dev = devices.resolve_device(config.device)
    precision = devices.resolve_precision(config.precision, dev)
    model = train.prepare_model(train.build_model(config), dev)
    optimizer = train.build_optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)  # as fit seeds shuffling
    torch.manual_seed(seed)  # dropout masks, as fit does
    x, y = fm.x_train.to(dev), fm.y_train.to(dev)
    test_idx = torch.as_tensor(test_idx)
    x_test, y_test = fm.x_test[test_idx].to(dev), fm.y_test[test_idx].to(dev)
    per_epoch = math.ceil(len(x) / config.batch_size)
    points: list[dict] = []
    done, start = 0, time.perf_counter()
    todo = sorted(at)

    def on_step(step: int) -> None:
        if todo and done + step + 1 == todo[0]:
            todo.pop(0)
            scored = train.evaluate(model, x_test, y_test, config.eval_batch_size, precision)
            model.train()  # evaluate leaves the model in eval mode; the epoch continues
            points.append({"steps": done + step + 1, "epochs": round((done + step + 1) / per_epoch, 3),
                           "test_accuracy": scored["accuracy"], "test_loss": scored["loss"],
                           "seconds": round(time.perf_counter() - start, 1)})
            print(f"seed {seed} step {points[-1]['steps']}: {scored['accuracy']:.4f} ({points[-1]['seconds']} s)",
                  flush=True)
            record(points)

    epoch = 0
    while todo:
        epoch += 1
        # One whole epoch per call, as fit runs it; stop early once the last point is measured.
        need = todo[-1] - done
        if need >= per_epoch:
            train.train_one_epoch(model, optimizer, x, y, config, generator, precision, on_step=on_step, epoch=epoch)
        else:
            # The last partial epoch: fit's epoch on the first `need` batches of a seeded permutation.
            order = torch.randperm(len(x), generator=generator)[: need * config.batch_size].to(dev)
            train.train_one_epoch(model, optimizer, x[order], y[order], config, generator, precision,
                                  on_step=on_step, epoch=epoch)
        done += per_epoch if need >= per_epoch else need
    return points


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=2400, help="last step count measured (469 = one epoch)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds trained, one curve each")
    parser.add_argument("--test", type=int, default=2000, help="stratified test images scored at each point")
    parser.add_argument("--out", type=Path, default=None, help="JSON written (default results/steps-curve-<cpu>-<date>.json)")
    args = parser.parse_args(argv)
    fm = data.load_fashion_mnist()
    config = train.TrainConfig()  # the study's recipe
    env = provenance.environment(config.device)
    date = dt.date.today().isoformat()
    out = args.out or RESULTS / f"steps-curve-{slug(env['device_name'])}-{date}.json"
    test_idx = data.stratified_subset(fm.y_test, args.test, seed=0)
    at = checkpoints(args.max_steps)
    result = {"what": "test accuracy of the study's recipe against optimizer steps (batch 128, all 60,000 "
                      "training images, 469 steps an epoch; the study's 10 epochs: 4,690 steps)",
              "config": config.to_dict(), "test_images": args.test, "at_steps": at, "date": date,
              "environment": env, "curves": {}}
    for seed in args.seeds:
        def record(points, seed=seed):
            result["curves"][str(seed)] = points
            provenance.write_json(out, result)

        curve(fm, seed, at, test_idx, config, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
