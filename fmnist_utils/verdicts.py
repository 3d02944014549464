"""Verdict records: every conclusion the report words, decided by a significance test.

Each ``verdict_*`` function runs a test of :mod:`~fmnist_utils.significance` and returns a
*verdict record* that a notebook writes into its ``results.json`` under
``results["verdicts"][key]`` and a template only words::

    {"key", "claim", "statistic", "value", "low", "high", "level", "p", "test", "n",
     "verdict", "reason", "family"}

``value`` is the estimate, ``low``/``high`` its interval at ``level``, ``p`` the p-value (None
where the test gives none), ``n`` the sample size the test counts (images, folds, classes),
``verdict`` a word from the function's fixed vocabulary (:data:`VERDICTS`) and ``reason`` why it is
``"n/a"``; ``family`` names the family of comparisons whose error rate the decision controls (None
for a test that stands alone). Numbers that cannot be computed are None, never NaN.

The vocabulary says what a test can say. Not rejecting the null is absence of evidence, not
equality, so a difference the test does not detect is ``"no_significant_difference"`` (worded with
its interval), an accuracy not detectably above chance is ``"not_distinguishable_from_chance"``,
a fall of validation accuracy that the test does not detect is ``"no_significant_drop"``; no word
here claims equality (that needs an equivalence test with a margin stated in advance).

One procedure decides and prints: the interval in a record excludes the null value exactly when its
verdict rejects (McNemar's exact interval, the bootstrap's percentile interval, the t interval at
the level a correction decides at, the Clopper-Pearson interval at 1 - 2 alpha for a one-sided test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from . import correlation
from . import significance
from .significance import ALPHA, LEVEL, N_PERM, _check_alpha, _check_level

RECORD_KEYS = ("key", "claim", "statistic", "value", "low", "high", "level", "p", "test", "n", "verdict", "reason",
               "family")

# The verdict words (a record's ``verdict``). None of them claims that two things are equal.
HIGHER, LOWER, NO_DIFFERENCE = "higher", "lower", "no_significant_difference"
ABOVE_CHANCE, NOT_ABOVE_CHANCE = "above_chance", "not_distinguishable_from_chance"
OVERFITS, NO_DROP = "overfits", "no_significant_drop"
AGREE, NO_AGREEMENT = "agree", "no_significant_agreement"
# Only an equivalence test with a margin stated before the data (verdict_equivalence) may say "equivalent".
EQUIVALENT, NOT_SHOWN_EQUIVALENT = "equivalent", "not_shown_equivalent"
NOT_AVAILABLE = "n/a"
VERDICTS = (HIGHER, LOWER, NO_DIFFERENCE, ABOVE_CHANCE, NOT_ABOVE_CHANCE, OVERFITS, NO_DROP, AGREE, NO_AGREEMENT,
            EQUIVALENT, NOT_SHOWN_EQUIVALENT, NOT_AVAILABLE)
# Words of earlier versions, which claimed equality from a non-significant test, and what they meant:
# records written by them (a saved results.json) are read with the new word.
LEGACY_VERDICTS = {"tie": NO_DIFFERENCE, "at_chance": NOT_ABOVE_CHANCE, "no_overfitting": NO_DROP,
                   "no_evidence": NO_AGREEMENT}
# The families a record's decision belongs to: the comparisons declared before the run (their
# family-wise error rate controlled by Holm) and the rest (their false discovery rate by
# Benjamini-Hochberg).
PRIMARY, EXPLORATORY = "primary", "exploratory"
FAMILY_METHODS = {PRIMARY: ("Holm", significance.holm),
                  EXPLORATORY: ("Benjamini-Hochberg", significance.benjamini_hochberg)}


def level_text(level: float) -> str:
    """Return a confidence level for prose: ``0.95`` -> ``"95%"``, ``0.98333`` -> ``"98.3%"``
    (one decimal where the whole per cent would round it)."""
    pct = 100 * float(level)
    return f"{pct:.0f}%" if abs(pct - round(pct)) < 1e-9 else f"{pct:.1f}%"


# --------------------------------------------------------------------------------------------
# Verdict records


def _num(value) -> float | None:
    """Return ``value`` as a float, or None when it is None or not finite (None is "not set")."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def record(key: str, claim: str, statistic: str, test: str, verdict: str, *, value=None, low=None, high=None,
           level: float | None = LEVEL, p=None, n: int | None = None, reason: str | None = None,
           family: str | None = None) -> dict:
    """Return a verdict record with exactly the keys of :data:`RECORD_KEYS` (numbers as float or None).

    ``level`` belongs to the interval: it is None in a record without one. ``verdict`` must be one
    of :data:`VERDICTS`; ``family`` None, :data:`PRIMARY` or :data:`EXPLORATORY`.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict record {key!r}: {verdict!r} is not a verdict word; choose one of {VERDICTS}")
    if family not in (None, PRIMARY, EXPLORATORY):
        raise ValueError(f"verdict record {key!r}: family must be None, {PRIMARY!r} or {EXPLORATORY!r}, got {family!r}")
    if verdict == "n/a" and not reason:
        raise ValueError(f"verdict record {key!r} is n/a: give the reason")
    low, high = _num(low), _num(high)
    return {"key": key, "claim": claim, "statistic": statistic, "value": _num(value), "low": low, "high": high,
            "level": level if low is not None or high is not None else None, "p": _num(p), "test": test,
            "n": None if n is None else int(n), "verdict": verdict, "reason": reason, "family": family}


def p_text(p: float) -> str:
    """Return a p-value for a test's description: ``"p = 0.012"``, ``"p < 0.0001"``."""
    return "p < 0.0001" if p < 1e-4 else f"p = {p:.2g}"


def _direction(p: float | None, estimate: float | None, alpha: float) -> str:
    """higher / lower when p < alpha (by the sign of the estimate), else no significant difference."""
    if p is None or estimate is None or p >= alpha or estimate == 0:
        return NO_DIFFERENCE
    return HIGHER if estimate > 0 else LOWER


def verdict_matrix_agreement(matrix_a, matrix_b, name_a: str, name_b: str, *, key: str = "matrix_agreement",
                             n_perm: int = N_PERM, seed: int = 0, boots=None, alpha: float = ALPHA,
                             level: float = LEVEL) -> dict:
    """Return the verdict record: do two class-by-class matrices (C, C) rank the class pairs alike?

    Mantel test (:func:`mantel_test`, one-sided). Vocabulary: ``"agree"`` (p < alpha: more alike
    than relabelled classes would be), ``"no_significant_agreement"``, ``"n/a"`` (a matrix has
    identical off-diagonal entries: no ranking). The record has no interval: the test gives none,
    and the image-bootstrap range of rho is not one (it holds the classes fixed and excludes zero for
    unrelated networks far more than 5% of the time), so printing it as "95% interval" beside the
    test's p would contradict the test. ``boots``: optional (boots_a, boots_b), each (B, C, C) from
    ``correlation.bootstrap_matrices`` on the same resamples; that range is then kept under the
    extra key ``image_resample_range`` ([low, high] at ``level``), a description of how rho moves
    with the image sample, never worded as the test's interval. ``n``: the number of classes.
    """
    _check_alpha(alpha)
    claim = f"{name_a} and {name_b} rank the pairs of classes alike (more than relabelled classes would)"
    test = f"Mantel permutation test of Spearman rho over the class pairs, {n_perm:,} permutations of the class labels, one-sided"
    try:
        result = significance.mantel_test(matrix_a, matrix_b, n_perm=n_perm, seed=seed)
    except ValueError as exc:
        if "identical off-diagonal" not in str(exc):
            raise
        return record(key, claim, "Spearman rho", test, "n/a", reason=str(exc), n=len(np.asarray(matrix_a)))
    if result["exact"]:
        test = f"Mantel permutation test of Spearman rho over the class pairs, all {result['n_perm']:,} permutations of the class labels, one-sided"
    verdict = AGREE if result["p"] < alpha else NO_AGREEMENT
    out = record(key, claim, "Spearman rho", test, verdict, value=result["statistic"], level=None, p=result["p"],
                 n=result["n_classes"])
    if boots is not None:
        _check_level(level)
        out["image_resample_range"] = [_num(x) for x in correlation.percentile_ci(correlation.bootstrap_spearman(*boots), level)]
    return out


def verdict_paired_bootstrap(key: str, claim: str, statistic: str, value_a: float, value_b: float, samples_a,
                             samples_b, *, n: int | None = None, level: float = LEVEL) -> dict:
    """Return the verdict record of a difference a - b between two networks on paired resamples.

    :func:`paired_bootstrap_difference`. Vocabulary: ``"higher"`` (the interval lies above 0:
    a's statistic is larger), ``"lower"`` (below 0), ``"no_significant_difference"`` (it contains 0).
    ``n``: images resampled. ``value`` is the difference a - b.

    The interval decides, so the record carries no p: the bootstrap p-value (its (1 + count) /
    (1 + B) form) can read 0.053 beside an interval that excludes zero, and one procedure must
    decide and print. The claim is about these two trained networks, the images resampled.
    """
    result = significance.paired_bootstrap_difference(value_a, value_b, samples_a, samples_b, level)
    verdict = HIGHER if result["low"] > 0 else (LOWER if result["high"] < 0 else NO_DIFFERENCE)
    test = (f"paired bootstrap over the images, {result['n_boot']:,} class-stratified resamples shared by both; "
            f"decided by whether the {level_text(level)} percentile interval excludes zero")
    return record(key, claim, statistic, test, verdict, value=result["difference"], low=result["low"],
                  high=result["high"], level=level, n=n)


def verdict_separation(matrix_a, matrix_b, boots_a, boots_b, name_a: str, name_b: str, *, n: int | None = None,
                       key: str = "separation", level: float = LEVEL) -> dict:
    """Return the verdict record: do a's classes stand apart more clearly than b's?

    The statistic is ``correlation.within_between``'s difference (mean within-class minus mean
    between-class entry) of each (C, C) matrix; boots_a, boots_b: (B, C, C) on the same
    resamples. :func:`verdict_paired_bootstrap`: ``"higher"`` (a's classes stand apart more),
    ``"lower"``, ``"no_significant_difference"``. ``n``: images resampled.
    """
    values = [correlation.within_between(m)["difference"] for m in (matrix_a, matrix_b)]
    samples = [correlation.bootstrap_within_between(b)["difference"] for b in (boots_a, boots_b)]
    return verdict_paired_bootstrap(
        key, f"{name_a} and {name_b} differ in how far their classes stand apart",
        f"difference in within-class minus between-class correlation ({name_a} minus {name_b})",
        *values, *samples, n=n, level=level)


def verdict_spearman_vs_pixels(matrix_a, matrix_b, matrix_pixels, boots_a, boots_b, boots_pixels, name_a: str,
                               name_b: str, *, n: int | None = None, key: str = "spearman_vs_pixels",
                               level: float = LEVEL) -> dict:
    """Return the verdict record: does a rank the class pairs more like the raw pixels than b does?

    The statistic is Spearman's rho of each network's (C, C) matrix with the pixels' matrix;
    the boots (B, C, C) share resamples. :func:`verdict_paired_bootstrap` vocabulary.
    """
    values = [correlation.compare_matrices(m, matrix_pixels) for m in (matrix_a, matrix_b)]
    samples = [correlation.bootstrap_spearman(b, boots_pixels) for b in (boots_a, boots_b)]
    return verdict_paired_bootstrap(
        key, f"{name_a} and {name_b} differ in how much their ranking of the class pairs follows the raw pixels'",
        f"difference in Spearman rho with the raw-pixel matrix ({name_a} minus {name_b})",
        *values, *samples, n=n, level=level)


def verdict_cka_vs_pixels(gram_a, gram_b, gram_pixels, weights, name_a: str, name_b: str, *,
                          key: str = "cka_vs_pixels", level: float = LEVEL) -> dict:
    """Return the verdict record: is a's representation closer to the raw pixels than b's (debiased CKA)?

    gram_a, gram_b, gram_pixels: (N, N) Gram matrices of the same N images
    (``correlation.centred_gram``); weights: (B, N) from ``correlation.resample_weights`` (the
    resamples of the matrices). :func:`verdict_paired_bootstrap` vocabulary; ``n``: N.
    """
    values = [correlation.cka_from_grams(g, gram_pixels, debiased=True) for g in (gram_a, gram_b)]
    samples = [correlation.bootstrap_cka(g, gram_pixels, weights) for g in (gram_a, gram_b)]
    return verdict_paired_bootstrap(
        key, f"{name_a} and {name_b} differ in how similar they are to the raw pixels",
        f"difference in debiased linear CKA with the raw pixels ({name_a} minus {name_b})",
        *values, *samples, n=np.shape(weights)[1], level=level)


def verdict_paired_accuracy(key: str, correct_a, correct_b, name_a: str, name_b: str, *, alpha: float = ALPHA,
                            level: float = LEVEL) -> dict:
    """Return the verdict record: is classifier a more accurate than b on the same images?

    McNemar's exact test (:func:`mcnemar_exact`). Vocabulary: ``"higher"`` / ``"lower"`` (a's
    accuracy above / below b's, p < alpha), ``"no_significant_difference"``. ``value``: accuracy
    a - accuracy b; the interval is the exact one that inverts the same test (``exact_low`` /
    ``exact_high`` of :func:`mcnemar_exact`), at level 1 - alpha, so it excludes zero exactly when
    the verdict is higher or lower; none when no image is discordant.

    What was resampled is the test images: the claim is about these two trained classifiers (one
    training run each) on images like these, not about their recipes, which would need retraining
    with other seeds.
    """
    _check_alpha(alpha)
    result = significance.mcnemar_exact(correct_a, correct_b, 1 - alpha)
    claim = f"{name_a} and {name_b}, as trained here, differ in accuracy on these test images"
    test = (f"McNemar's exact test on {result['n']:,} paired images ({result['a_only']:,} right only by {name_a}, "
            f"{result['b_only']:,} only by {name_b}); exact interval given the discordant images")
    verdict = _direction(result["p"], result["difference"], alpha)
    return record(key, claim, "difference in accuracy", test, verdict, value=result["difference"],
                  low=result["exact_low"], high=result["exact_high"], level=1 - alpha, p=result["p"], n=result["n"])


def verdict_cv_difference(key: str, scores_a, scores_b, n_train: int, n_test: int, name_a: str, name_b: str, *,
                          alpha: float = ALPHA, level: float = LEVEL, comparisons: int = 1, why: str = "") -> dict:
    """Return the verdict record: does configuration a score higher than b in cross-validation?

    scores_a, scores_b: (k,) validation accuracy of each on the same k folds (fold i of both on
    the same images); None or NaN marks a fold that did not finish, and only folds finished by
    both are paired. Corrected resampled t-test (:func:`corrected_resampled_ttest`).
    Vocabulary: ``"higher"`` / ``"lower"`` (p < alpha), ``"no_significant_difference"``, ``"n/a"``
    (fewer than two shared folds, or no spread; ``reason`` says so). ``value``: the mean per-fold
    difference a - b; ``n``: folds.

    ``comparisons``: m > 1 makes it one of m comparisons corrected by Bonferroni (``why`` says
    which): the test decides at alpha / m, the interval is at level 1 - alpha / m (so it excludes
    zero exactly when the verdict is higher or lower) and ``p`` is the adjusted min(1, m p).
    A configuration chosen as the best of m + 1 compared with another needs it: its lead is
    inflated by the choice (the winner's curse).
    """
    _check_alpha(alpha)
    if not isinstance(comparisons, (int, np.integer)) or comparisons < 1:
        raise ValueError(f"comparisons must be a positive integer, got {comparisons!r}")
    if comparisons > 1:
        alpha, level = alpha / comparisons, 1 - alpha / comparisons
    a = np.array([np.nan if v is None else v for v in scores_a], dtype=np.float64)
    b = np.array([np.nan if v is None else v for v in scores_b], dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"scores_a and scores_b must list the same folds, got {len(a)} and {len(b)} scores")
    shared = np.isfinite(a) & np.isfinite(b)
    result = significance.corrected_resampled_ttest(a[shared] - b[shared], n_train, n_test, level)
    claim = f"{name_a} and {name_b} differ in cross-validated accuracy"
    test = (f"corrected resampled t-test (Nadeau & Bengio 2003) on {result['k']} paired fold differences, "
            f"variance factor 1/k + {n_test:,}/{n_train:,}")
    if comparisons > 1:
        raw = "" if result["p"] is None else f", unadjusted {p_text(result['p'])}"
        test += f"; Bonferroni over {comparisons} comparisons{' (' + why + ')' if why else ''}{raw}"
    if result["reason"]:
        return record(key, claim, "mean difference in fold validation accuracy", test, "n/a", value=result["mean"],
                      level=level, n=result["k"], reason=result["reason"])
    verdict = _direction(result["p"], result["mean"], alpha)
    return record(key, claim, "mean difference in fold validation accuracy", test, verdict, value=result["mean"],
                  low=result["low"], high=result["high"], level=level, p=min(1.0, comparisons * result["p"]),
                  n=result["k"])


def verdict_above_chance(n_correct: int, n: int, n_classes: int, what: str, *, key: str = "above_chance",
                         alpha: float = ALPHA) -> dict:
    """Return the verdict record: is an accuracy above chance (1 / n_classes)?

    Exact one-sided binomial test (:func:`binomial_vs_chance`) on n independent images.
    Vocabulary: ``"above_chance"`` (p < alpha), ``"not_distinguishable_from_chance"`` (no
    evidence above it, which is not evidence of being at it). ``what`` names the accuracy (e.g.
    "the chosen configuration's test accuracy"); it must be measured on images that chose nothing
    (a test set read once), never on the validation score that picked the configuration.
    The interval is the two-sided Clopper-Pearson interval at level 1 - 2 alpha, the one whose
    lower end is the one-sided test's bound: it lies above chance exactly when the verdict is
    above chance.
    """
    _check_alpha(alpha)
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    level = 1 - 2 * alpha
    result = significance.binomial_vs_chance(n_correct, n, 1 / n_classes, level)
    claim = f"{what} is above chance (one in {n_classes})"
    test = f"exact one-sided binomial test against {1 / n_classes:.3g} on {n:,} images; Clopper-Pearson interval"
    verdict = ABOVE_CHANCE if result["p"] < alpha else NOT_ABOVE_CHANCE
    return record(key, claim, "accuracy", test, verdict, value=result["accuracy"], low=result["low"],
                  high=result["high"], level=level, p=result["p"], n=n)


def verdict_overfitting(val_accuracies: Sequence[float], n_val: int, *, correct=None, key: str = "overfitting",
                        alpha: float = ALPHA) -> dict:
    """Return the verdict record: did validation accuracy fall after an earlier epoch?

    :func:`overfitting_test` (``correct``: optional (E, n_val) per-image correctness, for
    the paired version). Vocabulary: ``"overfits"`` (p < alpha: a significant drop from an earlier
    epoch to the last), ``"no_significant_drop"`` (the test does not detect one, which is not
    evidence that there is none), ``"n/a"`` (one epoch: no curve; or no validation split: pass an
    empty list). ``value``: the drop from the best epoch to the last (a fraction of images).
    """
    _check_alpha(alpha)
    claim = "validation accuracy fell after an earlier epoch (overfitting)"
    statistic = "drop in validation accuracy from the best epoch to the last"
    if len(val_accuracies) == 0:
        return record(key, claim, statistic, "none", "n/a", reason="no validation split")
    result = significance.overfitting_test(val_accuracies, n_val, correct)
    if result["paired"]:
        test = (f"one-sided exact McNemar tests of each of the {result['epochs'] - 1} earlier epochs against the last on "
                f"the same {n_val:,} validation images, Bonferroni-corrected")
    else:
        test = (f"one-sided two-proportion z-tests of each of the {result['epochs'] - 1} earlier epochs against the last "
                f"on {n_val:,} validation images, Bonferroni-corrected (conservative: the epochs share the images)")
    if result["p"] is None:
        return record(key, claim, statistic, test, "n/a", value=result["drop"], n=n_val,
                      reason="only one epoch trained")
    verdict = OVERFITS if result["p"] < alpha else NO_DROP
    return record(key, claim, statistic, test, verdict, value=result["drop"], p=result["p"], n=n_val)


def verdict_equivalence(key: str, differences, margin: float, name_a: str, name_b: str, *, alpha: float = ALPHA,
                        statistic: str = "mean paired difference") -> dict:
    """Return the verdict record: are a and b equivalent within +-``margin`` (stated before the data)?

    differences: (n,) paired differences a - b (e.g. per seed). Two one-sided t-tests (TOST,
    Schuirmann 1987): H0 is |mean| >= margin; it is rejected, and the verdict is ``"equivalent"``,
    when both one-sided tests reject at alpha, which is exactly when the 1 - 2 alpha t interval lies
    inside (-margin, margin). Otherwise ``"not_shown_equivalent"``; ``"n/a"`` with fewer than two
    differences or none of their spread. ``p`` is the larger of the two one-sided p-values; the
    interval is the 1 - 2 alpha one. This is the only function whose words may claim equivalence.
    """
    _check_alpha(alpha)
    if not margin > 0:
        raise ValueError(f"margin must be a positive difference stated in advance, got {margin!r}")
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or not np.isfinite(d).all():
        raise ValueError(f"differences must be a finite 1-D array (n,), got shape {d.shape}")
    claim = f"{name_a} and {name_b} are equivalent within a margin of {margin:g} stated in advance"
    test = f"two one-sided t-tests (TOST) against the margin +-{margin:g}, {len(d)} paired differences"
    n = len(d)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sd == 0:
        return record(key, claim, statistic, test, "n/a", value=float(d.mean()) if n else None, n=n,
                      reason="fewer than two differences" if n < 2 else "every difference is the same, so its spread is unknown")
    mean, se, df = float(d.mean()), sd / math.sqrt(n), n - 1
    p = float(max(sps.t.sf((mean + margin) / se, df), sps.t.cdf((mean - margin) / se, df)))
    half = float(sps.t.ppf(1 - alpha, df)) * se
    verdict = EQUIVALENT if p < alpha else NOT_SHOWN_EQUIVALENT
    return record(key, claim, statistic, test, verdict, value=mean, low=mean - half, high=mean + half,
                  level=1 - 2 * alpha, p=p, n=n)
