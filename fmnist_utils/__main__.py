"""Command line: ``python -m fmnist_utils {data,train,report} ...`` (also installed as ``fmnist``)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from . import data as fdata


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    # The flags are generated from TrainConfig so a new setting needs no second definition.
    from .train import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = {"int": int, "float": float, "str": str}[str(field.type)]
            parser.add_argument(flag, type=kind, default=field.default, help=f"default: {field.default}")


def _cmd_data(args) -> int:
    ds = fdata.load_fashion_mnist(args.data, download_ok=not args.no_download)
    print(f"Fashion-MNIST from {ds.source}: {len(ds.x_train)} train / {len(ds.x_test)} test images, "
          f"{len(ds.classes)} classes")
    return 0


def _cmd_train(args) -> int:
    from . import device as devices
    from . import provenance
    from .train import TrainConfig, build_model, evaluate, fit

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    ds = fdata.load_fashion_mnist(args.data)
    idx = fdata.subset_indices(ds.y_train, args.subset, seed=config.seed)
    x, y = ds.x_train[idx], ds.y_train[idx]
    dev = devices.resolve_device(config.device)
    print(f"training {config.model} on {len(x)} images, {devices.describe(dev)}, "
          f"precision {devices.resolve_precision(config.precision, dev)}")
    model = build_model(config)
    start = time.perf_counter()
    # Per-epoch progress is fit's bar (a text bar on a terminal, one line per epoch in a log).
    history = fit(model, x, y, config, progress=False if args.no_progress else None)
    seconds = time.perf_counter() - start
    test = evaluate(model, ds.x_test, ds.y_test, config.eval_batch_size, config.precision)
    print(f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) after {seconds:.1f} s of training")
    if args.out:
        provenance.write_json(args.out, {
            "config": config.to_dict(), "subset": args.subset, "history": history, "test": test,
            "environment": provenance.environment(config.device),
        })
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="python -m fmnist_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="find (or download) and validate Fashion-MNIST")
    p.add_argument("--data", default=None, help="folder holding the four IDX files")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train a model and print its test accuracy")
    p.add_argument("--data", default=None, help="folder holding the four IDX files")
    p.add_argument("--subset", type=int, default=None, help="train on this many images (stratified); default: all")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="write config, history and test metrics to this JSON file")
    _add_config_arguments(p)
    p.set_defaults(func=_cmd_train)

    from . import pipeline

    p = sub.add_parser("report", help="run the notebooks (reusing up-to-date ones) and build report/report.html and .pdf")
    pipeline.add_arguments(p)
    p.set_defaults(func=pipeline.cli)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return its exit status (a bad input prints one line, not a traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (fdata.DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
