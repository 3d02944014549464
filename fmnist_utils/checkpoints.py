"""Training checkpoints of :func:`fmnist_utils.train.fit`: written atomically after every epoch,
resumed only by the same config on the same data, read back by :func:`load_checkpoint`.

A checkpoint holds the config, fingerprints of the training and validation splits, the model,
optimizer, scheduler and moving-average states, the data generator's and torch's random states,
and the history so far.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import torch
from torch import nn

from . import provenance
from .train_config import TrainConfig, build_model


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or was written for another config or other data."""


# The kit's one data fingerprint (provenance.fingerprint: dtype, shape and bytes), stored in
# checkpoints so that a run is never continued on other data.
data_fingerprint = provenance.fingerprint


def check_checkpoint_path(checkpoint: str | Path) -> None:
    """Raise OSError naming ``checkpoint`` when it is a folder or its folder cannot be written."""
    from . import paths

    path = Path(checkpoint)
    if path.is_dir():
        raise OSError(errno.EISDIR, "Is a directory (the checkpoint path must name a file)", str(path))
    paths.writable_dir(path.parent, "checkpoint's folder")


_CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "generator", "torch_rng", "history")


def save(path: Path, model, optimizer, scheduler, ema, generator, config, history: list[dict],
          trained_on: dict | None = None) -> None:
    """Write the training state after an epoch to ``path`` (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    state = {
        "config": config.to_dict(),
        "data": trained_on,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    try:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:
            raise _save_error(exc, tmp) from None
        tmp.replace(path)  # atomic: a kill mid-write never leaves a half checkpoint
    except BaseException:  # a full disk or an interrupt: no 30 MB of debris beside the checkpoint
        tmp.unlink(missing_ok=True)
        raise


def _save_error(exc: RuntimeError, path: Path) -> BaseException:
    """Return the OSError a failed ``torch.save`` stands for: torch reports a failed write (a full disk)
    as ``RuntimeError: [enforce fail at inline_container.cc] . unexpected pos ...``."""
    text = str(exc)
    if "unexpected pos" not in text and "PytorchStreamWriter failed" not in text:
        return exc
    try:
        full = shutil.disk_usage(path.parent).free < 64 * 2**20
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, "No space left on device (torch.save could not finish the file)", str(path))
    return OSError(errno.EIO, f"torch.save could not finish the file ({text.splitlines()[0][:200]})", str(path))


def load_state(path: Path, map_location) -> dict:
    """Return the dict :func:`save` wrote to ``path``; raise CheckpointError naming the file when it is damaged."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except OSError:
        raise  # unreadable (permissions...): the CLI's error handler names the file and what to do
    except Exception as exc:  # torch raises many types for a truncated archive or a damaged pickle
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(
            f"{path}: cannot be read as a training checkpoint ({type(exc).__name__}: {detail}); it is truncated "
            "or corrupt (was the disk full, or the copy cut short?). Delete it: training then starts from epoch 1."
        ) from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint written by fmnist_utils.train.fit (it lacks {', '.join(missing)}); "
                              "delete it or choose another checkpoint path")
    return state


def resume(path: Path, model, optimizer, scheduler, ema, generator, config,
           trained_on: dict | None = None) -> list[dict]:
    """Load the checkpoint at ``path`` into the given training state and return its history; raise
    CheckpointError when it was written with another config (``epochs`` may grow under a constant
    schedule) or on other data (``trained_on``: the splits' fingerprints)."""
    state = load_state(path, next(model.parameters()).device)
    # A longer run may continue a shorter one; any other difference would mix two experiments.
    # (A schedule's length depends on epochs, so it must match when a schedule is used.)
    ignore = {"epochs"} if config.schedule == "constant" else set()
    theirs = {k: v for k, v in state["config"].items() if k not in ignore}
    ours = {k: v for k, v in config.to_dict().items() if k not in ignore}
    if theirs != ours:
        raise CheckpointError(
            f"{path} was written by a run with another config; delete it or choose another "
            f"checkpoint path.\n  its config: {state['config']}\n  this run:   {config.to_dict()}"
        )
    if trained_on is not None and state.get("data") != trained_on:
        if state.get("data") is None:
            what = "has no record of its training data (written by an older version of the kit)"
        elif state["data"].get("train") == trained_on["train"]:
            what = "was written with another validation split"
        else:
            what = "was trained on other data (the images, the labels or their order differ)"
        raise CheckpointError(f"{path} {what}; continuing it here would mix two experiments. "
                              "Delete it to train from epoch 1, or choose another checkpoint path.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return list(state["history"])


def load_checkpoint(path: str | Path, map_location="cpu") -> tuple[nn.Module, TrainConfig, list[dict]]:
    """Return (model, config, history) from a checkpoint written by :func:`fmnist_utils.train.fit`.

    With EMA the model holds the averaged weights, as :func:`fmnist_utils.train.fit` leaves it.
    """
    state = load_state(Path(path), map_location)
    config = TrainConfig(**state["config"])
    model = build_model(config)
    if state.get("ema") is not None:
        averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
        model.load_state_dict(averaged)
    else:
        model.load_state_dict(state["model"])
    return model, config, list(state["history"])
