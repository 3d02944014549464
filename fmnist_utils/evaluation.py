"""Score a trained classifier: logits, accuracy and loss on uint8 images in large batches on the
model's device, per-image correctness packed for the history, and the test against chance.
"""

from __future__ import annotations

import base64
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from .data import iterate_batches, scale


def check_split(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Raise ValueError unless x is uint8 images (N, 1, 28, 28) and y is (N,) labels, N >= 1."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(f"{what} images and labels must be torch tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"{what} images must be (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 {what} images, values 0..255 (scaling happens on the device), got {x.dtype}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what} labels must be (N,) with N={len(x)}, got {tuple(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{what} split is empty")


def _inputs(x_uint8: torch.Tensor) -> torch.Tensor:
    return scale(x_uint8).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, x: torch.Tensor, batch_size: int = 2048, precision: str = "auto", tta_flip: bool = False
) -> torch.Tensor:
    """Return float32 logits (N, n_classes) on the CPU for uint8 images (N, 1, 28, 28).

    Runs on the model's device in large batches; ``x`` is moved there once. With
    ``tta_flip`` the result is log of the mean of the softmax over the image and its mirror, so
    ``softmax`` of it is exactly the average of the two passes' probabilities.
    """
    dev = next(model.parameters()).device
    precision = devices.resolve_precision(precision, dev)
    model.eval()
    x = x.to(dev)
    outs = []
    for idx in iterate_batches(len(x), batch_size, device=dev):
        xb = _inputs(x[idx])
        with devices.autocast(dev, precision):
            logits = model(xb).float()
            if tta_flip:
                logits = flip_averaged_logits(logits, model(xb.flip(3)).float())
        outs.append(logits.float())
    return torch.cat(outs).cpu()


def flip_averaged_logits(logits: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """Return log of the mean of the softmaxes of ``logits`` and ``mirrored`` (..., n_classes),
    the passes over the images and their mirrors: its softmax is exactly the average of the two
    passes' probabilities (flip test-time augmentation)."""
    return torch.logsumexp(torch.stack([logits.log_softmax(-1), mirrored.log_softmax(-1)]), dim=0) - math.log(2)


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    precision: str = "auto",
    tta_flip: bool = False,
    per_image: bool = False,
) -> dict:
    """Return ``{"accuracy", "loss"}`` of ``model`` on (x uint8 (N,1,28,28), y (N,)); with
    ``per_image`` also ``"correct"``: (N,) numpy bool, whether each image was classified right."""
    check_split(x, y, "evaluation")
    logits = predict_logits(model, x, batch_size, precision, tta_flip)
    y = y.cpu()
    right = logits.argmax(1) == y
    out = {"accuracy": right.float().mean().item(), "loss": F.cross_entropy(logits, y).item()}
    if per_image:
        out["correct"] = right.numpy()
    return out


def pack_correct(correct) -> str:
    """Return (N,) per-image correctness as text for a history row: base64 of the bits, one per
    image (N / 6 characters: 10,000 images take about 1.7 kB per epoch)."""
    bits = np.asarray(correct, dtype=bool)
    return base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")


def val_correctness(history: list[dict], n_val: int) -> np.ndarray:
    """Return (epochs, n_val) bool: whether each validation image was right after each epoch, from
    the ``val_correct`` entries :func:`fit` writes into its history (the paired overfitting test,
    :func:`fmnist_utils.stats.verdict_overfitting`, reads it). Raises ValueError when a row lacks it
    (a history from before it was recorded, or trained without validation images)."""
    missing = [row.get("epoch") for row in history if "val_correct" not in row]
    if missing:
        raise ValueError(f"history rows of epochs {missing} have no val_correct: train with fit(..., val=...) "
                         "to record per-image validation correctness (a history resumed from a checkpoint written "
                         "before it was recorded lacks it: delete that checkpoint and train again)")
    return np.stack([np.unpackbits(np.frombuffer(base64.b64decode(row["val_correct"]), dtype=np.uint8),
                                   count=n_val).astype(bool) for row in history]) if history else np.zeros((0, n_val), bool)


def chance_check(accuracy: float, n: int, n_classes: int = 10, alpha: float = 0.05, what: str = "the accuracy") -> dict:
    """Return whether an accuracy on ``n`` images is distinguishable from guessing (1 / ``n_classes``).

    Exact one-sided binomial test (:func:`fmnist_utils.stats.binomial_vs_chance`). Keys:
    ``above_chance`` (p < ``alpha``), ``accuracy``, ``chance``, ``p``, ``n``, ``note`` (a
    warning line when not above chance, else "").
    """
    from . import stats

    n_correct = int(round(accuracy * n))
    result = stats.binomial_vs_chance(n_correct, n, 1 / n_classes)
    above = result["p"] < alpha
    note = "" if above else (
        f"{what} {accuracy:.4f} on {n:,} images is not distinguishable from chance ({1 / n_classes:.2f}, "
        f"p = {result['p']:.2g}): the training may have collapsed; check the learning rate and weight decay")
    return {"above_chance": above, "accuracy": accuracy, "chance": 1 / n_classes, "p": result["p"], "n": n,
            "note": note}


def _flag_chance(history: list[dict], n: int, split: str, n_classes: int) -> None:
    """Warn, and flag the last row ``not_above_chance``, when its accuracy on ``split`` is not above chance."""
    accuracy = history[-1].get(f"{split}_accuracy")
    if accuracy is None or n_classes < 2:
        return
    what = {"val": "the validation accuracy", "train": "the training accuracy"}[split]
    check = chance_check(accuracy, n, n_classes, what=f"{what} after epoch {history[-1]['epoch']},")
    if not check["above_chance"]:
        history[-1]["not_above_chance"] = True
        warnings.warn(check["note"], stacklevel=4)  # the caller of fit or fit_many
