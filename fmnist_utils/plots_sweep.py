"""The figures of a hyperparameter sweep (01_sweep): heat maps, one factor at a time, and the folds' spread.

They draw the tables of :mod:`~fmnist_utils.cv_results` (``fold_results``, ``summarize``,
``factor_tables``) and name hyperparameters with :mod:`~fmnist_utils.config_labels`, so that
drawing them imports neither the sweep nor Optuna. Every ``plot_*`` function returns a
:class:`matplotlib.figure.Figure` built without pyplot (see :mod:`~fmnist_utils.plots`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .config_labels import LABELS, describe_config, hyperparameter_names
from .plots_common import TRAIN_COLOR, VAL_COLOR, annotated_matrix


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
                         title=None if f is None else f"{LABELS.get(facet, facet)} {_value_label(f)}")
        ax.set_xlabel(LABELS.get(cols, cols))
        ax.set_ylabel(LABELS.get(rows, rows) if i == 0 else "")
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
        ax.set_xlabel(LABELS.get(factor, factor))
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
    order = summary.sort_values("accuracy_mean", ascending=True, kind="stable")
    names = hyperparameter_names(summary)
    fig = Figure(figsize=(6.5, 0.28 * len(order) + 1.2), layout="constrained")
    ax = fig.subplots()
    for i, (_, row) in enumerate(order.iterrows()):
        acc = folds.loc[folds["config"] == row["config"], "val_accuracy"]
        ax.scatter(acc, np.full(len(acc), i), s=14, color=TRAIN_COLOR, alpha=0.8)
        ax.plot([row["accuracy_mean"]] * 2, [i - 0.35, i + 0.35], color=VAL_COLOR, lw=2)
    ax.set_yticks(range(len(order)), [describe_config({n: r[n] for n in names}) for _, r in order.iterrows()],
                  fontsize=7)
    ax.set_xlabel("validation accuracy (dots: folds; bar: CV mean)")
    ax.grid(axis="x", alpha=0.3)
    return fig
