"""How a sweep's configurations and their hyperparameters are named in tables and figures.

Kept apart from :mod:`~fmnist_utils.search_space` and :mod:`~fmnist_utils.cv_results` (which
re-export these names, where the notebooks and the sweep look for them) because those import
Optuna, torch and the sweep: the sweep's figures (:mod:`~fmnist_utils.plots_sweep`) need only
these names, and importing the figures must not import the sweep. Standard library only.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotation only: the module imports nothing but the standard library
    import pandas as pd

# Axis and table labels of the study's factors (its Tables 2-4); other names are printed as they are.
LABELS = {"lr": "learning rate", "batch_size": "batch size", "dropout": "dropout"}


def describe_config(params: dict) -> str:
    """Return a short label such as ``lr=0.05 batch=128 dropout=0.5``."""
    short = {"batch_size": "batch"}
    return " ".join(f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
                    for k, v in params.items())


def hyperparameter_names(table: pd.DataFrame) -> list[str]:
    """Return the hyperparameter columns of a fold or summary table (``cv_results.fold_results``
    or ``cv_results.summarize``), in column order (they are the keys of its ``config`` column)."""
    if table.empty:
        return []
    keys = json.loads(table["config"].iloc[0])
    return [c for c in table.columns if c in keys]
