"""The ablation of ``04_improvements``: what each option beyond the study buys, over seeds.

The rows are built from :data:`fmnist_utils.train.PRESETS`, never from values typed twice:

- ``study`` (the study's recipe) and ``modern`` (``preset("modern")``), on the same data and budget;
- ``modern-<option>``: the modern recipe with one :data:`OPTIONS` entry set back to the study's
  value, and ``study+<option>``: the study's recipe with that one entry set to the modern value;
- ``study+adam``, ``study+rmsprop``, ``study+l1``, ``study+kernel5``: the study's own suggestions;
- ``resnet18``: the Fashion-MNIST ResNet-18 with the modern recipe;
- ``ensemble``: the modern CNN and ResNet-18 averaged, the weight chosen on validation images.

Every row trains the same seeds on the same images for the same number of epochs (the budget);
validation images come from the training split; the test set is read once per final model. Each
row is compared with its reference row by a paired t-test across seeds (seed ``s`` of both rows
shares its initialisation seed and data). What is resampled is the seed, on one fixed set of test
images: a verdict is about the mean over seeds on these test images, not about new images.

The comparisons form two families, declared here before any row runs (:func:`families`):
the primary one (:data:`PRIMARY_ROWS`: the modern recipe against the study's, and the study's own
suggestions against its recipe), whose family-wise error rate Holm's procedure holds at 5%, and the
exploratory rest, whose false discovery rate Benjamini-Hochberg holds at 5%. A difference the test
does not detect is "no significant difference", never equality.
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

from . import data, ensemble, provenance, stats, train

N_CLASSES = len(data.CLASSES)

# Settings every row shares, set by the profile rather than by a recipe: the modern preset's
# epochs (30) are its budget on a GPU, not one of its options.
BUDGET_FIELDS = ("epochs",)


@dataclass(frozen=True)
class Option:
    """One ingredient of the modern recipe: the TrainConfig ``fields`` that switch it on together."""

    name: str
    label: str
    fields: tuple[str, ...]


# The modern recipe, ingredient by ingredient. Values are never written here: "on" is
# PRESETS["modern"], "off" is TrainConfig's default (the study's value). A test checks that these
# options cover every field of the modern preset except the budget, each exactly once.
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("hyperparameters", "the modern learning rate, batch size, dropout and weight decay",
           ("lr", "batch_size", "dropout", "weight_decay")),
    Option("nesterov", "Nesterov momentum", ("momentum", "nesterov")),
    Option("onecycle", "the one-cycle schedule", ("schedule",)),
    Option("label_smoothing", "label smoothing", ("label_smoothing",)),
    Option("no_decay_norm_bias", "decay exemption for norms and biases", ("decay_norm_bias",)),
    Option("crop", "random-crop shifts", ("aug_crop_pad",)),
    Option("flip", "random flips", ("aug_flip",)),
    Option("erase", "random erasing", ("aug_erase",)),
    Option("ema", "weight averaging (EMA)", ("ema_decay",)),
    Option("tta", "flip test-time augmentation", ("tta_flip",)),
)}

# Adam's default step size (Kingma & Ba 2015; torch's default) and Keras' RMSprop default: the
# study's SGD rate (0.05) is fifty times larger and makes either adaptive method diverge.
ADAPTIVE_LR = 1e-3
# L1 coefficient: its pull on each weight (l1 * sign(w)) about equals the study's L2 pull
# (1e-3 * |w|) at SeedCNN's initial mean |w| of about 0.012 (a test checks this).
L1 = 1e-5
# The next odd kernel after the study's 3x3.
LARGER_KERNEL = 5

# The study's suggested improvements, each a change to its recipe: name -> (label, settings).
SUGGESTIONS: dict[str, tuple[str, dict]] = {
    "adam": ("Adam", {"optimizer": "adam", "lr": ADAPTIVE_LR}),
    "rmsprop": ("RMSprop", {"optimizer": "rmsprop", "lr": ADAPTIVE_LR}),
    "l1": ("L1 regularisation", {"l1": L1}),
    "kernel5": (f"{LARGER_KERNEL}x{LARGER_KERNEL} kernels", {"kernel_size": LARGER_KERNEL}),
}

# The primary comparisons, declared before the run: the question of the notebook (does the modern
# recipe beat the study's?) and the study's own suggestions. Every other row is exploratory.
PRIMARY_ROWS = ("modern", *(f"study+{name}" for name in SUGGESTIONS))

# What a row is, for grouping in tables and figures.
KINDS = ("recipe", "without", "with", "suggestion", "resnet", "ensemble")


@dataclass(frozen=True)
class Row:
    """One row of the ablation.

    settings: the TrainConfig fields this row sets (the rest keep the study's defaults; the budget
    comes from the profile); None for the ensemble, which trains nothing. reference: the row it is
    compared with (None for the study's recipe). changed: the settings (or, for the ensemble, the
    rows) that differ from the reference. members: the two rows the ensemble averages.
    """

    name: str
    label: str
    kind: str
    settings: dict | None
    reference: str | None
    changed: tuple[str, ...]
    members: tuple[str, ...] = ()

    def config(self, **budget) -> train.TrainConfig:
        """Return this row's TrainConfig with ``budget`` (epochs, seed, device, ...) applied."""
        if self.settings is None:
            raise ValueError(f"row {self.name!r} is an ensemble of {self.members}: it has no TrainConfig of its own")
        return train.TrainConfig(**{**self.settings, **budget})

    def to_dict(self) -> dict:
        """Return the row as a plain dict (for results.json)."""
        return dataclasses.asdict(self)


def _modern() -> dict:
    return {k: v for k, v in train.PRESETS["modern"].items() if k not in BUDGET_FIELDS}


def ablation_rows() -> dict[str, Row]:
    """Return every row of the ablation by name, in the order the table shows them."""
    study = dict(train.PRESETS["study"])
    modern = _modern()
    default = train.TrainConfig()  # the study's values
    rows = [
        Row("study", "the study's recipe", "recipe", study, None, ()),
        Row("modern", "the modern recipe", "recipe", modern, "study", tuple(sorted(set(modern) ^ set(study)))),
    ]
    for o in OPTIONS.values():
        back = {f: getattr(default, f) for f in o.fields}
        rows.append(Row(f"modern-{o.name}", f"the modern recipe without {o.label}", "without", {**modern, **back},
                        "modern", o.fields))
    for o in OPTIONS.values():
        on = {f: modern[f] for f in o.fields}
        rows.append(Row(f"study+{o.name}", f"the study's recipe with {o.label}", "with", {**study, **on}, "study",
                        o.fields))
    for name, (label, settings) in SUGGESTIONS.items():
        rows.append(Row(f"study+{name}", f"the study's recipe with {label}", "suggestion", {**study, **settings},
                        "study", tuple(settings)))
    # "ResNet-18 on Fashion-MNIST": the report keeps that name apart from 03's ImageNet ResNet-18.
    rows.append(Row("resnet18", "ResNet-18 on Fashion-MNIST with the modern recipe", "resnet",
                    {**modern, "model": "resnet18"}, "modern", ("model",)))
    rows.append(Row("ensemble", "the ensemble of the modern CNN and ResNet-18 on Fashion-MNIST", "ensemble", None,
                    "resnet18", ("modern",), members=("modern", "resnet18")))
    return {r.name: r for r in rows}


def select_rows(names: Sequence[str] | None = None) -> list[Row]:
    """Return the rows called ``names`` (None: every row) in table order.

    Raises ValueError for an unknown name, and when a row's reference or an ensemble's member is
    not selected (a row with nothing to compare with, or an ensemble of untrained models).
    """
    every = ablation_rows()
    if names is None:
        return list(every.values())
    names = list(names)
    unknown = [n for n in names if n not in every]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; choose among {list(every)}")
    for n in names:
        needed = [m for m in (every[n].reference, *every[n].members) if m is not None and m not in names]
        if needed:
            raise ValueError(f"row {n!r} needs the rows {needed} (its reference or members): add them to the selection")
    return [row for name, row in every.items() if name in names]


# The estimate's kind of image-pass (fmnist_utils.estimate.KINDS) for each model.
PASS_KINDS = {"seedcnn": "cnn", "resnet18": "resnet"}


def image_passes(rows: Sequence[Row], seeds: int, subset: int | None, val_fraction: float, epochs: int,
                 test_subset: int | None, train_split: int = 60_000, test_split: int = 10_000) -> dict[str, int]:
    """Return ``{kind: image-passes}`` (kinds of :data:`fmnist_utils.estimate.KINDS`) of running
    ``rows`` with these sizes (an :class:`~fmnist_utils.profiles.ImproveProfile`'s): every seed of a
    trained row trains on the training images for ``epochs`` and reads the validation and test
    images once (twice with flip-TTA); the ensemble trains and reads nothing new.
    """
    pool = train_split if subset is None else subset
    n_val = round(val_fraction * pool)
    n_test = test_split if test_subset is None else test_subset
    out: dict[str, int] = {}
    for row in rows:
        if row.settings is None:
            continue
        c = row.config(epochs=epochs)
        kind = PASS_KINDS[c.model]
        out[f"{kind}_train"] = out.get(f"{kind}_train", 0) + seeds * (pool - n_val) * epochs
        out[f"{kind}_eval"] = out.get(f"{kind}_eval", 0) + seeds * (n_val + n_test) * (2 if c.tta_flip else 1)
    return out


def shared_settings(configs: Sequence[train.TrainConfig]) -> dict:
    """Return the TrainConfig fields whose value every config shares, as {field: value} in field order."""
    if not configs:
        raise ValueError("shared_settings needs at least one config")
    dicts = [c.to_dict() for c in configs]
    return {k: v for k, v in dicts[0].items() if all(d[k] == v for d in dicts[1:])}


# --------------------------------------------------------------------------------------------
# Data: one split shared by every row


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


def _code_digest() -> str:
    # The package's one code hash: a change to the code that trains is a new experiment (and the
    # pipeline reruns 04 on any such change, so a cached row never outlives it anyway).
    return provenance.code_hash()[:16]


def _cache_key(row: Row, split: Split, seeds: Sequence[int], budget: dict) -> str:
    configs = [row.config(**budget, seed=s).to_dict() for s in seeds] if row.settings is not None else list(row.members)
    text = json.dumps({"row": row.to_dict(), "configs": configs, "seeds": list(seeds), "split": split.digest(),
                       "code": _code_digest()}, sort_keys=True, default=str)
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


# --------------------------------------------------------------------------------------------
# Statistics and the table

# Student t with n - 1 degrees of freedom on the n per-seed differences.
TEST_NAME = "paired t-test across seeds"
# Confidence level of every interval.
LEVEL = stats.LEVEL


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """Return the mean of ``a - b`` over seeds (paired: ``a[i]`` and ``b[i]`` share seed i) with its
    Student-t interval and two-sided p-value: ``{"value", "low", "high", "level", "p", "n", "sd"}``.

    With fewer than two seeds there is no spread: low, high, p and sd are None. When every
    difference is the same (sd 0) the t statistic is undefined: low, high and p are None as well
    (as :func:`fmnist_utils.stats.corrected_resampled_ttest` does), since three equal numbers cannot
    give the certainty a p of 0 would claim. ``reason`` says why p is None (None when it is not).
    """
    from scipy import stats as sps

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_difference needs two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    d = a - b
    n, mean = len(d), float(d.mean())
    out = {"value": mean, "low": None, "high": None, "level": level, "p": None, "n": n, "sd": None,
           "reason": "one seed: no spread across seeds to test a difference against"}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        return {**out, "sd": sd, "reason": "every seed gave the same difference, so its spread is unknown"}
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    return {**out, "low": mean - half, "high": mean + half, "p": p, "sd": sd, "reason": None}




def row_verdict(row: Row, reference: Row, outcome: Outcome, ref_outcome: Outcome, level: float = LEVEL, *,
                family: str | None = None, p_adjusted: float | None = None, family_note: str = "") -> dict:
    """Return the verdict record ``row:<name>``: the row's test accuracy minus its reference's,
    paired by seed, on these test images. verdict: "higher" / "lower" when the interval at
    ``level`` excludes 0, "no_significant_difference" when it covers it, "n/a" with one seed or no
    spread. As one of a family (:func:`verdicts`), ``level`` is the level its family's correction
    decides it at, ``p_adjusted`` the adjusted p printed in its place, and ``family_note`` (the
    correction and the unadjusted p) is added to the test's description.
    """
    if outcome.seeds != ref_outcome.seeds:
        raise ValueError(f"rows {row.name} and {reference.name} have different seeds: they cannot be paired")
    diff = paired_difference(outcome.test_accuracy, ref_outcome.test_accuracy, level)
    if diff["low"] is None:
        verdict = "n/a"
    elif diff["low"] > 0:
        verdict = stats.HIGHER
    elif diff["high"] < 0:
        verdict = stats.LOWER
    else:
        verdict = stats.NO_DIFFERENCE
    test = TEST_NAME + " (these test images, averaged over the seeds)" + (f"; {family_note}" if family_note else "")
    return stats.record(
        f"row:{row.name}", f"{row.label} against {reference.label}: test accuracy on these test images, paired by seed",
        "difference in test accuracy (row minus reference, mean over seeds)", test, verdict,
        value=diff["value"], low=diff["low"], high=diff["high"], level=level,
        p=diff["p"] if p_adjusted is None else p_adjusted, n=diff["n"], reason=diff["reason"], family=family)


def families(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Return {``"primary"``: [...], ``"exploratory"``: [...]}: the names of the compared rows
    (those with a reference) in each family, in table order. Primary are those of
    :data:`PRIMARY_ROWS` that are selected; the rest are exploratory. Declared from the rows alone,
    before any result exists."""
    compared = [r.name for r in rows if r.reference is not None]
    return {stats.PRIMARY: [n for n in compared if n in PRIMARY_ROWS],
            stats.EXPLORATORY: [n for n in compared if n not in PRIMARY_ROWS]}


def verdicts(rows: Sequence[Row], outcomes: dict[str, Outcome], alpha: float = stats.ALPHA) -> dict[str, dict]:
    """Return {``row:<name>``: :func:`row_verdict`} for every row that has a reference, each
    decided within its family (:func:`families`): Holm over the primary comparisons, Benjamini-
    Hochberg over the exploratory ones (:func:`fmnist_utils.stats.holm`,
    :func:`~fmnist_utils.stats.benjamini_hochberg`). A comparison with no p-value (one seed, no
    spread) is n/a and not counted in its family. The printed p is the adjusted one and the
    interval is at the level the correction decides the comparison at, so the two agree with the
    verdict; the unadjusted p is named in the test's description.
    """
    by_name = {r.name: r for r in rows}
    out = {}
    for family, names in families(rows).items():
        raw = {n: paired_difference(outcomes[n].test_accuracy, outcomes[by_name[n].reference].test_accuracy)["p"]
               for n in names}
        tested = [n for n in names if raw[n] is not None]
        method, procedure = stats.FAMILY_METHODS[family]
        decided = procedure([raw[n] for n in tested], alpha)
        for n in names:
            row, ref = by_name[n], by_name[by_name[n].reference]
            if n not in tested:
                out[f"row:{n}"] = row_verdict(row, ref, outcomes[n], outcomes[ref.name], family=family)
                continue
            i = tested.index(n)
            note = (f"{family} family: {method} over {len(tested)} comparison{'s' if len(tested) != 1 else ''}, "
                    f"unadjusted {stats.p_text(raw[n])}")
            out[f"row:{n}"] = row_verdict(row, ref, outcomes[n], outcomes[ref.name], 1 - float(decided["alpha_each"][i]),
                                          family=family, p_adjusted=float(decided["p_adjusted"][i]), family_note=note)
    return {f"row:{r.name}": out[f"row:{r.name}"] for r in rows if r.reference is not None}


def summary_table(rows: Sequence[Row], outcomes: dict[str, Outcome], records: dict[str, dict]) -> list[dict]:
    """Return one dict per row: accuracy mean and sd over seeds (fractions), validation accuracy,
    training seconds and optimizer steps per model, and the difference from the reference with its
    interval (at ``level``, its family's), adjusted p, verdict and family.
    """
    table = []
    for r in rows:
        o = outcomes[r.name]
        v = records.get(f"row:{r.name}", {})
        table.append({
            "row": r.name, "label": r.label, "kind": r.kind, "reference": r.reference, "changed": list(r.changed),
            "n_seeds": len(o.seeds),
            "accuracy_mean": float(o.test_accuracy.mean()),
            "accuracy_sd": float(o.test_accuracy.std(ddof=1)) if len(o.seeds) > 1 else None,
            "val_accuracy_mean": float(o.val_accuracy.mean()),
            "seconds_per_model": o.seconds_per_model,
            "steps": o.steps,
            "difference": v.get("value"), "low": v.get("low"), "high": v.get("high"), "level": v.get("level"),
            "p": v.get("p"), "verdict": v.get("verdict"), "family": v.get("family"),
            "diverged": int(sum(o.diverged)),
        })
    return table


def power_note(n_seeds: int, n_primary: int, alpha: float = stats.ALPHA, target: float = 0.8,
               effect_sd: float = 1.0) -> dict:
    """Return what the paired t-test across seeds can detect: ``power_at_seeds`` (the power with
    ``n_seeds`` seeds to detect a mean difference of ``effect_sd`` standard deviations of the
    per-seed differences at ``alpha``; None with fewer than two seeds), ``seeds`` (the fewest
    seeds giving ``target`` power at ``alpha``) and ``seeds_strictest`` (at the strictest level
    Holm uses in a primary family of ``n_primary``, ``alpha_strictest`` = alpha / n_primary), with
    ``alpha``, ``target`` and ``effect_sd``: the numbers the report's power sentence prints.
    """
    strictest = alpha / max(1, n_primary)
    return {"effect_sd": effect_sd, "target": target, "alpha": alpha, "alpha_strictest": strictest,
            "power_at_seeds": stats.paired_t_power(n_seeds, effect_sd, alpha) if n_seeds >= 2 else None,
            "seeds": stats.pairs_for_power(effect_sd, alpha, target),
            "seeds_strictest": stats.pairs_for_power(effect_sd, strictest, target)}
