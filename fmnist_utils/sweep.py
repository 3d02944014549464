"""Hyperparameter search by stratified k-fold cross-validation on the training set, on Optuna.

Protocol. The sweep functions receive the *training* split only: a configuration's score is its
mean validation accuracy over k stratified folds of (a stratified subset of) the training images.
The test set is touched once, by :func:`final_model`, after the choice is made.

Unit of work. Each (configuration, fold) is one Optuna trial whose params are the configuration
and whose user attributes say which unit it is (``config``, ``fold``), who runs it (``host``,
``pid``, ``heartbeat``) and, once done, its ``result``. A finished unit is a COMPLETE trial and is
never trained again: an interrupted sweep (Ctrl-C, ``kill -9``, a crash) resumes where it
stopped, and re-running a finished sweep trains nothing.

Storage. Given a file path, the study lives in Optuna's journal file
(:class:`optuna.storages.journal.JournalFileBackend`), which several processes on one machine
can share; SQLite is avoided because it serialises concurrent writers badly. Given a database
URL (``postgresql://...``, ``mysql+pymysql://...``), the same sweep can be run by worker
processes on several machines against one study.

Optuna's sharp edges, and what this module does about them:

* A killed worker leaves its trial RUNNING forever. Each trial records its worker's host, pid
  and process start time, and a heartbeat (a user attribute refreshed every ``heartbeat_s``). A
  RUNNING trial is *stale* when its worker is on this host and no longer alive, or when its
  heartbeat is older than ``grace_s`` (workers on other machines; clocks must roughly agree).
  A stale trial is marked FAIL and its unit is claimed again.
* Check-then-create races: two workers could both see a unit free and both start it. On one
  machine, claims are serialised by an ``fcntl`` lock beside the journal file. Across machines
  the storage is the arbiter: after creating its trial, a worker re-reads the unit's trials and
  withdraws (marks FAIL) unless no live or finished trial with a smaller number exists, so of
  overlapping claims exactly the earliest proceeds.
* A study re-opened with other settings would silently mix incomparable results. The search
  space, k, fold seed, subset and a fingerprint of the data and of the base config are stored in
  the study's user attributes and compared before any training: a difference is a ValueError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.distributions import CategoricalDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from . import data as fdata
from . import device as devices
from . import train
from .train import TrainConfig

try:  # POSIX only; elsewhere the storage-as-arbiter rule alone prevents duplicate work
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# The study's values (its Tables 2-4 vary one factor around the base configuration).
STUDY_LRS = (0.1, 0.05, 0.003, 0.0005)
STUDY_BATCH_SIZES = (64, 128, 256)
STUDY_DROPOUTS = (0.05, 0.1, 0.3, 0.5, 0.7)
STUDY_BASE = {"lr": 0.05, "batch_size": 128, "dropout": 0.5}

KINDS = ("grid", "oat", "random", "tpe")
# TrainConfig fields that change how a run executes, not what it learns.
NOT_HYPERPARAMETERS = ("device", "eval_batch_size", "compile")
HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_HYPERPARAMETERS)
SETTINGS_ATTR = "sweep_settings"
LABELS = {"lr": "learning rate", "batch_size": "batch size", "dropout": "dropout"}

# (storage, study, trial number) of the units this process is training right now: a RUNNING
# trial with this pid that is not here was left behind by an earlier, interrupted call.
_OWNED: set[tuple[str, str, int]] = set()


# --------------------------------------------------------------------------------------------
# Search spaces


def _plain(value: Any) -> Any:
    """Return a numpy scalar as the Python scalar Optuna and JSON accept."""
    return value.item() if hasattr(value, "item") else value


def _check_values(values: dict[str, Any], what: str) -> dict[str, tuple]:
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
    with ``seed``) or ``tpe`` (``n_configs`` configurations proposed one by one by Optuna's TPE
    sampler from the results so far). values: hyperparameter -> candidate values, in order.
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

    def configs(self) -> list[dict] | None:
        """Return the configurations (hyperparameter dicts) in training order; None for ``tpe``."""
        names = list(self.values)
        if self.kind == "tpe":
            return None
        if self.kind == "oat":
            out = [dict(self.base)]
            for name, choices in self.values.items():
                out += [{**self.base, name: v} for v in choices if v != self.base[name]]
            return out
        grid = [dict(zip(names, combo)) for combo in itertools.product(*self.values.values())]
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


def study_grid(lrs=STUDY_LRS, batch_sizes=STUDY_BATCH_SIZES, dropouts=STUDY_DROPOUTS) -> SearchSpace:
    """Return the study's grid: learning rate x batch size x dropout (4 x 3 x 5 = 60 by default)."""
    return grid(lr=lrs, batch_size=batch_sizes, dropout=dropouts)


def one_factor_at_a_time(base: dict, **values) -> SearchSpace:
    """Return ``base`` plus each factor of ``values`` varied alone around it (the study's Tables 2-4)."""
    return SearchSpace("oat", values, base=base)


def random_search(n_configs: int, seed: int = 0, **values) -> SearchSpace:
    """Return ``n_configs`` distinct grid points of ``values`` drawn at random (seeded)."""
    return SearchSpace("random", values, n_configs=n_configs, seed=seed)


def tpe_search(n_configs: int, seed: int = 0, **values) -> SearchSpace:
    """Return a space whose ``n_configs`` configurations Optuna's TPE sampler proposes in turn."""
    return SearchSpace("tpe", values, n_configs=n_configs, seed=seed)


STUDY_VALUES = {"lr": STUDY_LRS, "batch_size": STUDY_BATCH_SIZES, "dropout": STUDY_DROPOUTS}


def study_space(kind: str = "oat", n_configs: int | None = None, seed: int = 0,
                factors: tuple[str, ...] = tuple(STUDY_VALUES)) -> SearchSpace:
    """Return the study's values of ``factors`` as a ``kind`` space: ``oat`` around
    :data:`STUDY_BASE` (factors not varied stay at its values), ``grid``, ``random`` or ``tpe``
    (factors not varied take the base TrainConfig's values, which are the study's).
    """
    unknown = [f for f in factors if f not in STUDY_VALUES]
    if unknown or not factors:
        raise ValueError(f"factors={list(factors)}: choose one or more of the study's factors {list(STUDY_VALUES)}")
    values = {f: STUDY_VALUES[f] for f in STUDY_VALUES if f in factors}
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


def describe_config(params: dict) -> str:
    """Return a short label such as ``lr=0.05 batch=128 dropout=0.5``."""
    short = {"batch_size": "batch"}
    return " ".join(f"{short.get(k, k)}={v:g}" if isinstance(v, float) else f"{short.get(k, k)}={v}"
                    for k, v in params.items())


# --------------------------------------------------------------------------------------------
# Storage, settings and worker identity


def is_url(storage: str | os.PathLike) -> bool:
    """Return True when ``storage`` is a database URL rather than a journal file path."""
    return "://" in os.fspath(storage)


def open_storage(storage: str | os.PathLike) -> optuna.storages.BaseStorage:
    """Return Optuna storage for a journal file path or a database URL.

    A path gives a :class:`~optuna.storages.JournalStorage` on a journal file (created with its
    folder), safe for several processes on one machine. A URL gives an
    :class:`~optuna.storages.RDBStorage`: a database server shared by several machines.
    """
    text = os.fspath(storage)
    if is_url(text):
        # SQLite locks the whole file per write; a long timeout turns contention into waiting.
        kwargs = {"connect_args": {"timeout": 60}} if text.startswith("sqlite") else None
        return optuna.storages.RDBStorage(text, engine_kwargs=kwargs)
    path = Path(text).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def describe_storage(storage: str | os.PathLike) -> str:
    """Return ``storage`` fit for a results file: a database URL with its password hidden."""
    text = os.fspath(storage)
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", text) if is_url(text) else text


@contextlib.contextmanager
def _claim_lock(storage: str) -> Iterator[None]:
    """Serialise claims of the processes sharing a journal file (released by the OS on a kill)."""
    if is_url(storage) or fcntl is None:
        yield
        return
    with open(os.fspath(storage) + ".claim.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def data_fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    """Return the SHA-256 of the images and labels a sweep trains on (hex)."""
    h = hashlib.sha256()
    for t in (x, y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def sweep_settings(space: SearchSpace, k: int, seed: int, subset: int | None, n_examples: int,
                   data_sha256: str, base: TrainConfig) -> dict:
    """Return the settings that make two sweeps' results comparable (stored with the study)."""
    fixed = {n: v for n, v in base.to_dict().items() if n not in NOT_HYPERPARAMETERS}
    settings = {
        "space": space.to_dict(), "k": k, "fold_seed": seed, "subset": subset, "n_examples": n_examples,
        "data_sha256": data_sha256, "base": fixed,
    }
    return json.loads(json.dumps(settings))  # as the storage will hand it back (lists, not tuples)


def _open_study(storage: optuna.storages.BaseStorage, where: str, study_name: str, settings: dict) -> int:
    """Create or load the study; return its id. Raises ValueError when its settings differ."""
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", load_if_exists=True)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        if study.trials:
            raise ValueError(
                f"study {study_name!r} in {where} has trials but was not made by run_sweep; "
                "choose another study_name or storage"
            )
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif stored != settings:
        diff = [f"  {key}: stored {stored.get(key)!r}\n  {' ' * len(key)}  asked  {settings.get(key)!r}"
                for key in sorted(set(stored) | set(settings)) if stored.get(key) != settings.get(key)]
        raise ValueError(
            f"study {study_name!r} in {where} was run with other settings, so its results are not "
            "comparable with this sweep:\n" + "\n".join(diff) + "\n"
            f"Use another study_name or run folder, or delete {where} to start over."
        )
    return storage.get_study_id_from_name(study_name)


def _process_stat(pid: int) -> tuple[str, int] | None:
    """Return (state letter, start time in clock ticks) of ``pid`` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _identity() -> dict:
    stat = _process_stat(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": stat[1] if stat else None}


def _process_alive(pid: int, start: int | None) -> bool:
    """Return True when process ``pid`` (started at ``start`` ticks, when known) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    stat = _process_stat(pid)
    if stat is not None:
        if stat[0] in "ZX":  # killed but not yet reaped
            return False
        if start is not None and stat[1] != start:  # the pid was reused by another process
            return False
    return True


def _stale_reason(t: FrozenTrial, key: tuple[str, str], now: float, grace_s: float) -> str | None:
    """Return why the RUNNING trial ``t`` is abandoned, or None while its worker may be alive."""
    a = t.user_attrs
    if a.get("host") == socket.gethostname() and isinstance(a.get("pid"), int):
        if a["pid"] == os.getpid():
            if (*key, t.number) not in _OWNED:
                return "left RUNNING by an earlier, interrupted call in this process"
            return None
        if not _process_alive(a["pid"], a.get("pid_start")):
            return f"its worker (pid {a['pid']} on {a['host']}) is gone"
    beat = a.get("heartbeat")
    if not isinstance(beat, (int, float)):
        return "it has no heartbeat"
    if now - beat > grace_s:
        return f"no heartbeat for {now - beat:.0f} s (grace {grace_s:g} s)"
    return None


def _fail(storage: optuna.storages.BaseStorage, trial_id: int, reason: str) -> None:
    try:
        storage.set_trial_user_attr(trial_id, "failed_because", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:
        pass  # another worker marked it first


class _Heartbeat:
    """Refresh a trial's ``heartbeat`` user attribute every ``every_s`` seconds in a thread."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, every_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id, every_s), daemon=True)
        self._thread.start()

    def _beat(self, storage, trial_id, every_s):
        while not self._stop.wait(every_s):
            try:
                storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except Exception:  # finished or marked stale meanwhile: nothing left to keep alive
                return

    def stop(self):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------
# Claiming and training units


@dataclass
class _Worker:
    """Everything one worker needs; built in each worker process."""

    storage: optuna.storages.BaseStorage
    where: str
    study_name: str
    study_id: int
    space: SearchSpace
    k: int
    base: TrainConfig
    x: torch.Tensor
    y: torch.Tensor
    folds: list[tuple[np.ndarray, np.ndarray]]
    run_id: str
    worker: int
    heartbeat_s: float
    grace_s: float
    verbose: bool

    @property
    def key(self) -> tuple[str, str]:
        return (self.where, self.study_name)


@dataclass(frozen=True)
class _Claim:
    trial_id: int
    number: int
    params: dict
    fold: int


def _unit(t: FrozenTrial) -> tuple[str, int] | None:
    a = t.user_attrs
    return (a["config"], a["fold"]) if "config" in a and "fold" in a else None


def _configs_in_order(space: SearchSpace, trials: list[FrozenTrial]) -> list[dict]:
    """Return the sweep's configurations: the space's list, or for TPE those proposed so far."""
    finite = space.configs()
    if finite is not None:
        return finite
    seen: dict[str, dict] = {}
    for t in sorted(trials, key=lambda t: t.number):
        unit = _unit(t)
        if unit and unit[0] not in seen:
            seen[unit[0]] = json.loads(unit[0])
    return list(seen.values())


def _won(w: _Worker, trial_id: int, unit: tuple[str, int]) -> bool:
    """Return True when no live or finished trial of ``unit`` is older than ``trial_id``'s."""
    mine = w.storage.get_trial(trial_id).number
    now = time.time()
    for t in w.storage.get_all_trials(w.study_id, deepcopy=False):
        if t.number < mine and _unit(t) == unit:
            if t.state == TrialState.COMPLETE:
                return False
            if t.state == TrialState.RUNNING and _stale_reason(t, w.key, now, w.grace_s) is None:
                return False
    return True


def _running_attrs(w: _Worker, params: dict, fold: int) -> dict:
    return {"config": config_key(params), "fold": fold, "run_id": w.run_id, "worker": w.worker,
            **_identity(), "heartbeat": time.time()}


def _create_claim(w: _Worker, params: dict, fold: int) -> _Claim | None:
    dists = w.space.distributions()
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING, params=params, distributions={n: dists[n] for n in params},
        user_attrs=_running_attrs(w, params, fold),
    )
    # One storage write creates the trial with its unit and owner, so no reader ever sees a
    # RUNNING trial without them.
    trial_id = w.storage.create_new_trial(w.study_id, template_trial=template)
    if not _won(w, trial_id, (config_key(params), fold)):
        _fail(w.storage, trial_id, "withdrawn: an earlier trial claimed the same unit")
        return None
    return _Claim(trial_id, w.storage.get_trial(trial_id).number, params, fold)


def _propose(w: _Worker, trials: list[FrozenTrial]) -> _Claim | None:
    """Start a new TPE configuration at fold 0, or return None when the budget is spent."""
    known = {u[0] for t in trials if (u := _unit(t))}
    if len(known) >= w.space.n_configs:
        return None
    # A fresh seed per proposal: proposals stay reproducible from the history and differ across workers.
    sampler = optuna.samplers.TPESampler(seed=w.space.seed + len(trials))
    study = optuna.load_study(study_name=w.study_name, storage=w.storage, sampler=sampler)
    trial = study.ask(w.space.distributions())
    params = {n: trial.params[n] for n in w.space.names()}
    trial_id = w.storage.get_trial_id_from_study_id_trial_number(w.study_id, trial.number)
    if config_key(params) not in known:
        for name, value in _running_attrs(w, params, 0).items():
            w.storage.set_trial_user_attr(trial_id, name, value)
        if _won(w, trial_id, (config_key(params), 0)):
            return _Claim(trial_id, trial.number, params, 0)
        _fail(w.storage, trial_id, "withdrawn: an earlier trial claimed the same unit")
        return None
    # TPE exploits: on a small categorical space it repeats itself. An untried point keeps the
    # budget of distinct configurations honest.
    _fail(w.storage, trial_id, "TPE proposed a configuration already in the sweep")
    untried = [c for c in SearchSpace("grid", w.space.values).configs() if config_key(c) not in known]
    rng = np.random.default_rng(w.space.seed + len(trials))
    return _create_claim(w, untried[int(rng.integers(len(untried)))], 0)


def _claim(w: _Worker) -> _Claim | None:
    """Return the next unit this worker trains (its trial created RUNNING), or None when none is free."""
    trials = w.storage.get_all_trials(w.study_id, deepcopy=False)
    by_unit: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in trials:
        if (u := _unit(t)) is not None:
            by_unit.setdefault(u, []).append(t)
    now = time.time()
    for params in _configs_in_order(w.space, trials):
        key = config_key(params)
        for fold in range(w.k):
            held = by_unit.get((key, fold), [])
            if any(t.state == TrialState.COMPLETE for t in held):
                continue
            running = [(t, _stale_reason(t, w.key, now, w.grace_s)) for t in held if t.state == TrialState.RUNNING]
            if any(reason is None for _, reason in running):
                continue  # a live worker is on it
            for t, reason in running:
                _fail(w.storage, w.storage.get_trial_id_from_study_id_trial_number(w.study_id, t.number),
                      f"stale: {reason}")
                if w.verbose:
                    print(f"[worker {w.worker}] trial {t.number} ({describe_config(params)}, fold {fold + 1}) "
                          f"was abandoned ({reason}); training it again", flush=True)
            claim = _create_claim(w, params, fold)
            if claim is not None:
                return claim
    if w.space.kind == "tpe":
        return _propose(w, trials)
    return None


def _train_unit(w: _Worker, c: _Claim) -> dict:
    """Train and validate one (configuration, fold); record the result; return it."""
    config = w.base.replace(**c.params)
    tr, va = (torch.as_tensor(i) for i in w.folds[c.fold])
    start = time.perf_counter()
    model = train.build_model(config)
    history = train.fit(model, w.x[tr], w.y[tr], config, progress=False)
    metrics = train.evaluate(model, w.x[va], w.y[va], batch_size=config.eval_batch_size,
                             precision=config.precision, tta_flip=config.tta_flip)
    result = {
        "val_accuracy": metrics["accuracy"], "val_loss": metrics["loss"],
        "train_accuracy": history[-1]["train_accuracy"], "train_loss": history[-1]["train_loss"],
        "epochs": len(history), "seconds": time.perf_counter() - start,
        "n_train": len(tr), "n_val": len(va), "device": str(devices.resolve_device(config.device)),
    }
    # One write for the whole result, then the state: a kill in between leaves a RUNNING trial
    # that is redone, never a COMPLETE one without its result.
    w.storage.set_trial_user_attr(c.trial_id, "result", result)
    w.storage.set_trial_state_values(c.trial_id, TrialState.COMPLETE, [metrics["accuracy"]])
    return result


def _work(w: _Worker) -> int:
    """Claim and train units until none is free; return how many this worker trained."""
    trained = 0
    while True:
        with _claim_lock(w.where):
            claim = _claim(w)
        if claim is None:
            return trained
        owned = (*w.key, claim.number)
        _OWNED.add(owned)
        beat = _Heartbeat(w.storage, claim.trial_id, w.heartbeat_s)
        try:
            result = _train_unit(w, claim)
        except UpdateFinishedTrialError:
            # Declared stale by another worker while still training (e.g. a clock jump); that
            # worker redoes the unit, so this result is dropped rather than counted twice.
            if w.verbose:
                print(f"[worker {w.worker}] trial {claim.number} was taken over; its result is dropped", flush=True)
            continue
        except BaseException as exc:  # Ctrl-C or a crash: free the unit at once
            _fail(w.storage, claim.trial_id, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            beat.stop()
            _OWNED.discard(owned)
        trained += 1
        if w.verbose:
            print(f"[worker {w.worker}] {describe_config(claim.params)} fold {claim.fold + 1}/{w.k}: "
                  f"val accuracy {result['val_accuracy']:.4f}, loss {result['val_loss']:.4f} "
                  f"({result['seconds']:.1f} s)", flush=True)


def _worker_main(where: str, study_name: str, space_dict: dict, k: int, base_dict: dict, x, y, folds,
                 run_id: str, worker: int, threads: int, heartbeat_s: float, grace_s: float,
                 verbose: bool, errors) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(threads)
    try:
        storage = open_storage(where)
        w = _Worker(storage, where, study_name, storage.get_study_id_from_name(study_name),
                    SearchSpace.from_dict(space_dict), k, TrainConfig(**base_dict), x, y, folds, run_id,
                    worker, heartbeat_s, grace_s, verbose)
        _work(w)
    except BaseException:
        errors.put((worker, traceback.format_exc()))
        raise SystemExit(1)


@dataclass(frozen=True)
class SweepRun:
    """What one :func:`run_sweep` call did. Counts are (configuration, fold) units."""

    study_name: str
    storage: str
    n_units: int  # units the sweep has in all (configurations x k)
    reused: int  # already complete when the call started: not trained again
    trained: int  # trained by this call
    pending: int  # not complete when the call ended (claimed by a live worker elsewhere)
    workers: int
    seconds: float

    def to_dict(self) -> dict:
        """Return the counts as a plain dict."""
        return dataclasses.asdict(self)


def _complete_units(storage: optuna.storages.BaseStorage, study_id: int, run_id: str | None = None) -> set:
    return {
        _unit(t) for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        if _unit(t) and (run_id is None or t.user_attrs.get("run_id") == run_id)
    }


def run_sweep(
    x: torch.Tensor,
    y: torch.Tensor,
    space: SearchSpace,
    storage: str | os.PathLike,
    *,
    base: TrainConfig = TrainConfig(),
    k: int = 5,
    subset: int | None = None,
    seed: int = 0,
    study_name: str = "sweep",
    workers: int = 1,
    heartbeat_s: float = 30.0,
    grace_s: float = 180.0,
    verbose: bool = True,
) -> SweepRun:
    """Cross-validate every configuration of ``space`` on the training split; return what was done.

    x: uint8 training images (N, 1, 28, 28); y: int64 labels (N,). The test split is not an
    argument: selection cannot read it. subset: train on a stratified subset of this many
    images (None = all). k: stratified folds of the subset (2 <= k <= smallest class).
    base: every setting a configuration does not set (its ``epochs`` are the sweep's).
    storage: a journal file path (one machine) or a database URL (several machines run this same
    call against one study). workers: processes on this machine, each with cores // workers
    torch threads (on CUDA they share the GPU); 1 runs in this process.
    heartbeat_s / grace_s: how often a running unit says it is alive, and how long without that
    before another worker redoes it (cross-machine only; on this host a dead pid is seen at once).

    Finished units are never retrained; all settings are checked (ValueError) before training.
    """
    train.check_split(x, y, "training")
    if not isinstance(space, SearchSpace):
        raise ValueError(f"space must be a SearchSpace (grid, one_factor_at_a_time, ...), got {type(space).__name__}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if not isinstance(k, int):
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    idx = np.arange(len(y)) if subset is None else fdata.stratified_subset(y, subset, seed)
    xs, ys = x[torch.as_tensor(idx)], y[torch.as_tensor(idx)]
    folds = fdata.stratified_kfold(ys, k, seed)  # ValueError for k < 2 or k > smallest class
    for params in space.configs() or [{n: v} for n, vs in space.values.items() for v in vs]:
        try:
            base.replace(**params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"configuration {describe_config(params)} is not a valid TrainConfig: {exc}") from None
    settings = sweep_settings(space, k, seed, subset, len(idx), data_fingerprint(xs, ys), base)
    where = os.fspath(storage)
    st = open_storage(where)
    study_id = _open_study(st, where, study_name, settings)

    n_units = (space.n_configs if space.kind == "tpe" else len(space.configs())) * k
    reused = len(_complete_units(st, study_id))
    run_id = uuid.uuid4().hex
    start = time.perf_counter()
    if workers == 1:
        _work(_Worker(st, where, study_name, study_id, space, k, base, xs, ys, folds, run_id, 0,
                      heartbeat_s, grace_s, verbose))
    else:
        _spawn(where, study_name, space, k, base, xs, ys, folds, run_id, workers, heartbeat_s, grace_s, verbose)
    seconds = time.perf_counter() - start
    done = len(_complete_units(st, study_id))
    trained = len(_complete_units(st, study_id, run_id))
    return SweepRun(study_name, where, n_units, reused, trained, max(n_units - done, 0), workers, seconds)


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _spawn(where, study_name, space, k, base, xs, ys, folds, run_id, workers, heartbeat_s, grace_s, verbose):
    # spawn, not fork: forking a process that has started torch threads (or CUDA) is unsafe.
    ctx = torch.multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    threads = max(1, _cpu_count() // workers)
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(where, study_name, space.to_dict(), k, base.to_dict(), xs, ys, folds, run_id, i, threads,
                  heartbeat_s, grace_s, verbose, errors),
            name=f"sweep-worker-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        # Their RUNNING trials have dead pids now, so the next call redoes them.
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()
        raise
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if failed:
        messages = []
        while not errors.empty():
            worker, text = errors.get()
            messages.append(f"--- worker {worker} ---\n{text}")
        raise RuntimeError(f"sweep workers failed {failed}:\n" + "\n".join(messages))


# --------------------------------------------------------------------------------------------
# Results


def study_settings(storage: str | os.PathLike, study_name: str = "sweep") -> dict:
    """Return the settings stored with a sweep's study (space, k, subset, base config, ...)."""
    st = open_storage(storage)
    return optuna.load_study(study_name=study_name, storage=st).user_attrs[SETTINGS_ATTR]


def fold_results(storage: str | os.PathLike, study_name: str = "sweep") -> pd.DataFrame:
    """Return one row per finished (configuration, fold): hyperparameters, fold, val and train
    accuracy/loss, epochs, seconds, sizes, trial number; in the space's configuration order.

    Should two workers ever both finish a unit, the earlier trial counts.
    """
    st = open_storage(storage)
    try:
        study_id = st.get_study_id_from_name(study_name)
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {os.fspath(storage)}; run run_sweep first") from None
    settings = st.get_study_user_attrs(study_id).get(SETTINGS_ATTR)
    trials = sorted(st.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,)),
                    key=lambda t: t.number)
    space = SearchSpace.from_dict(settings["space"]) if settings else None
    rows, seen = [], set()
    for t in trials:
        unit = _unit(t)
        if unit is None or unit in seen or "result" not in t.user_attrs:
            continue
        seen.add(unit)
        params = json.loads(unit[0])
        names = [n for n in (space.names() if space else ()) if n in params] + sorted(
            n for n in params if not space or n not in space.names())
        rows.append({"config": unit[0], **{n: params[n] for n in names}, "fold": unit[1],
                     **t.user_attrs["result"], "trial": t.number})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {}
    finite = space.configs() if space else None
    for i, params in enumerate(finite or []):
        order[config_key(params)] = i
    first = df.groupby("config", sort=False)["trial"].min()
    df["_order"] = [order.get(c, len(order) + first[c]) for c in df["config"]]
    return df.sort_values(["_order", "fold"], kind="stable").drop(columns="_order").reset_index(drop=True)


def hyperparameter_names(table: pd.DataFrame) -> list[str]:
    """Return the hyperparameter columns of a fold or summary table, in column order (they are
    the keys of its ``config`` column)."""
    if table.empty:
        return []
    keys = json.loads(table["config"].iloc[0])
    return [c for c in table.columns if c in keys]


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """Return one row per configuration: hyperparameters, ``accuracy_mean`` / ``accuracy_std``
    and ``loss_mean`` / ``loss_std`` of validation over its folds (std: sample, ddof=1; NaN for
    one fold), ``n_folds``, ``epochs``, ``seconds`` (all folds' training+validation), ``rank``
    (1 = highest mean accuracy), ``config``. Row order follows ``folds``.
    """
    if folds.empty:
        raise ValueError("no finished (configuration, fold) units to summarise yet")
    names = hyperparameter_names(folds)
    g = folds.groupby("config", sort=False)
    out = pd.DataFrame({
        **{n: g[n].first() for n in names},
        "accuracy_mean": g["val_accuracy"].mean(),
        "accuracy_std": g["val_accuracy"].std(ddof=1),
        "loss_mean": g["val_loss"].mean(),
        "loss_std": g["val_loss"].std(ddof=1),
        "n_folds": g["fold"].count(),
        "epochs": g["epochs"].max(),
        "seconds": g["seconds"].sum(),
    })
    out["rank"] = out["accuracy_mean"].rank(ascending=False, method="min").astype(int)
    return out.reset_index()[[*names, "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds",
                              "epochs", "seconds", "rank", "config"]]


def ranked(summary: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Return the configurations with all ``k`` folds done (default: the most folds any has),
    best first: highest CV mean accuracy, ties to the lower mean loss, then the earlier row.
    """
    if summary.empty:
        raise ValueError("the summary is empty: no configuration to choose from")
    k = int(summary["n_folds"].max()) if k is None else k
    complete = summary[summary["n_folds"] == k]
    if complete.empty:
        raise ValueError(f"no configuration has all {k} folds finished yet; finish the sweep first")
    return complete.sort_values(["accuracy_mean", "loss_mean"], ascending=[False, True], kind="stable")


def best_row(summary: pd.DataFrame, k: int | None = None) -> pd.Series:
    """Return the summary row of the best configuration (the first of :func:`ranked`)."""
    return ranked(summary, k).iloc[0]


def best_hyperparameters(summary: pd.DataFrame, k: int | None = None) -> dict:
    """Return the chosen configuration's hyperparameters (see :func:`best_row`)."""
    return json.loads(best_row(summary, k)["config"])


def best_config(summary: pd.DataFrame, base: TrainConfig, k: int | None = None) -> TrainConfig:
    """Return ``base`` with the hyperparameters of the best configuration by CV mean accuracy."""
    return base.replace(**best_hyperparameters(summary, k))


def factor_tables(summary: pd.DataFrame, base: dict) -> dict[str, pd.DataFrame]:
    """Return, per factor of ``base`` that varies, the configurations that differ from ``base``
    in that factor alone: the study's Tables 2-4 layout (value, CV accuracy and loss mean/std,
    folds, seconds, ``config``, ``is_base``). Works on a one-factor-at-a-time or a grid summary.
    """
    names = hyperparameter_names(summary)
    params = [json.loads(c) for c in summary["config"]]
    tables = {}
    for factor in (n for n in names if n in base):
        keep = [i for i, p in enumerate(params) if all(p[n] == base[n] for n in names if n != factor and n in base)]
        rows = summary.iloc[keep]
        if rows[factor].nunique() < 2:
            continue
        table = rows[[factor, "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds", "seconds",
                      "config"]].copy()
        table["is_base"] = [params[i][factor] == base[factor] for i in keep]
        tables[factor] = table.reset_index(drop=True)
    return tables


# --------------------------------------------------------------------------------------------
# The final model: the only place the test set is read


def final_model(
    config: TrainConfig,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[torch.nn.Module, dict]:
    """Return (model, metrics): ``config`` retrained on the training split (a stratified
    ``subset`` of it, None = all) and evaluated once on the test split (``test_subset``).

    metrics: ``test_accuracy``, ``test_loss``, ``n_train``, ``n_test``, ``epochs``,
    ``train_seconds``, ``history`` (per epoch, see :func:`fmnist_utils.train.fit`).
    """
    tr = np.arange(len(y_train)) if subset is None else fdata.stratified_subset(y_train, subset, seed)
    te = np.arange(len(y_test)) if test_subset is None else fdata.stratified_subset(y_test, test_subset, seed)
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    model = train.build_model(config)
    start = time.perf_counter()
    history = train.fit(model, x_train[tr], y_train[tr], config, progress=progress)
    seconds = time.perf_counter() - start
    test = train.evaluate(model, x_test[te], y_test[te], batch_size=config.eval_batch_size,
                          precision=config.precision, tta_flip=config.tta_flip)
    return model, {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"], "n_train": len(tr), "n_test": len(te),
        "epochs": len(history), "train_seconds": seconds, "history": history,
    }


# --------------------------------------------------------------------------------------------
# Figures (matplotlib is imported when one is drawn)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def plot_heatmaps(summary: pd.DataFrame, rows: str = "lr", cols: str = "batch_size", facet: str | None = "dropout",
                  value: str = "accuracy_mean"):
    """Return a figure: ``value`` (CV mean accuracy) over ``rows`` x ``cols``, one panel per
    ``facet`` value, on one colour scale; cells the sweep did not train are blank.
    """
    import matplotlib.pyplot as plt

    facets = list(dict.fromkeys(summary[facet])) if facet and facet in summary else [None]
    row_vals = sorted(summary[rows].unique(), reverse=True)
    col_vals = sorted(summary[cols].unique())
    vmin, vmax = summary[value].min(), summary[value].max()
    fig, axes = plt.subplots(1, len(facets), figsize=(2.2 + 1.0 * len(col_vals) * len(facets), 0.6 * len(row_vals) + 1.6),
                             squeeze=False, sharey=True)
    for ax, f in zip(axes[0], facets):
        part = summary if f is None else summary[summary[facet] == f]
        grid_ = part.pivot_table(index=rows, columns=cols, values=value).reindex(index=row_vals, columns=col_vals)
        im = ax.imshow(grid_.to_numpy(dtype=float), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(grid_.to_numpy(dtype=float)):
            if not np.isnan(v):
                ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if v < (vmin + vmax) / 2 else "black")
        ax.set_xticks(range(len(col_vals)), [_fmt(c) for c in col_vals])
        ax.set_yticks(range(len(row_vals)), [_fmt(r) for r in row_vals])
        ax.set_xlabel(LABELS.get(cols, cols))
        if f is not None:
            ax.set_title(f"{LABELS.get(facet, facet)} {_fmt(f)}")
    axes[0][0].set_ylabel(LABELS.get(rows, rows))
    fig.colorbar(im, ax=axes[0].tolist(), label="CV mean validation accuracy", shrink=0.9)
    return fig


def plot_factors(tables: dict[str, pd.DataFrame], folds: pd.DataFrame):
    """Return a figure with one panel per factor (the tables of :func:`factor_tables`): each
    fold's validation accuracy (grey dots) and the CV mean +- std, the base value in red.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(3.6 * len(tables), 3.4), squeeze=False, sharey=True)
    for ax, (factor, table) in zip(axes[0], tables.items()):
        pos = np.arange(len(table))
        ax.errorbar(pos, table["accuracy_mean"], yerr=table["accuracy_std"].fillna(0), fmt="none", ecolor="0.3",
                    capsize=4)
        ax.scatter(pos, table["accuracy_mean"], c=["tab:red" if b else "tab:blue" for b in table["is_base"]],
                   s=60, zorder=3, marker="D")
        for p, key in zip(pos, table["config"]):
            acc = folds.loc[folds["config"] == key, "val_accuracy"]
            ax.scatter(np.full(len(acc), p + 0.12), acc, s=12, color="0.5", zorder=2)
        ax.set_xticks(pos, [_fmt(v) for v in table[factor]])
        ax.set_xlabel(LABELS.get(factor, factor))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    fig.tight_layout()
    return fig


def plot_fold_spread(folds: pd.DataFrame, summary: pd.DataFrame):
    """Return a figure: every configuration (best at the top) with each fold's validation
    accuracy (dots) and the CV mean (bar), showing how much the folds disagree.
    """
    import matplotlib.pyplot as plt

    order = summary.sort_values("accuracy_mean", ascending=True, kind="stable")
    fig, ax = plt.subplots(figsize=(6.5, 0.28 * len(order) + 1.2))
    names = hyperparameter_names(summary)
    for i, (_, row) in enumerate(order.iterrows()):
        acc = folds.loc[folds["config"] == row["config"], "val_accuracy"]
        ax.scatter(acc, np.full(len(acc), i), s=14, color="tab:blue", alpha=0.8)
        ax.plot([row["accuracy_mean"]] * 2, [i - 0.35, i + 0.35], color="tab:red", lw=2)
    ax.set_yticks(range(len(order)), [describe_config({n: r[n] for n in names}) for _, r in order.iterrows()],
                  fontsize=7)
    ax.set_xlabel("validation accuracy (dots: folds; bar: CV mean)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
