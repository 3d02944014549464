"""The figure of the ablation over seeds (04_improvements): test accuracy against training time.

Every row of the ablation is one point with its error bar over seeds, coloured by its kind
(:data:`KIND_COLORS`). It returns a :class:`matplotlib.figure.Figure` built without pyplot (see
:mod:`~fmnist_utils.plots`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from .plots_common import TRAIN_COLOR, VAL_COLOR

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
