"""The rows of ``04_improvements``' ablation, each a TrainConfig built from :data:`fmnist_utils.train.PRESETS`.

Values are never typed twice: "on" is ``PRESETS["modern"]``, "off" is TrainConfig's default (the
study's value). :func:`ablation_rows` lists every row in table order, :func:`select_rows` a
consistent selection of them, :func:`image_passes` what running them costs, and
:data:`PRIMARY_ROWS` the comparisons declared primary before any row runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from . import train


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
