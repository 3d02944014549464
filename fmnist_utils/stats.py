"""Tested inference: the tests behind every conclusion the report words, and its verdict records.

One import for the notebooks and the report (``from fmnist_utils import stats``); the code lives
in two modules, and every name below is importable from here as before:

* :mod:`~fmnist_utils.significance`: the tests, each with its null hypothesis and the interval
  that inverts it (Mantel, paired bootstrap, McNemar, the corrected resampled t-test, the
  binomial test against chance, the overfitting test), Holm and Benjamini-Hochberg over a family
  of comparisons, and the power of a paired comparison;
* :mod:`~fmnist_utils.verdicts`: the verdict record a notebook writes and a template only words,
  its vocabulary (no word claims equality from a non-significant test), and one ``verdict_*``
  function per kind of claim, deciding by one of those tests.

:mod:`~fmnist_utils.correlation` computes the descriptive quantities these decide on.
"""

from __future__ import annotations

from .significance import (
    ALPHA,
    LEVEL,
    MAX_EXACT_PERMUTATIONS,
    N_PERM,
    TIE_TOL,
    benjamini_hochberg,
    binomial_vs_chance,
    corrected_resampled_ttest,
    holm,
    mantel_test,
    mcnemar_exact,
    overfitting_test,
    paired_bootstrap_difference,
    paired_t_power,
    pairs_for_power,
    spearman_ci,
)
from .verdicts import (
    ABOVE_CHANCE,
    AGREE,
    EQUIVALENT,
    EXPLORATORY,
    FAMILY_METHODS,
    HIGHER,
    LEGACY_VERDICTS,
    LOWER,
    NO_AGREEMENT,
    NO_DIFFERENCE,
    NO_DROP,
    NOT_ABOVE_CHANCE,
    NOT_AVAILABLE,
    NOT_SHOWN_EQUIVALENT,
    OVERFITS,
    PRIMARY,
    RECORD_KEYS,
    VERDICTS,
    level_text,
    p_text,
    record,
    verdict_above_chance,
    verdict_cka_vs_pixels,
    verdict_cv_difference,
    verdict_equivalence,
    verdict_matrix_agreement,
    verdict_overfitting,
    verdict_paired_accuracy,
    verdict_paired_bootstrap,
    verdict_separation,
    verdict_spearman_vs_pixels,
)

__all__ = [
    # significance
    "ALPHA", "LEVEL", "N_PERM", "MAX_EXACT_PERMUTATIONS", "TIE_TOL",
    "mantel_test", "paired_bootstrap_difference", "spearman_ci", "mcnemar_exact", "corrected_resampled_ttest",
    "binomial_vs_chance", "overfitting_test", "holm", "benjamini_hochberg", "paired_t_power", "pairs_for_power",
    # verdicts
    "RECORD_KEYS", "HIGHER", "LOWER", "NO_DIFFERENCE", "ABOVE_CHANCE", "NOT_ABOVE_CHANCE", "OVERFITS", "NO_DROP",
    "AGREE", "NO_AGREEMENT", "EQUIVALENT", "NOT_SHOWN_EQUIVALENT", "NOT_AVAILABLE", "VERDICTS", "LEGACY_VERDICTS",
    "PRIMARY", "EXPLORATORY", "FAMILY_METHODS", "level_text", "record", "p_text",
    "verdict_matrix_agreement", "verdict_paired_bootstrap", "verdict_separation", "verdict_spearman_vs_pixels",
    "verdict_cka_vs_pixels", "verdict_paired_accuracy", "verdict_cv_difference", "verdict_above_chance",
    "verdict_overfitting", "verdict_equivalence",
]
