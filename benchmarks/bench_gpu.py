"""GPU pace of the study's recipe, and time-to-accuracy of the modern recipe, in one run.

Prints, for the study's recipe (batch 128, per-epoch evaluation on the test set):
  (a) the tutorial loop: torchvision FashionMNIST + ToTensor + DataLoader, fp32;
  (b) the kit's eager loop: `fit` (on-device data, bf16, channels_last);
  (c) the kit's captured loop: `fit` with `compile=True` (torch.compile, CUDA graphs);
seconds per epoch, images/s and ratios to (a); compilation time is reported separately (the
first epoch of (c) is not timed as steady state). Then trains the "modern" preset and reports
the wall time until the test accuracy first reaches --target and the final accuracy.

Made for a CUDA GPU; it also runs on a CPU with small settings to check that it works:
``python benchmarks/bench_gpu.py --epochs 2 --subset 2000 --modern-epochs 1 --modern-subset 2000``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import tutorial_dataset, tutorial_epoch  # noqa: E402

from fmnist_utils import data, device as devices, provenance  # noqa: E402
from fmnist_utils.train import TrainConfig, build_model, build_optimizer, fit, preset  # noqa: E402


def tutorial_run(dataset, test, indices, config: TrainConfig, dev) -> tuple[list[float], float]:
    """Return (per-epoch seconds, final test accuracy) of the tutorial loop (train epoch + test
    evaluation, DataLoader)."""
    subset = torch.utils.data.Subset(dataset, indices.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=config.batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=1000)
    model = build_model(config).to(dev)
    optimizer = build_optimizer(model, config)
    seconds = []
    for _ in range(config.epochs):
        start = time.perf_counter()
        tutorial_epoch(model, loader, optimizer, dev)
        model.eval()
        with torch.no_grad():
            correct = sum((model(x.to(dev)).argmax(1) == y.to(dev)).sum().item() for x, y in test_loader)
        seconds.append(time.perf_counter() - start)
    return seconds, correct / len(test)


def main(argv=None) -> int:
    dev = devices.resolve_device("auto")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the study's recipe")
    parser.add_argument("--subset", type=int, default=60_000, help="training images")
    parser.add_argument("--modern-epochs", type=int, default=30)
    parser.add_argument("--modern-subset", type=int, default=60_000, help="training images of the modern recipe")
    parser.add_argument("--target", type=float, default=0.94, help="test accuracy for time-to-accuracy")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    fm = data.load_fashion_mnist()
    idx = data.stratified_subset(fm.y_train, args.subset, seed=0)
    x, y = fm.x_train[idx], fm.y_train[idx]
    study = TrainConfig(epochs=args.epochs)
    print(f"device: {devices.describe(dev)}; study recipe, {len(x)} images, {args.epochs} epochs, batch {study.batch_size}")

    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    with tempfile.TemporaryDirectory() as tmp:
        train_ds = tutorial_dataset(fm, Path(tmp))
        test_ds = FashionMNIST(tmp, train=False, download=False, transform=transforms.ToTensor())
        tut, tut_accuracy = tutorial_run(train_ds, test_ds, idx, study, dev)

    val = (fm.x_test, fm.y_test)
    eager = fit(build_model(study), x, y, study, val=val, progress=False)
    captured = fit(build_model(study), x, y, study.replace(compile=True), val=val, progress=False)

    def steady(seconds):  # epoch 1 carries warm-up (and compilation for the captured loop)
        rest = seconds[1:] or seconds
        return sum(rest) / len(rest)

    rows = {
        "tutorial": steady(tut),
        "kit eager": steady([r["seconds"] for r in eager]),
        "kit captured": steady([r["seconds"] for r in captured]),
    }
    for name, sec in rows.items():
        print(f"  {name:<14} {sec:7.2f} s/epoch  {len(x) / sec:9.0f} images/s  {rows['tutorial'] / sec:5.2f}x")
    print(f"  capture: {captured[0].get('capture')}; first step incl. compilation "
          f"{captured[0].get('compile_seconds', float('nan')):.1f} s")
    print(f"  final test accuracy: tutorial {tut_accuracy:.4f}, eager {eager[-1]['val_accuracy']:.4f}, "
          f"captured {captured[-1]['val_accuracy']:.4f}")

    modern = preset("modern", epochs=args.modern_epochs, compile=dev.type == "cuda")
    midx = data.stratified_subset(fm.y_train, args.modern_subset, seed=0)
    history = fit(build_model(modern), fm.x_train[midx], fm.y_train[midx], modern, val=val, progress=False)
    elapsed, reached = 0.0, None
    for row in history:
        elapsed += row["seconds"]
        if reached is None and row["val_accuracy"] >= args.target:
            reached = elapsed
    compile_s = history[0].get("compile_seconds", 0.0)
    print(f"modern recipe: {args.modern_epochs} epochs, final test accuracy {history[-1]['val_accuracy']:.4f}, "
          f"training {elapsed:.1f} s (first step incl. compilation {compile_s:.1f} s); "
          + (f"reached {args.target:.0%} after {reached:.1f} s" if reached else f"did not reach {args.target:.0%}"))
    if args.out:
        provenance.write_json(args.out, {
            "study_seconds_per_epoch": rows, "modern_history": history, "time_to_target": reached,
            "environment": provenance.environment(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
