"""What every figure of the kit shares: the train and validation colours and the one annotated heat map.

Confusion matrices, the sweep's grid, the class-by-class correlation matrices and the CKA grid
are all drawn by :func:`annotated_matrix` (seaborn), so they read alike; train and validation
curves, bars and points take :data:`TRAIN_COLOR` and :data:`VAL_COLOR` in every figure.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import seaborn as sns
from matplotlib.axes import Axes

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
