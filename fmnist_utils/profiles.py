"""Run profiles: how big each part of the report is. The one place these sizes are set.

``smoke`` proves the pipeline works in seconds (tests); ``quick`` is the whole report on a
2-core laptop CPU within 15 minutes; ``full`` is the study's protocol at full size (GPU).
``auto`` picks ``full`` where CUDA is available and ``quick`` elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImproveProfile:
    """Sizes of 04_improvements (the ablation over seeds); each field's ``help`` says what it means."""

    rows: tuple[str, ...] | None = field(metadata={"help": "ablation rows run (names in improve.ablation_rows); None = every row"})
    seeds: int = field(metadata={"help": "seeds per row (0, 1, ...); the differences are paired by seed (>= 2 to test them)"})
    subset: int | None = field(metadata={"help": "training-split images used (stratified), validation included; None = all 60,000"})
    val_fraction: float = field(metadata={"help": "part of those images held out to choose the ensemble weight, (0, 1)"})
    epochs: int = field(metadata={"help": "training epochs of every row (the same budget for all)"})
    test_subset: int | None = field(metadata={"help": "test images each final model is scored on, once (stratified); None = all 10,000"})

    def __post_init__(self):
        if self.rows is not None and (not isinstance(self.rows, tuple) or not self.rows):
            raise ValueError(f"ImproveProfile.rows={self.rows!r}: must be a non-empty tuple of row names, or None for every row")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"ImproveProfile.{name}={value!r}: must be a whole number >= 1, or None for the whole split")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"ImproveProfile.seeds={self.seeds!r}: must be an integer >= 1")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"ImproveProfile.epochs={self.epochs!r}: must be an integer >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"ImproveProfile.val_fraction={self.val_fraction!r}: must be in (0, 1)")

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        """Return {field: what it means}."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Profile:
    """Sizes for one report run. ``None`` for a subset means the whole split."""

    name: str
    # 01_train: the study's model and recipe
    train_subset: int | None  # training images (stratified); None = all 60,000
    train_val_fraction: float  # part of those images held out for the validation curves, (0, 1)
    train_epochs: int  # training epochs
    train_test_subset: int | None  # test images evaluated (stratified); None = all 10,000
    # 02_sweep: hyperparameters by stratified k-fold cross-validation on the training set
    sweep_space: str  # oat (the study's Tables 2-4) | grid (4 x 3 x 5) | random | tpe, over the study's values
    sweep_n_configs: int | None  # configurations tried by random / tpe; None for oat and grid
    sweep_factors: tuple[str, ...]  # the study's factors varied (lr, batch_size, dropout); the others stay at the study's values
    sweep_k: int  # folds (>= 2)
    sweep_subset: int | None  # training images cross-validated (stratified); None = all 60,000
    sweep_epochs: int  # epochs per (configuration, fold)
    sweep_workers: int  # worker processes sharing the study on this machine
    sweep_final_subset: int | None  # training images the chosen configuration is retrained on; None = all
    sweep_final_epochs: int  # epochs of that final model
    sweep_test_subset: int | None  # test images the final model is evaluated on, once; None = all 10,000
    # 03_resnet_compare: the CNN against ResNet-18 through class-by-class correlation matrices
    compare_per_class: int  # test images per class for the matrices and CKA (the study: 100)
    compare_n_boot: int  # bootstrap resamples of those images, for confidence intervals
    compare_probe_train: int  # training images (stratified) the linear probes are fitted on
    compare_probe_test: int | None  # test images (stratified) the probes are scored on; None = all 10,000
    compare_fmnist_resnet: bool  # also train a ResNet-18 on Fashion-MNIST (28x28 stem) and compare it
    compare_fmnist_resnet_subset: int | None  # its training images (stratified); None = all 60,000
    compare_fmnist_resnet_epochs: int  # its training epochs
    improve: ImproveProfile  # 04_improvements: the ablation over seeds (see ImproveProfile)

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (printed into the report)."""
        return dataclasses.asdict(self)


# 04_improvements. quick: the study's recipe against the modern one at the same budget (so few
# steps that momentum at the modern learning rate destabilises SeedCNN), plus the two rows that
# moved validation accuracy most in a one-seed run of twelve rows on 2,700 images for 4 epochs:
# the modern recipe without Nesterov momentum (+21 points) and the study's with Adam (+32).
IMPROVE = {
    "smoke": ImproveProfile(rows=("study", "modern", "study+nesterov", "resnet18", "ensemble"), seeds=2, subset=300,
                            val_fraction=0.2, epochs=1, test_subset=200),
    "quick": ImproveProfile(rows=("study", "modern", "modern-nesterov", "study+adam"), seeds=3, subset=2_500,
                            val_fraction=0.1, epochs=4, test_subset=1_000),
    "full": ImproveProfile(rows=None, seeds=3, subset=None, val_fraction=0.1, epochs=30, test_subset=None),
}

PROFILES = {
    "smoke": Profile(name="smoke", train_subset=1_000, train_val_fraction=0.2, train_epochs=1, train_test_subset=1_000,
        sweep_space="oat", sweep_n_configs=None, sweep_factors=("lr", "batch_size", "dropout"), sweep_k=2, sweep_subset=200, sweep_epochs=1, sweep_workers=1, sweep_final_subset=400, sweep_final_epochs=1, sweep_test_subset=1_000,
        compare_per_class=10, compare_n_boot=50, compare_probe_train=200, compare_probe_test=100, compare_fmnist_resnet=False, compare_fmnist_resnet_subset=1_000, compare_fmnist_resnet_epochs=1,
        improve=IMPROVE["smoke"]),
    "quick": Profile(name="quick", train_subset=15_000, train_val_fraction=0.1, train_epochs=4, train_test_subset=None,
        sweep_space="oat", sweep_n_configs=None, sweep_factors=("lr",), sweep_k=3, sweep_subset=2_400, sweep_epochs=5, sweep_workers=1, sweep_final_subset=4_000, sweep_final_epochs=3, sweep_test_subset=None,
        compare_per_class=100, compare_n_boot=300, compare_probe_train=2_000, compare_probe_test=1_000, compare_fmnist_resnet=False, compare_fmnist_resnet_subset=10_000, compare_fmnist_resnet_epochs=2,
        improve=IMPROVE["quick"]),
    "full": Profile(name="full", train_subset=None, train_val_fraction=0.1, train_epochs=10, train_test_subset=None,
        sweep_space="grid", sweep_n_configs=None, sweep_factors=("lr", "batch_size", "dropout"), sweep_k=5, sweep_subset=None, sweep_epochs=5, sweep_workers=4, sweep_final_subset=None, sweep_final_epochs=10, sweep_test_subset=None,
        compare_per_class=100, compare_n_boot=2_000, compare_probe_train=10_000, compare_probe_test=None, compare_fmnist_resnet=True, compare_fmnist_resnet_subset=None, compare_fmnist_resnet_epochs=10,
        improve=IMPROVE["full"]),
}


def resolve_name(name: str = "auto") -> str:
    """Return the profile name ``name`` stands for (``auto``: full with CUDA, else quick)."""
    if name == "auto":
        import torch

        return "full" if torch.cuda.is_available() else "quick"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {['auto', *PROFILES]}")
    return name


def get(name: str = "auto") -> Profile:
    """Return the :class:`Profile` called ``name`` (``auto`` resolved as in :func:`resolve_name`)."""
    return PROFILES[resolve_name(name)]
