"""stats: each test against a loop or a textbook formula, and its level under a true null by simulation.

A level check runs S seeded simulations of a true null and counts p < 0.05. The count is
Binomial(S, rate); ``band`` gives the range it falls in with probability 0.999 when the rate is
exactly 5%, so a test that holds its level lands inside and an anti-conservative one above.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from fmnist_utils import bootstrap
from fmnist_utils import correlation as corr
from fmnist_utils import stats
from test_correlation import random_case, slow_weighted_matrix


def band(sims: int, rate: float = stats.ALPHA) -> tuple[float, float]:
    """Return the (low, high) rejection rates that S sims of a level-``rate`` test stay within w.p. 0.999."""
    return sps.binom.ppf(0.0005, sims, rate) / sims, sps.binom.isf(0.0005, sims, rate) / sims


def symmetric(c: int, rng: np.random.Generator) -> np.ndarray:
    m = rng.normal(size=(c, c))
    return m + m.T


def networks(prototypes: list[np.ndarray], per_class: int, noise: float, rng: np.random.Generator):
    """Return (features of each network, labels): images = class prototype + Gaussian noise."""
    c = len(prototypes[0])
    y = np.repeat(np.arange(c), per_class)
    return [p[y] + noise * rng.normal(size=(len(y), p.shape[1])) for p in prototypes], y


# --------------------------------------------------------------------------------------------
# Mantel


def mantel_by_enumeration(a: np.ndarray, b: np.ndarray) -> float:
    """The exact one-sided p-value: the fraction of all C! relabellings of b with rho >= the observed."""
    observed = corr.compare_matrices(a, b)
    rhos = [corr.compare_matrices(a, b[np.ix_(p, p)]) for p in itertools.permutations(range(len(a)))]
    return float(np.mean(np.array(rhos) >= observed - 1e-12))


@pytest.mark.parametrize("c, seed", [(4, 0), (5, 1), (6, 2)])
def test_mantel_exact_matches_enumeration(c, seed):
    rng = np.random.default_rng(seed)
    a = symmetric(c, rng)
    b = a + 1.5 * symmetric(c, rng)  # related, but not perfectly
    result = stats.mantel_test(a, b)
    assert result["exact"] and result["n_perm"] == math.factorial(c)
    assert result["statistic"] == pytest.approx(corr.compare_matrices(a, b))
    assert result["p"] == pytest.approx(mantel_by_enumeration(a, b))


def test_mantel_exact_with_tied_entries():
    rng = np.random.default_rng(3)
    a = np.round(symmetric(5, rng))  # integer entries: ties among the pairs
    b = np.round(a + symmetric(5, rng))
    assert stats.mantel_test(a, b)["p"] == pytest.approx(mantel_by_enumeration(a, b))


def test_mantel_monte_carlo_agrees_with_enumeration():
    rng = np.random.default_rng(4)
    a = symmetric(7, rng)
    b = a + 3.0 * symmetric(7, rng)
    exact = mantel_by_enumeration(a, b)  # 5,040 relabellings
    result = stats.mantel_test(a, b, n_perm=4000, seed=1)
    assert not result["exact"] and result["n_perm"] == 4000
    assert abs(result["p"] - exact) < 4 * math.sqrt(exact * (1 - exact) / 4000) + 1 / 4000
    assert result["p"] == stats.mantel_test(a, b, n_perm=4000, seed=1)["p"]  # seeded


def test_mantel_counts_the_observed_order():
    rng = np.random.default_rng(5)
    a = symmetric(10, rng)
    result = stats.mantel_test(a, a, n_perm=99)
    assert result["statistic"] == pytest.approx(1.0)
    assert result["p"] == pytest.approx(1 / 100)  # only the observed order reaches rho = 1
    assert stats.mantel_test(a, a[::-1, ::-1], n_perm=1)["p"] >= 1 / 2  # (1 + hits) / (1 + n_perm)
    exact = stats.mantel_test(a[:5, :5], a[:5, :5])
    assert exact["exact"] and exact["p"] == pytest.approx(1 / 120)


def test_mantel_two_sided_and_relabelling_invariance():
    rng = np.random.default_rng(6)
    a, noise = symmetric(6, rng), symmetric(6, rng)
    b = -a + 0.5 * noise  # opposite orders
    one = stats.mantel_test(a, b)
    two = stats.mantel_test(a, b, alternative="two-sided")
    assert one["p"] > 0.9 and two["p"] < 0.05
    rhos = np.array([corr.compare_matrices(a, b[np.ix_(p, p)]) for p in itertools.permutations(range(6))])
    assert two["p"] == pytest.approx(np.mean(np.abs(rhos) >= abs(one["statistic"]) - 1e-12))
    order = rng.permutation(6)  # the same relabelling of both matrices changes nothing
    same = stats.mantel_test(a[np.ix_(order, order)], b[np.ix_(order, order)])
    assert same["statistic"] == pytest.approx(one["statistic"]) and same["p"] == pytest.approx(one["p"])


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.arange(16.0).reshape(4, 4), np.eye(4), "not symmetric"),
        (np.eye(4), np.eye(5), "same classes"),
        (np.eye(2), np.eye(2), "at least 3 classes"),
        (np.full((4, 4), np.nan), np.eye(4), "NaN"),
        (np.ones((4, 4)), np.eye(4) + np.ones((4, 4)), "identical off-diagonal"),
        (np.ones(4), np.ones(4), "square"),
    ],
)
def test_mantel_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        stats.mantel_test(a, b)


def test_mantel_holds_its_level_for_unrelated_networks():
    # Two networks with independent random class prototypes cannot agree: p < 0.05 in 5% of sims.
    rng = np.random.default_rng(7)
    sims, hits = 400, 0
    for s in range(sims):
        feats, y = networks([rng.normal(size=(10, 20)) for _ in range(2)], per_class=6, noise=0.5, rng=rng)
        a, b = (corr.class_correlation_matrix(x, y, 10) for x in feats)
        hits += stats.mantel_test(a, b, n_perm=199, seed=s)["p"] < stats.ALPHA
    low, high = band(sims)
    assert low <= hits / sims <= high


def test_bootstrap_interval_of_spearman_is_not_a_test_of_agreement():
    # The rule the Mantel test replaced: "the bootstrap interval of rho excludes zero". The
    # interval is conditional on the classes (only images are resampled), so for two unrelated
    # networks it excludes zero far more often than 5%, while the Mantel test holds its level.
    rng = np.random.default_rng(8)
    sims, old_rule, mantel = 100, 0, 0
    for s in range(sims):
        feats, y = networks([rng.normal(size=(10, 20)) for _ in range(2)], per_class=8, noise=0.5, rng=rng)
        a, b = (corr.class_correlation_matrix(x, y, 10) for x in feats)
        boots = [corr.bootstrap_matrices(x, y, 10, n_boot=200, seed=s) for x in feats]
        ci = stats.spearman_ci(a, b, *boots)
        old_rule += ci["low"] > 0 or ci["high"] < 0
        mantel += stats.mantel_test(a, b, n_perm=199, seed=s)["p"] < stats.ALPHA
    assert old_rule / sims > 0.3
    assert mantel / sims <= band(sims)[1]


def test_mantel_detects_shared_class_structure():
    rng = np.random.default_rng(9)
    shared = rng.normal(size=(10, 20))
    feats, y = networks([shared, shared @ rng.normal(size=(20, 30))], per_class=8, noise=0.5, rng=rng)
    a, b = (corr.class_correlation_matrix(x, y, 10) for x in feats)
    assert stats.mantel_test(a, b, n_perm=999)["p"] < 0.01


# --------------------------------------------------------------------------------------------
# Paired bootstrap


def test_paired_difference_matches_loop():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=500), rng.normal(size=500) + 0.1
    result = stats.paired_bootstrap_difference(0.3, 0.2, a, b)
    diffs = [x - y for x, y in zip(a, b)]
    assert result["difference"] == pytest.approx(0.1)
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    below, above = sum(d <= 0 for d in diffs), sum(d >= 0 for d in diffs)
    assert result["p"] == pytest.approx(min(1.0, 2 * (1 + min(below, above)) / 501))
    apart = stats.paired_bootstrap_difference(1.0, 0.0, a + 10, a)  # every resample on one side
    assert apart["p"] == pytest.approx(2 / 501) and apart["low"] == pytest.approx(10)
    assert result["n_boot"] == 500 and result["level"] == stats.LEVEL


def test_pairing_separates_what_overlapping_intervals_cannot():
    # Two networks whose statistic moves together over the resamples (the images drawn matter
    # more than the network): their separate intervals overlap, the paired difference does not.
    rng = np.random.default_rng(11)
    shared = rng.normal(size=1000)
    a = 0.50 + 0.05 * shared + 0.001 * rng.normal(size=1000)
    b = 0.49 + 0.05 * shared + 0.001 * rng.normal(size=1000)
    low_a, high_a = corr.percentile_ci(a)
    low_b, high_b = corr.percentile_ci(b)
    assert low_a < high_b and low_b < high_a  # the old rule: "does not show which"
    result = stats.verdict_paired_bootstrap("separation", "claim", "difference", 0.50, 0.49, a, b, n=100)
    assert result["verdict"] == "higher" and 0 < result["low"] < result["value"] < result["high"]
    assert stats.verdict_paired_bootstrap("k", "c", "s", 0.49, 0.50, b, a)["verdict"] == "lower"


def test_paired_bootstrap_holds_its_level_for_equal_networks():
    # Two networks with the same class prototypes and noise level: equal within-between in the
    # population. Their paired interval of the difference excludes zero in about 5% of samples.
    rng = np.random.default_rng(12)
    sims, hits = 200, 0
    for s in range(sims):
        proto = rng.normal(size=(5, 30))
        feats, y = networks([proto, proto], per_class=10, noise=1.5, rng=rng)
        values = [corr.within_between(corr.class_correlation_matrix(x, y, 5))["difference"] for x in feats]
        samples = [corr.bootstrap_within_between(corr.bootstrap_matrices(x, y, 5, 200, seed=s))["difference"] for x in feats]
        hits += stats.verdict_paired_bootstrap("k", "c", "s", *values, *samples)["verdict"] != "no_significant_difference"
    low, high = band(sims)
    assert low <= hits / sims <= high


def test_spearman_ci_matches_loop():
    x, y = random_case(60, 12, 5, seed=13)
    x2 = x @ np.random.default_rng(13).normal(size=(12, 9))
    boots = [corr.bootstrap_matrices(f, y, 5, n_boot=40, seed=3) for f in (x, x2)]
    matrices = [corr.class_correlation_matrix(f, y, 5) for f in (x, x2)]
    result = stats.spearman_ci(*matrices, *boots)
    rhos = [corr.compare_matrices(p, q) for p, q in zip(*boots)]
    np.testing.assert_allclose(corr.bootstrap_spearman(*boots), rhos, atol=1e-12)
    assert result["value"] == pytest.approx(corr.compare_matrices(*matrices))
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(rhos, [2.5, 97.5])))


def test_resamples_are_shared_by_every_bootstrap():
    x, y = random_case(24, 5, 3, seed=14)
    weights = corr.resample_weights(y, 3, n_boot=3, seed=5)
    boots = corr.bootstrap_matrices(x, y, 3, n_boot=3, seed=5)
    for b in range(3):
        np.testing.assert_allclose(boots[b], slow_weighted_matrix(x, y, weights[b], 3), atol=1e-12)
    np.testing.assert_array_equal(weights, corr.resample_weights(y.tolist(), 3, n_boot=3, seed=5))


def hsic_on_draws(k: np.ndarray, l: np.ndarray, w: np.ndarray) -> float:
    """Song et al.'s U-statistic over tuples of draws of distinct images, the draws written out."""
    src = np.repeat(np.arange(len(w)), w.astype(int))
    idx = range(len(src))
    pairs = [(i, j) for i in idx for j in idx if src[i] != src[j]]
    t1 = np.mean([k[src[i], src[j]] * l[src[i], src[j]] for i, j in pairs])
    triples = [(i, j, q) for i, j in pairs for q in idx if src[q] not in (src[i], src[j])]
    t3 = np.mean([k[src[i], src[j]] * l[src[i], src[q]] for i, j, q in triples])
    quads = [(i, j, q, r) for i, j, q in triples for r in idx if src[r] not in (src[i], src[j], src[q])]
    t2 = np.mean([k[src[i], src[j]] * l[src[q], src[r]] for i, j, q, r in quads])
    return t1 + t2 - 2 * t3


def test_bootstrap_cka_matches_loop_over_draws():
    rng = np.random.default_rng(15)
    x, z = rng.normal(size=(6, 3)), rng.normal(size=(6, 4))
    k, l = x @ x.T, z @ z.T
    w = np.array([[2, 0, 1, 1, 3, 1], [1, 1, 1, 1, 1, 1], [0, 2, 2, 0, 1, 1]], dtype=float)
    got = bootstrap._weighted_hsic_unbiased(k, l, w)
    for b in range(3):
        assert got[b] == pytest.approx(hsic_on_draws(k, l, w[b]), rel=1e-10)
    expected = [hsic_on_draws(k, l, wb) / math.sqrt(hsic_on_draws(k, k, wb) * hsic_on_draws(l, l, wb)) for wb in w]
    np.testing.assert_allclose(corr.bootstrap_cka(k, l, w), expected, rtol=1e-10)


def test_bootstrap_cka_with_unit_weights_is_debiased_cka():
    rng = np.random.default_rng(16)
    x, z = rng.normal(size=(30, 8)), rng.normal(size=(30, 50))
    k, l = corr.centred_gram(x), corr.centred_gram(z)
    np.testing.assert_allclose(corr.bootstrap_cka(k, l, np.ones((2, 30))), corr.linear_cka(x, z, debiased=True), rtol=1e-10)
    with pytest.raises(ValueError, match="at least 4 distinct"):
        corr.bootstrap_cka(k, l, np.eye(30)[:1] * 30)
    with pytest.raises(ValueError, match="N = 30"):
        corr.bootstrap_cka(k, l, np.ones((2, 29)))


# --------------------------------------------------------------------------------------------
# McNemar


def test_mcnemar_matches_binomtest_on_a_loop_count():
    rng = np.random.default_rng(17)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.75
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    result = stats.mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"], result["n"]) == (a_only, b_only, 300)
    assert result["p"] == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    assert result["difference"] == pytest.approx(a.mean() - b.mean())
    pa, pb = (a_only + 1) / 302, (b_only + 1) / 302  # Bonett & Price (2012)
    se = math.sqrt((pa + pb - (pa - pb) ** 2) / 302)
    assert (result["low"], result["high"]) == pytest.approx((pa - pb - 1.959964 * se, pa - pb + 1.959964 * se), abs=1e-6)
    assert stats.mcnemar_exact(a.astype(int), b.astype(int))["p"] == result["p"]


def test_mcnemar_edge_cases_and_bad_input():
    same = np.array([True, False, True, True])
    assert stats.mcnemar_exact(same, same)["p"] == 1.0
    assert stats.mcnemar_exact(same, same)["difference"] == 0.0
    with pytest.raises(ValueError, match="same images"):
        stats.mcnemar_exact(same, same[:3])
    with pytest.raises(ValueError, match="True/False"):
        stats.mcnemar_exact(np.array([0, 2, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        stats.mcnemar_exact(np.array([]), np.array([]))


def test_mcnemar_holds_its_level_for_equally_accurate_classifiers():
    rng = np.random.default_rng(18)
    sims, hits = 400, 0
    for _ in range(sims):
        difficulty = rng.normal(size=300)  # shared by both: their errors are correlated
        a, b = (difficulty + rng.normal(size=300) < 1.0 for _ in range(2))
        hits += stats.mcnemar_exact(a, b)["p"] < stats.ALPHA
    assert hits / sims <= band(sims)[1]  # exact McNemar is at most at its level (discreteness: below it)
    assert hits / sims > 0.01


# --------------------------------------------------------------------------------------------
# Corrected resampled t-test


def test_corrected_ttest_matches_hand_formula():
    d = np.array([0.012, 0.004, 0.009, -0.002, 0.011])
    result = stats.corrected_resampled_ttest(d, n_train=4800, n_test=1200)
    k, mean = 5, d.sum() / 5
    var = sum((x - mean) ** 2 for x in d) / (k - 1)
    se = math.sqrt((1 / k + 1200 / 4800) * var)
    assert result["mean"] == pytest.approx(mean) and result["se"] == pytest.approx(se)
    assert result["t"] == pytest.approx(mean / se) and result["df"] == 4
    assert result["p"] == pytest.approx(2 * (1 - sps.t.cdf(abs(mean / se), 4)))
    half = sps.t.ppf(0.975, 4) * se
    assert (result["low"], result["high"]) == pytest.approx((mean - half, mean + half))
    plain = sps.ttest_1samp(d, 0.0)
    assert result["p"] > plain.pvalue  # the correction only widens


def test_corrected_ttest_edge_cases():
    one = stats.corrected_resampled_ttest([0.01], 100, 50)
    assert one["reason"] == "only one fold finished" and one["p"] is None and one["t"] is None and one["k"] == 1
    assert stats.corrected_resampled_ttest([], 100, 50)["reason"] == "no fold finished"
    flat = stats.corrected_resampled_ttest([0.0, 0.0, 0.0], 100, 50)
    assert flat["p"] == 1.0 and flat["t"] == 0.0
    shifted = stats.corrected_resampled_ttest([0.01, 0.01, 0.01], 100, 50)
    assert shifted["p"] is None and shifted["t"] is None and "same difference" in shifted["reason"]
    with pytest.raises(ValueError, match="unfinished folds"):
        stats.corrected_resampled_ttest([0.1, np.nan], 100, 50)
    with pytest.raises(ValueError, match="n_train"):
        stats.corrected_resampled_ttest([0.1, 0.2], 0, 50)


def centroid_accuracy(x_fit, y_fit, x_val, y_val, n_classes: int) -> float:
    centres = np.stack([x_fit[y_fit == c].mean(0) for c in range(n_classes)])
    return float((((x_val[:, None] - centres[None]) ** 2).sum(-1).argmin(1) == y_val).mean())


def test_corrected_ttest_holds_its_level_for_equal_configurations():
    # Two "configurations" equally good by construction: nearest-centroid classifiers on two
    # halves of the features, and the second half is an independent copy of the first's class
    # structure. k-fold CV on fresh data each time. The plain paired t-test on fold differences
    # ignores that the folds share training images and rejects too often; the corrected one
    # stays at or below its level (it is known to be conservative for k-fold CV).
    rng = np.random.default_rng(19)
    sims, k, n, half = 400, 5, 80, 50
    corrected = plain = 0
    for _ in range(sims):
        means = 0.2 * rng.normal(size=(2, half))
        y = rng.permutation(np.repeat(np.arange(2), n // 2))
        x = np.concatenate([means[y] + rng.normal(size=(n, half)), means[y] + rng.normal(size=(n, half))], axis=1)
        fold = np.arange(n) % k
        d = [centroid_accuracy(x[fold != f, :half], y[fold != f], x[fold == f, :half], y[fold == f], 2)
             - centroid_accuracy(x[fold != f, half:], y[fold != f], x[fold == f, half:], y[fold == f], 2) for f in range(k)]
        corrected += stats.corrected_resampled_ttest(d, n_train=n - n // k, n_test=n // k)["p"] < stats.ALPHA
        plain += np.std(d) > 0 and sps.ttest_1samp(d, 0.0).pvalue < stats.ALPHA
    assert corrected / sims <= band(sims)[1]
    assert plain / sims > corrected / sims


# --------------------------------------------------------------------------------------------
# Chance and overfitting


def test_binomial_vs_chance_matches_the_binomial_tail():
    result = stats.binomial_vs_chance(62, 500, 0.1)
    tail = sum(math.comb(500, j) * 0.1**j * 0.9 ** (500 - j) for j in range(62, 501))
    assert result["p"] == pytest.approx(tail, rel=1e-9)
    assert result["low"] == pytest.approx(sps.beta.ppf(0.025, 62, 439))  # Clopper-Pearson
    assert result["high"] == pytest.approx(sps.beta.ppf(0.975, 63, 438))
    assert result["accuracy"] == 62 / 500
    with pytest.raises(ValueError, match="n_correct"):
        stats.binomial_vs_chance(501, 500, 0.1)
    with pytest.raises(ValueError, match="chance"):
        stats.binomial_vs_chance(5, 10, 1.0)


def test_binomial_vs_chance_holds_its_level_at_chance():
    rng = np.random.default_rng(20)
    counts = rng.binomial(500, 0.1, size=400)
    rate = np.mean([stats.binomial_vs_chance(int(c), 500, 0.1)["p"] < stats.ALPHA for c in counts])
    assert rate <= band(400)[1]


def test_overfitting_test_matches_a_loop():
    acc = [0.80, 0.84, 0.86, 0.85, 0.82]
    n = 2000
    result = stats.overfitting_test(acc, n)
    ps = []
    for a in acc[:-1]:
        pooled = (a + acc[-1]) / 2
        z = (a - acc[-1]) / math.sqrt(2 * pooled * (1 - pooled) / n)
        ps.append(1 - sps.norm.cdf(z))
    assert result["p"] == pytest.approx(min(1.0, 4 * min(ps)))
    assert result["drop"] == pytest.approx(0.04) and result["best_epoch"] == 3 and not result["paired"]


def test_overfitting_paired_version_is_mcnemar_per_epoch():
    rng = np.random.default_rng(21)
    right = rng.random((4, 300)) < np.array([0.7, 0.8, 0.82, 0.75])[:, None]
    acc = right.mean(axis=1)
    result = stats.overfitting_test(acc, 300, correct=right)
    ps = []
    for e in range(3):
        only_e = int(np.sum(right[e] & ~right[-1]))
        discordant = only_e + int(np.sum(~right[e] & right[-1]))
        ps.append(sps.binomtest(only_e, discordant, 0.5, alternative="greater").pvalue)
    assert result["paired"] and result["p"] == pytest.approx(min(1.0, 3 * min(ps)))
    with pytest.raises(ValueError, match="does not match"):
        stats.overfitting_test(acc[::-1], 300, correct=right)


def flat_curves(rng, sims: int, epochs: int, n: int):
    """Validation correctness (sims, epochs, n) of a network whose accuracy no longer changes:
    each image has a fixed difficulty, so epochs share their errors, as real epochs do."""
    difficulty = rng.normal(size=(sims, 1, n))
    return difficulty + 0.7 * rng.normal(size=(sims, epochs, n)) < 1.0


def test_overfitting_test_holds_its_level_where_the_old_rule_does_not():
    rng = np.random.default_rng(22)
    sims, n = 400, 1000
    right = flat_curves(rng, sims, 10, n)
    acc = right.mean(axis=2)
    unpaired = np.mean([stats.overfitting_test(a, n)["p"] < stats.ALPHA for a in acc])
    paired = np.mean([stats.overfitting_test(a, n, correct=r)["p"] < stats.ALPHA for a, r in zip(acc, right)])
    se_last = np.sqrt(acc[:, -1] * (1 - acc[:, -1]) / n)
    old_rule = np.mean(acc.max(axis=1) - acc[:, -1] > 2 * se_last)
    assert unpaired <= band(sims)[1] and paired <= band(sims)[1]
    assert old_rule > 0.1


def test_overfitting_test_sees_a_real_drop():
    rng = np.random.default_rng(23)
    difficulty = rng.normal(size=3000)
    shift = np.array([0.0, 0.3, 0.5, 0.5, 0.3, 0.1])  # accuracy rises, then falls by ~5 points
    right = difficulty + 0.7 * rng.normal(size=(6, 3000)) < 0.8 + shift[:, None]
    acc = right.mean(axis=1)
    assert stats.overfitting_test(acc, 3000)["p"] < 0.01
    assert stats.overfitting_test(acc, 3000, correct=right)["p"] < stats.overfitting_test(acc, 3000)["p"]
    rising = np.sort(acc)
    assert stats.overfitting_test(rising, 3000)["p"] == 1.0


# --------------------------------------------------------------------------------------------
# Verdict records


def check_record(r: dict, vocabulary: set[str]) -> None:
    assert tuple(r)[:len(stats.RECORD_KEYS)] == stats.RECORD_KEYS
    assert vocabulary <= set(stats.VERDICTS)
    assert r["verdict"] in vocabulary
    assert (r["verdict"] == "n/a") == (r["reason"] is not None)
    json.dumps(r, allow_nan=False)  # plain JSON: no NaN, no numpy types
    for name in ("value", "low", "high", "p"):
        assert r[name] is None or type(r[name]) is float


def test_verdict_matrix_agreement():
    rng = np.random.default_rng(24)
    a = symmetric(10, rng)
    agree = stats.verdict_matrix_agreement(a, a + 0.3 * symmetric(10, rng), "the CNN", "ResNet-18", n_perm=999)
    check_record(agree, {"agree", "no_significant_agreement", "n/a"})
    assert agree["verdict"] == "agree" and agree["n"] == 10 and "999" in agree["test"]
    assert agree["low"] is None and agree["level"] is None  # no interval without bootstrap matrices
    other = symmetric(10, np.random.default_rng(0))
    boots = (a + 0.1 * rng.normal(size=(30, 10, 10)), other + 0.1 * rng.normal(size=(30, 10, 10)))
    boots = tuple((m + m.transpose(0, 2, 1)) / 2 for m in boots)
    unrelated = stats.verdict_matrix_agreement(a, other, "a", "b", n_perm=999, boots=boots)
    check_record(unrelated, {"agree", "no_significant_agreement", "n/a"})
    assert unrelated["verdict"] == "no_significant_agreement"
    rhos = [corr.compare_matrices(x, y) for x, y in zip(*boots)]
    # The image-bootstrap range is no test of agreement: kept aside, never the record's interval.
    assert unrelated["low"] is None and unrelated["high"] is None and unrelated["level"] is None
    assert unrelated["image_resample_range"] == pytest.approx(list(np.percentile(rhos, [2.5, 97.5])))
    flat = stats.verdict_matrix_agreement(a, np.ones((10, 10)), "a", "b")
    check_record(flat, {"agree", "no_significant_agreement", "n/a"})
    assert flat["verdict"] == "n/a" and "identical" in flat["reason"]


def test_network_verdicts_are_paired_bootstraps_of_their_statistic():
    rng = np.random.default_rng(27)
    y = np.repeat(np.arange(4), 8)
    proto = rng.normal(size=(4, 12))
    xs = [proto[y] + s * rng.normal(size=(32, 12)) for s in (0.5, 1.5)] + [rng.normal(size=(32, 12)) + proto[y] @ rng.normal(size=(12, 12))]
    mats = [corr.class_correlation_matrix(x, y, 4) for x in xs]
    boots = [corr.bootstrap_matrices(x, y, 4, n_boot=60, seed=1) for x in xs]
    vocabulary = {"higher", "lower", "no_significant_difference"}

    def wb(m):
        return np.mean(np.diag(m)) - np.mean([m[i, j] for i in range(4) for j in range(4) if i != j])

    sep = stats.verdict_separation(mats[0], mats[1], boots[0], boots[1], "a", "b", n=32)
    check_record(sep, vocabulary)
    d = [wb(p) - wb(q) for p, q in zip(boots[0], boots[1])]
    assert sep["value"] == pytest.approx(wb(mats[0]) - wb(mats[1]))
    assert (sep["low"], sep["high"]) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])))
    assert sep["verdict"] == "higher" and sep["key"] == "separation" and sep["n"] == 32  # less noise: classes apart more
    assert sep["p"] is None and "interval excludes zero" in sep["test"]  # the interval decides; no second p to disagree

    spear = stats.verdict_spearman_vs_pixels(mats[0], mats[1], mats[2], boots[0], boots[1], boots[2], "a", "b")
    check_record(spear, vocabulary)
    d = [corr.compare_matrices(p, r) - corr.compare_matrices(q, r) for p, q, r in zip(*boots)]
    assert spear["value"] == pytest.approx(corr.compare_matrices(mats[0], mats[2]) - corr.compare_matrices(mats[1], mats[2]))
    assert (spear["low"], spear["high"]) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])))

    grams = [corr.centred_gram(x) for x in xs]
    w = corr.resample_weights(y, 4, n_boot=40, seed=1)
    cka = stats.verdict_cka_vs_pixels(grams[0], grams[1], grams[2], w, "a", "b")
    check_record(cka, vocabulary)
    d = [corr.bootstrap_cka(grams[0], grams[2], w[b : b + 1])[0] - corr.bootstrap_cka(grams[1], grams[2], w[b : b + 1])[0] for b in range(40)]
    assert cka["value"] == pytest.approx(corr.linear_cka(xs[0], xs[2], debiased=True) - corr.linear_cka(xs[1], xs[2], debiased=True))
    assert (cka["low"], cka["high"]) == pytest.approx(tuple(np.percentile(d, [2.5, 97.5])))
    assert cka["n"] == 32 and cka["key"] == "cka_vs_pixels"


def test_verdict_paired_accuracy():
    rng = np.random.default_rng(25)
    truth = rng.random(2000)
    better, worse = truth < 0.9, truth < 0.8  # nested: better is right wherever worse is
    r = stats.verdict_paired_accuracy("probe_cnn_vs_pixels", better, worse, "CNN fc2", "raw pixels")
    check_record(r, {"higher", "lower", "no_significant_difference"})
    assert r["verdict"] == "higher" and r["value"] == pytest.approx(better.mean() - worse.mean())
    assert "as trained here" in r["claim"] and "these test images" in r["claim"]
    assert stats.verdict_paired_accuracy("k", worse, better, "a", "b")["verdict"] == "lower"
    same = stats.verdict_paired_accuracy("k", better, better, "a", "b")
    assert same["verdict"] == "no_significant_difference" and same["low"] is None  # no discordant image


def test_verdict_cv_difference():
    a = [0.86, 0.85, 0.87, 0.86, 0.88]
    b = [0.80, 0.81, 0.80, 0.79, 0.82]
    r = stats.verdict_cv_difference("chosen_vs_runner_up", a, b, 4800, 1200, "the chosen", "the runner-up")
    check_record(r, {"higher", "lower", "no_significant_difference", "n/a"})
    assert r["verdict"] == "higher" and r["n"] == 5
    assert r["p"] == pytest.approx(stats.corrected_resampled_ttest(np.subtract(a, b), 4800, 1200)["p"])
    noisy = stats.verdict_cv_difference("k", [0.86, 0.80, 0.88], [0.85, 0.84, 0.83], 100, 50, "a", "b")
    assert noisy["verdict"] == "no_significant_difference"
    one = stats.verdict_cv_difference("k", [0.86, None, float("nan")], [0.85, 0.84, 0.83], 100, 50, "a", "b")
    check_record(one, {"higher", "lower", "no_significant_difference", "n/a"})
    assert one["verdict"] == "n/a" and one["reason"] == "only one fold finished" and one["n"] == 1


def test_verdict_above_chance_and_overfitting():
    r = stats.verdict_above_chance(130, 1000, 10, "the test accuracy")
    check_record(r, {"above_chance", "not_distinguishable_from_chance"})
    assert r["verdict"] == "above_chance" and r["value"] == 0.13
    assert stats.verdict_above_chance(105, 1000, 10, "x")["verdict"] == "not_distinguishable_from_chance"
    vocabulary = {"overfits", "no_significant_drop", "n/a"}
    fall = stats.verdict_overfitting([0.80, 0.90, 0.85], 2000)
    check_record(fall, vocabulary)
    assert fall["verdict"] == "overfits" and fall["value"] == pytest.approx(0.05)
    check_record(stats.verdict_overfitting([0.80, 0.81, 0.805], 500), vocabulary)
    assert stats.verdict_overfitting([0.80, 0.81, 0.805], 500)["verdict"] == "no_significant_drop"
    one = stats.verdict_overfitting([0.8], 500)
    check_record(one, vocabulary)
    assert one["reason"] == "only one epoch trained"
    assert stats.verdict_overfitting([], 500)["reason"] == "no validation split"


def test_record_turns_nan_into_none_and_needs_a_reason():
    r = stats.record("k", "c", "s", "t", "no_significant_difference", value=float("nan"), low=np.float64(0.1),
                     p=np.float32(0.5), n=np.int64(3))
    check_record(r, {"no_significant_difference"})
    assert r["value"] is None and r["low"] == 0.1 and r["n"] == 3 and r["family"] is None
    with pytest.raises(ValueError, match="give the reason"):
        stats.record("k", "c", "s", "t", "n/a")
    # The old words claimed equality from a non-significant test: no record can carry them.
    for old in stats.LEGACY_VERDICTS:
        with pytest.raises(ValueError, match="not a verdict word"):
            stats.record("k", "c", "s", "t", old)
    with pytest.raises(ValueError, match="family"):
        stats.record("k", "c", "s", "t", "higher", family="secondary")


def test_inputs_are_not_modified():
    rng = np.random.default_rng(26)
    a, b = symmetric(5, rng), symmetric(5, rng)
    x = rng.normal(size=(12, 4))
    k, l = x @ x.T, corr.centred_gram(x[:, :2])
    w = np.ones((2, 12))
    correct = rng.random(12) < 0.5
    before = [v.copy() for v in (a, b, k, l, w, correct)]
    stats.mantel_test(a, b)
    corr.bootstrap_cka(k, l, w)
    stats.mcnemar_exact(correct, ~correct)
    stats.paired_bootstrap_difference(0.0, 0.0, k[0], l[0])
    for v, old in zip((a, b, k, l, w, correct), before):
        np.testing.assert_array_equal(v, old)



# --------------------------------------------------------------------------------------------
# One procedure decides and prints: the interval beside a verdict agrees with it


def test_mcnemar_exact_interval_excludes_zero_exactly_when_p_is_below_alpha():
    # Near alpha the Bonett-Price interval and the exact p can disagree; the exact interval cannot.
    n = 1000
    for a_only in range(0, 40):
        for b_only in (0, 5, 12, 20):
            a = np.zeros(n, dtype=bool)
            b = np.zeros(n, dtype=bool)
            a[:a_only] = True
            b[a_only:a_only + b_only] = True
            r = stats.verdict_paired_accuracy("k", a, b, "a", "b")
            if a_only + b_only == 0:
                assert r["low"] is None and r["verdict"] == "no_significant_difference"
                continue
            excludes = r["low"] > 0 or r["high"] < 0
            assert excludes == (r["p"] < stats.ALPHA) == (r["verdict"] != "no_significant_difference")
            assert r["low"] <= r["value"] <= r["high"]


def test_above_chance_interval_lies_above_chance_exactly_when_the_verdict_says_so():
    for k in range(90, 140):
        r = stats.verdict_above_chance(k, 1000, 10, "x")
        assert (r["low"] > 0.1) == (r["verdict"] == "above_chance")
        assert r["level"] == pytest.approx(0.9)


def test_cv_difference_with_bonferroni_decides_and_prints_at_the_corrected_level():
    a = [0.86, 0.85, 0.87, 0.86, 0.88]
    b = [0.84, 0.84, 0.85, 0.85, 0.85]
    plain = stats.verdict_cv_difference("k", a, b, 4800, 1200, "a", "b")
    many = stats.verdict_cv_difference("k", a, b, 4800, 1200, "a", "b", comparisons=59, why="the best of 60")
    assert many["p"] == pytest.approx(min(1.0, 59 * plain["p"]))
    assert many["level"] == pytest.approx(1 - 0.05 / 59) and "Bonferroni over 59" in many["test"]
    assert (many["low"] > 0) == (many["verdict"] == "higher")
    assert many["high"] - many["low"] > plain["high"] - plain["low"]
    with pytest.raises(ValueError, match="comparisons"):
        stats.verdict_cv_difference("k", a, b, 4800, 1200, "a", "b", comparisons=0)


# --------------------------------------------------------------------------------------------
# Families: Holm and Benjamini-Hochberg


def holm_loop(p, alpha):
    """Holm's procedure written out step by step (the reference for the vectorised one)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    reject = [False] * m
    adjusted = [0.0] * m
    running = 0.0
    stopped = False
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
        if not stopped and p[i] < alpha / (m - rank):
            reject[i] = True
        else:
            stopped = True
    return reject, adjusted


def test_holm_against_a_loop_and_its_levels_agree_with_its_decisions():
    rng = np.random.default_rng(40)
    for _ in range(300):
        m = int(rng.integers(1, 9))
        p = np.where(rng.random(m) < 0.5, rng.random(m) * 0.03, rng.random(m))
        out = stats.holm(p)
        reject, adjusted = holm_loop(list(p), 0.05)
        np.testing.assert_array_equal(out["reject"], reject)
        np.testing.assert_allclose(out["p_adjusted"], adjusted)
        np.testing.assert_array_equal(out["reject"], out["p_adjusted"] < 0.05)
        # Each comparison's own test at its alpha_each gives the family's decision.
        np.testing.assert_array_equal(p < out["alpha_each"], out["reject"])
    assert len(stats.holm([])["reject"]) == 0
    with pytest.raises(ValueError, match="probabilities"):
        stats.holm([0.1, float("nan")])


def test_benjamini_hochberg_matches_scipy_and_its_levels_agree_with_its_decisions():
    rng = np.random.default_rng(41)
    for _ in range(300):
        m = int(rng.integers(1, 12))
        p = np.where(rng.random(m) < 0.5, rng.random(m) * 0.02, rng.random(m))
        out = stats.benjamini_hochberg(p)
        np.testing.assert_allclose(out["p_adjusted"], sps.false_discovery_control(p))
        np.testing.assert_array_equal(out["reject"], out["p_adjusted"] < 0.05)
        np.testing.assert_array_equal(p < out["alpha_each"], out["reject"])


def test_power_of_the_paired_t_test():
    # A one-sd effect: 10 pairs for 80% power at 0.05 (the textbook figure), more at a stricter level.
    assert stats.pairs_for_power(1.0, 0.05, 0.8) == 10
    assert stats.pairs_for_power(1.0, 0.05 / 3, 0.8) > 10
    assert 0.05 < stats.paired_t_power(3, 1.0) < 0.3
    # Against a simulation of the test itself.
    rng = np.random.default_rng(42)
    d = rng.normal(1.0, 1.0, size=(4000, 6))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(6))
    simulated = np.mean(np.abs(t) > sps.t.ppf(0.975, 5))
    assert simulated == pytest.approx(stats.paired_t_power(6, 1.0), abs=0.025)


def test_level_text():
    assert stats.level_text(0.95) == "95%" and stats.level_text(1 - 0.05 / 3) == "98.3%"


# --------------------------------------------------------------------------------------------
# Every verdict word and sentence, rendered for a significant, a non-significant and an n/a record


def _record(word, statistic="difference in accuracy"):
    if word == "n/a":
        return stats.record("k", "the claim", statistic, "a test", "n/a", reason="nothing to test")
    return stats.record("k", "the claim", statistic, "a test", word, value=0.0123, low=-0.004, high=0.0207, p=0.031)


def _say(call: str, v: dict) -> str:
    from fmnist_utils import report

    env = report._jinja()
    template = env.from_string('{% import "verdicts.html.j2" as say with context %}{{ ' + call + ' }}')
    return " ".join(template.render(v=v, na=report.not_available, verdict_numbers=report.verdict_numbers,
                                    verdict_word=report.verdict_word).split())


SIGNIFICANT = {"comparison": "higher", "above_chance": "above_chance", "overfitting": "overfits",
               "matrix_agreement": "agree"}
NOT_SIGNIFICANT = {"comparison": "no_significant_difference", "above_chance": "not_distinguishable_from_chance",
                   "overfitting": "no_significant_drop", "matrix_agreement": "no_significant_agreement"}
CALLS = {"comparison": 'say.comparison(v, "A beats B", "B beats A", "A and B show no significant difference", "Whether A beats B")',
         "above_chance": 'say.above_chance(v, "Its test accuracy")',
         "overfitting": 'say.overfitting(v, 3)',
         "matrix_agreement": 'say.matrix_agreement(v, "the CNN", "random-init ResNet-18")'}
EXPECTED = {
    ("comparison", "sig"): "A beats B: the difference in accuracy is 1.23 percentage points (95% interval -0.4 to 2.07; p = 0.031, a test).",
    ("comparison", "not"): "A and B show no significant difference: the difference in accuracy is 1.23 percentage points (95% interval",
    ("comparison", "n/a"): "Whether A beats B: n/a (nothing to test).",
    ("above_chance", "sig"): "Its test accuracy is above chance",
    ("above_chance", "not"): "Its test accuracy is not distinguishable from chance",
    ("above_chance", "n/a"): "Whether its test accuracy is above chance: n/a (nothing to test).",
    ("overfitting", "sig"): "Validation accuracy fell significantly from its best, after epoch 3, to the last epoch",
    ("overfitting", "not"): "The test finds no significant drop in validation accuracy from the best epoch (epoch 3) to the last; this is not evidence that there is none: the drop",
    ("overfitting", "n/a"): "Whether validation accuracy fell from its best epoch: n/a (nothing to test).",
    ("matrix_agreement", "sig"): "The CNN and random-init ResNet-18 rank the pairs of classes alike, more than chance would:",
    ("matrix_agreement", "not"): "This does not show that the CNN and random-init ResNet-18 rank the pairs of classes alike:",
    ("matrix_agreement", "n/a"): "Whether the CNN and random-init ResNet-18 rank the pairs of classes alike: n/a (nothing to test).",
}


@pytest.mark.parametrize("macro", list(CALLS))
@pytest.mark.parametrize("kind", ["sig", "not", "n/a"])
def test_every_sentence_words_its_verdict_without_claiming_equality(macro, kind):
    from fmnist_utils import report

    word = {"sig": SIGNIFICANT, "not": NOT_SIGNIFICANT}.get(kind, {}).get(macro, "n/a")
    statistic = {"overfitting": "drop in validation accuracy", "matrix_agreement": "Spearman rho"}.get(
        macro, "difference in accuracy")
    text = _say(CALLS[macro], _record(word, statistic))
    assert EXPECTED[(macro, kind)] in text, text
    assert not report.equality_claims(text), text
    if kind == "not":  # a non-significant result is printed with its interval, the range it leaves open
        assert "95% interval" in text


@pytest.mark.parametrize("word", [w for w in stats.VERDICTS])
def test_every_verdict_word_reads_without_claiming_equality(word):
    from fmnist_utils import report

    shown = report.verdict_word(word)
    assert shown and "_" not in shown and not report.equality_claims(shown)
    # A record the page words generically (a notebook without a template) also reads cleanly.
    text = _say("say.other(v)", _record(word))
    assert not report.equality_claims(text) and (shown in text if word != "n/a" else "n/a (nothing to test)" in text)


def test_old_words_in_a_saved_record_are_read_as_the_new_ones():
    from fmnist_utils import report

    for old, new in stats.LEGACY_VERDICTS.items():
        assert report.verdict_word(old) == report.verdict_word(new)
        saved = {**_record(new), "verdict": old}
        assert report.check_verdict(saved, "x")["verdict"] == new
    assert report.equality_claims("a tie: 9.69 points") and report.equality_claims("no overfitting; at chance")
    assert not report.equality_claims("ties go to the lower loss; no significant difference")


def _whole_report_with(tmp_path, kind: str) -> str:
    """The whole report from the fixtures with every verdict significant, not significant, or n/a."""
    import report_fixtures as F

    results = {"01_sweep": F.sweep_results(), "02_train": F.train_results(),
               "03_resnet_compare": F.compare_results(pretrained=False), "04_improvements": F.improvements_results()}
    for r in results.values():
        for key, v in r["verdicts"].items():
            family = "comparison"
            for name, macro in (("above_chance", "above_chance"), ("overfitting", "overfitting"),
                                ("matrix_agreement", "matrix_agreement")):
                if key == name:
                    family = macro
            word = {"sig": SIGNIFICANT, "not": NOT_SIGNIFICANT}.get(kind, {}).get(family, "n/a")
            r["verdicts"][key] = {**v, "verdict": word, "reason": "nothing to test" if word == "n/a" else None}
        for t in r.get("table", []):
            if t.get("verdict"):
                t["verdict"] = r["verdicts"][f"row:{t['row']}"]["verdict"]
    return F.render(tmp_path / kind, results)


@pytest.mark.parametrize("kind", ["sig", "not", "n/a"])
def test_the_whole_report_claims_no_equality_and_opens_with_its_findings(tmp_path, kind):
    import report_fixtures as F
    from fmnist_utils import report

    page = _whole_report_with(tmp_path, kind)
    text = F.text_of(page)
    assert not report.equality_claims(text), report.equality_claims(text)
    box = page[page.index('<aside id="findings"'):page.index("</aside>")]
    assert page.index('<aside id="findings"') < page.index('<section id="abstract"')
    for stem in ("01_sweep", "02_train", "03_resnet_compare", "04_improvements"):
        assert f'href="#{stem}"' in box  # each finding links to its section
    items = box.count("<li>")
    assert items >= 5 and F.text_of(box).count(". ") + 1 >= items  # one sentence each (with its numbers)
    if kind == "not":
        assert "no significant difference" in F.text_of(box) and "95% interval" in F.text_of(box)
    assert "The most accurate row" not in text


def test_equivalence_only_from_tost_with_a_stated_margin():
    rng = np.random.default_rng(43)
    for _ in range(200):
        d = rng.normal(rng.normal(0, 0.01), 0.01, size=int(rng.integers(3, 8)))
        r = stats.verdict_equivalence("k", d, 0.02, "a", "b")
        check_record(r, {"equivalent", "not_shown_equivalent", "n/a"})
        inside = -0.02 < r["low"] and r["high"] < 0.02
        assert inside == (r["verdict"] == "equivalent") == (r["p"] < 0.05)
        # Against the two one-sided tests written with scipy.
        lo = sps.ttest_1samp(d, -0.02, alternative="greater").pvalue
        hi = sps.ttest_1samp(d, 0.02, alternative="less").pvalue
        assert r["p"] == pytest.approx(max(lo, hi))
    assert stats.verdict_equivalence("k", [0.01, 0.01, 0.01], 0.02, "a", "b")["verdict"] == "n/a"
    with pytest.raises(ValueError, match="margin"):
        stats.verdict_equivalence("k", [0.0, 0.1], 0.0, "a", "b")
