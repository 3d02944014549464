"""The figures of ``01_train`` and the few numbers they draw, as pure functions.

Every ``plot_*`` function takes arrays and returns a :class:`matplotlib.figure.Figure` built
without pyplot, so nothing is registered globally and nothing is shown or saved as a side
effect: a notebook displays the returned figure and saves it with ``fig.savefig``. The helpers
that compute what a figure shows (:func:`confusion_matrix`, :func:`per_class_accuracy`,
:func:`top_confusions`, :func:`pick_misclassified`) are separate so the numbers can be written
to results and tested on their own.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# One colour per curve kind, so train/validation read the same in every figure.
TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"


def annotated_matrix(
    ax: Axes,
    matrix,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    fmt: str = ".2f",
    annot=True,
    cbar_label: str | None = None,
    cbar: bool = True,
    title: str | None = None,
    fontsize: float = 7,
) -> Axes:
    """Draw ``matrix`` (R, C) on ``ax`` as a seaborn heat map, each cell labelled, and return ``ax``.

    The kit's one annotated heat map: confusion matrices, the sweep's grid, the class-by-class
    correlation matrices and the CKA grid all go through it, so they read alike. ``annot``: True
    labels each cell with its value in ``fmt``; an (R, C) array labels with those values instead
    (for example counts over a colour of fractions). NaN cells are left blank. ``xlabels`` /
    ``ylabels``: tick labels (C,) and (R,), or None for none.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D (R, C), got shape {m.shape}")
    for labels, n, what in ((xlabels, m.shape[1], "xlabels"), (ylabels, m.shape[0], "ylabels")):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{what} has {len(labels)} names for {n} cells; give one per cell")
    sns.heatmap(
        m, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, annot=annot, fmt=fmt, mask=np.isnan(m),
        annot_kws={"fontsize": fontsize}, square=m.shape[0] == m.shape[1], cbar=cbar,
        cbar_kws={"label": cbar_label, "shrink": 0.8} if cbar else None,
        xticklabels=list(xlabels) if xlabels is not None else False,
        yticklabels=list(ylabels) if ylabels is not None else False,
    )
    if xlabels is not None:
        ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
    if ylabels is not None:
        ax.set_yticklabels(ax.get_yticklabels(), rotation=0)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


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
    fig = Figure(figsize=(7.2, 6.2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for t in range(n):
        for p in range(n):
            if cm[t, p]:
                ax.text(p, t, str(int(cm[t, p])), ha="center", va="center", fontsize=8,
                        color="white" if frac[t, p] > 0.5 else "black")
    ax.set_title(f"Confusion matrix ({int(cm.sum()):,} test images)")
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


# --------------------------------------------------------------------------------------------
# 04_improvements: the ablation over seeds

# One colour per kind of ablation row (improve.KINDS), so the groups read the same everywhere.
KIND_COLORS = {
    "recipe": "#1d232a", "without": VAL_COLOR, "with": TRAIN_COLOR, "suggestion": "#9467bd",
    "resnet": "#2ca02c", "ensemble": "#ff7f0e",
}
KIND_LABELS = {
    "recipe": "the two recipes", "without": "modern − one option", "with": "study + one option",
    "suggestion": "the study's suggestions", "resnet": "ResNet-18", "ensemble": "ensemble",
}


def plot_accuracy_vs_time(
    names: Sequence[str], seconds, accuracy_mean, accuracy_sd=None, kinds: Sequence[str] | None = None
) -> Figure:
    """Return test accuracy against training time for every ablation row, with error bars over seeds.

    names: (R,) row names written beside the points; seconds: (R,) training wall time per model
    (s); accuracy_mean, accuracy_sd: (R,) mean and standard deviation over seeds (fractions; sd
    None or NaN where there is one seed); kinds: (R,) row kinds (keys of :data:`KIND_COLORS`)
    for the colours and legend. The time axis is logarithmic when the times span more than 5x.
    """
    t = np.asarray(seconds, dtype=float)
    m = np.asarray(accuracy_mean, dtype=float)
    sd = np.full_like(m, np.nan) if accuracy_sd is None else np.array([np.nan if s is None else s for s in accuracy_sd], dtype=float)
    kinds = list(kinds) if kinds is not None else ["recipe"] * len(m)
    if not len(names) == len(t) == len(m) == len(sd) == len(kinds):
        raise ValueError(f"names, seconds, accuracy_mean, accuracy_sd and kinds differ in length: "
                         f"{len(names)}, {len(t)}, {len(m)}, {len(sd)}, {len(kinds)}")
    unknown = sorted(set(kinds) - set(KIND_COLORS))
    if unknown:
        raise ValueError(f"unknown row kinds {unknown}; use {sorted(KIND_COLORS)}")
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for kind in KIND_COLORS:
        sel = np.array([k == kind for k in kinds])
        if sel.any():
            ax.errorbar(t[sel], 100 * m[sel], yerr=100 * np.nan_to_num(sd[sel]), fmt="o", capsize=3,
                        color=KIND_COLORS[kind], label=KIND_LABELS[kind])
    for name, x, y in zip(names, t, m):
        ax.annotate(name, (x, 100 * y), xytext=(4, 3), textcoords="offset points", fontsize=7)
    if len(t) and t.min() > 0 and t.max() / t.min() > 5:
        ax.set_xscale("log")
    ax.set_xlabel("training time per model (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against training time (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig
