"""Time the plain tutorial training loop against the kit's `fit`, in one run on one machine.

(a) tutorial: torchvision ``FashionMNIST`` + ``ToTensor`` + ``DataLoader`` (shuffle), fp32,
    NCHW, the same SeedCNN and SGD settings;
(b) kit, fp32: ``fit`` with precision forced to fp32 (the data path alone: on-device uint8,
    seeded permutation slices, channels_last);
(c) kit: ``fit`` with precision ``auto`` (bf16 where the hardware runs it fast);
(d) bare step: the same model, optimizer, batches and precision as (c) in a bare loop (on-device
    slices, channels_last, autocast, forward, cross-entropy, backward, step; no history, checks or
    progress), so ``fit`` / bare is what the training engine costs (the aim: at least 0.90).

Each loop trains one epoch over the same stratified subset with the same batch size after a
short warm-up (so one-off kernel selection is not timed), and the script prints images/s and
the ratios. Usage: ``python benchmarks/bench_train.py [--subset N] [--batch-size B] [--out F]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from fmnist_utils import data, device as devices, provenance
from fmnist_utils.train import TrainConfig, build_model, build_optimizer, fit


def tutorial_dataset(fm: data.FashionMNIST, root: Path):
    """Return torchvision's FashionMNIST (train, ToTensor) read from IDX files written under ``root``."""
    from torchvision import datasets, transforms

    raw = root / "FashionMNIST" / "raw"
    # torchvision expects the decompressed files in its raw folder; write them from the validated copy.
    data.write_idx(raw / data.FILES["train_images"], fm.x_train.squeeze(1).numpy())
    data.write_idx(raw / data.FILES["train_labels"], fm.y_train.numpy().astype("uint8"))
    data.write_idx(raw / data.FILES["test_images"], fm.x_test.squeeze(1).numpy())
    data.write_idx(raw / data.FILES["test_labels"], fm.y_test.numpy().astype("uint8"))
    return datasets.FashionMNIST(str(root), train=True, download=False, transform=transforms.ToTensor())


def tutorial_epoch(model, loader, optimizer, dev, max_steps=None) -> int:
    """Train one epoch the tutorial way; return the number of images seen."""
    model.train()
    seen = 0
    for step, (x, y) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        x, y = x.to(dev), y.to(dev)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(x)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen


def time_tutorial(dataset, indices, config: TrainConfig, dev) -> float:
    """Return images/s of one tutorial epoch over ``indices``."""
    subset = torch.utils.data.Subset(dataset, indices.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=config.batch_size, shuffle=True)
    model = build_model(config).to(dev)
    optimizer = build_optimizer(model, config)
    tutorial_epoch(model, loader, optimizer, dev, max_steps=3)  # warm-up
    start = time.perf_counter()
    seen = tutorial_epoch(model, loader, optimizer, dev)
    return seen / (time.perf_counter() - start)


def time_fit(fm, indices, config: TrainConfig) -> float:
    """Return images/s of one ``fit`` epoch over ``indices`` (train only, no evaluation)."""
    x, y = fm.x_train[indices], fm.y_train[indices]
    warm = config.batch_size * 3
    with warnings.catch_warnings():  # three warm-up steps are near chance by design; fit would warn so
        warnings.simplefilter("ignore")
        fit(build_model(config), x[:warm], y[:warm], config, progress=False)
    history = fit(build_model(config), x, y, config, progress=False)
    return len(x) / history[0]["seconds"]


def time_bare(fm, indices, config: TrainConfig) -> float:
    """Return images/s of one epoch of the bare training step over ``indices`` (train only)."""
    dev = devices.resolve_device(config.device)
    precision = devices.resolve_precision(config.precision, dev)
    x, y = fm.x_train[indices].to(dev), fm.y_train[indices].to(dev)
    torch.manual_seed(config.seed)
    model = build_model(config).to(dev, memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, config)

    def epoch(n: int) -> None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).to(dev)
        for start in range(0, n, config.batch_size):
            idx = order[start:start + config.batch_size]
            xb = data.scale(x[idx]).contiguous(memory_format=torch.channels_last)
            with devices.autocast(dev, precision):
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    epoch(config.batch_size * 3)  # warm-up
    start = time.perf_counter()
    epoch(len(x))
    return len(x) / (time.perf_counter() - start)


def main(argv=None) -> int:
    dev = devices.resolve_device("auto")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subset", type=int, default=60_000 if dev.type == "cuda" else 4_000,
                        help="training images timed (default: all on a GPU, 4,000 on a CPU)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    fm = data.load_fashion_mnist()
    indices = data.stratified_subset(fm.y_train, args.subset, seed=0)
    base = TrainConfig(epochs=1, batch_size=args.batch_size)
    print(f"device: {devices.describe(dev)}; {args.subset} images, batch {args.batch_size}, one epoch each")

    with tempfile.TemporaryDirectory() as tmp:
        tutorial = time_tutorial(tutorial_dataset(fm, Path(tmp)), indices, base, dev)
    kit_fp32 = time_fit(fm, indices, base.replace(precision="fp32"))
    precision = devices.resolve_precision("auto", dev)
    # The engine's cost: fit and the bare step alternate, twice each, so that a load that comes
    # and goes on a shared machine falls on both; the best of each is compared.
    kits, bares = [], []
    for _ in range(2):
        kits.append(time_fit(fm, indices, base.replace(precision="auto")))
        bares.append(time_bare(fm, indices, base.replace(precision="auto")))
    kit, bare = max(kits), max(bares)

    rows = [
        ("tutorial (DataLoader, fp32)", tutorial),
        ("kit fit, fp32", kit_fp32),
        (f"kit fit, auto ({precision})", kit),
        (f"bare step, auto ({precision})", bare),
    ]
    for name, ips in rows:
        print(f"  {name:<30} {ips:9.0f} images/s   {ips / tutorial:5.2f}x")
    print(f"speed-up of the kit's default over the tutorial loop: {kit / tutorial:.2f}x")
    print(f"fit's pace against the bare {precision} step: {kit / bare:.3f} (aim >= 0.90; runs "
          f"{', '.join(f'{k:.0f}' for k in kits)} against {', '.join(f'{b:.0f}' for b in bares)} images/s)")
    if args.out:
        provenance.write_json(args.out, {
            "subset": args.subset, "batch_size": args.batch_size, "precision": precision,
            "images_per_s": {"tutorial": tutorial, "kit_fp32": kit_fp32, "kit": kit, "bare": bare},
            "ratio": kit / tutorial, "ratio_vs_bare": kit / bare, "environment": provenance.environment(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
