"""The study's class-by-class correlation matrix, the RSA toolboxes' one, and what is read off them.

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

Computation is in float64 and vectorised: features are z-scored row by row in chunks
(:mod:`~fmnist_utils.feature_arrays`) and the matrix comes from one product of class sums. No
function modifies its inputs. Also here: how far the classes stand apart (:func:`within_between`),
whether two matrices rank the class pairs alike (:func:`compare_matrices`), and the tables a
comparison prints (:func:`top_pairs`, :func:`layer_rows`).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .feature_arrays import CHUNK, CONSTANT_TOL, _block64, _check_features, _check_labels, _one_hot, _unit_rows


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
# Tables of a comparison: the most similar class pairs, the layer table


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
