"""Checked, float64 views of feature arrays: what every representation measure does to its inputs first.

Package-private helpers of :mod:`~fmnist_utils.class_matrices`, :mod:`~fmnist_utils.cka` and
:mod:`~fmnist_utils.bootstrap`: check ``features`` (N, D) and ``labels`` (N,) with errors that
name what is wrong, copy a chunk of rows or columns to float64 (a (N, D) float64 copy of a
large layer never exists at once), and centre and scale rows under the zero-variance rule (a
constant feature vector counts as uncorrelated with everything; see
:mod:`~fmnist_utils.class_matrices`). Nothing here modifies its inputs.
"""

from __future__ import annotations

import numpy as np
import torch

# A row counts as constant when its centred norm is below this fraction of its norm: float64
# rounding of a truly constant row leaves ~1e-16 of it; any real variation is far above 1e-10.
CONSTANT_TOL = 1e-10
# Rows (or columns) converted to float64 at a time: bounds the memory of the float64 copy.
CHUNK = 256


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

