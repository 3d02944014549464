"""The sweep's storage: Optuna's RDB storage, the study and its settings, the recorded units, heartbeats.

Storage: an SQLite file (a path) on one machine or a database URL (``postgresql://user@host/db``)
shared by workers on several. Optuna's mechanisms do the bookkeeping: claims are ``study.ask``
popping the queue (its WAITING -> RUNNING write succeeds for one caller: a row lock on PostgreSQL;
on SQLite, because pysqlite reads outside the transaction, every transaction here begins with
``BEGIN IMMEDIATE``); a killed worker's trials stop beating (``heartbeat_interval``), go stale after
``grace_period`` and ``fail_stale_trials`` fails them, and
``RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)`` queues each again with its
recorded units (user attributes) and reported epochs (intermediate values).

Records. Each configuration is one trial; each (fold, rung) unit it finished is one user attribute,
:func:`fold_attr`, holding the unit's details (its validation accuracy and loss after every epoch
included). A trial reports, per epoch, the mean validation accuracy over its folds
(``trial.report(value, epoch)``) once all its folds have reached a rung.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

from . import provenance
from .search_space import NOT_HYPERPARAMETERS, SearchSpace, config_key
from .train import TrainConfig

PER_UNIT = ("lr", "weight_decay", "dropout", "momentum", "nesterov", "seed")
SETTINGS_ATTR = "sweep_settings"
READY_ATTR = "sweep_ready"  # set once every configuration is queued
CONFIG_ATTR = "config"  # a trial's configuration, config_key(params)
HOLDER_ATTR = "fmnist_holder"  # system attribute of a claimed trial: {"host", "pid"} of the worker holding it
FOLD_ATTR = re.compile(r"^fold_(\d+)_epochs_(\d+)$")


def fold_attr(fold: int, epochs: int) -> str:
    """Return the name of the trial user attribute holding fold ``fold``'s details when trained
    for ``epochs`` epochs (one rung)."""
    return f"fold_{fold}_epochs_{epochs}"

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


# The kit's one data fingerprint (provenance.fingerprint), under the name the sweep's records use.
data_fingerprint = provenance.fingerprint


def sweep_settings(space: SearchSpace, k: int, seed: int, subset: int | None, n_examples: int,
                   data_sha256: str, base: TrainConfig, schedule: dict) -> dict:
    """Return the settings that make two sweeps' results comparable (stored with the study);
    ``schedule``: the rung schedule (:meth:`fmnist_utils.halving.Schedule.to_dict`)."""
    fixed = {n: v for n, v in base.to_dict().items() if n not in NOT_HYPERPARAMETERS}
    settings = {"space": space.to_dict(), "k": k, "fold_seed": seed, "subset": subset, "n_examples": n_examples,
                "data_sha256": data_sha256, "base": fixed, "schedule": schedule}
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


def recorded_units(study: optuna.Study) -> dict[tuple[str, int, int], dict]:
    """Return (config key, fold, epochs) -> the unit's details (with ``trial``) for every unit
    recorded so far, from the earliest trial that has it (a re-queued trial inherits its
    original's units)."""
    out: dict[tuple[str, int, int], dict] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        key = t.user_attrs.get(CONFIG_ATTR)
        if key is None:
            continue
        for name, details in t.user_attrs.items():
            match = FOLD_ATTR.match(name)
            if match:
                out.setdefault((key, int(match[1]), int(match[2])), {**details, "trial": t.number})
    return out


def recorded_folds(study: optuna.Study) -> dict[tuple[str, int], dict]:
    """Return (config key, fold) -> the details of that fold's deepest recorded unit (the most
    epochs): one entry per (configuration, fold) trained so far."""
    out: dict[tuple[str, int], dict] = {}
    for (key, fold, epochs), details in sorted(recorded_units(study).items()):
        out[(key, fold)] = details  # sorted by epochs: the deepest is written last
    return out


class Heartbeat:
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



def mark_holder(storage, trial_id: int) -> None:
    """Record which process holds the trial, so that a worker on the same host can tell when it has gone."""
    storage.set_trial_system_attr(trial_id, HOLDER_ATTR, {"host": socket.gethostname(), "pid": os.getpid()})



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

