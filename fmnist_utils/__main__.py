"""Command line: ``python -m fmnist_utils {data,train,report} ...`` (also installed as ``fmnist``)."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

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
    ds = fdata.load_fashion_mnist(args.data, download_ok=not args.no_download, verify=False if args.no_verify else None)
    print(f"Fashion-MNIST from {ds.source}: {len(ds.x_train)} train / {len(ds.x_test)} test images, "
          f"{len(ds.classes)} classes")
    return 0


def _cmd_train(args) -> int:
    from . import device as devices
    from . import provenance
    from .train import TrainConfig, build_model, chance_check, evaluate, fit

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    out = _check_out(args.out) if args.out is not None else None  # before training: results are never lost to a bad path
    dev = devices.resolve_device(config.device)
    ds = fdata.load_fashion_mnist(args.data, verify=False if args.no_verify else None)
    x, y = ds.x_train, ds.y_train
    if args.subset is not None:  # None is "all"; 0 is a value, and an invalid one
        if not 1 <= args.subset <= len(y):
            raise ValueError(f"--subset {args.subset}: must be between 1 and the {len(y)} training images "
                             "(leave it out to train on all of them)")
        idx = fdata.subset_indices(y, args.subset, seed=config.seed)
        x, y = x[idx], y[idx]
    print(f"training {config.model} on {len(x)} images, {devices.describe(dev)}, "
          f"precision {devices.resolve_precision(config.precision, dev)}")
    model = build_model(config)
    start = time.perf_counter()
    # Per-epoch progress is fit's bar (a text bar on a terminal, one line per epoch in a log).
    with warnings.catch_warnings(record=True) as caught:  # fit's warnings (fp16 on a CPU...), one line each
        warnings.simplefilter("always")
        history = fit(model, x, y, config, progress=False if args.no_progress else None)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    seconds = time.perf_counter() - start
    test = evaluate(model, ds.x_test, ds.y_test, config.eval_batch_size, config.precision)
    print(f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) after {seconds:.1f} s of training")
    chance = chance_check(test["accuracy"], len(ds.y_test), len(ds.classes), what="the test accuracy")
    if not chance["above_chance"]:
        print(f"warning: {chance['note']}", file=sys.stderr)
    if not ds.verified:
        print(f"note: the data in {ds.source} was loaded without the SHA-256 check ({fdata.UNVERIFIED_ENV} or "
              "--no-verify); the results are recorded as such", file=sys.stderr)
    if out is not None:
        provenance.write_json(out, {
            "config": config.to_dict(), "subset": args.subset, "history": history, "test": test,
            "chance": chance, "data": {"source": ds.source, "verified": ds.verified},
            "environment": provenance.environment(config.device),
        })
    return 0



def _check_out(out: str) -> Path:
    """Return ``--out`` as a path once a file can be written there; raise naming what is wrong."""
    from . import paths

    if not out.strip():
        raise ValueError("--out is empty; give a file name such as results.json")
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)):  # a folder meant: the results go inside it
        return paths.writable_dir(path, "folder of --out") / "train_results.json"
    if path.is_dir():
        raise OSError(errno.EISDIR, "Is a directory (--out)", str(path))
    paths.writable_dir(path.parent, "folder of --out")
    return path


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="python -m fmnist_utils", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="find (or download) and validate Fashion-MNIST")
    p.add_argument("--data", default=None, help="folder holding the four IDX files")
    p.add_argument("--no-download", action="store_true", help="never use the network")
    p.add_argument("--no-verify", action="store_true",
                   help=f"accept a deliberately modified copy: skip the SHA-256 check (also: {fdata.UNVERIFIED_ENV}=1)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("train", help="train a model and print its test accuracy")
    p.add_argument("--data", default=None, help="folder holding the four IDX files")
    p.add_argument("--subset", type=int, default=None, help="train on this many images (stratified); default: all")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="write config, history and test metrics to this JSON file "
                   "(a name ending in / is a folder: train_results.json inside it)")
    p.add_argument("--no-verify", action="store_true",
                   help=f"accept a deliberately modified copy of the data: skip the SHA-256 check (also: {fdata.UNVERIFIED_ENV}=1)")
    _add_config_arguments(p)
    p.set_defaults(func=_cmd_train)

    from . import pipeline

    p = sub.add_parser("report", help="run the notebooks (reusing up-to-date ones) and build report/report.html and .pdf")
    pipeline.add_arguments(p)
    p.set_defaults(func=pipeline.cli)
    return parser


EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 4
EXIT_FILESYSTEM = 5
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (timeout, systemd, kill)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stopped like Ctrl-C (finished work kept, trials re-queued), exit 143."""


def _terminate(signum, frame):
    raise Terminated()

# What to do about a filesystem error, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "the disk holding it is full: free some space on that disk, then run the same command again; "
                  "finished work is kept",
    errno.EDQUOT: "your disk quota is used up: free some space, then run the same command again; finished work is kept",
    errno.EACCES: "no permission to write there: choose a folder you can write to (--run-dir, --report-dir, --out) "
                  "or fix its permissions",
    errno.EPERM: "the operation is not permitted there: choose another folder (--run-dir, --report-dir, --out)",
    errno.EROFS: "the file system is read-only: choose another folder (--run-dir, --report-dir, --out)",
    errno.ENOTDIR: "a file stands where a folder is needed: move or rename that file, or choose another folder",
    errno.EEXIST: "a file stands where a folder is needed: move or rename that file, or choose another folder",
    errno.EISDIR: "a file name is needed: give one, e.g. a file inside that folder",
    errno.ENOENT: "it does not exist, or new files cannot be made there (e.g. under /proc): choose another folder",
    errno.ELOOP: "its symbolic links point at each other in a loop: fix or remove the link, or choose another path",
    errno.EIO: "the device reported an error: check the disk (and its free space), then run the same command again",
}
_READ_ADVICE = "it cannot be read: make it readable (chmod u+r), or give another file"


def _advice(code: int | None, filename) -> str | None:
    """Return what to do about errno ``code`` on ``filename``: a permission error on a file that
    exists and cannot be read is a reading problem, not a writing one."""
    if code == errno.EACCES and filename is not None:
        path = Path(os.fsdecode(filename))
        if path.is_file() and not os.access(path, os.R_OK):
            return _READ_ADVICE
    return _OS_ADVICE.get(code)


def describe_os_error(exc: OSError) -> str:
    """Return one message for a filesystem error: the path, what went wrong and what to do."""
    where = exc.filename if exc.filename is not None else "a file (the system did not say which)"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    advice = _advice(exc.errno, exc.filename)
    return f"cannot use {where}: {exc.strerror or exc}" + (f"; {advice}" if advice else "")


_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] ([^:]+)(?:: '(.*)')?")


def _notebook_fault(exc) -> tuple[str, int] | None:
    """Return (one line, status) for a kit error raised inside a notebook (see pipeline.NOTEBOOK_FAULTS)."""
    status = exc.status
    if status == _loaded("pipeline", "EXIT_NOTEBOOK_FAILED"):
        return None
    if status == EXIT_INTERRUPTED:
        return f"interrupted inside notebook {exc.stem}; {_INTERRUPTED_REPORT}", status
    if status == EXIT_FILESYSTEM:
        found = _ERRNO_TEXT.search(exc.evalue or "")
        if found:
            code, text, where = int(found.group(1)), found.group(2), found.group(3)
            error = OSError(code, text, where) if where else OSError(code, text)
            described = describe_os_error(error)
            kept = exc.one_line().rsplit(" [notebook ", 1)[-1]
            return f"{described} [notebook {kept}", status
    return exc.one_line(), status


_INTERRUPTED_REPORT = ("finished work is kept (executed notebooks, trained epochs, finished sweep folds); "
                       "run the same command again to go on from there")


def _loaded(module: str, name: str):
    # An exception can only be of a class whose module is loaded: no import just to compare.
    return getattr(sys.modules.get(f"fmnist_utils.{module}"), name, ())


def explain(exc: BaseException, command: str | None = None) -> tuple[str, int] | None:
    """Return (message, exit status) for an error the CLI reports in words, or None for a bug
    (which keeps its traceback). The one place errors become messages: ``train``, ``data`` and
    ``report`` alike (``command``: which one ran, for what an interruption keeps).
    """
    if isinstance(exc, KeyboardInterrupt):
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        status = EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
        if command == "train":
            return f"{what}: train keeps no checkpoint, so nothing was saved; run it again to start over", status
        if command == "data":
            return f"{what}: run the same command again", status
        return f"{what}. {_INTERRUPTED_REPORT[0].upper()}{_INTERRUPTED_REPORT[1:]}", status
    if isinstance(exc, _loaded("pipeline", "NotebookFailed")):
        fault = _notebook_fault(exc)
        if fault is not None:
            return fault
        advice = ""
        found = re.search(r"\[Errno (\d+)\]", exc.evalue or "")
        if found and int(found.group(1)) in _OS_ADVICE:
            advice = f"\n  {_OS_ADVICE[int(found.group(1))]}"
        return (f"{exc}{advice}\n  no new report was written; fix the notebook (or the code it calls) and run again: "
                "the notebooks before it are reused"), _loaded("pipeline", "EXIT_NOTEBOOK_FAILED") or 1
    if isinstance(exc, _loaded("report", "PdfUnavailable")):
        return str(exc), _loaded("pipeline", "EXIT_NO_PDF") or 3
    if isinstance(exc, _loaded("pipeline", "RunFolderBusy")):
        return str(exc), _loaded("pipeline", "EXIT_BUSY") or 6
    if isinstance(exc, _loaded("estimate", "TooSlow")):
        return str(exc), _loaded("pipeline", "EXIT_TOO_SLOW") or 7
    if isinstance(exc, _loaded("divergence", "TrainingDiverged")):
        return str(exc), EXIT_DIVERGED
    if isinstance(exc, OSError):
        return describe_os_error(exc), EXIT_FILESYSTEM
    if isinstance(exc, ValueError):  # DataError, WeightsError, CheckpointError, RunFolderConflict, FolderRoleError, StorageError, bad settings
        return str(exc), EXIT_BAD_INPUT
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return its exit status (a bad input, a divergence or a filesystem fault prints
    what is wrong and what to do, not a traceback; see :func:`explain`).
    """
    args = build_parser().parse_args(argv)
    # SIGTERM (timeout, systemd, kill) stops the run as Ctrl-C does: stamps recorded, trials re-queued.
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return args.func(args)
    except Exception as exc:
        explained = explain(exc, args.command)
        if explained is None:
            raise
    except KeyboardInterrupt as exc:
        explained = explain(exc, args.command)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    message, status = explained
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
