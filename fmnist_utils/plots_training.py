"""The figures of a training run (02_train) and the numbers they draw, as pure functions.

Learning curves, the confusion matrix, accuracy per class and a grid of misclassified images.
The helpers that compute what a figure shows (:func:`confusion_matrix`,
:func:`per_class_accuracy`, :func:`top_confusions`, :func:`pick_misclassified`) are separate so
the numbers can be written to results and tested on their own. Every ``plot_*`` function returns
a :class:`matplotlib.figure.Figure` built without pyplot (see :mod:`~fmnist_utils.plots`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .plots_common import TRAIN_COLOR, VAL_COLOR, annotated_matrix


def _as_int_labels(y, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{what} must be 1-D (N,), got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError(f"{what} must be non-negative integer class indices, got dtype {y.dtype}")
    return y.astype(np.int64)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Return the (n_classes, n_classes) int64 count matrix: row = true class, column = predicted.

    y_true, y_pred: (N,) integer class indices in ``0 .. n_classes-1``.
    """
    t, p = _as_int_labels(y_true, "y_true"), _as_int_labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} labels but y_pred has {len(p)}; pass one prediction per image")
    if len(t) and max(t.max(), p.max()) >= n_classes:
        raise ValueError(f"a class index is >= n_classes={n_classes}; pass the number of classes of the data set")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Return (C,) float: the fraction of each true class predicted correctly (NaN for an absent class).

    confusion: (C, C) counts with rows = true class, as from :func:`confusion_matrix`.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {cm.shape}")
    totals = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(cm) / np.maximum(totals, 1), np.nan)


def top_confusions(confusion: np.ndarray, classes: Sequence[str], k: int = 3) -> list[dict]:
    """Return the ``k`` largest off-diagonal cells as dicts, largest first.

    Each dict: ``true``, ``predicted`` (class names), ``count`` (images), ``fraction_of_true``
    (count / images of the true class). Cells with a zero count are left out.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion has shape {cm.shape} but there are {len(classes)} class names")
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, -1)
    # Stable sort on the negated counts keeps ties in (true, predicted) order: deterministic.
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    totals = cm.sum(axis=1)
    out = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] <= 0:
            break
        out.append({
            "true": classes[t],
            "predicted": classes[p],
            "count": int(cm[t, p]),
            "fraction_of_true": float(cm[t, p] / totals[t]),
        })
    return out


def pick_misclassified(y_true, y_pred, n: int, seed: int = 0) -> np.ndarray:
    """Return up to ``n`` indices of misclassified examples, a seeded sample sorted by true class.

    Sorting by true class puts the mistakes about one garment next to each other in the grid.
    """
    t, p = _as_int_labels(y_true, "y_true"), _as_int_labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true has {len(t)} labels but y_pred has {len(p)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    wrong = np.flatnonzero(t != p)
    chosen = np.random.default_rng(seed).permutation(wrong)[:n]
    return chosen[np.lexsort((chosen, t[chosen]))]


def plot_learning_curves(history: Sequence[dict]) -> Figure:
    """Return the study's Fig. 1: accuracy (left) and loss (right) per epoch, train and validation.

    history: one dict per epoch with ``epoch``, ``train_accuracy``, ``train_loss`` and, when a
    validation split was used, ``val_accuracy`` and ``val_loss`` (as returned by ``train.fit``).
    Accuracy is drawn in percent, loss in nats (mean cross-entropy).
    """
    if not history:
        raise ValueError("history is empty: train at least one epoch before plotting curves")
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for ax, metric, label, scale in ((ax_acc, "accuracy", "accuracy (%)", 100.0), (ax_loss, "loss", "loss (cross-entropy)", 1.0)):
        ax.plot(epochs, [scale * row[f"train_{metric}"] for row in history], "o-", color=TRAIN_COLOR, label="train")
        if all(f"val_{metric}" in row for row in history):
            ax.plot(epochs, [scale * row[f"val_{metric}"] for row in history], "s--", color=VAL_COLOR, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if len(epochs) <= 15:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.set_title("Accuracy per epoch")
    ax_loss.set_title("Loss per epoch")
    return fig


def plot_confusion_matrix(confusion: np.ndarray, classes: Sequence[str]) -> Figure:
    """Return a heat map of the row-normalised confusion matrix, each cell labelled with its count.

    confusion: (C, C) counts, rows = true class. Colour = fraction of the true class (0..1), so
    classes with fewer test images are not drawn paler.
    """
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion has shape {cm.shape} but there are {len(classes)} class names")
    totals = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(totals, 1)
    counts = np.where(cm > 0, cm.astype(np.int64).astype(str), "")  # empty cells stay quiet
    fig = Figure(figsize=(7.2, 6.2), layout="constrained")
    ax = fig.subplots()
    annotated_matrix(ax, frac, classes, classes, vmin=0.0, vmax=1.0, cmap="Blues", fmt="", annot=counts,
                     cbar_label="fraction of the true class", fontsize=8,
                     title=f"Confusion matrix ({int(cm.sum()):,} test images)")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return fig


def plot_per_class_accuracy(accuracy: Sequence[float], classes: Sequence[str], overall: float | None = None) -> Figure:
    """Return horizontal bars of per-class accuracy in percent, labelled; ``overall`` as a dashed line.

    accuracy: (C,) fractions in [0, 1] in the order of ``classes``.
    """
    acc = np.asarray(accuracy, dtype=float)
    if acc.shape != (len(classes),):
        raise ValueError(f"accuracy has shape {acc.shape} but there are {len(classes)} class names")
    fig = Figure(figsize=(7, 0.38 * len(classes) + 1.2), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(classes))
    ax.barh(y, 100 * acc, color=TRAIN_COLOR)
    for yi, a in zip(y, acc):
        ax.text(100 * a + 0.5, yi, f"{100 * a:.1f}%", va="center", fontsize=8)
    if overall is not None:
        ax.axvline(100 * overall, color=VAL_COLOR, linestyle="--", label=f"overall {100 * overall:.1f}%")
        ax.legend(loc="lower left")
    ax.set_yticks(y, classes)
    ax.invert_yaxis()  # first class on top, as in the confusion matrix
    ax.set_xlim(0, 108)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title("Accuracy per class")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_misclassified(images, y_true, y_pred, classes: Sequence[str], ncols: int = 6) -> Figure:
    """Return a grid of images, each titled "true → predicted" (the mistakes to look at).

    images: (n, 28, 28) or (n, 1, 28, 28) uint8 or float; y_true, y_pred: (n,) class indices.
    """
    x = np.asarray(images)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (n, H, W) or (n, 1, H, W), got shape {np.asarray(images).shape}")
    t, p = _as_int_labels(y_true, "y_true"), _as_int_labels(y_pred, "y_pred")
    if not len(x) == len(t) == len(p):
        raise ValueError(f"{len(x)} images but {len(t)} true and {len(p)} predicted labels")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    n = len(x)
    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(1.55 * ncols, 1.75 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    for ax, img, ti, pi in zip(axes, x, t, p):
        ax.imshow(img, cmap="gray_r")
        ax.set_title(f"{classes[ti]}\n→ {classes[pi]}", fontsize=7.5)
    fig.suptitle("Misclassified test images (true → predicted)" if n else "No misclassified test images", fontsize=10)
    return fig
