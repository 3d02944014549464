"""Run profiles: how big each part of the report is. The one place these sizes are set.

``smoke`` proves the pipeline works in seconds (tests); ``quick`` is the whole report on a
2-core laptop CPU within 15 minutes; ``full`` is the study's protocol at full size (GPU).
``auto`` picks ``full`` where CUDA is available and ``quick`` elsewhere.

A :class:`Profile` holds one sub-profile per notebook (``profile.train.epochs``,
``profile.sweep.k``, ``profile.compare.per_class``). What each setting means is the ``help`` of
its field's metadata (:func:`setting`), which the report prints beside the value: see
:func:`meanings`. ``None`` is the only "not set" (for a subset: the whole split); every other
value, zero included, is checked.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field


def setting(help: str) -> dataclasses.Field:
    """Return a required dataclass field whose meaning, ``help``, is kept in its metadata."""
    return field(metadata={"help": help})


def _check(obj, name: str, ok: bool, why: str) -> None:
    if not ok:
        kind = type(obj).__name__
        raise ValueError(f"{kind}.{name}={getattr(obj, name)!r}: {why}")


def _count_or_none(obj, name: str) -> None:
    value = getattr(obj, name)
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    _check(obj, name, ok, "must be a whole number >= 1, or None for the whole split")


def _count(obj, name: str, low: int = 1) -> None:
    value = getattr(obj, name)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    _check(obj, name, ok, f"must be a whole number >= {low}")


@dataclass(frozen=True)
class TrainProfile:
    """02_train: the study's CNN trained with the configuration 01_sweep chose, beside the study's recipe."""

    subset: int | None = setting("training images (stratified); None: all 60,000")
    val_fraction: float = setting("part of them held out for the validation curves, in (0, 1)")
    epochs: int = setting("training epochs")
    test_subset: int | None = setting("test images evaluated (stratified); None: all 10,000")

    def __post_init__(self):
        _count_or_none(self, "subset")
        _check(self, "val_fraction", 0 < self.val_fraction < 1, "must be in (0, 1)")
        _count(self, "epochs")
        _count_or_none(self, "test_subset")


@dataclass(frozen=True)
class SweepProfile:
    """01_sweep: hyperparameters by stratified k-fold cross-validation on the training split."""

    space: str = setting("oat (the study's Tables 2-4) | grid | random | tpe")
    n_configs: int | None = setting("configurations tried by random / tpe; None for oat and grid")
    factors: tuple[str, ...] = setting("factors varied (of lr, batch_size, dropout); the rest: the study's")
    k: int = setting("folds of the cross-validation (>= 2)")
    subset: int | None = setting("training images cross-validated (stratified); None: all 60,000")
    epochs: int = setting("epochs per (configuration, fold)")
    workers: int = setting("worker processes sharing the sweep on this machine")
    final_subset: int | None = setting("images the chosen configuration is retrained on; None: all")
    final_epochs: int = setting("epochs of that final model")
    test_subset: int | None = setting("test images it is evaluated on, once; None: all 10,000")

    def __post_init__(self):
        _count_or_none(self, "n_configs")
        _check(self, "factors", len(self.factors) >= 1, "name at least one factor")
        _count(self, "k", low=2)
        _count_or_none(self, "subset")
        _count(self, "epochs")
        _count(self, "workers")
        _count_or_none(self, "final_subset")
        _count(self, "final_epochs")
        _count_or_none(self, "test_subset")


@dataclass(frozen=True)
class CompareProfile:
    """03_resnet_compare: the CNN against ResNet-18 through class-by-class correlation matrices."""

    per_class: int = setting("test images per class for the matrices and CKA (the study: 100)")
    n_boot: int = setting("bootstrap resamples of those images, for confidence intervals")
    probe_train: int = setting("training images (stratified) the linear probes are fitted on")
    probe_test: int | None = setting("test images (stratified) the probes are scored on; None: all")
    fmnist_resnet: bool = setting("also train a ResNet-18 on Fashion-MNIST (28x28 stem) and compare it")
    fmnist_resnet_subset: int | None = setting("its training images (stratified); None: all 60,000")
    fmnist_resnet_epochs: int = setting("its training epochs")

    def __post_init__(self):
        _count(self, "per_class")
        _count(self, "n_boot")
        _count(self, "probe_train")
        _count_or_none(self, "probe_test")
        _count_or_none(self, "fmnist_resnet_subset")
        _count(self, "fmnist_resnet_epochs")


@dataclass(frozen=True)
class ImproveProfile:
    """04_improvements: the ablation over seeds (improve.ablation_rows), every row on one budget."""

    rows: tuple[str, ...] | None = setting("rows run (names in improve.ablation_rows); None: every row")
    seeds: int = setting("seeds per row, 0, 1, ...; differences are paired by seed")
    subset: int | None = setting("training-split images used, validation included; None: all 60,000")
    val_fraction: float = setting("part of them held out to choose the ensemble weight, in (0, 1)")
    epochs: int = setting("training epochs of every row (one budget for all)")
    test_subset: int | None = setting("test images each final model is scored on, once; None: all 10,000")

    def __post_init__(self):
        _check(self, "rows", self.rows is None or (isinstance(self.rows, tuple) and len(self.rows) >= 1),
               "must be a non-empty tuple of row names, or None for every row")
        _count(self, "seeds")
        _count_or_none(self, "subset")
        _check(self, "val_fraction", 0 < self.val_fraction < 1, "must be in (0, 1)")
        _count(self, "epochs")
        _count_or_none(self, "test_subset")


@dataclass(frozen=True)
class Profile:
    """Sizes for one report run: one sub-profile per notebook."""

    name: str = setting("smoke | quick | full")
    sweep: SweepProfile = setting("01_sweep")
    train: TrainProfile = setting("02_train")
    compare: CompareProfile = setting("03_resnet_compare")
    improve: ImproveProfile = setting("04_improvements")
    # A budgeted run (fmnist_utils.budget) drops the notebooks that do not fit; fixed profiles run every one.
    skip: tuple[str, ...] = field(default=(), metadata={"help": "notebooks not run within the budget"})

    def to_dict(self) -> dict:
        """Return the settings as nested plain dicts (written into every results.json)."""
        return dataclasses.asdict(self)


def meanings(cls: type = Profile, prefix: str = "") -> dict[str, str]:
    """Return {dotted setting path: its meaning} for every leaf setting of ``cls``.

    ``meanings()["train.epochs"] == "training epochs"``. Sub-profiles are walked, not listed.
    """
    types = typing.get_type_hints(cls)  # resolves the string annotations of ``from __future__``
    out = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if dataclasses.is_dataclass(types[f.name]):
            out.update(meanings(types[f.name], path + "."))
        else:
            out[path] = f.metadata.get("help", "")
    return out


_ALL_FACTORS = ("lr", "batch_size", "dropout")

PROFILES = {
    "smoke": Profile(
        name="smoke",
        train=TrainProfile(subset=1_000, val_fraction=0.2, epochs=1, test_subset=1_000),
        sweep=SweepProfile(space="oat", n_configs=None, factors=_ALL_FACTORS, k=2, subset=200, epochs=1,
                           workers=1, final_subset=400, final_epochs=1, test_subset=1_000),
        compare=CompareProfile(per_class=10, n_boot=50, probe_train=200, probe_test=100,
                               fmnist_resnet=False, fmnist_resnet_subset=1_000, fmnist_resnet_epochs=1),
        improve=ImproveProfile(rows=("study", "modern", "study+nesterov", "resnet18", "ensemble"), seeds=2,
                               subset=300, val_fraction=0.2, epochs=1, test_subset=200),
    ),
    "quick": Profile(
        name="quick",
        train=TrainProfile(subset=15_000, val_fraction=0.1, epochs=4, test_subset=None),
        # The study's four learning rates by 3-fold CV; the budget goes into steps (about 110 per
        # fold) rather than more configurations: at 65 steps the study's SGD was still near chance.
        sweep=SweepProfile(space="oat", n_configs=None, factors=("lr",), k=3, subset=3_600, epochs=6,
                           workers=1, final_subset=4_000, final_epochs=3, test_subset=None),
        compare=CompareProfile(per_class=100, n_boot=300, probe_train=2_000, probe_test=1_000,
                               fmnist_resnet=False, fmnist_resnet_subset=10_000, fmnist_resnet_epochs=2),
        # The study's recipe against the modern one on one budget (so few steps that momentum at the
        # modern learning rate unsettles SeedCNN), and the two rows that moved validation accuracy
        # most in a one-seed run of twelve rows on 2,700 images for 4 epochs: the modern recipe
        # without Nesterov momentum (+21 points) and the study's with Adam (+32).
        improve=ImproveProfile(rows=("study", "modern", "modern-nesterov", "study+adam"), seeds=3,
                               subset=2_500, val_fraction=0.1, epochs=4, test_subset=1_000),
    ),
    "full": Profile(
        name="full",
        train=TrainProfile(subset=None, val_fraction=0.1, epochs=10, test_subset=None),
        # One worker per device: fit_many stacks the units that share a batch size on the GPU.
        sweep=SweepProfile(space="grid", n_configs=None, factors=_ALL_FACTORS, k=5, subset=None, epochs=5,
                           workers=1, final_subset=None, final_epochs=10, test_subset=None),
        compare=CompareProfile(per_class=100, n_boot=2_000, probe_train=10_000, probe_test=None,
                               fmnist_resnet=True, fmnist_resnet_subset=None, fmnist_resnet_epochs=10),
        improve=ImproveProfile(rows=None, seeds=3, subset=None, val_fraction=0.1, epochs=30, test_subset=None),
    ),
}


def resolve_name(name: str = "auto") -> str:
    """Return the profile name ``name`` stands for (``auto``: full with CUDA, else quick)."""
    if name.startswith("budget-"):  # a budgeted run (fmnist_utils.budget): sized from its run folder's budget.json
        return name
    if name == "auto":
        import torch

        return "full" if torch.cuda.is_available() else "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {['auto', *PROFILES]}")
    return name


def get(name: str = "auto") -> Profile:
    """Return the :class:`Profile` called ``name`` (``auto`` resolved as in :func:`resolve_name`)."""
    return PROFILES[resolve_name(name)]
