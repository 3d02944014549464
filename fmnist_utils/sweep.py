"""Run a cross-validated hyperparameter sweep on Optuna: in stacks, resumable, on one or several machines.

Protocol. :func:`run_sweep` receives the *training* split only: a configuration's score is its mean
validation accuracy over k stratified folds of (a stratified subset of) the training images. The test
set is read once, by :func:`final_model`, after the choice is made.

Model. Each configuration is one Optuna trial; each fold is one intermediate value of it
(``trial.report(val_accuracy, step=fold)``) with the fold's details (loss, seconds, a divergence's
reason) in the user attribute ``fold_<fold>``. The trial completes, valued at the mean fold accuracy,
when its k folds are in. grid, oat and random configurations are queued when the study is created
(``study.enqueue_trial``); TPE proposes its own through ``study.ask``.

Storage: Optuna's RDB storage, an SQLite file (a path) on one machine or a database URL
(``postgresql://user@host/db``) shared by workers on several. Optuna's mechanisms do the bookkeeping:
claims are ``study.ask`` popping the queue (its WAITING -> RUNNING write succeeds for one caller: a row
lock on PostgreSQL; on SQLite, because pysqlite reads outside the transaction, every transaction here
begins with ``BEGIN IMMEDIATE``); a killed worker's trials stop beating (``heartbeat_interval``), go
stale after ``grace_period`` and ``fail_stale_trials`` fails them, and
``RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)`` queues each again with its
finished folds (intermediate values and user attributes): only unfinished folds train again.

Written here because Optuna lacks it:

* Stacks: a worker holds several trials and trains the unfinished folds of those that share every
  setting but :data:`PER_UNIT` at once with ``train.fit_many``, recording each fold when its stack
  ends; a diverged fold is recorded at chance accuracy with its reason.
* One heartbeat thread for every trial a worker holds: Optuna beats only inside ``Study.optimize``,
  for the one trial of each objective call.
* An interrupted call (Ctrl-C, an error) fails its trials and queues them again at once through the
  same retry callback, rather than leaving them to wait out the grace period.
* Comparable results: the space, k, seeds, a fingerprint of the data and the base config are stored
  with the study and compared on reopening (ValueError on a difference).
* TPE repeats itself on a small categorical space: a repeat is failed and an untried grid point
  queued instead, so the budget counts distinct configurations (workers proposing at the same
  moment may overshoot it by one each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from . import data as fdata
from . import device as devices
from . import stacked, train
from .progress import bar as progress_bar
from .search_space import NOT_HYPERPARAMETERS, SearchSpace, config_key, describe_config
from .train import TrainConfig

# Settings that may differ between the units of one stack (train.fit_many); all others are shared.
PER_UNIT = ("lr", "weight_decay", "dropout", "momentum", "nesterov", "seed")
SETTINGS_ATTR = "sweep_settings"
READY_ATTR = "sweep_ready"  # set once every configuration is queued
CONFIG_ATTR = "config"  # a trial's configuration, config_key(params)


def fold_attr(fold: int) -> str:
    """Return the name of the trial user attribute holding fold ``fold``'s details."""
    return f"fold_{fold}"


# --------------------------------------------------------------------------------------------
# Storage and study


class StorageError(ValueError):
    """The sweep's storage cannot be used: a damaged SQLite file, an unreachable server, an
    unsupported scheme or a missing database driver. The message names it and the way out."""


SUPPORTED_BACKENDS = ("sqlite", "postgresql", "mysql")
SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def check_storage(url: str) -> None:
    """Raise :class:`StorageError` for a storage that cannot work, before Optuna is asked to open it:
    an unsupported scheme, or an SQLite file that is not a database (it would fail on every run)."""
    try:
        backend = sqlalchemy.engine.make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"sweep storage {describe_storage(url)}: not a database URL ({exc}); give an SQLite "
                           "file path or a URL such as postgresql://user@host/db") from None
    if backend not in SUPPORTED_BACKENDS:
        raise StorageError(f"sweep storage {describe_storage(url)}: the scheme {backend!r} is not supported; give an "
                           f"SQLite file path or a URL of {', '.join(SUPPORTED_BACKENDS[1:])}")
    path = _sqlite_path(url)
    if path is not None and path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            header = f.read(len(SQLITE_HEADER))
        if header != SQLITE_HEADER:
            raise StorageError(_damaged_sqlite(path, "its first bytes are not SQLite's header"))


def _damaged_sqlite(path: Path, why: str) -> str:
    return (f"sweep storage {path}: not a readable SQLite database ({why}): the file is damaged. Move it aside "
            f"(mv {path} {path}.damaged) and run again to start the sweep over, or put back a copy of it")


def _storage_error(exc: BaseException, url: str) -> StorageError:
    """Return the StorageError a failure to open ``url`` stands for, naming it and the way out."""
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    detail = detail[0][:300] if detail else type(exc).__name__
    path = _sqlite_path(url)
    if isinstance(exc, ImportError):
        backend = url.split(":", 1)[0].split("+", 1)[0]
        driver = {"postgresql": "psycopg2-binary", "mysql": "pymysql"}.get(backend, "its driver")
        return StorageError(f"sweep storage {describe_storage(url)}: its database driver is not installed "
                            f"({detail}); install it (pip install {driver}) or use an SQLite file")
    if path is not None:
        if "not a database" in detail or "malformed" in detail:
            return StorageError(_damaged_sqlite(path, detail))
        return StorageError(f"sweep storage {path}: cannot be opened as SQLite ({detail}); check the file and its folder")
    return StorageError(f"sweep storage {describe_storage(url)}: cannot connect ({detail}); check that the server is "
                        "running and reachable and the URL right, or use an SQLite file (a path) instead")


def storage_url(storage: str | os.PathLike) -> str:
    """Return the database URL of ``storage``: a URL as given; a file path as an SQLite URL
    (its folder created)."""
    text = os.fspath(storage)
    if "://" in text:
        return text
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def describe_storage(storage: str | os.PathLike) -> str:
    """Return ``storage`` fit for a results file: a database URL with its password hidden."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", os.fspath(storage))


@contextlib.contextmanager
def _quiet():
    """Silence Optuna's notices about experimental heartbeats and ask() outside optimize()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


def open_storage(storage: str | os.PathLike, *, heartbeat_interval: int | None = None,
                 grace_period: int | None = None, max_retry: int | None = 3) -> optuna.storages.RDBStorage:
    """Return Optuna's RDB storage on ``storage`` (a file path for SQLite, or a database URL).

    With ``heartbeat_interval`` (s), a trial whose worker has not beaten for ``grace_period`` s
    is stale: :func:`optuna.storages.fail_stale_trials` fails it and queues it again with its
    finished folds, at most ``max_retry`` times (None: always).
    """
    url = storage_url(storage)
    check_storage(url)
    sqlite = url.startswith("sqlite")
    # SQLite locks the whole file per write: a long timeout turns contention into waiting.
    kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else None
    for attempt in range(3):
        try:
            with _quiet():
                retry = None if heartbeat_interval is None else optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry, inherit_intermediate_values=True)
                st = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                                                grace_period=grace_period, heartbeat_stale_trial_callback=retry)
            break
        except ImportError as exc:  # no driver for the URL's database
            raise _storage_error(exc, url) from None
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
            # Workers started together on a fresh database race to create its tables; the loser retries.
            if attempt == 2:
                raise _storage_error(exc, url) from None
            time.sleep(1.0)
    if sqlite:
        sqlalchemy.event.listen(st.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return st


def load_study(storage: str | os.PathLike, study_name: str = "sweep") -> optuna.Study:
    """Return the sweep's study in ``storage`` for reading; ValueError when there is none."""
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {describe_storage(storage)}; run run_sweep first") from None


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
    settings = {"space": space.to_dict(), "k": k, "fold_seed": seed, "subset": subset, "n_examples": n_examples,
                "data_sha256": data_sha256, "base": fixed}
    return json.loads(json.dumps(settings))  # as the storage hands it back (lists, not tuples)


def stack_group(config: TrainConfig) -> tuple:
    """Return what units must share to train in one stack: every setting but :data:`PER_UNIT`."""
    return tuple((n, v) for n, v in sorted(config.to_dict().items()) if n not in PER_UNIT)


def _open_study(st, study_name: str, settings: dict, space: SearchSpace, base: TrainConfig) -> optuna.Study:
    """Create the study and queue its configurations, or load it and check its settings."""
    where = describe_storage(st.url)
    try:
        study = optuna.create_study(storage=st, study_name=study_name, direction="maximize")
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=st)
    else:
        study.set_user_attr(SETTINGS_ATTR, settings)
        # Configurations that stack together sit together in the queue, so a worker's claims fill stacks.
        order: dict[tuple, int] = {}
        configs = space.configs() or []
        groups = [order.setdefault(stack_group(base.replace(**p)), len(order)) for p in configs]
        for i in sorted(range(len(configs)), key=lambda i: groups[i]):  # stable: the space's order within a group
            study.enqueue_trial(configs[i], user_attrs={CONFIG_ATTR: config_key(configs[i])})
        study.set_user_attr(READY_ATTR, True)
        return study
    deadline = time.monotonic() + 60
    while not study.user_attrs.get(READY_ATTR) and time.monotonic() < deadline:
        time.sleep(0.5)  # another worker has just created the study and is queueing its configurations
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None or not study.user_attrs.get(READY_ATTR):
        raise ValueError(f"study {study_name!r} in {where} was not made by run_sweep, or its creator stopped "
                         "before queueing every configuration; choose another study_name or delete it")
    if stored != settings:
        diff = [f"  {key}: stored {stored.get(key)!r}\n  {' ' * len(key)}  asked  {settings.get(key)!r}"
                for key in sorted(set(stored) | set(settings)) if stored.get(key) != settings.get(key)]
        raise ValueError(
            f"study {study_name!r} in {where} was run with other settings, so its results are not "
            "comparable with this sweep:\n" + "\n".join(diff) + "\n"
            "Use another study_name or run folder, or delete the study to start over."
        )
    return study


def recorded_folds(study: optuna.Study) -> dict[tuple[str, int], dict]:
    """Return (config key, fold) -> the fold's details (with ``val_accuracy`` and ``trial``) for
    every fold reported so far, from the earliest trial that has it (a re-queued trial inherits
    its original's folds)."""
    out: dict[tuple[str, int], dict] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        key = t.user_attrs.get(CONFIG_ATTR)
        for fold, value in (t.intermediate_values.items() if key else ()):
            out.setdefault((key, fold), {**t.user_attrs.get(fold_attr(fold), {}), "val_accuracy": value,
                                         "trial": t.number})
    return out


# --------------------------------------------------------------------------------------------
# Workers


class _Heartbeat:
    """Record a heartbeat for every trial the worker holds, every ``interval`` seconds, in a thread."""

    def __init__(self, storage, interval: int):
        self.storage, self.interval, self.ids = storage, interval, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sweep-heartbeat")
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            for trial_id in list(self.ids):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a passing database error: the next beat tries again
                    pass

    def hold(self, trial_id: int):
        # At once: a RUNNING trial that never beat is never found stale.
        self.storage.record_heartbeat(trial_id)
        self.ids.add(trial_id)

    def release(self, trial_id: int):
        self.ids.discard(trial_id)

    def stop(self):
        self._stop.set()
        self._thread.join()


@dataclass
class _Held:
    """A trial (configuration) this worker holds: which folds it still has to train."""

    trial: optuna.Trial
    trial_id: int
    params: dict
    config: TrainConfig
    group: tuple
    accuracy: dict  # fold -> validation accuracy recorded so far
    todo: list  # folds still to train
    lost: bool = False  # failed as stale by another worker, which re-queued it


@dataclass
class _Worker:
    """A worker's settings (picklable, for spawned processes); :func:`_work` adds its study."""

    url: str
    study_name: str
    space: SearchSpace
    k: int
    base: TrainConfig
    x: torch.Tensor  # uint8 (N, 1, 28, 28): the sweep's subset of the training split
    y: torch.Tensor
    folds: list  # k (train indices, val indices) into x
    run_id: str
    worker: int
    stack_size: int | None
    wait: bool
    verbose: bool
    heartbeat_interval: int
    grace_period: int
    max_retry: int | None
    held: list = field(default_factory=list)  # _Held trials, in claim order
    units_done: int = 0  # (configuration, fold) units recorded before this call, for the ETA
    bar: Any = None  # progress.bar over the sweep's units: one line per recorded unit


def _adopt(w: _Worker, trial: optuna.Trial) -> optuna.Trial | None:
    """Return ``trial`` (made by ask() with no queued configuration) as a TPE proposal, or None
    when it cannot be one: not a TPE sweep, or a repeat."""
    if w.space.kind != "tpe":
        w.study.tell(trial, state=TrialState.FAIL)  # another worker emptied the queue meanwhile
        return None
    known = {t.user_attrs[CONFIG_ATTR]: t.number for t in w.study.get_trials(deepcopy=False)
             if CONFIG_ATTR in t.user_attrs}
    key = config_key({n: trial.params[n] for n in w.space.names()})
    if key not in known:
        trial.set_user_attr(CONFIG_ATTR, key)
        return trial
    # TPE exploits: on a small categorical space it repeats itself. An untried grid point keeps the
    # budget of distinct configurations honest (queued: whichever worker pops it trains it).
    trial.set_user_attr("duplicate_of", known[key])
    w.study.tell(trial, state=TrialState.FAIL)
    untried = [c for c in SearchSpace("grid", w.space.values).configs() if config_key(c) not in known]
    pick = untried[int(np.random.default_rng(w.space.seed + trial.number).integers(len(untried)))]
    w.study.enqueue_trial(pick, user_attrs={CONFIG_ATTR: config_key(pick)})
    return None


def _claim(w: _Worker, group: tuple | None) -> _Held | None:
    """Pop the next queued configuration (of ``group`` when given) or, for TPE, propose one."""
    waiting = w.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        nxt = waiting[0].user_attrs.get(CONFIG_ATTR)
        if group is not None and nxt and stack_group(w.base.replace(**json.loads(nxt))) != group:
            return None  # the queue's next configuration belongs in another stack
    elif w.space.kind != "tpe":
        return None
    elif len({t.user_attrs[CONFIG_ATTR] for t in w.study.get_trials(deepcopy=False)
              if CONFIG_ATTR in t.user_attrs}) >= w.space.n_configs:
        return None  # TPE's budget of distinct configurations is spent
    with _quiet():
        trial = w.study.ask(w.space.distributions())
    if CONFIG_ATTR not in trial.user_attrs and (trial := _adopt(w, trial)) is None:
        return _claim(w, group) if w.space.kind == "tpe" else None
    trial_id = w.storage.get_trial_id_from_study_id_trial_number(
        w.storage.get_study_id_from_name(w.study.study_name), trial.number)
    _mark_holder(w, trial_id)
    frozen = w.storage.get_trial(trial_id)
    params = {n: frozen.params[n] for n in w.space.names()}
    config = w.base.replace(**params)
    return _Held(trial, trial_id, params, config, stack_group(config), dict(frozen.intermediate_values),
                 [f for f in range(w.k) if f not in frozen.intermediate_values])


HOLDER_ATTR = "fmnist_holder"  # system attribute of a claimed trial: {"host", "pid"} of the worker holding it


def _mark_holder(w: _Worker, trial_id: int) -> None:
    """Record which process holds the trial, so that a worker on the same host can tell when it has gone."""
    w.storage.set_trial_system_attr(trial_id, HOLDER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def requeue_dead_holders(study: optuna.Study, storage) -> int:
    """Fail and queue again (with their finished folds) the running trials whose holder was a
    process on this host that no longer exists (killed, or its kernel shut down); return how many.

    Without this, such trials wait out the heartbeat's grace period (about a minute) before
    :func:`optuna.storages.fail_stale_trials` frees them. Holders on other hosts are left to it.
    """
    host, retry, freed = socket.gethostname(), storage.get_heartbeat_stale_trial_callback(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        holder = t.system_attrs.get(HOLDER_ATTR) or {}
        if holder.get("host") != host or holder.get("pid") in (None, os.getpid()) or _alive(holder["pid"]):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
            if retry is not None:
                retry(study, storage.get_trial(t._trial_id))
            freed += 1
        except Exception:  # freed by another worker at the same moment
            pass
    return freed


def _top_up(w: _Worker, beat: _Heartbeat) -> None:
    """Claim configurations until the current stack group has ``stack_size`` units to train
    (None: all of its queued configurations)."""
    group = w.held[0].group if w.held else None
    # TPE learns from each result: propose a stack's worth at a time, no more.
    limit = max(1, (w.stack_size or w.k) // w.k) if w.space.kind == "tpe" else None
    claimed = 0
    while limit is None or claimed < limit:
        units = sum(len(h.todo) for h in w.held if h.group == group)
        if group is not None and w.stack_size is not None and units >= w.stack_size:
            return
        h = _claim(w, group)
        if h is None:
            return
        beat.hold(h.trial_id)
        claimed += 1
        if not h.todo:  # every fold was in before a kill stopped its last worker telling the result
            _finish(w, h, beat)
            continue
        w.held.append(h)
        group = group if group is not None else h.group


def _finish(w: _Worker, h: _Held, beat: _Heartbeat) -> None:
    w.study.tell(h.trial, float(np.mean([h.accuracy[f] for f in range(w.k)])))
    beat.release(h.trial_id)


def _record(w: _Worker, h: _Held, fold: int, history: list[dict], seconds: float, n_units: int,
            beat: _Heartbeat) -> dict | None:
    """Write one finished fold into its trial; complete the trial with its last fold."""
    diverged = history[-1].get("diverged") if history else "no history"
    rows = [r for r in history if "diverged" not in r]
    last = rows[-1] if rows else {}
    accuracy = 1.0 / w.n_classes if diverged else last["val_accuracy"]
    details = {
        "val_accuracy": accuracy, "val_loss": None if diverged else last["val_loss"],
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"), "epochs": len(rows),
        "seconds": seconds / n_units, "stack_units": n_units, "n_train": len(w.folds[fold][0]),
        "n_val": len(w.folds[fold][1]), "device": str(devices.resolve_device(h.config.device)),
        "diverged": diverged, "run_id": w.run_id, "worker": w.worker, "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    try:
        # Details first, then the intermediate value that marks the fold done: a kill in between
        # leaves the fold to train again, never a fold without its details.
        h.trial.set_user_attr(fold_attr(fold), details)
        h.trial.report(accuracy, step=fold)
    except UpdateFinishedTrialError:
        h.lost = True  # declared stale meanwhile; the re-queued copy is someone else's now
        beat.release(h.trial_id)
        return None
    h.accuracy[fold] = accuracy
    h.todo.remove(fold)
    if not h.todo:
        _finish(w, h, beat)
    return details


def _train_stack(w: _Worker, beat: _Heartbeat) -> None:
    """Train the next stack of held units with train.fit_many and record each unit."""
    group = w.held[0].group
    units = [(h, f) for h in w.held if h.group == group for f in h.todo]
    # One fit_many call is one stack, so a finished stack is recorded before the next starts
    # (resume per stack) and its lines print as it ends.
    size = w.stack_size or stacked.plan_stack_size(units[0][0].config).size
    units = units[:size]
    start = time.perf_counter()
    histories = train.fit_many([h.config for h, _ in units], w.x, w.y, [w.folds[f][0] for _, f in units],
                               [w.folds[f][1] for _, f in units], on_diverged="record", progress=False,
                               stack_size=w.stack_size)
    seconds = time.perf_counter() - start
    for (h, fold), history in zip(units, histories):
        if h.lost:
            continue
        d = _record(w, h, fold, history, seconds, len(units), beat)
        if d is not None:
            what = "diverged, at chance" if d["diverged"] else f"val acc {d['val_accuracy']:.4f}"
            w.bar.update()
            w.bar.set_postfix_str(f"{describe_config(h.params)} fold {fold + 1}/{w.k}: {what}")
    w.held = [h for h in w.held if h.todo and not h.lost]


def _requeue(w: _Worker) -> None:
    """Fail the held trials and queue them again with their finished folds (an interrupted call)."""
    retry = w.storage.get_heartbeat_stale_trial_callback()
    for h in w.held:
        try:
            w.study.tell(h.trial, state=TrialState.FAIL)
            retry(w.study, w.storage.get_trial(h.trial_id))
        except Exception:  # already failed as stale by another worker, or the database is gone
            pass


def _work(w: _Worker) -> None:
    """Claim and train stacks until the sweep is done (or, with ``wait=False``, nothing is free)."""
    w.storage = open_storage(w.url, heartbeat_interval=w.heartbeat_interval, grace_period=w.grace_period,
                             max_retry=w.max_retry)
    with _quiet():  # constant_liar: workers proposing at once see each other's running trials
        sampler = optuna.samplers.TPESampler(seed=w.space.seed + w.worker, constant_liar=True)
    w.study = optuna.load_study(study_name=w.study_name, storage=w.storage, sampler=sampler)
    study_id = w.storage.get_study_id_from_name(w.study_name)
    timed: set[int] = set()  # others' running trials this worker has started a heartbeat clock for
    w.n_classes = int(torch.unique(w.y).numel())
    beat = _Heartbeat(w.storage, w.heartbeat_interval)
    # Elapsed time and ETA over the sweep's units, one line per recorded unit where no one
    # watches a widget (make report's log); tqdm counts the rate from the units done now.
    w.bar = progress_bar(w.space.n_configs_total() * w.k, desc=f"sweep worker {w.worker}", unit="unit",
                         enabled=w.verbose, initial=w.units_done)
    try:
        while True:
            with _quiet():
                requeue_dead_holders(w.study, w.storage)
                optuna.storages.fail_stale_trials(w.study)
            _top_up(w, beat)
            if w.held:
                _train_stack(w, beat)
            elif w.wait and (running := w.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))):
                # Other workers hold the rest: they finish, or go stale and are re-queued. Optuna ages
                # only trials that have beaten once, so a worker killed between its claim and its
                # first beat would hold a trial forever: one beat on its behalf starts that clock.
                for t in running:
                    if t.number not in timed:
                        w.storage.record_heartbeat(w.storage.get_trial_id_from_study_id_trial_number(study_id, t.number))
                        timed.add(t.number)
                time.sleep(beat.interval)
            else:
                return
    except BaseException:
        _requeue(w)
        raise
    finally:
        beat.stop()
        w.bar.close()


def _worker_main(w: _Worker, threads: int, errors) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a terminated worker re-queues its trials
    try:
        _work(w)
    except BaseException:
        errors.put((w.worker, traceback.format_exc()))
        raise SystemExit(1)


def _spawn(w: _Worker, workers: int) -> None:
    """Run ``workers`` processes of worker ``w`` on this machine, cores // workers threads each."""
    # spawn, not fork: forking a process that has started torch threads (or CUDA) is unsafe.
    ctx = torch.multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    threads = max(1, devices.cpu_count() // workers)
    procs = [ctx.Process(target=_worker_main, args=(dataclasses.replace(w, worker=i), threads, errors),
                         name=f"sweep-worker-{i}") for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            p.terminate()  # SIGTERM: each re-queues its trials on the way out
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
# The sweep


class IncompleteSweep(RuntimeError):
    """Raised by :func:`require_complete`: some (configuration, fold) units are not finished."""


@dataclass(frozen=True)
class SweepRun:
    """What one :func:`run_sweep` call did. Counts are (configuration, fold) units."""

    study_name: str
    storage: str  # described: a database URL without its password
    n_configs: int
    n_units: int  # configurations x k
    reused: int  # recorded before the call started: not trained again
    trained: int  # recorded by this call (a diverged unit included)
    pending: int  # not recorded when the call ended
    diverged: int  # recorded at chance accuracy because training diverged
    workers: int
    seconds: float
    pending_units: tuple[str, ...] = ()  # what is pending and why, one line per configuration

    def to_dict(self) -> dict:
        """Return the record as plain data."""
        return {**dataclasses.asdict(self), "pending_units": list(self.pending_units)}


def _pending(study: optuna.Study, space: SearchSpace, k: int, done: dict) -> list[str]:
    """Return one line per configuration with folds not recorded: which folds, and why."""
    latest = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if CONFIG_ATTR in t.user_attrs:
            latest[t.user_attrs[CONFIG_ATTR]] = t
    lines = []
    keys = [config_key(c) for c in space.configs()] if space.kind != "tpe" else list(latest)
    for key in keys:
        folds = [f for f in range(k) if (key, f) not in done]
        if folds:
            t = latest.get(key)
            why = {TrialState.RUNNING: "held by a worker", TrialState.WAITING: "queued"}.get(
                t.state, "failed too often to be retried") if t is not None else "not queued"
            lines.append(f"{describe_config(json.loads(key))}: fold{'s' if len(folds) > 1 else ''} "
                         f"{', '.join(str(f + 1) for f in folds)} ({why})")
    if space.kind == "tpe" and len(keys) < space.n_configs:
        lines.append(f"{space.n_configs - len(keys)} configuration(s) not proposed yet")
    return lines


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
    stack_size: int | None = None,
    wait: bool = True,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
    max_retry: int | None = 3,
    verbose: bool = True,
) -> SweepRun:
    """Cross-validate every configuration of ``space`` on the training split; return what was done.

    x: uint8 training images (N, 1, 28, 28); y: int64 labels (N,). The test split is not an
    argument: selection cannot read it. subset: a stratified subset of this many images (None =
    all). k: stratified folds of the subset (2 <= k <= smallest class). base: every setting a
    configuration does not set. storage: an SQLite file path (one machine) or a database URL
    (several machines run this same call against one study). workers: processes on this
    machine (cores // workers torch threads each); with stacks, one per device is typical.
    stack_size: units (configuration, fold) trained at once by ``train.fit_many``, each recorded
    when its stack ends (None: a stack group's queued units per call, sized by fit_many).
    wait: when nothing is left to claim, wait for units other workers hold (they finish, or go
    stale after ``grace_period`` s without a heartbeat and are trained here). max_retry: how
    often a unit's trial is re-queued after its worker was lost.

    Finished folds are never retrained; every setting is checked (ValueError) before training.
    """
    train.check_split(x, y, "training")
    if not isinstance(space, SearchSpace):
        raise ValueError(f"space must be a SearchSpace (search_space.grid, study_space, ...), got {type(space).__name__}")
    for name, value, low in (("workers", workers, 1), ("k", k, 2), ("heartbeat_interval", heartbeat_interval, 1),
                             ("grace_period", grace_period, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if stack_size is not None and (not isinstance(stack_size, int) or stack_size < 1):
        raise ValueError(f"stack_size must be an integer >= 1 or None (chosen by train.fit_many), got {stack_size!r}")
    idx = torch.as_tensor(np.arange(len(y)) if subset is None else fdata.stratified_subset(y, subset, seed))
    xs, ys = x[idx], y[idx]
    folds = fdata.stratified_kfold(ys, k, seed)  # ValueError for k > smallest class
    for params in space.configs() or [{n: v} for n, vs in space.values.items() for v in vs]:
        try:
            base.replace(**params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"configuration {describe_config(params)} is not a valid TrainConfig: {exc}") from None
    settings = sweep_settings(space, k, seed, subset, len(idx), data_fingerprint(xs, ys), base)
    url = storage_url(storage)
    st = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry)
    study = _open_study(st, study_name, settings, space, base)

    reused = len(recorded_folds(study))
    run_id = uuid.uuid4().hex
    w = _Worker(url, study_name, space, k, base, xs, ys, folds, run_id, 0, stack_size, wait, verbose,
                heartbeat_interval, grace_period, max_retry, units_done=reused)
    start = time.perf_counter()
    if workers == 1:
        _work(w)
    else:
        _spawn(w, workers)
    seconds = time.perf_counter() - start
    done = recorded_folds(study)
    n_configs = space.n_configs_total()
    pending = _pending(study, space, k, done)
    return SweepRun(
        study_name=study_name, storage=describe_storage(url), n_configs=n_configs, n_units=n_configs * k,
        reused=reused, trained=sum(d.get("run_id") == run_id for d in done.values()),
        pending=max(n_configs * k - len(done), 0), diverged=sum(bool(d.get("diverged")) for d in done.values()),
        workers=workers, seconds=seconds, pending_units=tuple(pending),
    )


def require_complete(run: SweepRun, *, allow_partial: bool = False) -> tuple[str, ...]:
    """Return the pending units of ``run`` (empty for a finished sweep); raise
    :class:`IncompleteSweep` naming them unless ``allow_partial``, so a partial sweep is never
    ranked without saying so."""
    if run.pending and not allow_partial:
        raise IncompleteSweep(
            f"{run.pending} of the {run.n_units} (configuration, fold) units of study {run.study_name!r} in "
            f"{run.storage} are not finished:\n  " + "\n  ".join(run.pending_units) + "\n"
            "Run run_sweep again to finish them (it resumes, and waits for other workers), or pass "
            "allow_partial=True to rank the configurations whose folds are all finished."
        )
    return run.pending_units


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
