"""The kit's figures, for every notebook, and the few numbers they draw, as pure functions.

Every ``plot_*`` function takes arrays or tables and returns a :class:`matplotlib.figure.Figure`
built without pyplot, so nothing is registered globally and nothing is shown or saved as a side
effect: a notebook displays the returned figure and saves it with
``fmnist_utils.notebook.Notebook.save_figure``. Every matrix is drawn by
:func:`annotated_matrix` (seaborn), so all heat maps read alike. The helpers that compute what a
figure shows (:func:`confusion_matrix`, :func:`per_class_accuracy`, :func:`top_confusions`,
:func:`pick_misclassified`) are separate so the numbers can be written to results and tested on
their own.

Sections: the annotated matrix; training (curves, confusion, per class, mistakes); the sweep
(:func:`plot_sweep_heatmaps`, :func:`plot_sweep_factors`, :func:`plot_fold_spread`); the
ResNet comparison (class matrices, layer curves, CKA grids, probes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
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


# --------------------------------------------------------------------------------------------
# 01_sweep: tables from fmnist_utils.sweep (fold_results, summarize, factor_tables)


def _value_label(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def in_value_order(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Return ``table``'s rows sorted by ``column`` ascending when every value is a number (an
    axis of learning rates reads 0.0005, 0.003, 0.05, 0.1), else in their given order (names
    such as optimizers have no order to impose). Ties keep their order; ``table`` is unchanged.
    """
    values = table[column]
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                  for v in values)
    return table.sort_values(column, kind="stable") if numeric else table


def _search_space():
    # Imported when a sweep figure is drawn: the search space brings Optuna.
    from . import search_space

    return search_space


def plot_sweep_heatmaps(summary: pd.DataFrame, rows: str = "lr", cols: str = "batch_size",
                        facet: str | None = "dropout", value: str = "accuracy_mean") -> Figure:
    """Return heat maps of ``value`` (CV mean validation accuracy, drawn in %) over ``rows`` x ``cols``.

    summary: one row per configuration (``cv_results.summarize``). One panel per ``facet`` value
    (sorted; one panel when ``facet`` is None or not a column), all on one colour scale, rows in
    descending and columns in ascending order. Cells the sweep did not train are blank.
    """
    for name in (rows, cols, value):
        if name not in summary:
            raise ValueError(f"summary has no column {name!r}; columns are {list(summary.columns)}")
    if summary.empty:
        raise ValueError("summary is empty: there is no configuration to draw")
    labels = _search_space().LABELS
    facets = sorted(summary[facet].unique()) if facet is not None and facet in summary else [None]
    row_vals = sorted(summary[rows].unique(), reverse=True)
    col_vals = sorted(summary[cols].unique())
    vmin, vmax = 100 * summary[value].min(), 100 * summary[value].max()
    fig = Figure(figsize=(1.6 + 1.1 * len(col_vals) * len(facets), 0.55 * len(row_vals) + 1.7),
                 layout="constrained")
    axes = fig.subplots(1, len(facets), squeeze=False)[0]
    for i, (ax, f) in enumerate(zip(axes, facets)):
        part = summary if f is None else summary[summary[facet] == f]
        grid = part.pivot_table(index=rows, columns=cols, values=value).reindex(index=row_vals, columns=col_vals)
        last = i == len(facets) - 1
        annotated_matrix(ax, 100 * grid.to_numpy(dtype=float), [_value_label(c) for c in col_vals],
                         [_value_label(r) for r in row_vals], vmin=vmin, vmax=vmax, fmt=".1f", fontsize=8,
                         cbar=last, cbar_label="CV mean validation accuracy (%)" if last else None,
                         title=None if f is None else f"{labels.get(facet, facet)} {_value_label(f)}")
        ax.set_xlabel(labels.get(cols, cols))
        ax.set_ylabel(labels.get(rows, rows) if i == 0 else "")
        ax.tick_params(axis="x", labelrotation=0)
        ax.tick_params(axis="y", labelleft=i == 0)  # the rows are the same in every panel
    return fig


def plot_sweep_factors(tables: dict[str, pd.DataFrame], folds: pd.DataFrame) -> Figure:
    """Return one panel per factor (the tables of ``cv_results.factor_tables``, the study's Tables 2-4):
    each fold's validation accuracy (grey dots), the CV mean (diamond, red for the base value)
    with its sample standard deviation over the folds (error bar). Numeric values run in
    ascending order along the x axis (:func:`in_value_order`).

    folds: one row per (configuration, fold) with ``config`` and ``val_accuracy`` (``cv_results.fold_results``).
    """
    if not tables:
        raise ValueError("no factor tables: the sweep has no configurations differing in one factor only")
    labels = _search_space().LABELS
    fig = Figure(figsize=(3.6 * len(tables), 3.4), layout="constrained")
    axes = fig.subplots(1, len(tables), squeeze=False, sharey=True)[0]
    for ax, (factor, table) in zip(axes, tables.items()):
        table = in_value_order(table, factor)  # the tables come ranked by accuracy; an axis reads in value order
        pos = np.arange(len(table))
        ax.errorbar(pos, table["accuracy_mean"], yerr=table["accuracy_std"].fillna(0), fmt="none",
                    ecolor="0.3", capsize=4)
        ax.scatter(pos, table["accuracy_mean"], c=[VAL_COLOR if b else TRAIN_COLOR for b in table["is_base"]],
                   s=60, zorder=3, marker="D")
        for p, key in zip(pos, table["config"]):
            acc = folds.loc[folds["config"] == key, "val_accuracy"]
            ax.scatter(np.full(len(acc), p + 0.12), acc, s=12, color="0.5", zorder=2)
        ax.set_xticks(pos, [_value_label(v) for v in table[factor]])
        ax.set_xlabel(labels.get(factor, factor))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("validation accuracy")
    return fig


def plot_fold_spread(folds: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    """Return every configuration (best at the top) with each fold's validation accuracy (dots)
    and the CV mean (bar): where the dots of two configurations overlap, the folds cannot tell
    them apart.

    folds: ``cv_results.fold_results``; summary: ``cv_results.summarize`` of it.
    """
    if summary.empty:
        raise ValueError("summary is empty: there is no configuration to draw")
    space = _search_space()
    order = summary.sort_values("accuracy_mean", ascending=True, kind="stable")
    from . import cv_results

    names = cv_results.hyperparameter_names(summary)
    fig = Figure(figsize=(6.5, 0.28 * len(order) + 1.2), layout="constrained")
    ax = fig.subplots()
    for i, (_, row) in enumerate(order.iterrows()):
        acc = folds.loc[folds["config"] == row["config"], "val_accuracy"]
        ax.scatter(acc, np.full(len(acc), i), s=14, color=TRAIN_COLOR, alpha=0.8)
        ax.plot([row["accuracy_mean"]] * 2, [i - 0.35, i + 0.35], color=VAL_COLOR, lw=2)
    ax.set_yticks(range(len(order)), [space.describe_config({n: r[n] for n in names}) for _, r in order.iterrows()],
                  fontsize=7)
    ax.set_xlabel("validation accuracy (dots: folds; bar: CV mean)")
    ax.grid(axis="x", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# Figures of 03_resnet_compare: class-by-class matrices, layer curves, CKA grids, probes


def _matrix_fmt(vmin: float, vmax: float) -> str:
    """Two decimals, or three where the colour range is narrow enough that two would not tell cells apart."""
    return ".2f" if vmax - vmin >= 0.2 else ".3f"


def plot_class_matrices(
    matrices: Sequence,
    titles: Sequence[str],
    classes: Sequence[str],
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    cbar_label: str = "mean Pearson r over pairs of distinct images",
    suptitle: str | None = None,
) -> Figure:
    """Return one row of class-by-class matrices (C, C) on one colour scale, each cell labelled.

    The study's Fig. 2 is two of them (the CNN's and ResNet-18's). ``vmin``/``vmax``: the shared
    scale; None takes the range of all the matrices (pass another figure's range to compare).
    """
    ms = [np.asarray(m, dtype=float) for m in matrices]
    if not ms or len(ms) != len(titles):
        raise ValueError(f"give one title per matrix: {len(ms)} matrices, {len(titles)} titles")
    vmin = min(float(m.min()) for m in ms) if vmin is None else vmin
    vmax = max(float(m.max()) for m in ms) if vmax is None else vmax
    fig = Figure(figsize=(7 * len(ms), 6.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(ms)))
    for i, (ax, m, title) in enumerate(zip(axes, ms, titles)):
        last = i == len(ms) - 1
        annotated_matrix(ax, m, classes, classes, vmin=vmin, vmax=vmax, cmap=cmap, fmt=_matrix_fmt(vmin, vmax),
                         cbar=last, cbar_label=cbar_label if last else None, title=title, fontsize=6.5)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_matrix_definitions(
    study_matrices: Sequence, class_mean_matrices: Sequence, titles: Sequence[str], classes: Sequence[str],
    suptitle: str | None = None,
) -> Figure:
    """Return a 2 x N grid: top, the study's matrix of each network; bottom, its correlation of class means.

    Both (C, C) kinds on one diverging scale from -1 to 1, so the reader sees how far apart the
    two definitions are (see ``correlation.class_correlation_matrix`` and ``class_mean_correlation``).
    """
    if not (len(study_matrices) == len(class_mean_matrices) == len(titles)) or not titles:
        raise ValueError("give as many study matrices, class-mean matrices and titles (at least one)")
    n = len(titles)
    fig = Figure(figsize=(6.5 * n, 12), layout="constrained")
    axes = np.asarray(fig.subplots(2, n)).reshape(2, n)
    for col, title in enumerate(titles):
        for row, (m, what) in enumerate(((study_matrices[col], "mean of pairwise image correlations (the study's)"),
                                         (class_mean_matrices[col], "correlation of class means (RSA toolboxes)"))):
            last = col == n - 1
            annotated_matrix(axes[row, col], m, classes, classes, vmin=-1, vmax=1, cmap="RdBu_r", fmt=".2f",
                             cbar=last, cbar_label="Pearson r" if last else None, title=f"{title}\n{what}", fontsize=6.5)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_layer_curves(rows: Sequence[dict], panels: dict, baseline: str = "pixels", suptitle: str | None = None) -> Figure:
    """Return one panel per network: within-class, between-class correlation and their difference by layer.

    rows: ``correlation.layer_rows`` (each with ``model``, ``layer``, ``within``, ``between``,
    ``difference``), in input-to-output order; panels: {model in rows: panel title}. Each
    panel starts with the ``baseline`` model's rows (the raw pixels), then the network's.
    """
    if not panels:
        raise ValueError("panels is empty: name at least one model of the rows to draw")
    missing = [m for m in panels if not any(r["model"] == m for r in rows)]
    if missing:
        raise ValueError(f"no rows for model(s) {missing}; rows hold {sorted({r['model'] for r in rows})}")
    fig = Figure(figsize=(6.5 * len(panels), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (model, title) in zip(axes, panels.items()):
        shown = [r for r in rows if r["model"] == baseline] + [r for r in rows if r["model"] == model]
        names = [r["layer"] for r in shown]
        for quantity, style in (("within", "o-"), ("between", "s--"), ("difference", "^-")):
            ax.plot(names, [r[quantity] for r in shown], style, label=quantity)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer (input to output)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Pearson r")
    axes[0].legend()
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_cka_grids(
    grids: dict, row_labels: Sequence[str], col_labels: Sequence[str], *, xlabel: str, ylabel: str,
    suptitle: str | None = None,
) -> Figure:
    """Return one annotated heat map per CKA grid (R, C) on the scale 0..1, e.g. plain and debiased.

    grids: {panel title: (R, C)}; rows and columns are the layers of the two networks.
    """
    if not grids:
        raise ValueError("grids is empty: give at least one {title: (R, C) grid}")
    fig = Figure(figsize=(6.5 * len(grids), 5.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(grids)))
    for i, (ax, (title, grid)) in enumerate(zip(axes, grids.items())):
        last = i == len(grids) - 1
        annotated_matrix(ax, grid, col_labels, row_labels, vmin=0, vmax=1, cmap="magma", fmt=".2f",
                         cbar=last, cbar_label="CKA" if last else None, title=title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_probe_accuracies(
    accuracies: dict, *, reference: float | None = None, reference_label: str = "", xlabel: str = "test accuracy",
    suptitle: str | None = None,
) -> Figure:
    """Return horizontal bars of probe accuracies {label: fraction}, labelled in percent, first on top.

    ``reference``: an accuracy drawn as a dashed line (e.g. the network's own classifier).
    """
    if not accuracies:
        raise ValueError("accuracies is empty: give at least one {label: accuracy}")
    labels, values = list(accuracies), [float(v) for v in accuracies.values()]
    colours = ["0.6", "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    fig = Figure(figsize=(10, 0.7 * len(labels) + 1.8), layout="constrained")
    ax = fig.subplots()
    ax.barh(labels, values, color=[colours[i % len(colours)] for i in range(len(labels))])
    if reference is not None:
        ax.axvline(reference, color="black", ls="--", lw=1, label=reference_label or None)
        if reference_label:
            ax.legend(loc="lower right")
    for i, value in enumerate(values):
        ax.text(value, i, f" {100 * value:.1f}%", va="center")
    ax.set_xlim(0, 1.08)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
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
    names: Sequence[str], seconds, accuracy_mean, accuracy_sd=None, kinds: Sequence[str] | None = None,
    chance: float | None = None,
) -> Figure:
    """Return test accuracy against training time for every ablation row, with error bars over seeds.

    names: (R,) row names written beside the points; seconds: (R,) training wall time per model
    (s); accuracy_mean, accuracy_sd: (R,) mean and standard deviation over seeds (fractions; sd
    None or NaN where there is one seed); kinds: (R,) row kinds (keys of :data:`KIND_COLORS`)
    for the colours and legend; chance: an accuracy drawn as a dotted line (guessing). The time
    axis is logarithmic when the times span more than 5x.
    """
    t = np.asarray(seconds, dtype=float)
    m = np.asarray(accuracy_mean, dtype=float)
    sd = (np.full_like(m, np.nan) if accuracy_sd is None
          else np.array([np.nan if s is None else s for s in accuracy_sd], dtype=float))
    kinds = list(kinds) if kinds is not None else ["recipe"] * len(m)
    if not len(names) == len(t) == len(m) == len(sd) == len(kinds):
        raise ValueError(f"names, seconds, accuracy_mean, accuracy_sd and kinds differ in length: "
                         f"{len(names)}, {len(t)}, {len(m)}, {len(sd)}, {len(kinds)}")
    unknown = sorted(set(kinds) - set(KIND_COLORS))
    if unknown:
        raise ValueError(f"unknown row kinds {unknown}; use {sorted(KIND_COLORS)}")
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
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
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle=":", label="chance")
    ax.grid(alpha=0.3)
    # Outside the axes, so it never hides a point.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return fig
