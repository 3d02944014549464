"""Running the ablation's rows: one data split, each row's seeds trained together, their outcomes cached.

Every row sees the same :class:`Split` (validation images from the training split). A row's
seeds are trained by :func:`fmnist_utils.train.fit_many` (:func:`train_seeds`); each final model
reads the validation and test images once, and the row's :class:`Outcome` keeps their
probabilities. :func:`run_rows` runs the rows in order, keeping each finished one in a cache folder
keyed by the row, its seeds and budget, the images and the kit's code hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import data, ensemble, provenance, train
from .improve_rows import Row

N_CLASSES = len(data.CLASSES)


@dataclass(frozen=True)
class Split:
    """The images every row sees: indices into the training split (train, validation) and the test split.

    x_train (N, 1, 28, 28) uint8 and y_train (N,) are the whole training split; ``train_indices``
    and ``val_indices`` are disjoint subsets of it. ``x_test`` / ``y_test`` are the test images used.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    train_indices: np.ndarray
    val_indices: np.ndarray
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def x_val(self) -> torch.Tensor:
        return self.x_train[torch.from_numpy(self.val_indices)]

    @property
    def y_val(self) -> torch.Tensor:
        return self.y_train[torch.from_numpy(self.val_indices)]

    def digest(self) -> str:
        """Return a short hash of the images chosen (so a cached row is reused only for the same data)."""
        return provenance.fingerprint(self.train_indices, self.val_indices, self.y_test, self.x_test)[:16]


def make_split(x_train, y_train, x_test, y_test, subset: int | None, val_fraction: float,
               test_subset: int | None, seed: int = 0) -> Split:
    """Return the :class:`Split`: ``subset`` training images (stratified; None = all), of which
    ``val_fraction`` (stratified) is held out for validation (:func:`data.train_val_split`), and
    ``test_subset`` test images (stratified; None = all). Validation images come from the training
    split only.
    """
    train_idx, val_idx = data.train_val_split(y_train, val_fraction, seed=seed, subset=subset)
    test = torch.from_numpy(data.subset_indices(y_test, test_subset, seed=seed))
    return Split(x_train, y_train, train_idx, np.sort(val_idx), x_test[test], y_test[test])


# --------------------------------------------------------------------------------------------
# Training a row's seeds


def train_seeds(configs: Sequence[train.TrainConfig], x: torch.Tensor, y: torch.Tensor, train_indices: np.ndarray,
              progress: bool | None = None) -> tuple[list[list[dict]], list[torch.nn.Module | None]]:
    """Return (histories, trained models), one per config: the seeds of one row, trained together
    on ``x[train_indices]`` by :func:`train.fit_many` (stacked where it can, else one by one).

    A seed whose training diverges ends its history with a ``"diverged"`` row and has no model
    (None); the other seeds train on.
    """
    return train.fit_many(configs, x, y, [train_indices] * len(configs), progress=progress, on_diverged="record",
                          return_models=True)


def probabilities(model: torch.nn.Module | None, x: torch.Tensor, config: train.TrainConfig) -> np.ndarray:
    """Return float64 class probabilities (N, C) of ``model`` on uint8 images ``x`` (N, 1, 28, 28).

    A model whose outputs are not finite, or no model at all (training diverged), is given the
    uniform distribution: it knows nothing, and the ensemble and accuracies stay defined.
    """
    if model is None:
        return np.full((len(x), N_CLASSES), 1.0 / N_CLASSES)
    p = train.predict_logits(model, x, config.eval_batch_size, config.precision, config.tta_flip)
    p = p.double().softmax(1).numpy()
    bad = ~np.isfinite(p).all(1)
    p[bad] = 1.0 / p.shape[1]
    return p


def accuracy(p: np.ndarray, y) -> float:
    """Return the fraction of rows of ``p`` (N, C) whose largest entry is at label ``y`` (N,)."""
    y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if len(p) != len(y):
        raise ValueError(f"{len(p)} predictions but {len(y)} labels")
    return float((np.asarray(p).argmax(1) == y).mean())


def training_seconds(histories: Sequence[list[dict]]) -> float:
    """Return the seconds spent training: every epoch's ``seconds`` summed over the histories
    (one per seed, as ``train.fit_many`` returns them; a stacked epoch's time is shared by its units).

    Only epochs count, so model building and evaluation are not a row's cost, and neither is
    anything else that ran around ``train_seeds``.
    """
    return float(sum(r.get("seconds", 0.0) for h in histories for r in h))


@dataclass
class Outcome:
    """What one row gave, seed by seed (arrays have one entry per seed, in ``seeds`` order).

    seconds: training time of all seeds of the row (:func:`training_seconds`: the epochs alone,
    the planner's probes and evaluation excluded); an ensemble's is the sum of its members'.
    steps: optimizer steps per model (None for the ensemble).
    val_probs (S, N_val, C) and test_probs (S, N_test, C) are the final models' probabilities.
    extra: per-row details (the ensemble's weights).
    """

    row: str
    seeds: list[int]
    val_accuracy: np.ndarray
    test_accuracy: np.ndarray
    seconds: float
    val_probs: np.ndarray
    test_probs: np.ndarray
    diverged: list[bool]
    steps: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def seconds_per_model(self) -> float:
        """Return the training wall time per seed (the row's time shared equally when trained together)."""
        return self.seconds / len(self.seeds)

    def per_seed(self) -> list[dict]:
        """Return one plain dict per seed (for results.json)."""
        rows = [{"seed": s, "val_accuracy": float(v), "test_accuracy": float(t), "diverged": d}
                for s, v, t, d in zip(self.seeds, self.val_accuracy, self.test_accuracy, self.diverged)]
        for key, values in self.extra.items():
            for r, v in zip(rows, values):
                r[key] = v
        return rows


def train_row(row: Row, split: Split, seeds: Sequence[int], budget: dict, progress: bool | None = None) -> Outcome:
    """Return the :class:`Outcome` of training ``row`` once per seed with ``budget`` (epochs, device,
    ...) on ``split``'s training images; each final model reads the validation and test images once.
    """
    configs = [row.config(**budget, seed=s) for s in seeds]
    histories, models = train_seeds(configs, split.x_train, split.y_train, split.train_indices, progress)
    seconds = training_seconds(histories)
    x_val, y_val = split.x_val, split.y_val
    val = np.stack([probabilities(m, x_val, c) for m, c in zip(models, configs)])
    test = np.stack([probabilities(m, split.x_test, c) for m, c in zip(models, configs)])
    diverged = [bool(h and ("diverged" in h[-1] or not math.isfinite(h[-1]["train_loss"]))) for h in histories]
    steps = configs[0].epochs * math.ceil(len(split.train_indices) / configs[0].batch_size)
    return Outcome(row.name, list(seeds), np.array([accuracy(p, y_val) for p in val]),
                   np.array([accuracy(p, split.y_test) for p in test]), seconds, val, test, diverged, steps)


def ensemble_row(row: Row, members: Sequence[Outcome], y_val, y_test) -> Outcome:
    """Return the :class:`Outcome` of averaging ``members``' probabilities seed by seed.

    For each seed the weight of the first member is :func:`ensemble.choose_weight` on the
    validation probabilities and labels only; the test probabilities are then combined with it.
    """
    a, b = members
    if a.seeds != b.seeds:
        raise ValueError(f"the ensemble pairs seeds, but {a.row} has seeds {a.seeds} and {b.row} {b.seeds}")
    weights, val_acc, test_p = [], [], []
    for i in range(len(a.seeds)):
        choice = ensemble.choose_weight(a.val_probs[i], b.val_probs[i], y_val)
        weights.append(choice["weight"])
        val_acc.append(choice["val_accuracy"])
        test_p.append(ensemble.combine(a.test_probs[i], b.test_probs[i], choice["weight"]))
    val_p = np.stack([ensemble.combine(a.val_probs[i], b.val_probs[i], w) for i, w in enumerate(weights)])
    test_p = np.stack(test_p)
    return Outcome(row.name, list(a.seeds), np.array(val_acc), np.array([accuracy(p, y_test) for p in test_p]),
                   a.seconds + b.seconds, val_p, test_p, [x or y for x, y in zip(a.diverged, b.diverged)],
                   extra={f"weight_{a.row}": weights})


def _cache_key(row: Row, split: Split, seeds: Sequence[int], budget: dict) -> str:
    """Return a short hash of what makes a row's outcome: the row, its configs and seeds, the images
    and the kit's one code hash (``provenance.code_hash``); a cached row under another key is retrained."""
    configs = [row.config(**budget, seed=s).to_dict() for s in seeds] if row.settings is not None else list(row.members)
    # A change to the code that trains is a new experiment (and the pipeline reruns 04 on any such
    # change, so a cached row never outlives it anyway).
    text = json.dumps({"row": row.to_dict(), "configs": configs, "seeds": list(seeds), "split": split.digest(),
                       "code": provenance.code_hash()[:16]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save(path: Path, key: str, o: Outcome) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": key, "row": o.row, "seeds": o.seeds, "seconds": o.seconds, "diverged": o.diverged, "steps": o.steps,
            "extra": o.extra}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), val_accuracy=o.val_accuracy, test_accuracy=o.test_accuracy,
             val_probs=o.val_probs.astype(np.float32), test_probs=o.test_probs.astype(np.float32))
    tmp.replace(path)  # atomic: a kill never leaves half a row


def _load(path: Path, key: str) -> Outcome | None:
    if not path.is_file():
        return None
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        if meta["key"] != key:
            return None
        return Outcome(meta["row"], meta["seeds"], f["val_accuracy"], f["test_accuracy"], meta["seconds"],
                       f["val_probs"].astype(np.float64), f["test_probs"].astype(np.float64), meta["diverged"],
                       meta["steps"], meta["extra"])


def run_rows(rows: Sequence[Row], split: Split, seeds: Sequence[int], budget: dict, cache: str | Path | None = None,
             progress: bool | None = None, log: Callable[[str], None] | None = None) -> dict[str, Outcome]:
    """Return {row name: :class:`Outcome`} for ``rows`` (from :func:`select_rows`), trained in order.

    ``budget``: TrainConfig fields every row shares (epochs, device, precision). ``cache``: a
    folder where each finished row is kept (``<name>.npz``) and reused by a later call with the
    same row, seeds, budget and images, so an interrupted run continues with the next row.
    """
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed (two or more to test differences)")
    outcomes: dict[str, Outcome] = {}
    for row in rows:
        key = _cache_key(row, split, seeds, budget)
        path = Path(cache) / f"{row.name}.npz" if cache is not None else None
        found = _load(path, key) if path is not None else None
        if found is not None:
            outcomes[row.name] = found
            how = "reused"
        elif row.members:
            missing = [m for m in row.members if m not in outcomes]
            if missing:
                raise ValueError(f"ensemble {row.name!r} needs its members {missing} trained first: list them before it")
            outcomes[row.name] = ensemble_row(row, [outcomes[m] for m in row.members], split.y_val, split.y_test)
            how = "combined"
        else:
            outcomes[row.name] = train_row(row, split, seeds, budget, progress)
            how = "trained"
        if path is not None and found is None:
            _save(path, key, outcomes[row.name])
        if log is not None:
            o = outcomes[row.name]
            log(f"{row.name:<28} {how:<8} test accuracy {o.test_accuracy.mean():.4f} "
                f"({len(seeds)} seeds, {o.seconds:.1f} s)")
    return outcomes
