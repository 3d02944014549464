"""A run's settings: one frozen tree, resolved once, overridden by dotted path, printed once.

    Settings                       resolve("quick", overrides={"train.epochs": 3, "sweep.k": 3})
    ├── name, skip, device, jobs   the profile, the notebooks a budget left out, the device of every notebook,
    │                              how many notebooks make report runs at once (the runner's; not passed to them)
    ├── sweep:   SweepSettings     01_sweep: profiles.SweepProfile's sizes + seed, storage, study_name, allow_partial
    ├── train:   TrainSettings     02_train: profiles.TrainProfile's sizes + source, lr, batch_size, dropout, optimizer, seed
    ├── compare: CompareSettings   03_resnet_compare: profiles.CompareProfile's sizes + weights, layers, n_perm, ...
    └── improve: ImproveSettings   04_improvements: profiles.ImproveProfile's sizes + split_seed
    each branch's ``config(...)`` -> train.TrainConfig, the last level

:func:`resolve` is the one place a profile name, a budget and overrides become settings: ``make report``
(:mod:`fmnist_utils.pipeline`) calls it once and passes the whole tree to every notebook as the papermill
parameter ``settings``; a notebook opened in JupyterLab calls it from its own parameters cell
(``profile``, ``run_dir``, ``budget``, ``overrides``). ``None`` is the only "not set" everywhere. Each
setting's meaning is its field's ``help`` (:func:`meanings`), printed beside its value in the report's
Appendix A and when a notebook starts (:func:`describe`).

The environment variables of the kit (``FMNIST_*``, :data:`ENVIRONMENT`) are read here only, through
:func:`env` and :func:`flag` (one parser of yes/no values).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import profiles
from .profiles import setting

# --------------------------------------------------------------------------------------------
# Environment variables: read in this one place

from .env import ENVIRONMENT, FALSE_WORDS, TRUE_WORDS, env, flag  # noqa: F401  (settings.env / settings.flag)


# --------------------------------------------------------------------------------------------
# The tree: each notebook's branch is its profile part (sizes) plus the notebook's own settings


def option(default, help: str) -> dataclasses.Field:
    """Return a dataclass field with a ``default`` and its meaning, ``help``, in its metadata."""
    return field(default=default, metadata={"help": help})


def _check(obj, name: str, ok: bool, why: str) -> None:
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {why}")


def _whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


@dataclass(frozen=True)
class SweepSettings(profiles.SweepProfile):
    """01_sweep: its sizes (:class:`fmnist_utils.profiles.SweepProfile`) and how the sweep is stored."""

    seed: int = option(0, "stratified subsets, folds, initialisation, shuffling and dropout")
    storage: str | None = option(None, "SQLite file or database URL; None: 01_sweep/sweep.sqlite3")
    study_name: str = option("sweep", "Optuna study in the storage; another name starts another sweep")
    allow_partial: bool = option(False, "rank a sweep with units still pending (False: stop naming them)")

    def __post_init__(self):
        super().__post_init__()
        _check(self, "seed", _whole(self.seed), "must be a whole number >= 0")
        _check(self, "study_name", isinstance(self.study_name, str) and bool(self.study_name), "must be a name")
        _check(self, "allow_partial", isinstance(self.allow_partial, bool), "must be True or False")

    def config(self, device: str = "auto"):
        """Return the :class:`~fmnist_utils.train.TrainConfig` every unit starts from: the study's
        recipe for ``epochs`` epochs with this seed (the sweep varies its factors)."""
        from . import train

        return train.TrainConfig(epochs=self.epochs, seed=self.seed, device=device)


TRAIN_SOURCES = ("sweep", "study", "modern")


@dataclass(frozen=True)
class TrainSettings(profiles.TrainProfile):
    """02_train: its sizes (:class:`fmnist_utils.profiles.TrainProfile`) and the configuration trained."""

    source: str = option("sweep", "sweep (01_sweep's choice) | study | modern (train.PRESETS)")
    lr: float | None = option(None, "learning rate (> 0); None: the source's")
    batch_size: int | None = option(None, "images per step; None: the source's")
    dropout: float | None = option(None, "drop probability of the dense layers; None: the source's")
    optimizer: str | None = option(None, "sgd | adam | adamw | rmsprop; None: the source's")
    seed: int = option(0, "initialisation, data subsets, shuffling and dropout")

    def __post_init__(self):
        super().__post_init__()
        _check(self, "source", self.source in TRAIN_SOURCES, f"choose one of {TRAIN_SOURCES}")
        _check(self, "seed", _whole(self.seed), "must be a whole number >= 0")

    def changes(self) -> dict:
        """Return the hyperparameters set here ({name: value}), which replace the source's."""
        names = ("lr", "batch_size", "dropout", "optimizer")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def config(self, run: str | Path, device: str = "auto", skip: tuple[str, ...] = ()):
        """Return (the :class:`~fmnist_utils.train.TrainConfig` trained, the source it came from).

        The source's configuration (01_sweep's choice read from the run folder ``run``, or a
        recipe) with this branch's epochs, seed, ``device`` and hyperparameters set here: the
        epochs are always ``train.epochs`` (01's choice carries ``sweep.final_epochs``, the epochs
        of 01's own final model, which 02 does not inherit). A budget
        that left out 01_sweep (``skip``) has no choice: the study's recipe is trained instead.
        """
        from . import records

        source = "study" if self.source == "sweep" and "01_sweep" in skip else self.source
        base = records.base_config(source, run)
        return base.replace(epochs=self.epochs, seed=self.seed, device=device, **self.changes()), source


@dataclass(frozen=True)
class CompareSettings(profiles.CompareProfile):
    """03_resnet_compare: its sizes (:class:`fmnist_utils.profiles.CompareProfile`) and the networks' layers."""

    weights: str | None = option(None, "resnet18-f37072fd.pth; None: $FMNIST_RESNET18_WEIGHTS, cache or download")
    allow_download: bool = option(True, "try to download the ImageNet weights when not on disk")
    download_timeout: float = option(15.0, "seconds a network step of that download may take")
    cnn_layer: str = option("fc2", "CNN layer of the study's matrix (fc2: the penultimate)")
    resnet_layer: str = option("avgpool", "ResNet-18 layer of the study's matrix (avgpool: the penultimate)")
    max_spatial: int | None = option(14, "wider maps are average-pooled to this size; None: kept whole")
    n_perm: int = option(10_000, "class relabellings of the Mantel test")
    seed: int = option(0, "image samples, resamples, permutations, probe split, fallback init")
    precision: str = option("auto", "auto | fp32 | bf16: precision of the feature forward passes")
    batch_size: int = option(256, "images per forward pass")

    def __post_init__(self):
        super().__post_init__()
        _check(self, "allow_download", isinstance(self.allow_download, bool), "must be True or False")
        _check(self, "max_spatial", self.max_spatial is None or _whole(self.max_spatial, 1),
               "must be a whole number >= 1, or None to keep the maps whole")
        _check(self, "n_perm", _whole(self.n_perm, 1), "must be a whole number >= 1")
        _check(self, "seed", _whole(self.seed), "must be a whole number >= 0")
        _check(self, "batch_size", _whole(self.batch_size, 1), "must be a whole number >= 1")


@dataclass(frozen=True)
class ImproveSettings(profiles.ImproveProfile):
    """04_improvements: its sizes (:class:`fmnist_utils.profiles.ImproveProfile`)."""

    split_seed: int = option(0, "which images form the training, validation and test subsets")

    def __post_init__(self):
        super().__post_init__()
        _check(self, "split_seed", _whole(self.split_seed), "must be a whole number >= 0")

    def budget(self, device: str = "auto") -> dict:
        """Return what every row trains for: ``{"epochs", "device"}`` (``improve.Row.config``'s keywords)."""
        return {"epochs": self.epochs, "device": device}


@dataclass(frozen=True)
class Settings:
    """Every setting of one report run: one branch per notebook. Build it with :func:`resolve`."""

    name: str = setting("smoke | quick | full")  # or budget-<time>: the profile the sizes come from
    sweep: SweepSettings = setting("01_sweep")
    train: TrainSettings = setting("02_train")
    compare: CompareSettings = setting("03_resnet_compare")
    improve: ImproveSettings = setting("04_improvements")
    skip: tuple[str, ...] = option((), "notebooks not run within the budget")
    device: str = option("auto", "auto | cpu | cuda | mps: where every notebook computes")
    jobs: int | None = option(None, "notebooks make report runs at once where the graph allows (the runner's own "
                              "setting, not passed to the notebooks); None: automatic, 2 on a CUDA device of 24 GiB "
                              "or more outside a budget, else 1 (the number used is stated with the wall times)")

    def __post_init__(self):
        _check(self, "jobs", self.jobs is None or _whole(self.jobs, 1), "must be a whole number >= 1, or None (automatic)")

    def to_dict(self) -> dict:
        """Return the tree as nested plain dicts (written into every results record)."""
        return dataclasses.asdict(self)

    def branch(self, stem: str):
        """Return the branch of the notebook ``stem`` (``02_train`` -> :attr:`train`), or None for
        a notebook the tree has no branch for."""
        name = BRANCHES.get(stem)
        return getattr(self, name) if name else None


# Notebook stem -> its branch of the tree.
BRANCHES = {"01_sweep": "sweep", "02_train": "train", "03_resnet_compare": "compare", "04_improvements": "improve"}
_BRANCH_TYPES = {"sweep": SweepSettings, "train": TrainSettings, "compare": CompareSettings, "improve": ImproveSettings}


def from_profile(profile: profiles.Profile, **root) -> Settings:
    """Return the :class:`Settings` of a profile: its sizes, every other setting at its default."""
    parts = {name: cls(**{f.name: getattr(getattr(profile, name), f.name)
                          for f in dataclasses.fields(getattr(profile, name))})
             for name, cls in _BRANCH_TYPES.items()}
    return Settings(name=profile.name, skip=tuple(profile.skip), **parts, **root)


def _build(cls, values: Mapping[str, Any], where: str):
    """Return ``cls`` (a settings dataclass) built from plain values, nested ones and tuples restored."""
    types = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown settings {unknown}; known: {sorted(names)}")
    out = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(types[key]) and isinstance(value, Mapping):
            value = _build(types[key], value, f"{where}.{key}" if where else key)
        elif isinstance(value, list) and _is_tuple(types[key]):
            value = tuple(value)
        out[key] = value
    return cls(**out)


def _is_tuple(hint) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple or any(
        _is_tuple(a) for a in typing.get_args(hint) if a is not type(None))


def from_dict(record: Mapping[str, Any]) -> Settings:
    """Return the :class:`Settings` written as :meth:`Settings.to_dict` (e.g. passed by papermill)."""
    return _build(Settings, record, "settings")


def meanings(cls: type = Settings) -> dict[str, str]:
    """Return {dotted setting: its meaning} for every leaf of the tree (``"train.epochs"``)."""
    return profiles.meanings(cls)


def override(settings: Settings, overrides: Mapping[str, Any] | None) -> Settings:
    """Return ``settings`` with each ``{dotted path: value}`` of ``overrides`` set, checked as a whole.

    ``{"train.epochs": 3, "sweep.factors": ["lr"]}``; a list is taken as a tuple where the setting
    is one. An unknown path raises ValueError naming the nearest known ones.
    """
    if not overrides:
        return settings
    check_paths(overrides)
    tree = settings.to_dict()
    for path, value in overrides.items():
        *branch, leaf = path.split(".")
        node = tree
        for part in branch:
            node = node[part]
        node[leaf] = value
    return from_dict(tree)


def check_paths(overrides: Mapping[str, Any] | None) -> None:
    """Raise ValueError unless ``overrides`` is a dict whose every key is a setting's dotted path,
    naming the nearest known paths for one that is not (the values are checked by :func:`override`)."""
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        raise ValueError(f"overrides must be a dict of dotted setting paths and values, e.g. {{'train.epochs': 3}}; "
                         f"got {overrides!r}")
    known = meanings()
    for path in overrides:
        if path not in known:
            near = difflib.get_close_matches(str(path), known, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"unknown setting {path!r}{hint} (every setting: fmnist_utils.settings.meanings())")


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return ``["train.epochs=3", "sweep.space=grid"]`` as overrides ``{"train.epochs": 3, "sweep.space": "grid"}``.

    A value is read as a Python literal (``3``, ``None``, ``['lr']``, ``True``) where it is one,
    else kept as text.
    """
    out = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise ValueError(f"{item!r}: write a setting as path=value, e.g. train.epochs=3")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[path.strip()] = value
    return out


def profile_of(profile: str = "quick", budget: str | None = None, run_dir: str | Path | None = None,
               log=print) -> profiles.Profile:
    """Return the :class:`~fmnist_utils.profiles.Profile` that ``profile`` or ``budget`` stands for.

    With a ``budget`` (``"30m"``), or a budgeted profile name (``budget-30m``), the sizes are
    :func:`fmnist_utils.budget.plan`'s, read from (or measured into) the run folder's budget.json;
    otherwise ``auto`` is resolved (:func:`fmnist_utils.profiles.resolve_name`).
    """
    from . import budget as budgets

    if budget is not None or budgets.is_budget_name(profile):
        return budgets.plan(budget if budget is not None else profile.removeprefix("budget-"), run_dir, log=log).profile
    return profiles.get(profiles.resolve_name(profile))


def resolve(profile: str = "quick", budget: str | None = None, run_dir: str | Path | None = None,
            overrides: Mapping[str, Any] | None = None, log=print) -> Settings:
    """Return the run's :class:`Settings`: the profile's (or the budget's) sizes, then ``overrides``
    (``{"train.epochs": 3}``, see :func:`override`). The one place settings are resolved."""
    return override(from_profile(profile_of(profile, budget, run_dir, log=log)), overrides)


def changed(settings: Settings, base: Settings) -> dict[str, Any]:
    """Return ``{dotted path: value}`` of the settings that differ from ``base``."""
    mine, theirs = _flatten(settings.to_dict()), _flatten(base.to_dict())
    return {k: v for k, v in mine.items() if theirs.get(k) != v}


def _flatten(record: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def rows(record: Mapping) -> list[dict]:
    """Return a tree (as :meth:`Settings.to_dict`, or a profile's dict) as table rows
    ``{"setting", "value", "meaning"}``, one per leaf (``train.epochs``); None is spelt out."""
    notes = meanings()
    return [{"setting": k, "value": "None" if v is None else v, "meaning": notes.get(k, "")}
            for k, v in _flatten(record).items()]


def describe(settings: Settings, branch: str | None = None) -> str:
    """Return the settings (one ``branch``'s, or the root's and every branch's) as lines
    ``train.epochs = 5  # training epochs``, for a notebook to print when it starts."""
    flat = _flatten(settings.to_dict())
    notes = meanings()
    keep = [k for k in flat if branch is None or k.startswith(branch + ".") or "." not in k]
    width = max(len(k) for k in keep)
    return "\n".join(f"{k.ljust(width)} = {flat[k]!r}  # {notes.get(k, '')}" for k in keep)
