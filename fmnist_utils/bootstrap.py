"""The image bootstrap of the representation measures: stratified resamples shared by every network.

Each resample draws every class's images with replacement, its size kept
(:func:`resample_weights`, a (B, N) table of draw counts that depends only on the labels and the
seed). Every statistic here is computed on the *same* resamples for every network, which is
what makes a comparison of two networks paired (:mod:`~fmnist_utils.stats` decides on them):
the study's matrix (:func:`bootstrap_matrices`), how far its classes stand apart
(:func:`bootstrap_within_between`), the agreement of two matrices (:func:`bootstrap_spearman`)
and debiased CKA (:func:`bootstrap_cka`). An image drawn twice is never paired with its own
copy, as self-pairs are excluded from the whole-sample statistics. Also here: a seeded sample of
n images per class (:func:`sample_per_class`) and percentile intervals (:func:`percentile_ci`,
:func:`summarise_bootstrap`, :func:`bootstrap_ci`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from .class_matrices import class_correlation_matrix, image_correlations, within_between
from .feature_arrays import _check_features, _check_labels, _one_hot


def sample_per_class(labels, n: int = 100, seed: int = 0) -> np.ndarray:
    """Return sorted int64 indices of ``n`` images drawn (seeded, without replacement) from each class.

    Classes are those present in ``labels``; raises ValueError when one has fewer than ``n``.
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (n_images,), got shape {y.shape}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (images per class) must be a positive integer, got {n!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < n:
            raise ValueError(f"class {c} has {len(members)} images, fewer than n={n} asked for")
        chosen.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _resample_weights(y: np.ndarray, n_classes: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Return (n_boot, N) counts: how often each image is drawn when each class is resampled
    with replacement to its own size. A class drawn as one image repeated has no distinct
    pair, so that draw is repeated."""
    weights = np.zeros((n_boot, len(y)))
    for c in range(n_classes):
        members = np.flatnonzero(y == c)
        counts = np.zeros((n_boot, len(members)))
        redo = np.arange(n_boot)
        while redo.size:
            counts[redo] = 0.0
            draws = rng.integers(0, len(members), (redo.size, len(members)))
            np.add.at(counts, (np.repeat(redo, len(members)), draws.ravel()), 1.0)
            redo = redo[(counts[redo] > 0).sum(axis=1) < 2]
        weights[:, members] = counts
    return weights


def resample_weights(labels, n_classes: int = 10, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Return float64 (n_boot, N): how often each image is drawn in each stratified resample.

    Each class is resampled with replacement to its own size (a draw holding fewer than two
    distinct images of a class is redrawn). The counts depend only on ``labels`` and ``seed``:
    :func:`bootstrap_matrices`, :func:`bootstrap_cka` and any statistic weighted by these rows
    see the *same* resamples, which is what makes a bootstrap of two networks paired.
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    y = _check_labels(labels, len(labels), n_classes, min_per_class=2)
    return _resample_weights(y, n_classes, n_boot, np.random.default_rng(seed))


def bootstrap_matrices(features, labels, n_classes: int = 10, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Return float64 (n_boot, C, C): ``class_matrices.class_correlation_matrix`` on bootstrap resamples.

    Each resample draws every class's images with replacement (its size kept); pairs of an
    image with a copy of itself are excluded, as self-pairs are. The resamples depend only on
    ``labels`` and ``seed``, so two models' features of the same images get the same resamples
    (a paired bootstrap). Uses the (N, N) image correlations: meant for samples of a few
    thousand images.
    """
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    feats = _check_features(features)
    y = _check_labels(labels, feats.shape[0], n_classes, min_per_class=2)
    r = image_correlations(feats)  # (N, N)
    one_hot = _one_hot(y, n_classes)  # (N, C)
    weights = resample_weights(y, n_classes, n_boot, seed)  # (B, N): the same rows for every model
    diag = np.arange(n_classes)
    out = np.empty((n_boot, n_classes, n_classes))
    for start in range(0, n_boot, 64):
        w = weights[start : start + 64]  # (b, N)
        w_class = w[:, :, None] * one_hot  # (b, N, C)
        sums = np.swapaxes(w_class, 1, 2) @ (r @ w_class)  # (b, C, C): weighted sums of r over pairs
        sums[:, diag, diag] -= (w**2 * np.diag(r)) @ one_hot  # drop each image paired with its copies
        drawn = w @ one_hot  # (b, C): images drawn per class
        n_pairs = drawn[:, :, None] * drawn[:, None, :]
        n_pairs[:, diag, diag] -= w**2 @ one_hot
        out[start : start + 64] = sums / n_pairs
    return (out + np.swapaxes(out, 1, 2)) / 2


def bootstrap_within_between(boots) -> dict:
    """Return ``{"within", "between", "difference"}``, each float64 (B,): ``within_between``
    (``class_matrices``) of every bootstrap matrix in ``boots`` (B, C, C)."""
    boots = np.asarray(boots, dtype=np.float64)
    if boots.ndim != 3 or boots.shape[1] != boots.shape[2] or boots.shape[1] < 2:
        raise ValueError(f"boots must be (n_boot, C, C) with C >= 2, got shape {boots.shape}")
    off = ~np.eye(boots.shape[1], dtype=bool)
    within = np.einsum("bii->bi", boots).mean(axis=1)
    between = boots[:, off].mean(axis=1)
    return {"within": within, "between": between, "difference": within - between}


def bootstrap_spearman(boots_a, boots_b) -> np.ndarray:
    """Return float64 (B,): ``class_matrices.compare_matrices`` of each pair of bootstrap matrices.

    boots_a, boots_b: (B, C, C) from :func:`bootstrap_matrices` with the same labels and seed
    (the same resamples), so entry b compares the two representations on one resample.
    Spearman's rho is the Pearson correlation of average ranks (ties share their mean rank).
    """
    a, b = np.asarray(boots_a, dtype=np.float64), np.asarray(boots_b, dtype=np.float64)
    if a.ndim != 3 or a.shape != b.shape or a.shape[1] != a.shape[2]:
        raise ValueError(f"need two (n_boot, C, C) stacks of the same shape, got {a.shape} and {b.shape}")
    if a.shape[1] < 3:
        raise ValueError(f"need at least 3 classes (3 off-diagonal pairs) to rank, got {a.shape[1]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("bootstrap matrices contain NaN or infinite entries")
    upper = np.triu_indices(a.shape[1], k=1)
    ranks = [stats.rankdata(m[:, upper[0], upper[1]], axis=1) for m in (a, b)]  # (B, P) each
    ra, rb = (r - r.mean(axis=1, keepdims=True) for r in ranks)
    norm = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    if np.any(norm == 0):
        raise ValueError("a resample's matrix has identical off-diagonal entries: there is no ranking to compare")
    return (ra * rb).sum(axis=1) / norm


def _weighted_hsic_unbiased(k: np.ndarray, l: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Return (B,): the unbiased HSIC of Song et al. (2012) on each resample of the N images.

    k, l: (N, N) Gram matrices; w: (B, N) draw counts. The resample holds image a w[b, a]
    times; the U-statistic runs over tuples of draws of *distinct* images, so a draw paired
    with a copy of itself is left out as a self-pair is (as in :func:`bootstrap_matrices`).
    With w = 1 it is ``cka._hsic_unbiased``. Written as sums over images by inclusion and
    exclusion of coinciding indices, in O(B N^2).
    """
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    m = k * l  # (N, N)
    w2 = w**2
    kw, lw, mw, mw2 = w @ k, w @ l, w @ m, w2 @ m  # (B, N) each (k, l, m symmetric)
    pairs = (w * mw).sum(axis=1)  # sum over a != b of w_a w_b k_ab l_ab
    shared = kw * lw - mw2  # (B, N): sum over distinct b, c (both != a) of w_b w_c k_ab l_ac
    triples = (w * shared).sum(axis=1)
    quads = (w * kw).sum(axis=1) * (w * lw).sum(axis=1) - 2 * (w2 * mw2).sum(axis=1) - 4 * (w2 * shared).sum(axis=1)
    s1, s2, s3, s4 = (np.sum(w**p, axis=1) for p in (1, 2, 3, 4))
    n_pairs = s1**2 - s2  # weighted counts of ordered tuples of distinct images
    n_triples = s1**3 - 3 * s1 * s2 + 2 * s3
    n_quads = s1**4 - 6 * s1**2 * s2 + 3 * s2**2 + 8 * s1 * s3 - 6 * s4
    return pairs / n_pairs + quads / n_quads - 2 * triples / n_triples


def bootstrap_cka(k, l, weights) -> np.ndarray:
    """Return float64 (B,): debiased linear CKA of two representations on each resample.

    k, l: (N, N) Gram matrices of the same N images (``cka.centred_gram``); weights: (B, N)
    draw counts from :func:`resample_weights` (the resamples of :func:`bootstrap_matrices` for
    the same labels and seed). Each entry is ``cka.cka_from_grams`` (debiased) computed on the
    resampled images, with copies of one image never paired together. A resample needs at
    least 4 distinct images.
    """
    k, l = np.asarray(k, dtype=np.float64), np.asarray(l, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"need two square Gram matrices of the same N, got {k.shape} and {l.shape}")
    if w.ndim != 2 or w.shape[1] != len(k):
        raise ValueError(f"weights must be (n_boot, N) with N = {len(k)} images, got shape {w.shape}")
    if np.any(w < 0) or np.any((w > 0).sum(axis=1) < 4):
        raise ValueError("weights must be counts >= 0 with at least 4 distinct images drawn per resample")
    out = np.empty(len(w))
    for start in range(0, len(w), 64):  # bounds the (b, N) temporaries
        wb = w[start : start + 64]
        kl, kk, ll = (_weighted_hsic_unbiased(a, b, wb) for a, b in ((k, l), (k, k), (l, l)))
        if np.any(kk <= 0) or np.any(ll <= 0):
            raise ValueError("CKA is undefined on a resample: a representation has no variance across its images")
        out[start : start + 64] = kl / np.sqrt(kk * ll)
    return out


def percentile_ci(samples, level: float = 0.95) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Return the (low, high) percentile interval of ``samples`` along axis 0 at confidence ``level``."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s = np.asarray(samples, dtype=np.float64)
    low, high = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2], axis=0)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def summarise_bootstrap(matrix, boots, level: float = 0.95) -> dict:
    """Return a matrix's percentile intervals from its bootstrap matrices (see :func:`bootstrap_ci`).

    matrix: (C, C) point estimate; boots: (B, C, C) from :func:`bootstrap_matrices`.
    """
    matrix, boots = np.asarray(matrix, dtype=np.float64), np.asarray(boots, dtype=np.float64)
    if boots.ndim != 3 or boots.shape[1:] != matrix.shape:
        raise ValueError(f"boots must be (n_boot, C, C) matching matrix {matrix.shape}, got {boots.shape}")
    low, high = percentile_ci(boots, level)
    point = within_between(matrix)
    summary = {}
    for key, samples in bootstrap_within_between(boots).items():
        lo, hi = percentile_ci(samples, level)
        summary[key] = {"value": point[key], "low": lo, "high": hi}
    return {"matrix": matrix, "low": low, "high": high, **summary, "n_boot": len(boots), "level": level}


def bootstrap_ci(
    features, labels, n_classes: int = 10, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """Return the study's matrix with bootstrap percentile intervals over the image sample.

    Keys: ``matrix``, ``low``, ``high`` (each (C, C)); ``within``, ``between``, ``difference``
    (each ``{"value", "low", "high"}``, see ``class_matrices.within_between``); ``n_boot``, ``level``.
    """
    matrix = class_correlation_matrix(features, labels, n_classes)
    return summarise_bootstrap(matrix, bootstrap_matrices(features, labels, n_classes, n_boot, seed), level)

