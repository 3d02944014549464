"""Linear centred kernel alignment (CKA) between two representations of the same images, and grids of it.

x (N, D1) and y (N, D2) hold one feature vector per image, row a of both being image a. CKA
(Kornblith et al. 2019) compares them through their (N, N) Gram matrices of column-centred
features: compute each representation's Gram once (:func:`centred_gram`), then any pair
(:func:`cka_from_grams`, :func:`cka_grid`). The plain estimate is biased upwards when N is small
relative to D; the debiased one uses the unbiased HSIC estimator of Song et al. (2012). Its
bootstrap over images is :func:`fmnist_utils.bootstrap.bootstrap_cka`. Computation is in
float64 over feature chunks; no function modifies its inputs.
"""

from __future__ import annotations

import numpy as np

from .feature_arrays import CHUNK, _block64, _check_features


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
# Grids of CKA between the layers of two networks


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
