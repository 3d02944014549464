"""Compare representations: the study's class-by-class correlation matrix and the measures around it.

Notation: ``features`` (N, D) holds one feature vector per image (numpy or torch, any float
dtype); ``labels`` (N,) its class, an integer in ``0 .. n_classes - 1``; r(u, v) is the Pearson
correlation between two feature vectors across their D features. Two class-by-class matrices
exist and they are not the same thing:

* :func:`class_correlation_matrix`, the study's: entry (i, j) is the mean of r(x_a, x_b) over
  every pair of *distinct* images a of class i and b of class j (on the diagonal an image is
  never paired with itself). Within-class variability lowers every entry.
* :func:`class_mean_correlation`, what RSA toolboxes compute (rsatoolbox's "correlation" RDM is
  one minus it): entry (i, j) is r(mean_i, mean_j) of the class-mean vectors. Averaging first
  removes within-class noise, so its entries are larger in magnitude and its diagonal is 1.

**Zero-variance rule.** A feature vector that is constant across its D features (an all-zero
ReLU map, a blank image) has no Pearson correlation with anything. Here it counts as
*uncorrelated*: r = 0 with every vector, itself included. It therefore pulls its class's
entries towards 0 instead of turning them into NaN. :func:`constant_rows` finds such vectors.

Computation is in float64 and vectorised: features are z-scored row by row in chunks (a
(N, D) float64 copy of a large layer never exists at once) and the matrix comes from one
product of class sums. No function modifies its inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

# A row counts as constant when its centred norm is below this fraction of its norm: float64
# rounding of a truly constant row leaves ~1e-16 of it; any real variation is far above 1e-10.
CONSTANT_TOL = 1e-10
# Rows (or columns) converted to float64 at a time: bounds the memory of the float64 copy.
CHUNK = 256


# --------------------------------------------------------------------------------------------
# Input checks and float64 chunks


def _check_features(features, name: str = "features"):
    """Return ``features`` as a 2-D torch tensor or numpy array (no copy), or raise ValueError."""
    if isinstance(features, torch.Tensor):
        feats = features.detach()
        if feats.is_complex():
            raise ValueError(f"{name} must be real numbers, got {feats.dtype}")
    else:
        feats = np.asarray(features)
        if not (np.issubdtype(feats.dtype, np.number) or feats.dtype == bool) or np.iscomplexobj(feats):
            raise ValueError(f"{name} must be a real numeric array, got dtype {feats.dtype}")
    if feats.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_images, n_features), got shape {tuple(feats.shape)}; "
            "flatten each image's activations first (features.extract does)"
        )
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(feats.shape)}")
    return feats


def _block64(feats, rows=slice(None), cols=slice(None), name: str = "features") -> np.ndarray:
    """Return a float64 numpy copy of ``feats[rows, cols]``, raising ValueError on NaN or inf."""
    if isinstance(feats, torch.Tensor):
        block = feats[rows, cols].to("cpu", torch.float64).numpy().copy()
    else:
        block = np.array(feats[rows, cols], dtype=np.float64)
    bad = ~np.isfinite(block)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        first_row = (rows.start or 0) + r
        first_col = (cols.start or 0) + c
        raise ValueError(
            f"{name} contain NaN or infinite values (first at row {first_row}, feature {first_col}); "
            "check the model's outputs (a diverged network) or the preprocessing"
        )
    return block


def _check_labels(labels, n: int, n_classes: int, min_per_class: int) -> np.ndarray:
    """Return labels as int64 numpy (N,), checking length, range and images per class."""
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (n_images,), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(
            f"features have {n} rows but labels have {len(y)} entries; they must describe the same images"
        )
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    out_of_range = np.unique(y[(y < 0) | (y >= n_classes)])
    if out_of_range.size:
        raise ValueError(
            f"labels must be in 0..{n_classes - 1} (n_classes={n_classes}); found {out_of_range[:5].tolist()}"
        )
    counts = np.bincount(y, minlength=n_classes)
    short = np.flatnonzero(counts < min_per_class)
    if short.size:
        detail = ", ".join(f"class {c} has {counts[c]}" for c in short[:5])
        raise ValueError(
            f"every class needs at least {min_per_class} image(s) "
            f"{'(pairs of distinct images) ' if min_per_class == 2 else ''}but {detail}; "
            "sample more images per class (sample_per_class) or lower n_classes"
        )
    return y


def _unit_rows(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (rows centred and scaled to unit norm, constant mask) for a float64 (n, D) block.

    Dot products of the returned rows are Pearson correlations; constant rows become zeros
    (the zero-variance rule). ``block`` is not modified.
    """
    centred = block - block.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1)
    constant = norm <= CONSTANT_TOL * np.linalg.norm(block, axis=1)
    safe = np.where(constant, 1.0, norm)
    return np.where(constant[:, None], 0.0, centred / safe[:, None]), constant


def _one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(y), n_classes))
    out[np.arange(len(y)), y] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# The matrices


def constant_rows(features) -> np.ndarray:
    """Return a bool mask (N,) of the feature vectors with zero variance (see the zero-variance rule)."""
    feats = _check_features(features)
    return np.concatenate(
        [_unit_rows(_block64(feats, slice(s, s + CHUNK)))[1] for s in range(0, feats.shape[0], CHUNK)]
    )


def class_correlation_matrix(features, labels, n_classes: int = 10) -> np.ndarray:
    """Return the study's matrix, float64 (n_classes, n_classes), symmetric.

    Entry (i, j) is the mean, over every pair of distinct images a of class i and b of class
    j, of the Pearson correlation between their feature vectors (self-pairs excluded on the
    diagonal). features: (N, D) numpy or torch; labels: (N,) ints in 0..n_classes-1, each class
    at least 2 images. With unit-norm centred rows z_a, the sum over pairs is U U^T where
    U (C, D) holds each class's sum of z_a: one matrix product, no loop over pairs.
    Raises ValueError for mismatched lengths, a class with < 2 images, NaN or inf features.
    """
    feats = _check_features(features)
    n, d = feats.shape
    y = _check_labels(labels, n, n_classes, min_per_class=2)
    class_sums = np.zeros((n_classes, d))  # (C, D): sum of unit rows per class
    self_pairs = np.zeros(n_classes)  # (C,): sum of z_a . z_a (1, or 0 for constant rows)
    for start in range(0, n, CHUNK):
        z, _ = _unit_rows(_block64(feats, slice(start, start + CHUNK)))
        yc = y[start : start + CHUNK]
        class_sums += _one_hot(yc, n_classes).T @ z
        self_pairs += np.bincount(yc, weights=np.einsum("ij,ij->i", z, z), minlength=n_classes)
    pair_sums = class_sums @ class_sums.T  # (C, C): sum of r over all (a, b), self-pairs included
    pair_sums[np.diag_indices(n_classes)] -= self_pairs
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    n_pairs = np.outer(counts, counts) - np.diag(counts)  # n_i n_j, and n_i (n_i - 1) on the diagonal
    matrix = pair_sums / n_pairs
    return (matrix + matrix.T) / 2  # exact symmetry despite rounding in the product


def class_mean_correlation(features, labels, n_classes: int = 10) -> np.ndarray:
    """Return float64 (n_classes, n_classes): Pearson correlation between the class-mean feature vectors.

    This is what RSA toolboxes compare (rsatoolbox's correlation RDM is 1 minus it); unlike
    :func:`class_correlation_matrix` its diagonal is 1 (0 for a constant mean vector, by the
    zero-variance rule). Each class needs at least one image.
    """
    feats = _check_features(features)
    n, d = feats.shape
    y = _check_labels(labels, n, n_classes, min_per_class=1)
    sums = np.zeros((n_classes, d))
    for start in range(0, n, CHUNK):
        sums += _one_hot(y[start : start + CHUNK], n_classes).T @ _block64(feats, slice(start, start + CHUNK))
    means = sums / np.bincount(y, minlength=n_classes)[:, None]
    z, _ = _unit_rows(means)
    matrix = z @ z.T
    return (matrix + matrix.T) / 2


def image_correlations(features) -> np.ndarray:
    """Return float64 (N, N): the Pearson correlation between every pair of feature vectors.

    The diagonal is 1 (0 for a constant vector: the zero-variance rule). Computed as Z Z^T of
    unit-norm centred rows, accumulated over feature chunks.
    """
    feats = _check_features(features)
    n, d = feats.shape
    means, norms = np.empty(n), np.empty(n)
    constant = np.empty(n, dtype=bool)
    for start in range(0, n, CHUNK):
        block = _block64(feats, slice(start, start + CHUNK))
        rows = slice(start, start + len(block))
        means[rows] = block.mean(axis=1)
        centred = block - means[rows, None]
        norms[rows] = np.linalg.norm(centred, axis=1)
        constant[rows] = norms[rows] <= CONSTANT_TOL * np.linalg.norm(block, axis=1)
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, norms))
    gram = np.zeros((n, n))
    for start in range(0, d, CHUNK):
        z = (_block64(feats, cols=slice(start, start + CHUNK)) - means[:, None]) * scale[:, None]
        gram += z @ z.T
    return (gram + gram.T) / 2


def within_between(matrix) -> dict:
    """Return ``{"within", "between", "difference"}``: the mean diagonal entry, the mean
    off-diagonal entry of a square class-by-class matrix, and within minus between."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(f"matrix must be square with at least 2 classes, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("matrix contains NaN or infinite entries")
    off = ~np.eye(len(m), dtype=bool)
    within, between = float(np.diag(m).mean()), float(m[off].mean())
    return {"within": within, "between": between, "difference": within - between}


def compare_matrices(a, b) -> float:
    """Return the Spearman correlation of the off-diagonal (upper-triangle) entries of two
    square matrices of the same shape: do both rank the class pairs alike (as in RSA)?"""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise ValueError(f"need two square matrices of the same shape, got {a.shape} and {b.shape}")
    if len(a) < 3:
        raise ValueError(f"need at least 3 classes (3 off-diagonal pairs) to rank, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("matrices contain NaN or infinite entries")
    upper = np.triu_indices(len(a), k=1)
    x, y = a[upper], b[upper]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("a matrix has identical off-diagonal entries: there is no ranking to compare")
    return float(stats.spearmanr(x, y).statistic)


# --------------------------------------------------------------------------------------------
# Linear CKA


def centred_gram(x) -> np.ndarray:
    """Return the float64 (N, N) Gram matrix X_c X_c^T of column-centred ``x`` (N, D).

    Computed over feature chunks, so a large layer is never copied to float64 whole. Compute it
    once per representation and pass pairs to :func:`cka_from_grams`.
    """
    feats = _check_features(x, "x")
    n, d = feats.shape
    gram = np.zeros((n, n))
    for start in range(0, d, CHUNK):
        block = _block64(feats, cols=slice(start, start + CHUNK), name="x")
        block -= block.mean(axis=0)  # on our own copy
        gram += block @ block.T
    return (gram + gram.T) / 2


def _hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012) unbiased HSIC estimator for Gram matrices (N, N), N >= 4."""
    n = len(k)
    k = k.copy()
    l = l.copy()
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    k_sum, l_sum = k.sum(axis=1), l.sum(axis=1)
    value = (k * l).sum() + k_sum.sum() * l_sum.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k_sum @ l_sum)
    return value / (n * (n - 3))


def cka_from_grams(k, l, debiased: bool = False) -> float:
    """Return linear CKA from two (N, N) Gram matrices of the same N images (see :func:`linear_cka`)."""
    k, l = np.asarray(k, dtype=np.float64), np.asarray(l, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
        raise ValueError(f"need two square Gram matrices of the same N, got {k.shape} and {l.shape}")
    n = len(k)
    if debiased:
        if n < 4:
            raise ValueError(f"debiased CKA needs at least 4 images, got {n}")
        kl, kk, ll = _hsic_unbiased(k, l), _hsic_unbiased(k, k), _hsic_unbiased(l, l)
    else:
        if n < 2:
            raise ValueError(f"CKA needs at least 2 images, got {n}")
        # H K H with H = I - 11^T/n, in O(n^2): centring the features already centres K, and
        # centring again makes any Gram admissible.
        k = k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()
        l = l - l.mean(axis=0, keepdims=True) - l.mean(axis=1, keepdims=True) + l.mean()
        kl, kk, ll = (k * l).sum(), (k * k).sum(), (l * l).sum()
    if kk <= 0 or ll <= 0:
        raise ValueError(
            "CKA is undefined: a representation has no variance across the images"
            + (" (or too few images for the debiased estimate)" if debiased else "")
        )
    return float(kl / np.sqrt(kk * ll))


def linear_cka(x, y, debiased: bool = False) -> float:
    """Return linear centred kernel alignment between two representations of the same images.

    x: (N, D1), y: (N, D2), numpy or torch; row a of both is image a. CKA (Kornblith et al.
    2019) is ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F) with column-centred X_c,
    Y_c: 1 for identical representations, invariant to orthogonal transforms and isotropic
    scaling, computed here through (N, N) Gram matrices. The plain estimate is biased upwards
    when N is small relative to D; ``debiased=True`` uses the unbiased HSIC estimator of Song
    et al. (2012), as Nguyen et al. (2021) do (needs N >= 4; can be slightly negative).
    """
    fx, fy = _check_features(x, "x"), _check_features(y, "y")
    if fx.shape[0] != fy.shape[0]:
        raise ValueError(f"x has {fx.shape[0]} images but y has {fy.shape[0]}: CKA compares the same images")
    return cka_from_grams(centred_gram(fx), centred_gram(fy), debiased=debiased)


# --------------------------------------------------------------------------------------------
# Sampling and the bootstrap


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
    """Return float64 (n_boot, C, C): :func:`class_correlation_matrix` on bootstrap resamples.

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
    """Return ``{"within", "between", "difference"}``, each float64 (B,): :func:`within_between`
    of every bootstrap matrix in ``boots`` (B, C, C)."""
    boots = np.asarray(boots, dtype=np.float64)
    if boots.ndim != 3 or boots.shape[1] != boots.shape[2] or boots.shape[1] < 2:
        raise ValueError(f"boots must be (n_boot, C, C) with C >= 2, got shape {boots.shape}")
    off = ~np.eye(boots.shape[1], dtype=bool)
    within = np.einsum("bii->bi", boots).mean(axis=1)
    between = boots[:, off].mean(axis=1)
    return {"within": within, "between": between, "difference": within - between}


def bootstrap_spearman(boots_a, boots_b) -> np.ndarray:
    """Return float64 (B,): :func:`compare_matrices` of each pair of bootstrap matrices.

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
    With w = 1 it is :func:`_hsic_unbiased`. Written as sums over images by inclusion and
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

    k, l: (N, N) Gram matrices of the same N images (:func:`centred_gram`); weights: (B, N)
    draw counts from :func:`resample_weights` (the resamples of :func:`bootstrap_matrices` for
    the same labels and seed). Each entry is :func:`cka_from_grams` (debiased) computed on the
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
    (each ``{"value", "low", "high"}``, see :func:`within_between`); ``n_boot``, ``level``.
    """
    matrix = class_correlation_matrix(features, labels, n_classes)
    return summarise_bootstrap(matrix, bootstrap_matrices(features, labels, n_classes, n_boot, seed), level)


# --------------------------------------------------------------------------------------------
# Tables of a comparison: the most similar class pairs, the layer table, the CKA grid


def top_pairs(matrix, classes, k: int = 3) -> list[dict]:
    """Return the ``k`` largest off-diagonal entries of a symmetric (C, C) matrix, largest first.

    Each entry ``{"a", "b", "r"}``: the two class names (row before column, a above the
    diagonal) and the value. Ties keep the (row, column) order of the upper triangle.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(classes):
        raise ValueError(f"matrix has shape {m.shape} but there are {len(classes)} class names")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    rows, cols = np.triu_indices(len(m), k=1)
    order = np.argsort(-m[rows, cols], kind="stable")[:k]
    return [{"a": classes[rows[i]], "b": classes[cols[i]], "r": float(m[rows[i], cols[i]])} for i in order]


def layer_rows(features: dict, matrices: dict, class_mean_matrices: dict) -> list[dict]:
    """Return one row per representation: its layer's place in the layer-by-layer table.

    The three dicts share keys ``(model, layer)``, e.g. ``("CNN", "fc2")``: ``features`` (N, D),
    ``matrices`` its :func:`class_correlation_matrix` and ``class_mean_matrices`` its
    :func:`class_mean_correlation`. Rows come in the order of ``features``, each with ``model``,
    ``layer``, ``features`` (D), ``within``, ``between``, ``difference`` (:func:`within_between`
    of the study's matrix), ``class_mean_between`` (the mean off-diagonal class-mean correlation)
    and ``constant_vectors`` (images whose vector has no variance, see :func:`constant_rows`).
    """
    missing = [key for key in features if key not in matrices or key not in class_mean_matrices]
    if missing:
        raise ValueError(f"no matrix for {missing}: compute both matrices for every representation")
    rows = []
    for key, feats in features.items():
        model, layer = key
        rows.append({
            "model": model, "layer": layer, "features": int(_check_features(feats).shape[1]),
            **within_between(matrices[key]),
            "class_mean_between": within_between(class_mean_matrices[key])["between"],
            "constant_vectors": int(constant_rows(feats).sum()),
        })
    return rows


def cka_grid(row_grams, col_grams, debiased: bool = False) -> np.ndarray:
    """Return float64 (R, C): :func:`cka_from_grams` of every row Gram with every column Gram.

    row_grams: R Gram matrices (N, N), col_grams: C of them, all of the same N images.
    """
    return np.array([[cka_from_grams(k, l, debiased=debiased) for l in col_grams] for k in row_grams], dtype=np.float64)


def best_pair(grid, row_names, col_names, skip_rows: int = 0, skip_cols: int = 0) -> dict:
    """Return ``{"row", "col", "value"}``: the largest entry of ``grid`` (R, C) and its names.

    ``skip_rows`` / ``skip_cols`` leave out the first rows / columns (e.g. the raw pixels when
    looking for the most similar pair of network layers). Ties: the first in row-major order.
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2 or g.shape != (len(row_names), len(col_names)):
        raise ValueError(f"grid has shape {g.shape} but there are {len(row_names)} row and {len(col_names)} column names")
    sub = g[skip_rows:, skip_cols:]
    if sub.size == 0:
        raise ValueError(f"nothing left of a {g.shape} grid after skipping {skip_rows} rows and {skip_cols} columns")
    if np.isnan(sub).all():
        raise ValueError("every entry of the grid is NaN")
    i, j = np.unravel_index(np.nanargmax(sub), sub.shape)
    return {"row": row_names[i + skip_rows], "col": col_names[j + skip_cols], "value": float(sub[i, j])}
