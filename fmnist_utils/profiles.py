"""Run profiles: how big each part of the report is. The one place these sizes are set.

``smoke`` proves the pipeline works in seconds (tests); ``quick`` is the 15-minute budget of
:mod:`fmnist_utils.budget` sized at the reference 2-core CPU's pace (the same sizes everywhere);
``full`` is the study's protocol at full size (GPU); ``budget-<time>`` profiles are sized to the
time a user has on their own device (``make report BUDGET=30m``).
``auto`` picks ``full`` on a CUDA device where its estimate is within :data:`AUTO_FULL_LIMIT_S`,
and ``quick`` elsewhere.

A :class:`Profile` holds one sub-profile per notebook (``profile.train.epochs``,
``profile.sweep.k``, ``profile.compare.per_class``). What each setting means is the ``help`` of
its field's metadata (:func:`setting`), which the report prints beside the value: see
:func:`meanings`. ``None`` is the only "not set" (for a subset: the whole split); every other
value, zero included, is checked.
"""

from __future__ import annotations

import dataclasses
import functools
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
    # Successive halving over epochs (fmnist_utils.halving); defaults, so that sizes made elsewhere need not name them.
    min_epochs: int | None = field(default=None, metadata={
        "help": "successive halving: epochs before the first cut (Optuna's min_resource); None: no halving"})
    reduction_factor: int = field(default=4, metadata={
        "help": "successive halving: 1 in this many configurations goes on at each cut (eta, >= 2)"})

    def __post_init__(self):
        _count_or_none(self, "n_configs")
        _count_or_none(self, "min_epochs")
        _count(self, "reduction_factor", low=2)
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
    # The 15-minute budget sized by fmnist_utils.budget.size at the reference 2-core CPU's committed pace
    # (benchmarks/results/pace-amd-epyc-2-threads.json), so that it is the same on every machine;
    # tests/test_budget.py checks that these are the sizing rule's output. At that pace (2.63 ms per
    # SeedCNN training image, measured idle on 2026-12-07) neither 01_sweep nor 04_improvements fits
    # above the floor of optimizer steps once 02 has its headline: the study's recipe for 5 epochs on
    # all images (2,110 steps), then 03. Their sizes below are what a larger budget would start from.
    "quick": Profile(
        name="quick",
        sweep=SweepProfile(space="oat", n_configs=None, factors=("lr",), k=2, subset=51_200, epochs=2, workers=1,
                           final_subset=51_200, final_epochs=1, test_subset=None),
        train=TrainProfile(subset=None, val_fraction=0.1, epochs=5, test_subset=None),
        compare=CompareProfile(per_class=100, n_boot=300, probe_train=2_000, probe_test=1_000,
                               fmnist_resnet=False, fmnist_resnet_subset=None, fmnist_resnet_epochs=1),
        improve=ImproveProfile(rows=("study", "study+adam"), seeds=2, subset=56_900, val_fraction=0.1, epochs=1,
                               test_subset=None),
        skip=("01_sweep", "04_improvements"),
    ),
    # The study's protocol at full size, within 25 M SeedCNN training image-passes (about 10 minutes on
    # one H100): its 10 one-factor-at-a-time configurations by 5-fold CV for the study's 10 epochs with
    # successive halving (after 3 epochs the best 10 // 4 = 2 go on to 10, retrained from scratch:
    # 10 x 3 + 2 x 10 configuration-epochs a fold, at most), 02 for 10 epochs, and 04's primary
    # comparisons over 3 seeds for 10 epochs. The 60-configuration grid and every ablation row stay
    # settings: 01's space="grid", 04's rows="all".
    "full": Profile(
        name="full",
        train=TrainProfile(subset=None, val_fraction=0.1, epochs=10, test_subset=None),
        # One worker per device: fit_many stacks the units that share a batch size on the GPU.
        sweep=SweepProfile(space="oat", n_configs=None, factors=_ALL_FACTORS, k=5, subset=None, epochs=10,
                           workers=1, final_subset=None, final_epochs=10, test_subset=None, min_epochs=3,
                           reduction_factor=4),
        compare=CompareProfile(per_class=100, n_boot=2_000, probe_train=10_000, probe_test=None,
                               fmnist_resnet=True, fmnist_resnet_subset=None, fmnist_resnet_epochs=10),
        improve=ImproveProfile(rows=("study", "modern", "study+adam", "study+rmsprop", "study+l1", "study+kernel5",
                                     "resnet18", "ensemble"),
                               seeds=3, subset=None, val_fraction=0.1, epochs=10, test_subset=None),
    ),
}


def resolve_name(name: str = "auto") -> str:
    """Return the profile name ``name`` stands for (``auto``: full on a CUDA device fast enough by the
    estimate, else quick)."""
    if name.startswith("budget-"):  # a budgeted run (fmnist_utils.budget): sized from its run folder's budget.json
        return name
    if name == "auto":
        import torch

        return "full" if torch.cuda.is_available() and _full_fits_here() else "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {['auto', *PROFILES]}")
    return name


# ``auto`` runs ``full`` on a CUDA device where its estimate is at most this (seconds): an H100
# (about 10 minutes), not a T4 (about an hour).
AUTO_FULL_LIMIT_S = 30 * 60.0


@functools.lru_cache(maxsize=1)
def _full_fits_here() -> bool:
    """Return True when the full profile's estimate on this CUDA device is within :data:`AUTO_FULL_LIMIT_S`.

    The pace is measured once per process (a few seconds on a GPU); pipeline.build resolves ``auto``
    once and hands every notebook the resolved name, so one run never mixes two profiles.
    """
    from . import estimate

    return estimate.estimate(PROFILES["full"], device="cuda")["total_seconds"] <= AUTO_FULL_LIMIT_S


def get(name: str = "auto") -> Profile:
    """Return the :class:`Profile` called ``name`` (``auto`` resolved as in :func:`resolve_name`)."""
    return PROFILES[resolve_name(name)]
