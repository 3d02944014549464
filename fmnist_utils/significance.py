"""The significance tests behind every conclusion the report words: each with its null
hypothesis, p-value and the interval that inverts it.

:mod:`~fmnist_utils.correlation` computes descriptive quantities (matrices, CKA, bootstrap
resamples); the functions here test what they show, and :mod:`~fmnist_utils.verdicts` turns a
test's result into the verdict record a notebook writes. Each returns a plain dict of numbers.

The tests, and why these:

* :func:`mantel_test`: do two class-by-class matrices rank the class pairs alike? The 45 pairs
  of ten classes share classes, so they are not independent observations; permuting the class
  labels of one matrix (rows and columns together) is the exact reference distribution.
  A bootstrap interval of Spearman's rho over images is not a test of agreement: it is
  conditional on the classes and excludes zero for two unrelated networks far more than 5% of
  the time (``tests/test_stats.py`` shows it).
* :func:`paired_bootstrap_difference`: two networks measured on the *same* image resamples
  (``correlation.resample_weights``): the interval of the per-resample difference, not whether
  two separate intervals overlap.
* :func:`mcnemar_exact`: two classifiers scored on the same test images.
* :func:`corrected_resampled_ttest`: two configurations cross-validated on the same folds; the
  folds share training images, so the plain paired t-test is too confident (Nadeau & Bengio 2003).
* :func:`binomial_vs_chance` and :func:`overfitting_test`.
* :func:`holm` and :func:`benjamini_hochberg`: a family of comparisons (a notebook's primary
  comparisons, declared before it runs, and the exploratory rest), each returning the level at
  which every comparison is decided, so that its interval agrees with the family's decision.
* :func:`paired_t_power` and :func:`pairs_for_power`: how many seeds a paired comparison needs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats as sps

from . import correlation

# Significance level of every test, and confidence level of every interval.
ALPHA = 0.05
LEVEL = 0.95
# Permutations of the Mantel test; with 10,000 the Monte Carlo p-value of an observed p near
# ALPHA is known to about +-0.002 (binomial standard error).
N_PERM = 10_000
# Enumerate every permutation instead of sampling when there are at most this many
# (8! = 40,320): the p-value is then exact.
MAX_EXACT_PERMUTATIONS = 40_320
# Two Spearman values closer than this count as equal (a permutation that maps the matrix onto
# itself must count as ">= observed" despite float rounding).
TIE_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# Checks


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _symmetric(matrix, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square (C, C) matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    if not np.allclose(m, m.T, rtol=1e-10, atol=1e-12):
        raise ValueError(f"{name} is not symmetric; a class-by-class matrix of the study's kind must be")
    return m


def _correct(values, name: str) -> np.ndarray:
    """Return a bool (N,) array of per-image correctness, refusing anything but 0/1 values."""
    c = np.asarray(values)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (n_images,) of True/False, got shape {c.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise ValueError(f"{name} must hold True/False (or 0/1) per image; found other values")
        c = c.astype(bool)
    return c


# --------------------------------------------------------------------------------------------
# Mantel permutation test


def _upper_ranks(m: np.ndarray) -> np.ndarray:
    """Return (C, C) symmetric: the average rank of each off-diagonal entry among the upper triangle."""
    rows, cols = np.triu_indices(len(m), k=1)
    ranks = np.zeros_like(m)
    ranks[rows, cols] = sps.rankdata(m[rows, cols])
    return ranks + ranks.T


def _permutations(n_classes: int, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Return ((P, C) class orders, exact): all C! orders when there are few, else n_perm random ones."""
    if math.factorial(n_classes) <= min(n_perm, MAX_EXACT_PERMUTATIONS):
        return np.array(list(itertools.permutations(range(n_classes)))), True
    return rng.permuted(np.tile(np.arange(n_classes), (n_perm, 1)), axis=1), False


def mantel_test(a, b, n_perm: int = N_PERM, seed: int = 0, alternative: str = "greater") -> dict:
    """Return the Spearman correlation of two class-by-class matrices and its permutation p-value.

    a, b: symmetric (C, C) matrices over the same C classes (C >= 3); only the C (C - 1) / 2
    entries above the diagonal are compared (:func:`correlation.compare_matrices`).

    Null hypothesis: the class labels of ``b`` are exchangeable with respect to ``a`` (the two
    matrices are unrelated, e.g. two networks with independent class prototypes). Under it
    every relabelling of b's classes, applied to its rows and columns together, is as likely
    as the observed one. The p-value counts the relabellings whose rho is at least the observed
    one (``alternative="greater"``: agreement) or at least as far from zero (``"two-sided"``),
    the observed order included: (1 + #{>=}) / (1 + n_perm) for ``n_perm`` random relabellings,
    or the exact fraction over all C! relabellings when C! <= min(n_perm, 40,320).

    Keys: ``statistic`` (rho), ``p``, ``n_perm`` (relabellings used), ``exact`` (all C!
    enumerated), ``n_classes``, ``n_pairs``, ``alternative``.
    """
    a, b = _symmetric(a, "a"), _symmetric(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must describe the same classes, got shapes {a.shape} and {b.shape}")
    if not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise ValueError(f"n_perm must be a positive integer, got {n_perm!r}")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    observed = correlation.compare_matrices(a, b)  # also refuses C < 3 and constant off-diagonals
    c = len(a)
    rows, cols = np.triu_indices(c, k=1)
    # Spearman's rho is the Pearson correlation of ranks. A relabelling only moves b's entries
    # (and so its ranks) among the upper-triangle places: rank once, then index.
    ra = _upper_ranks(a)[rows, cols]
    ra = ra - ra.mean()
    rb = _upper_ranks(b)
    scale = np.sqrt((ra**2).sum() * ((rb[rows, cols] - rb[rows, cols].mean()) ** 2).sum())
    orders, exact = _permutations(c, n_perm, np.random.default_rng(seed))
    rho = np.empty(len(orders))
    for start in range(0, len(orders), 4096):  # bounds the (P, n_pairs) block
        p = orders[start : start + 4096]
        permuted = rb[p[:, rows], p[:, cols]]  # (P, n_pairs)
        rho[start : start + len(p)] = (permuted - permuted.mean(axis=1, keepdims=True)) @ ra / scale
    if alternative == "greater":
        hits = int(np.sum(rho >= observed - TIE_TOL))
    else:
        hits = int(np.sum(np.abs(rho) >= abs(observed) - TIE_TOL))
    p_value = hits / len(orders) if exact else (1 + hits) / (1 + len(orders))
    return {"statistic": observed, "p": float(p_value), "n_perm": len(orders), "exact": exact,
            "n_classes": c, "n_pairs": len(rows), "alternative": alternative}


# --------------------------------------------------------------------------------------------
# Paired bootstrap


def paired_bootstrap_difference(value_a: float, value_b: float, samples_a, samples_b, level: float = LEVEL) -> dict:
    """Return the difference a - b of a statistic of two networks and its paired bootstrap interval.

    value_a, value_b: the statistic on the whole sample; samples_a, samples_b: (B,) the same
    statistic on B resamples, entry b of both computed on the *same* resample (the same
    ``correlation.resample_weights`` row), e.g. within-between from
    ``correlation.bootstrap_within_between``, ``correlation.bootstrap_cka`` or
    ``correlation.bootstrap_spearman``. The interval is the percentile interval of the B
    differences (pairing cancels what the two share: which images were drawn).

    Null hypothesis (of ``p``): the statistic is the same for both networks. ``p`` is the
    two-sided percentile-bootstrap p-value, twice the smaller share of resample differences on
    either side of zero, counted as (1 + count) / (1 + B) so that B resamples never claim a
    p below 2 / (B + 1) (capped at 1); the interval at level about 1 - p just reaches zero.
    Keys: ``difference``, ``low``, ``high``, ``p``, ``level``, ``n_boot``.
    """
    _check_level(level)
    a, b = np.asarray(samples_a, dtype=np.float64), np.asarray(samples_b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(
            f"samples_a and samples_b must be (n_boot,) arrays of the same resamples, n_boot >= 2; "
            f"got shapes {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(value_a) and np.isfinite(value_b)):
        raise ValueError("the statistic is NaN or infinite on the sample or a resample")
    d = a - b
    low, high = correlation.percentile_ci(d, level)
    p = min(1.0, 2 * (1 + min(np.sum(d <= 0), np.sum(d >= 0))) / (1 + len(d)))
    return {"difference": float(value_a - value_b), "low": low, "high": high, "p": float(p), "level": level, "n_boot": len(d)}


def spearman_ci(matrix_a, matrix_b, boots_a, boots_b, level: float = LEVEL) -> dict:
    """Return ``{"value", "low", "high"}``: Spearman's rho of two matrices and its paired bootstrap interval.

    matrix_a, matrix_b: (C, C) on the whole sample; boots_a, boots_b: (B, C, C) from
    ``correlation.bootstrap_matrices`` with the same labels and seed. The interval describes
    how rho varies with the image sample only (the classes held fixed): it is no test of
    agreement between the networks; :func:`mantel_test` is.
    """
    _check_level(level)
    low, high = correlation.percentile_ci(correlation.bootstrap_spearman(boots_a, boots_b), level)
    return {"value": correlation.compare_matrices(matrix_a, matrix_b), "low": low, "high": high}


# --------------------------------------------------------------------------------------------
# Paired classifiers: McNemar


def mcnemar_exact(correct_a, correct_b, level: float = LEVEL) -> dict:
    """Return McNemar's exact test of two classifiers scored on the same images.

    correct_a, correct_b: (N,) bool, whether each classifier got image i right.

    Null hypothesis: both classifiers have the same accuracy on the population of images, so of
    the discordant images (right by exactly one of them) each is equally likely to favour a
    or b: a_only ~ Binomial(a_only + b_only, 1/2). ``p`` is the two-sided exact binomial p-value
    (1 when no image is discordant). The interval of the accuracy difference a - b is the
    adjusted Wald interval for paired proportions of Bonett & Price (2012): one pseudo-image
    added to each discordant cell, p_a = (a_only + 1) / (N + 2), p_b = (b_only + 1) / (N + 2),
    se = sqrt((p_a + p_b - (p_a - p_b)^2) / (N + 2)).

    That interval and the exact p can disagree near alpha (p = 0.057 beside an interval of 0.018 to
    1.58 points), so the verdict records print ``exact_low``/``exact_high`` instead: the exact
    interval that inverts the same test. Given the D = a_only + b_only discordant images, the
    difference is D / N * (2 pi - 1) with pi the chance that a discordant image favours a; the
    Clopper-Pearson interval of pi maps to it, and it excludes 0 exactly when p < 1 - level (the
    binomial with pi = 1/2 is symmetric, so the exact two-sided p is twice the smaller tail, the
    p-value the equal-tailed Clopper-Pearson interval inverts). It is conditional on D, as the test is;
    None when D = 0 (no discordant image: nothing to estimate pi from).
    Keys: ``difference`` (accuracy a - accuracy b), ``low``, ``high`` (Bonett-Price), ``exact_low``,
    ``exact_high``, ``p``, ``a_only``, ``b_only``, ``n`` (images), ``accuracy_a``, ``accuracy_b``, ``level``.
    """
    _check_level(level)
    a, b = _correct(correct_a, "correct_a"), _correct(correct_b, "correct_b")
    if len(a) != len(b):
        raise ValueError(f"correct_a has {len(a)} images but correct_b has {len(b)}: score both on the same images")
    n = len(a)
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(sps.binomtest(a_only, discordant, 0.5).pvalue)
    pa, pb = (a_only + 1) / (n + 2), (b_only + 1) / (n + 2)
    se = math.sqrt((pa + pb - (pa - pb) ** 2) / (n + 2))
    z = sps.norm.ppf((1 + level) / 2)
    exact_low = exact_high = None
    if discordant:
        ci = sps.binomtest(a_only, discordant, 0.5).proportion_ci(level, method="exact")
        exact_low, exact_high = (discordant / n * (2 * ci.low - 1), discordant / n * (2 * ci.high - 1))
    return {"difference": (a_only - b_only) / n, "low": max(-1.0, pa - pb - z * se), "high": min(1.0, pa - pb + z * se),
            "exact_low": exact_low, "exact_high": exact_high,
            "p": p, "a_only": a_only, "b_only": b_only, "n": n,
            "accuracy_a": float(a.mean()), "accuracy_b": float(b.mean()), "level": level}


# --------------------------------------------------------------------------------------------
# Cross-validation: the corrected resampled t-test


def corrected_resampled_ttest(differences, n_train: int, n_test: int, level: float = LEVEL) -> dict:
    """Return the corrected resampled t-test of k paired per-fold differences (Nadeau & Bengio 2003).

    differences: (k,) score of configuration a minus score of b on each fold, both trained on
    the same n_train images and validated on the same n_test images of that fold. The folds
    share training images, so their differences are correlated; the corrected variance
    (1/k + n_test/n_train) s^2 (s^2 the sample variance of the differences, ddof=1) replaces the
    plain s^2/k. t = mean / sqrt(that), df = k - 1.

    Null hypothesis: the two configurations have the same expected score (mean difference 0).
    ``p`` is two-sided; the interval is mean +- t_{df, (1+level)/2} * se. With k < 2 nothing
    can be estimated: every number is None and ``reason`` says so. With s = 0 (identical
    differences on every fold) t is 0 and p is 1 when the mean is 0, else t is +-inf and p 0.
    With few folds the test is conservative: in simulated 5-fold CV of two equally good
    classifiers (``tests/test_stats.py``) it rejected in 2.75% of 400 runs at alpha = 0.05,
    the plain paired t-test in 6.25%.
    Keys: ``mean``, ``se``, ``t``, ``df``, ``p``, ``low``, ``high``, ``k``, ``level``, ``reason``.
    """
    _check_level(level)
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"differences must be 1-D (k folds,), got shape {d.shape}")
    if not np.isfinite(d).all():
        raise ValueError("differences contain NaN or infinite values; leave unfinished folds out")
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive number of images, got {value!r}")
    k = len(d)
    if k < 2:
        reason = "only one fold finished" if k == 1 else "no fold finished"
        return {"mean": float(d[0]) if k else None, "se": None, "t": None, "df": None, "p": None,
                "low": None, "high": None, "k": k, "level": level, "reason": reason}
    mean = float(d.mean())
    se = math.sqrt((1 / k + n_test / n_train) * d.var(ddof=1))
    df = k - 1
    if se == 0 and mean != 0:
        # Every fold moved by the same amount: with no spread the t statistic is undefined, and
        # a p of 0 would claim certainty that a handful of folds cannot give.
        return {"mean": mean, "se": se, "t": None, "df": df, "p": None, "low": None, "high": None, "k": k,
                "level": level, "reason": "every fold gave the same difference, so its spread is unknown"}
    if se == 0:
        t, p = 0.0, 1.0
    else:
        t = mean / se
        p = float(2 * sps.t.sf(abs(t), df))
    half = float(sps.t.ppf((1 + level) / 2, df)) * se
    return {"mean": mean, "se": se, "t": t, "df": df, "p": p, "low": mean - half, "high": mean + half,
            "k": k, "level": level, "reason": None}


# --------------------------------------------------------------------------------------------
# One accuracy: against chance, and over the epochs


def binomial_vs_chance(n_correct: int, n: int, chance: float, level: float = LEVEL) -> dict:
    """Return the exact one-sided binomial test of an accuracy against chance.

    n_correct of n independent test images classified correctly; chance: the accuracy of
    guessing (1 / n_classes for balanced classes).

    Null hypothesis: the classifier's accuracy is at most ``chance``. ``p`` is
    P(Binomial(n, chance) >= n_correct). The interval is the two-sided Clopper-Pearson
    interval of the accuracy. Keys: ``accuracy``, ``low``, ``high``, ``p``, ``n``, ``chance``, ``level``.
    """
    _check_level(level)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(n_correct, (int, np.integer)) or not 0 <= n_correct <= n:
        raise ValueError(f"n_correct must be an integer in 0..n={n}, got {n_correct!r}")
    if not 0 < chance < 1:
        raise ValueError(f"chance must be in (0, 1), got {chance}")
    test = sps.binomtest(int(n_correct), int(n), chance, alternative="greater")
    ci = sps.binomtest(int(n_correct), int(n), chance).proportion_ci(level, method="exact")
    return {"accuracy": n_correct / n, "low": float(ci.low), "high": float(ci.high), "p": float(test.pvalue),
            "n": int(n), "chance": chance, "level": level}


def overfitting_test(val_accuracies, n_val: int, correct=None) -> dict:
    """Return a test of whether validation accuracy fell after an earlier epoch (overfitting).

    val_accuracies: (E,) validation accuracy after each epoch, in order, all on the same n_val
    images. correct: optional (E, n_val) bool, whether each image was right after each epoch;
    when given, the epochs are compared image by image (sharper, see below).

    Null hypothesis: no earlier epoch is better than the last: for every epoch e < E, the
    expected accuracy at e is at most the expected accuracy at the last epoch. Each earlier
    epoch e is tested one-sided against the last, giving p_e, and the p-value is
    min(1, (E - 1) * min_e p_e) (Bonferroni over the E - 1 epochs, which pays for picking the
    best epoch after looking). Without ``correct``, p_e comes from a pooled two-proportion
    z-test that treats the two epochs' scores as independent samples; on the same validation
    images they are positively correlated, so the true variance of the difference is smaller
    and the test is conservative (it misses small drops). With ``correct``, p_e is McNemar's
    exact one-sided test on the images right at exactly one of e and the last epoch.
    (The rule this replaces, "the drop from the best epoch exceeds two binomial standard
    errors of one accuracy", ignores both the selection and the variance of a difference, and
    calls flat curves overfitting far more often than 5% of the time.)
    Keys: ``drop`` (best accuracy - last accuracy, >= 0), ``best_epoch`` (1-based), ``p``,
    ``paired`` (whether ``correct`` was used), ``n`` (n_val), ``epochs``; ``p`` is None with
    one epoch.
    """
    acc = np.asarray(val_accuracies, dtype=np.float64)
    if acc.ndim != 1 or len(acc) == 0:
        raise ValueError(f"val_accuracies must be a non-empty 1-D array (epochs,), got shape {acc.shape}")
    if not (np.isfinite(acc).all() and np.all((acc >= 0) & (acc <= 1))):
        raise ValueError("val_accuracies must be fractions in [0, 1]")
    if not isinstance(n_val, (int, np.integer)) or n_val < 1:
        raise ValueError(f"n_val must be a positive number of validation images, got {n_val!r}")
    best = int(np.argmax(acc))  # first of equals
    out = {"drop": float(acc[best] - acc[-1]), "best_epoch": best + 1, "p": None, "paired": correct is not None,
           "n": int(n_val), "epochs": len(acc)}
    if len(acc) < 2:
        return out
    if correct is not None:
        right = np.asarray(correct)
        if right.shape != (len(acc), n_val) or not np.isin(right, (0, 1)).all():
            raise ValueError(f"correct must be (epochs, n_val) = ({len(acc)}, {n_val}) of True/False, got shape {right.shape}")
        right = right.astype(bool)
        if not np.allclose(right.mean(axis=1), acc, atol=0.5 / n_val):
            raise ValueError("correct does not match val_accuracies: pass both from the same evaluation")
        earlier_only = (right[:-1] & ~right[-1]).sum(axis=1)  # (E-1,)
        discordant = earlier_only + (~right[:-1] & right[-1]).sum(axis=1)
        p_each = np.array([sps.binom.sf(e - 1, d, 0.5) if d else 1.0 for e, d in zip(earlier_only, discordant)])
    else:
        earlier, last = acc[:-1], acc[-1]
        pooled = (earlier + last) / 2
        se = np.sqrt(2 * pooled * (1 - pooled) / n_val)
        gap = earlier - last
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, gap / np.where(se > 0, se, 1.0), np.where(gap > 0, np.inf, 0.0))
        p_each = sps.norm.sf(z)
    out["p"] = float(min(1.0, (len(acc) - 1) * p_each.min()))
    return out


# --------------------------------------------------------------------------------------------
# Families of comparisons: Holm, Benjamini-Hochberg, and the level each is decided at


def _family_pvalues(pvalues) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D (m comparisons,), got shape {p.shape}")
    if not (np.isfinite(p).all() and np.all((p >= 0) & (p <= 1))):
        raise ValueError("pvalues must be probabilities in [0, 1]; leave a comparison without a p-value (n/a) out of the family")
    return p


def holm(pvalues, alpha: float = ALPHA) -> dict:
    """Return Holm's step-down decisions for a family of m p-values (its family-wise error rate <= alpha).

    pvalues: (m,). Sorted ascending, p_(i) is rejected while p_(j) < alpha / (m - j + 1) for every
    j <= i (Holm 1979). Keys (each (m,), in the input order): ``p_adjusted`` (max over j <= i of
    min(1, (m - j + 1) p_(j)); rejected exactly when < alpha), ``reject`` (bool) and ``alpha_each``:
    the level at which each comparison's own test decides, so that an interval at 1 - alpha_each
    excludes the null value exactly when the comparison is rejected: alpha / (m - i + 1) for a
    rejected p_(i), and the threshold of the first comparison not rejected for every one not rejected
    (their p-values are at least that threshold). m = 0 gives empty arrays.
    """
    _check_alpha(alpha)
    p = _family_pvalues(pvalues)
    m = len(p)
    order = np.argsort(p, kind="stable")
    thresholds = alpha / (m - np.arange(m))  # (m,): alpha / m, alpha / (m - 1), ..., alpha
    passed = p[order] < thresholds
    stop = int(np.argmin(passed)) if not passed.all() else m  # the first rank not rejected
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    reject = np.zeros(m, dtype=bool)
    reject[order[:stop]] = True
    each = np.empty(m)
    each[order] = np.where(np.arange(m) < stop, thresholds, thresholds[min(stop, m - 1)] if m else alpha)
    return {"p_adjusted": adjusted, "reject": reject, "alpha_each": each}


def benjamini_hochberg(pvalues, alpha: float = ALPHA) -> dict:
    """Return Benjamini-Hochberg's decisions for m p-values (false discovery rate <= alpha for
    independent or positively dependent tests).

    pvalues: (m,). With R the largest rank i such that p_(i) < i alpha / m, the R smallest are
    rejected (Benjamini & Hochberg 1995; strict ``<`` so that the intervals below agree at the
    boundary). Keys, in the input order: ``p_adjusted`` (min over j >= i of min(1, m p_(j) / j),
    the values of ``scipy.stats.false_discovery_control``; rejected exactly when < alpha), ``reject``
    and ``alpha_each`` = max(R, 1) alpha / m for all: the level of Benjamini and Yekutieli's (2005)
    false-coverage-rate adjusted intervals, which exclude the null value exactly for the rejected ones.
    """
    _check_alpha(alpha)
    p = _family_pvalues(pvalues)
    m = len(p)
    order = np.argsort(p, kind="stable")
    ranks = np.arange(1, m + 1)
    below = np.nonzero(p[order] < ranks * alpha / max(m, 1))[0]
    r = int(below[-1]) + 1 if len(below) else 0
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate((m * p[order] / ranks)[::-1])[::-1])
    reject = np.zeros(m, dtype=bool)
    reject[order[:r]] = True
    return {"p_adjusted": adjusted, "reject": reject, "alpha_each": np.full(m, max(r, 1) * alpha / max(m, 1))}


# --------------------------------------------------------------------------------------------
# Power: how many pairs (seeds) a paired comparison needs


def paired_t_power(n: int, effect: float = 1.0, alpha: float = ALPHA) -> float:
    """Return the power of the two-sided paired t-test with n pairs to detect a mean difference of
    ``effect`` standard deviations of the differences, at level alpha (noncentral t, df = n - 1,
    noncentrality effect * sqrt(n))."""
    _check_alpha(alpha)
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"n must be an integer >= 2 pairs, got {n!r}")
    crit = sps.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    return float(sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc))


def pairs_for_power(effect: float = 1.0, alpha: float = ALPHA, power: float = 0.8, max_n: int = 10_000) -> int:
    """Return the fewest pairs (seeds) with which the two-sided paired t-test at level alpha detects
    a mean difference of ``effect`` standard deviations with at least ``power`` (:func:`paired_t_power`).
    At alpha = 0.05 a one-sd effect needs 10 pairs for 80% power."""
    if not 0 < power < 1 or effect <= 0:
        raise ValueError(f"need 0 < power < 1 and effect > 0, got power={power}, effect={effect}")
    for n in range(2, max_n + 1):
        if paired_t_power(n, effect, alpha) >= power:
            return n
    raise ValueError(f"more than {max_n:,} pairs needed for power {power} at effect {effect} and alpha {alpha}")

