"""Compare representations: the study's class-by-class correlation matrix and the measures around it.

One import for the notebooks (``from fmnist_utils import correlation``); each measure lives in
the module its name says, and every name below is importable from here as before:

* :mod:`~fmnist_utils.class_matrices`: the two class-by-class matrices and how they differ (the
  study's mean of pairwise image correlations, self-pairs excluded, against the RSA toolboxes'
  correlation of class means), the zero-variance rule, within- against between-class
  correlation, Spearman's rho of two matrices over the class pairs, the tables of a comparison;
* :mod:`~fmnist_utils.cka`: linear CKA, plain and debiased, and grids of it between layers;
* :mod:`~fmnist_utils.bootstrap`: stratified image resamples shared by every network (a paired
  bootstrap) and each measure on them, percentile intervals;
* :mod:`~fmnist_utils.feature_arrays`: the input checks and float64 chunks they share.

These are descriptive quantities; :mod:`~fmnist_utils.stats` tests what they show. All are pure
functions of their inputs (float64, vectorised, inputs never modified).
"""

from __future__ import annotations

from .bootstrap import (
    bootstrap_ci,
    bootstrap_cka,
    bootstrap_matrices,
    bootstrap_spearman,
    bootstrap_within_between,
    percentile_ci,
    resample_weights,
    sample_per_class,
    summarise_bootstrap,
)
from .cka import best_pair, centred_gram, cka_from_grams, cka_grid, linear_cka
from .class_matrices import (
    class_correlation_matrix,
    class_mean_correlation,
    compare_matrices,
    constant_rows,
    image_correlations,
    layer_rows,
    top_pairs,
    within_between,
)

__all__ = [
    "class_correlation_matrix", "class_mean_correlation", "image_correlations", "constant_rows", "within_between",
    "compare_matrices", "top_pairs", "layer_rows",
    "centred_gram", "cka_from_grams", "linear_cka", "cka_grid", "best_pair",
    "sample_per_class", "resample_weights", "bootstrap_matrices", "bootstrap_within_between", "bootstrap_spearman",
    "bootstrap_cka", "percentile_ci", "summarise_bootstrap", "bootstrap_ci",
]
