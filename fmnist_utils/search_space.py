"""Which configurations a sweep trains: grids, one factor at a time, random draws, and TPE.

A configuration is a dict of :class:`~fmnist_utils.train.TrainConfig` hyperparameters; every
setting it does not name comes from the sweep's base config. The study's values are those of
:mod:`fmnist_utils.study`, and its base configuration is ``TrainConfig()``'s defaults (the study's
recipe), so no number is typed twice.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from . import study
from .config_labels import LABELS, describe_config  # here too, where the notebooks and the sweep use them
from .train import TrainConfig

KINDS = ("grid", "oat", "random", "tpe")
# TrainConfig fields that change how a run executes, not what it learns.
NOT_HYPERPARAMETERS = ("device", "eval_batch_size", "compile")
HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_HYPERPARAMETERS)
# The study's base configuration: its recipe's values of the factors its Tables 2-4 vary.
STUDY_BASE = {name: getattr(TrainConfig(), name) for name in study.VALUES}


def _plain(value: Any) -> Any:
    """Return a numpy scalar as the Python scalar Optuna and JSON accept."""
    return value.item() if hasattr(value, "item") else value


def _check_values(values: dict[str, Any], what: str) -> dict[str, tuple]:
    """Return ``values`` as name -> tuple of plain scalars; ValueError naming what is wrong."""
    if not values:
        raise ValueError(f"{what}: the search space is empty; give at least one hyperparameter with values")
    out = {}
    for name, choices in values.items():
        if name in NOT_HYPERPARAMETERS:
            raise ValueError(f"{what}: {name!r} sets how a run executes, not a hyperparameter to search")
        if name not in HYPERPARAMETERS:
            raise ValueError(
                f"{what}: {name!r} is not a TrainConfig hyperparameter; choose among {list(HYPERPARAMETERS)}"
            )
        if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
            raise ValueError(f"{what}: {name}={choices!r} must be a list of candidate values")
        choices = tuple(_plain(v) for v in choices)
        if not choices:
            raise ValueError(f"{what}: {name} has no values; the grid would be empty")
        if len(set(choices)) != len(choices):
            raise ValueError(f"{what}: {name}={list(choices)} repeats a value")
        for v in choices:
            if not isinstance(v, (bool, int, float, str)):
                raise ValueError(f"{what}: {name}={v!r} must be a number, bool or string")
        out[name] = choices
    return out


@dataclass(frozen=True)
class SearchSpace:
    """Which configurations a sweep trains.

    kind: ``grid`` (every combination of ``values``), ``oat`` (``base``, then each factor of
    ``values`` varied alone around it), ``random`` (``n_configs`` distinct grid points drawn
    with ``seed``) or ``tpe`` (``n_configs`` distinct configurations proposed one by one by
    Optuna's TPE sampler from the results so far). values: hyperparameter -> candidate values.
    """

    kind: str
    values: dict
    base: dict | None = None
    n_configs: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown search space kind {self.kind!r}; choose one of {KINDS}")
        object.__setattr__(self, "values", _check_values(dict(self.values), f"{self.kind} space"))
        if self.kind == "oat":
            if not self.base:
                raise ValueError("a one-factor-at-a-time space needs a base configuration")
            base = {k: v[0] for k, v in _check_values({k: [v] for k, v in self.base.items()}, "oat base").items()}
            missing = [n for n in self.values if n not in base]
            if missing:
                raise ValueError(f"oat base lacks {missing}: give the base value of every factor varied")
            object.__setattr__(self, "base", base)
        elif self.base is not None:
            raise ValueError(f"base is only for the 'oat' space, not {self.kind!r}")
        if self.kind in ("random", "tpe"):
            if not isinstance(self.n_configs, int) or self.n_configs < 1:
                raise ValueError(f"a {self.kind} space needs n_configs >= 1, got {self.n_configs!r}")
            if self.n_configs > self.grid_size():
                raise ValueError(
                    f"n_configs={self.n_configs} exceeds the {self.grid_size()} distinct configurations "
                    "of the values given; use a grid or fewer configurations"
                )
        elif self.n_configs is not None:
            raise ValueError(f"n_configs is only for random and tpe spaces, not {self.kind!r}")

    def names(self) -> tuple[str, ...]:
        """Return the hyperparameters every configuration sets (base-only ones included)."""
        extra = tuple(n for n in (self.base or {}) if n not in self.values)
        return (*self.values, *extra)

    def grid_size(self) -> int:
        """Return the number of combinations of ``values``."""
        return math.prod(len(v) for v in self.values.values())

    def n_configs_total(self) -> int:
        """Return how many configurations the sweep trains in all."""
        return self.n_configs if self.kind == "tpe" else len(self.configs())

    def configs(self) -> list[dict] | None:
        """Return the configurations (hyperparameter dicts) in order; None for ``tpe`` (proposed as it goes)."""
        if self.kind == "tpe":
            return None
        if self.kind == "oat":
            out = [dict(self.base)]
            for name, choices in self.values.items():
                out += [{**self.base, name: v} for v in choices if v != self.base[name]]
            return out
        grid = [dict(zip(self.values, combo)) for combo in itertools.product(*self.values.values())]
        if self.kind == "random":
            pick = np.random.default_rng(self.seed).choice(len(grid), size=self.n_configs, replace=False)
            return [grid[i] for i in pick]
        return grid

    def distributions(self) -> dict[str, CategoricalDistribution]:
        """Return Optuna's distribution of each hyperparameter (every value it takes)."""
        choices = {n: list(v) for n, v in self.values.items()}
        for n, v in (self.base or {}).items():
            choices.setdefault(n, [])
            if v not in choices[n]:
                choices[n].append(v)
        return {n: CategoricalDistribution(c) for n, c in choices.items()}

    def to_dict(self) -> dict:
        """Return the space as plain JSON data (stored with the study, written to results)."""
        return {
            "kind": self.kind,
            "values": {n: list(v) for n, v in self.values.items()},
            "base": dict(self.base) if self.base is not None else None,
            "n_configs": self.n_configs,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        """Return the space :meth:`to_dict` described."""
        return cls(kind=d["kind"], values=d["values"], base=d.get("base"), n_configs=d.get("n_configs"),
                   seed=d.get("seed", 0))


def grid(**values) -> SearchSpace:
    """Return the full grid over ``values`` (hyperparameter=list of values)."""
    return SearchSpace("grid", values)


def one_factor_at_a_time(base: dict, **values) -> SearchSpace:
    """Return ``base`` plus each factor of ``values`` varied alone around it (the study's Tables 2-4)."""
    return SearchSpace("oat", values, base=base)


def random_search(n_configs: int, seed: int = 0, **values) -> SearchSpace:
    """Return ``n_configs`` distinct grid points of ``values`` drawn at random (seeded)."""
    return SearchSpace("random", values, n_configs=n_configs, seed=seed)


def tpe_search(n_configs: int, seed: int = 0, **values) -> SearchSpace:
    """Return a space whose ``n_configs`` configurations Optuna's TPE sampler proposes in turn."""
    return SearchSpace("tpe", values, n_configs=n_configs, seed=seed)


def study_space(kind: str = "oat", n_configs: int | None = None, seed: int = 0,
                factors: tuple[str, ...] = tuple(study.VALUES)) -> SearchSpace:
    """Return the study's values of ``factors`` as a ``kind`` space: ``oat`` around
    :data:`STUDY_BASE` (factors not varied stay at its values), ``grid``, ``random`` or ``tpe``
    (factors not varied take the base TrainConfig's values, which are the study's).
    """
    unknown = [f for f in factors if f not in study.VALUES]
    if unknown or not factors:
        raise ValueError(f"factors={list(factors)}: choose one or more of the study's factors {list(study.VALUES)}")
    values = {f: study.VALUES[f] for f in study.VALUES if f in factors}
    if kind == "oat":
        return one_factor_at_a_time(STUDY_BASE, **values)
    if kind == "grid":
        return grid(**values)
    if kind in ("random", "tpe"):
        return SearchSpace(kind, values, n_configs=n_configs, seed=seed)
    raise ValueError(f"unknown search space kind {kind!r}; choose one of {KINDS}")


def config_key(params: dict) -> str:
    """Return the canonical name of a configuration: its JSON with sorted keys."""
    return json.dumps({k: _plain(v) for k, v in params.items()}, sort_keys=True)
