"""Average two models' class probabilities, weighted by what a validation split says (the study's suggestion)."""

from __future__ import annotations

import numpy as np
import torch


def _probs(p) -> np.ndarray:
    p = p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, n_classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or not np.allclose(p.sum(1), 1, atol=1e-3):
        raise ValueError("probabilities must be finite, >= 0 and sum to 1 per row (apply softmax first)")
    return p.astype(np.float64)


def combine(p_a, p_b, weight: float) -> np.ndarray:
    """Return ``weight * p_a + (1 - weight) * p_b``: (N, C) probabilities of the ensemble."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"ensemble weight must be in [0, 1], got {weight}")
    a, b = _probs(p_a), _probs(p_b)
    if a.shape != b.shape:
        raise ValueError(f"the two models' probabilities differ in shape: {a.shape} vs {b.shape}")
    return weight * a + (1.0 - weight) * b


def choose_weight(p_a_val, p_b_val, y_val, grid: int = 21) -> dict:
    """Return ``{"weight", "val_accuracy", "val_loss"}`` for the weight of model A that maximises
    validation accuracy over ``grid`` evenly spaced weights in [0, 1] (ties: lower log-loss).

    Only validation data come in, so the test set cannot influence the choice.
    """
    y = (y_val.detach().cpu().numpy() if isinstance(y_val, torch.Tensor) else np.asarray(y_val)).astype(int)
    best = None
    for w in np.linspace(0.0, 1.0, grid):
        p = combine(p_a_val, p_b_val, float(w))
        if len(p) != len(y):
            raise ValueError(f"{len(p)} validation predictions but {len(y)} labels")
        acc = float((p.argmax(1) == y).mean())
        loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
        if best is None or (acc, -loss) > (best["val_accuracy"], -best["val_loss"]):
            best = {"weight": float(w), "val_accuracy": acc, "val_loss": loss}
    return best
