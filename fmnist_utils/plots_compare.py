"""The figures of the ResNet-18 comparison (03_resnet_compare): class matrices, layer curves, CKA, probes.

They draw what :mod:`~fmnist_utils.correlation` computes (the study's matrices and the class-mean
ones, ``correlation.layer_rows``, ``correlation.cka_grid``) and the probes' accuracies. Every
``plot_*`` function returns a :class:`matplotlib.figure.Figure` built without pyplot (see
:mod:`~fmnist_utils.plots`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from .plots_common import annotated_matrix


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
