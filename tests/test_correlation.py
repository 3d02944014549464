"""The study's matrix and the measures around it, against plain loops and known properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from fmnist_utils import bootstrap, cka, class_matrices
from fmnist_utils import correlation as corr


# --------------------------------------------------------------------------------------------
# Slow, obviously correct references


def pearson(u: np.ndarray, v: np.ndarray) -> float:
    """Pearson r by its textbook formula; 0 when either vector is constant (the module's rule)."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    du, dv = u - u.mean(), v - v.mean()
    if np.all(u == u[0]) or np.all(v == v[0]):
        return 0.0
    return float((du * dv).sum() / np.sqrt((du**2).sum() * (dv**2).sum()))


def slow_matrix(x: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((n_classes, n_classes))
    for i, j in itertools.product(range(n_classes), repeat=2):
        values = [
            pearson(x[a], x[b]) for a in np.flatnonzero(y == i) for b in np.flatnonzero(y == j) if a != b
        ]
        out[i, j] = np.mean(values)
    return out


def random_case(n: int, d: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(n_classes), np.arange(n_classes), rng.integers(0, n_classes, n - 2 * n_classes)])
    return rng.normal(size=(n, d)) + rng.normal(size=d), rng.permutation(y)


# --------------------------------------------------------------------------------------------
# class_correlation_matrix


@pytest.mark.parametrize("n, d, n_classes", [(12, 3, 2), (30, 17, 3), (41, 64, 5), (25, 2, 10)])
def test_matrix_matches_loop(n, d, n_classes):
    x, y = random_case(n, d, n_classes, seed=n)
    np.testing.assert_allclose(corr.class_correlation_matrix(x, y, n_classes), slow_matrix(x, y, n_classes), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_input_matches_numpy(dtype):
    x, y = random_case(40, 9, 4, seed=1)
    xt = torch.from_numpy(x).to(dtype)
    reference = slow_matrix(xt.double().numpy(), y, 4)  # the values torch holds, in float64
    np.testing.assert_allclose(corr.class_correlation_matrix(xt, torch.from_numpy(y), 4), reference, atol=1e-12)


def test_float32_and_integer_numpy_input():
    x, y = random_case(30, 6, 3, seed=2)
    x32 = x.astype(np.float32)
    np.testing.assert_allclose(corr.class_correlation_matrix(x32, y, 3), slow_matrix(x32, y, 3), atol=1e-12)
    xi = np.round(x * 10).astype(np.int64)
    np.testing.assert_allclose(corr.class_correlation_matrix(xi, y, 3), slow_matrix(xi, y, 3), atol=1e-12)


def test_chunking_does_not_change_the_result(monkeypatch):
    x, y = random_case(50, 11, 3, seed=3)
    whole = corr.class_correlation_matrix(x, y, 3)
    monkeypatch.setattr(class_matrices, "CHUNK", 7)  # where the matrices look it up
    np.testing.assert_allclose(corr.class_correlation_matrix(x, y, 3), whole, atol=1e-13)
    np.testing.assert_allclose(corr.image_correlations(x), np.corrcoef(x), atol=1e-13)


def test_matrix_is_symmetric_float64():
    x, y = random_case(80, 33, 6, seed=4)
    m = corr.class_correlation_matrix(x, y, 6)
    assert m.dtype == np.float64 and m.shape == (6, 6)
    assert np.array_equal(m, m.T)


def test_class_clusters_give_a_dominant_diagonal():
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(4, 50))
    y = np.repeat(np.arange(4), 15)
    x = centres[y] + 0.5 * rng.normal(size=(60, 50))
    m = corr.class_correlation_matrix(x, y, 4)
    off = ~np.eye(4, dtype=bool)
    for i in range(4):
        assert m[i, i] > m[i][off[i]].max()
    summary = corr.within_between(m)
    assert summary["within"] > summary["between"] and summary["difference"] > 0


def test_zero_variance_rows_count_as_uncorrelated():
    x, y = random_case(24, 8, 3, seed=6)
    x[0] = 0.0  # an all-zero ReLU map
    x[5] = 3.25  # a constant, non-zero vector
    x[np.flatnonzero(y == 2)] = 1.0  # a class made only of constant vectors
    m = corr.class_correlation_matrix(x, y, 3)
    assert np.isfinite(m).all()
    np.testing.assert_allclose(m, slow_matrix(x, y, 3), atol=1e-12)
    assert np.all(m[2] == 0) and np.all(m[:, 2] == 0)
    mask = corr.constant_rows(x)
    assert mask[0] and mask[5] and mask[y == 2].all() and mask.sum() == 2 + (y == 2).sum() - (y[[0, 5]] == 2).sum()
    r = corr.image_correlations(x)
    varying = np.flatnonzero(~mask)
    assert np.all(np.diag(r)[mask] == 0) and np.diag(r)[varying] == pytest.approx(1.0) and np.isfinite(r).all()


def test_single_feature_vectors_are_all_constant():
    x, y = random_case(12, 1, 2, seed=7)
    assert np.all(corr.class_correlation_matrix(x, y, 2) == 0)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.ones((5, 3)), np.array([0, 0, 1, 1]), "5 rows but labels have 4"),
        (np.random.default_rng(0).normal(size=(5, 3)), np.array([0, 0, 1, 0, 0]), "class 1 has 1"),
        (np.random.default_rng(0).normal(size=(4, 3)), np.array([0, 0, 0, 0]), "class 1 has 0"),
        (np.where(np.eye(4, 3) == 1, np.nan, 1.0), np.array([0, 0, 1, 1]), "NaN or infinite.*row 0, feature 0"),
        (np.where(np.eye(4, 3, k=-2) == 1, np.inf, 1.0), np.array([0, 0, 1, 1]), "NaN or infinite.*row 2"),
        (np.ones(4), np.array([0, 0, 1, 1]), "2-D"),
        (np.ones((4, 3)), np.array([0, 0, 1, 7]), r"0\.\.1"),
        (np.ones((4, 3)), np.array([0.0, 0.5, 1.0, 1.0]), "integer"),
    ],
)
def test_bad_input_is_named(x, y, match):
    with pytest.raises(ValueError, match=match):
        corr.class_correlation_matrix(x, y, n_classes=2)


def test_nan_in_torch_input_is_refused():
    x = torch.randn(6, 4)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="row 3, feature 2"):
        corr.class_correlation_matrix(x, torch.tensor([0, 0, 0, 1, 1, 1]), 2)


# --------------------------------------------------------------------------------------------
# The other matrices and summaries


def test_class_mean_correlation_is_corrcoef_of_means():
    x, y = random_case(45, 20, 4, seed=8)
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    np.testing.assert_allclose(corr.class_mean_correlation(x, y, 4), np.corrcoef(means), atol=1e-12)


def test_class_mean_correlation_is_larger_than_pairwise_mean_for_noisy_clusters():
    rng = np.random.default_rng(9)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(3, 40))[y] + 2.0 * rng.normal(size=(90, 40))
    pairwise = corr.class_correlation_matrix(x, y, 3)
    means = corr.class_mean_correlation(x, y, 3)
    assert np.all(np.abs(np.diag(means)) > np.abs(np.diag(pairwise)))


def test_image_correlations_is_corrcoef():
    x, _ = random_case(30, 12, 3, seed=10)
    np.testing.assert_allclose(corr.image_correlations(torch.from_numpy(x)), np.corrcoef(x), atol=1e-13)


def test_matrix_is_the_block_mean_of_image_correlations():
    x, y = random_case(36, 10, 3, seed=11)
    r = corr.image_correlations(x)
    np.fill_diagonal(r, np.nan)
    blocks = np.array([[np.nanmean(r[np.ix_(y == i, y == j)]) for j in range(3)] for i in range(3)])
    np.testing.assert_allclose(corr.class_correlation_matrix(x, y, 3), blocks, atol=1e-12)


def test_within_between_matches_loops():
    m = np.random.default_rng(12).normal(size=(5, 5))
    diag = [m[i, i] for i in range(5)]
    off = [m[i, j] for i in range(5) for j in range(5) if i != j]
    s = corr.within_between(m)
    assert s["within"] == pytest.approx(np.mean(diag))
    assert s["between"] == pytest.approx(np.mean(off))
    assert s["difference"] == pytest.approx(np.mean(diag) - np.mean(off))
    with pytest.raises(ValueError, match="square"):
        corr.within_between(np.ones((2, 3)))


def test_compare_matrices_is_spearman_of_upper_triangle():
    rng = np.random.default_rng(13)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    upper = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    expected = stats.spearmanr([a[i, j] for i, j in upper], [b[i, j] for i, j in upper]).statistic
    assert corr.compare_matrices(a, b) == pytest.approx(expected)
    # The diagonal and the lower triangle play no part; ranks ignore monotone transforms.
    assert corr.compare_matrices(a, np.exp(np.triu(a, 1)) + np.diag(rng.normal(size=6))) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        corr.compare_matrices(a, b[:5, :5])
    with pytest.raises(ValueError, match="identical"):
        corr.compare_matrices(a, np.ones((6, 6)))


# --------------------------------------------------------------------------------------------
# Linear CKA


def cka_feature_space(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. for linear CKA in feature space."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def hsic_unbiased_loop(k: np.ndarray, l: np.ndarray) -> float:
    """The U-statistic of Song et al. (2012) written out over distinct index tuples."""
    n = len(k)
    idx = range(n)
    pairs = [(i, j) for i in idx for j in idx if i != j]
    term1 = np.mean([k[i, j] * l[i, j] for i, j in pairs])
    triples = [(i, j, q) for i, j in pairs for q in idx if q not in (i, j)]
    term3 = np.mean([k[i, j] * l[i, q] for i, j, q in triples])
    quads = [(i, j, q, r) for i, j, q in triples for r in idx if r not in (i, j, q)]
    term2 = np.mean([k[i, j] * l[q, r] for i, j, q, r in quads])
    return term1 + term2 - 2 * term3


@pytest.mark.parametrize("n, d1, d2", [(50, 5, 8), (20, 60, 35)])
def test_cka_matches_feature_space_formula(n, d1, d2):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d1))
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.3 * rng.normal(size=(n, d2))
    assert corr.linear_cka(x, y) == pytest.approx(cka_feature_space(x, y), rel=1e-10)
    assert corr.linear_cka(torch.from_numpy(x).float(), y) == pytest.approx(cka_feature_space(x, y), rel=1e-5)


def test_cka_identity_and_invariances():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(40, 12)), rng.normal(size=(40, 7))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    for debiased in (False, True):
        assert corr.linear_cka(x, x, debiased=debiased) == pytest.approx(1.0)
        base = corr.linear_cka(x, y, debiased=debiased)
        assert corr.linear_cka(x @ q, y, debiased=debiased) == pytest.approx(base, abs=1e-12)
        assert corr.linear_cka(3.7 * x, y, debiased=debiased) == pytest.approx(base, abs=1e-12)
        assert corr.linear_cka(x + 5.0, y, debiased=debiased) == pytest.approx(base, abs=1e-12)
        assert corr.linear_cka(y, x, debiased=debiased) == pytest.approx(base, abs=1e-12)


def test_debiased_hsic_matches_u_statistic_loop():
    rng = np.random.default_rng(15)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 4))
    k, l = x @ x.T, y @ y.T
    assert cka._hsic_unbiased(k, l) == pytest.approx(hsic_unbiased_loop(k, l), rel=1e-10)


def test_debiased_cka_removes_small_sample_inflation():
    rng = np.random.default_rng(16)
    x, y = rng.normal(size=(30, 500)), rng.normal(size=(30, 500))  # independent: true CKA is 0
    assert corr.linear_cka(x, y) > 0.5
    assert abs(corr.linear_cka(x, y, debiased=True)) < 0.1


def test_cka_bad_input():
    with pytest.raises(ValueError, match="same images"):
        corr.linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ValueError, match="no variance"):
        corr.linear_cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 2)))
    with pytest.raises(ValueError, match="at least 4"):
        corr.linear_cka(np.eye(3), np.eye(3), debiased=True)
    with pytest.raises(ValueError, match="NaN"):
        corr.linear_cka(np.full((5, 2), np.nan), np.ones((5, 2)))


def test_cka_from_grams_agrees_with_linear_cka():
    rng = np.random.default_rng(17)
    x, y = rng.normal(size=(25, 9)), rng.normal(size=(25, 30))
    k, l = corr.centred_gram(x), corr.centred_gram(y)
    assert corr.cka_from_grams(k, l) == pytest.approx(corr.linear_cka(x, y))
    # An uncentred Gram gives the same CKA: cka_from_grams centres it.
    assert corr.cka_from_grams(x @ x.T, l) == pytest.approx(corr.linear_cka(x, y))


# --------------------------------------------------------------------------------------------
# Sampling and the bootstrap


def test_sample_per_class():
    y = np.repeat(np.arange(4), [10, 12, 9, 30])
    idx = corr.sample_per_class(y, n=9, seed=3)
    assert np.array_equal(np.bincount(y[idx]), [9, 9, 9, 9])
    assert np.array_equal(idx, np.sort(idx)) and len(np.unique(idx)) == len(idx) and idx.dtype == np.int64
    assert np.array_equal(idx, corr.sample_per_class(torch.from_numpy(y), n=9, seed=3))
    assert not np.array_equal(idx, corr.sample_per_class(y, n=9, seed=4))
    with pytest.raises(ValueError, match="class 2 has 9 images, fewer than n=10"):
        corr.sample_per_class(y, n=10)


def slow_weighted_matrix(x, y, weights, n_classes):
    """The study's matrix on the resample: each image repeated weights[a] times, and pairs of
    copies of one image left out as self-pairs are."""
    copies = np.repeat(np.arange(len(y)), weights.astype(int))
    out = np.zeros((n_classes, n_classes))
    for i, j in itertools.product(range(n_classes), repeat=2):
        out[i, j] = np.mean(
            [pearson(x[a], x[b]) for a in copies[y[copies] == i] for b in copies[y[copies] == j] if a != b]
        )
    return out


def test_bootstrap_resample_matches_loop(monkeypatch):
    x, y = random_case(18, 5, 3, seed=18)
    rng = np.random.default_rng(0)
    weights = bootstrap._resample_weights(y, 3, 2, rng)
    monkeypatch.setattr(bootstrap, "_resample_weights", lambda *args: weights)
    boots = corr.bootstrap_matrices(x, y, 3, n_boot=2)
    for b in range(2):
        np.testing.assert_allclose(boots[b], slow_weighted_matrix(x, y, weights[b], 3), atol=1e-12)


def test_bootstrap_with_unit_weights_is_the_matrix(monkeypatch):
    x, y = random_case(30, 6, 3, seed=19)
    monkeypatch.setattr(bootstrap, "_resample_weights", lambda y_, c, n_boot, rng: np.ones((n_boot, len(y_))))
    np.testing.assert_allclose(corr.bootstrap_matrices(x, y, 3, n_boot=3)[1], corr.class_correlation_matrix(x, y, 3), atol=1e-13)


def test_resamples_keep_class_sizes_and_two_distinct_images():
    y = np.repeat(np.arange(3), [2, 5, 3])
    w = bootstrap._resample_weights(y, 3, 200, np.random.default_rng(1))
    for c in range(3):
        assert np.all(w[:, y == c].sum(1) == (y == c).sum())
        assert np.all((w[:, y == c] > 0).sum(1) >= 2)


def test_bootstrap_ci_is_seeded_paired_and_ordered():
    x, y = random_case(40, 12, 4, seed=20)
    a = corr.bootstrap_ci(x, y, 4, n_boot=100, seed=1)
    b = corr.bootstrap_ci(x, y, 4, n_boot=100, seed=1)
    np.testing.assert_array_equal(a["low"], b["low"])
    assert np.all(a["low"] <= a["high"])
    for key in ("within", "between", "difference"):
        assert a[key]["low"] <= a[key]["high"]
        assert a[key]["value"] == pytest.approx(corr.within_between(a["matrix"])[key])
    # Same labels and seed: the same resamples, so an affine copy of the features (same Pearson
    # correlations) gets identical bootstrap matrices.
    np.testing.assert_allclose(
        corr.bootstrap_matrices(x, y, 4, 50, seed=2), corr.bootstrap_matrices(2 * x + 1, y, 4, 50, seed=2), atol=1e-12
    )


# --------------------------------------------------------------------------------------------
# Purity: no function modifies its inputs


def test_inputs_are_not_modified():
    x, y = random_case(30, 8, 3, seed=21)
    x[0] = 2.0
    xt = torch.from_numpy(x.copy())
    yt = torch.from_numpy(y.copy())
    x_before, y_before, xt_before = x.copy(), y.copy(), xt.clone()
    calls = [
        lambda f, l: corr.class_correlation_matrix(f, l, 3),
        lambda f, l: corr.class_mean_correlation(f, l, 3),
        lambda f, l: corr.image_correlations(f),
        lambda f, l: corr.centred_gram(f),
        lambda f, l: corr.linear_cka(f, f[:, ::-1] if isinstance(f, np.ndarray) else f.flip(1), debiased=True),
        lambda f, l: corr.linear_cka(f, f),
        lambda f, l: corr.bootstrap_ci(f, l, 3, n_boot=5),
        lambda f, l: corr.constant_rows(f),
        lambda f, l: corr.sample_per_class(l, 2),
    ]
    for call in calls:
        call(x, y)
        call(xt, yt)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    assert torch.equal(xt, xt_before) and torch.equal(yt, torch.from_numpy(y_before))
    m = np.random.default_rng(0).normal(size=(4, 4))
    m_before = m.copy()
    corr.within_between(m)
    corr.compare_matrices(m, m.T)
    np.testing.assert_array_equal(m, m_before)


# --------------------------------------------------------------------------------------------
# Tables of a comparison (moved from notebook 03)


def test_top_pairs_matches_sorted_loop():
    m = np.random.default_rng(22).normal(size=(6, 6))
    m = m + m.T
    names = list("abcdef")
    pairs = sorted(((m[i, j], i, j) for i in range(6) for j in range(i + 1, 6)), key=lambda t: -t[0])[:4]
    expected = [{"a": names[i], "b": names[j], "r": v} for v, i, j in pairs]
    assert corr.top_pairs(m, names, k=4) == expected
    assert len(corr.top_pairs(m, names, k=100)) == 15
    with pytest.raises(ValueError, match="class names"):
        corr.top_pairs(m, names[:5])


def test_layer_rows_match_loop():
    x, y = random_case(36, 10, 3, seed=23)
    x[0] = 0.0
    reps = {("pixels", "pixels"): x, ("CNN", "fc2"): np.tanh(x @ np.random.default_rng(0).normal(size=(10, 4)))}
    study = {k: corr.class_correlation_matrix(v, y, 3) for k, v in reps.items()}
    means = {k: corr.class_mean_correlation(v, y, 3) for k, v in reps.items()}
    rows = corr.layer_rows(reps, study, means)
    assert [(r["model"], r["layer"]) for r in rows] == list(reps)
    for row, (key, feats) in zip(rows, reps.items()):
        m, mm = study[key], means[key]
        off = [(i, j) for i in range(3) for j in range(3) if i != j]
        assert row["within"] == pytest.approx(np.mean([m[i, i] for i in range(3)]))
        assert row["between"] == pytest.approx(np.mean([m[i, j] for i, j in off]))
        assert row["difference"] == pytest.approx(row["within"] - row["between"])
        assert row["class_mean_between"] == pytest.approx(np.mean([mm[i, j] for i, j in off]))
        assert row["features"] == feats.shape[1]
        assert row["constant_vectors"] == sum(np.all(v == v[0]) for v in feats)
    with pytest.raises(ValueError, match="no matrix"):
        corr.layer_rows(reps, {}, means)


def test_cka_grid_and_best_pair_match_loops():
    rng = np.random.default_rng(24)
    rows = [rng.normal(size=(20, d)) for d in (3, 5, 8)]
    cols = [rows[1] @ rng.normal(size=(5, 6)), rng.normal(size=(20, 4))]
    for debiased in (False, True):
        grid = corr.cka_grid([corr.centred_gram(r) for r in rows], [corr.centred_gram(c) for c in cols], debiased=debiased)
        expected = [[corr.linear_cka(r, c, debiased=debiased) for c in cols] for r in rows]
        np.testing.assert_allclose(grid, expected, rtol=1e-12)
    best = corr.best_pair(grid, ["pixels", "r1", "r2"], ["c0", "c1"])
    assert best == {"row": "r1", "col": "c0", "value": pytest.approx(grid[1, 0])}
    skipped = corr.best_pair(grid, ["pixels", "r1", "r2"], ["c0", "c1"], skip_rows=2, skip_cols=1)
    assert skipped == {"row": "r2", "col": "c1", "value": pytest.approx(grid[2, 1])}
    with pytest.raises(ValueError, match="nothing left"):
        corr.best_pair(grid, ["a", "b", "c"], ["x", "y"], skip_cols=2)
