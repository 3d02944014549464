"""GPU pace of the study's recipe, and time-to-accuracy of the modern recipe, in one run.

Accuracies here are on a VALIDATION SPLIT HELD OUT FROM THE TRAINING SET (stratified,
``--val-fraction`` of the images drawn); the test set is never read, so these figures can be
compared and tuned on without spending it.

For the study's recipe (batch 128, per-epoch evaluation on the validation split) it times:
  (a) the tutorial loop: torchvision FashionMNIST + ToTensor + DataLoader, fp32;
  (b) the kit's eager loop: ``fit`` (on-device data, bf16 where fast, channels_last);
  (c) the kit's captured loop: ``fit`` with ``compile=True`` (torch.compile + CUDA graphs), on
      CUDA only: on a CPU there are no CUDA graphs and compilation alone takes minutes;
seconds per epoch (mean of the epochs after the first, which carries warm-up and compilation),
images/s, ratios to (a), and each loop's final validation accuracy. Then it trains the
"modern" preset and reports the wall time until the validation accuracy first reaches
``--target`` (compilation included) and its final validation accuracy.

``--size full`` (default) uses all 60,000 training images (54,000 trained on, 6,000 held out);
``--size smoke`` proves the script in about a minute on a CPU. Any flag overrides its size.
``--json PATH`` writes every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import tutorial_dataset, tutorial_epoch  # noqa: E402

from fmnist_utils import data, device as devices, provenance  # noqa: E402
from fmnist_utils.train import TrainConfig, build_model, build_optimizer, fit, preset  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Size:
    """How much one run trains. subset: training images drawn (stratified), of which
    val_fraction is held out for validation; epochs: of each loop of the study's recipe;
    modern_epochs: of the modern recipe (its one-cycle schedule spans them)."""

    subset: int
    val_fraction: float
    epochs: int
    modern_epochs: int


SIZES = {
    # Three epochs give two steady-state epochs per loop; 15 modern epochs keep the whole run
    # near two minutes on one H100 (budgeted by benchmarks/verify_gpu.py).
    "full": Size(subset=60_000, val_fraction=0.1, epochs=3, modern_epochs=15),
    "smoke": Size(subset=500, val_fraction=0.1, epochs=2, modern_epochs=1),
}


def split_train_val(labels: torch.Tensor, subset: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return disjoint sorted (train, val) indices into ``labels`` (N,): ``subset`` images drawn
    stratified, ``round(val_fraction * subset)`` of them held out, also stratified.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1): some images train, some validate")
    pool = data.stratified_subset(labels, subset, seed=seed)
    n_val = round(val_fraction * subset)
    if not 0 < n_val < subset:
        raise ValueError(f"subset={subset} with val_fraction={val_fraction} leaves no training or no validation image")
    held = pool[data.stratified_subset(labels[torch.from_numpy(pool)], n_val, seed=seed + 1)]
    return np.setdiff1d(pool, held), held


def time_to_target(history: list[dict], target: float) -> float | None:
    """Return the wall seconds (sum of ``seconds`` up to that epoch) until ``val_accuracy`` first
    reaches ``target``, or None when no epoch did."""
    elapsed = 0.0
    for row in history:
        elapsed += row["seconds"]
        if row["val_accuracy"] >= target:
            return elapsed
    return None


def steady_seconds(seconds: list[float]) -> float:
    """Return the mean epoch time without the first epoch (warm-up, compilation), or the first alone."""
    rest = seconds[1:] or seconds
    return sum(rest) / len(rest)


def tutorial_run(dataset, train_idx, val_idx, config: TrainConfig, dev) -> list[dict]:
    """Train with the tutorial loop (DataLoader, fp32) and return a ``fit``-like history:
    ``epoch``, ``seconds`` (train epoch + validation pass), ``val_accuracy`` per epoch."""
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, train_idx.tolist()),
                                         batch_size=config.batch_size, shuffle=True)
    val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, val_idx.tolist()), batch_size=1000)
    model = build_model(config).to(dev)
    optimizer = build_optimizer(model, config)
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        tutorial_epoch(model, loader, optimizer, dev)
        model.eval()
        with torch.no_grad():
            correct = sum((model(x.to(dev)).argmax(1) == y.to(dev)).sum().item() for x, y in val_loader)
        history.append({"epoch": epoch, "seconds": time.perf_counter() - start, "val_accuracy": correct / len(val_idx)})
    return history


def loop_row(name: str, history: list[dict], n_train: int, baseline: float | None) -> dict:
    """Return one loop's figures: steady s/epoch, images/s, ratio to ``baseline`` s/epoch, accuracy."""
    sec = steady_seconds([r["seconds"] for r in history])
    return {"loop": name, "seconds_per_epoch": sec, "images_per_second": n_train / sec,
            "speedup_vs_tutorial": (baseline / sec) if baseline else 1.0,
            "final_val_accuracy": history[-1]["val_accuracy"], "epochs": len(history),
            "compile_seconds": history[0].get("compile_seconds"), "capture": history[0].get("capture")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="sizes below (default: full)")
    parser.add_argument("--subset", type=int, default=None, help="training images drawn (of 60,000); default: the size's")
    parser.add_argument("--val-fraction", type=float, default=None, help="part of them held out for validation")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of each loop of the study's recipe")
    parser.add_argument("--modern-epochs", type=int, default=None, help="epochs of the modern recipe")
    parser.add_argument("--target", type=float, default=0.92, help="validation accuracy for time-to-accuracy")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and shuffling")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    size = dataclasses.replace(SIZES[args.size], **{k: v for k, v in dict(
        subset=args.subset, val_fraction=args.val_fraction, epochs=args.epochs, modern_epochs=args.modern_epochs).items()
        if v is not None})

    dev = devices.resolve_device("auto")
    fm = data.load_fashion_mnist(download_ok=False)
    train_idx, val_idx = split_train_val(fm.y_train, size.subset, size.val_fraction, seed=args.seed)
    x, y = fm.x_train[train_idx], fm.y_train[train_idx]
    val = (fm.x_train[val_idx], fm.y_train[val_idx])
    study = TrainConfig(epochs=size.epochs, seed=args.seed)
    where = (f"validation split: {len(val_idx)} images held out of the training set (stratified); "
             "the test set is not used")
    print(f"device: {devices.describe(dev)}; precision {devices.resolve_precision('auto', dev)}")
    print(f"study recipe: {len(x)} training images, {size.epochs} epochs, batch {study.batch_size}; {where}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        train_ds = tutorial_dataset(fm, Path(tmp))
        tutorial = tutorial_run(train_ds, train_idx, val_idx, study, dev)
    eager = fit(build_model(study), x, y, study, val=val, progress=False)
    histories = {"tutorial": tutorial, "kit eager": eager}
    skipped = {}
    if dev.type == "cuda":
        histories["kit captured"] = fit(build_model(study), x, y, study.replace(compile=True), val=val, progress=False)
    else:
        skipped["kit captured"] = f"CUDA graphs need a CUDA GPU; on {dev.type} compilation alone takes minutes"

    base = steady_seconds([r["seconds"] for r in tutorial])
    rows = [loop_row(name, h, len(x), base) for name, h in histories.items()]
    for r in rows:
        print(f"  {r['loop']:<13} {r['seconds_per_epoch']:7.2f} s/epoch  {r['images_per_second']:9.0f} images/s  "
              f"{r['speedup_vs_tutorial']:5.2f}x  val accuracy {r['final_val_accuracy']:.4f}"
              + (f"  (first step incl. compilation {r['compile_seconds']:.1f} s; {r['capture']})" if r["compile_seconds"] else ""))
    for name, why in skipped.items():
        print(f"  {name:<13} skipped: {why}")

    modern = preset("modern", epochs=size.modern_epochs, seed=args.seed, compile=dev.type == "cuda")
    history = fit(build_model(modern), x, y, modern, val=val, progress=False)
    reached = time_to_target(history, args.target)
    training = sum(r["seconds"] for r in history)
    compile_s = history[0].get("compile_seconds")
    print(f"modern recipe: {size.modern_epochs} epochs, final val accuracy {history[-1]['val_accuracy']:.4f}, "
          f"training {training:.1f} s" + (f" (first step incl. compilation {compile_s:.1f} s)" if compile_s else "") + "; "
          + (f"reached {args.target:.0%} val accuracy after {reached:.1f} s" if reached is not None
             else f"did not reach {args.target:.0%} val accuracy"))
    print(f"accuracies above: {where}")
    if args.json:
        provenance.write_json(args.json, {
            "size": args.size, "sizes": dataclasses.asdict(size), "seed": args.seed,
            "accuracy_split": "validation", "accuracy_split_note": where,
            "n_train": len(train_idx), "n_val": len(val_idx), "batch_size": study.batch_size,
            "loops": rows, "skipped": skipped, "histories": histories,
            "modern": {"epochs": size.modern_epochs, "target_val_accuracy": args.target, "time_to_target_seconds": reached,
                       "final_val_accuracy": history[-1]["val_accuracy"], "training_seconds": training,
                       "compile_seconds": compile_s, "config": modern.to_dict(), "history": history},
            "environment": provenance.environment(),
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
