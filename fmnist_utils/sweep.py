"""Run a cross-validated hyperparameter sweep on Optuna: in stacks, with successive halving over epochs, resumable, on one or several machines.

Protocol. :func:`run_sweep` receives the *training* split only: a configuration's score is its mean
validation accuracy over k stratified folds of (a stratified subset of) the training images. The test
set is read once, by :func:`final_model`, after the choice is made.

Successive halving (:mod:`fmnist_utils.halving`). With ``min_epochs``, configurations are compared
after ``min_epochs``, ``min_epochs * reduction_factor``, ... epochs (the rungs) and only the best
``1 / reduction_factor`` of them go on, to the base config's ``epochs`` at most; Optuna's
SuccessiveHalvingPruner decides, rung-synchronously (every configuration still alive finishes a
rung, all its folds, before any decision there), so the same configurations are promoted whatever
the number of workers or their timing. A promoted configuration is retrained from scratch to the
next rung (see :mod:`fmnist_utils.halving` for why).

Model. Each configuration is one Optuna trial; each (fold, rung) unit it trains is one user
attribute of it (:func:`fold_attr`: the fold's loss, accuracy after every epoch, seconds, a
divergence's reason), and once all its folds reach a rung the trial reports the mean validation
accuracy over the folds after each epoch (``trial.report(value, epoch)``). A pruned trial ends
PRUNED; a trial that reaches the last rung completes, valued at its mean fold accuracy there. grid,
oat and random configurations are queued when the study is created (``study.enqueue_trial``); TPE
proposes its own through ``study.ask`` (and has no halving: it proposes from finished results).

Modules: :mod:`fmnist_utils.sweep_storage` (storage, study, records, heartbeats),
:mod:`fmnist_utils.halving` (the rung schedule and decisions), :mod:`fmnist_utils.sweep_worker`
(claims, stacks, rungs); this one runs a sweep and the final model. Written here because Optuna
lacks it: stacks of units trained at once by ``train.fit_many``; one heartbeat thread for every held
trial; an interrupted call re-queuing its trials at once; comparable results (the space, k, seeds,
rung schedule, a fingerprint of the data and the base config are stored with the study and compared
on reopening: ValueError on a difference); TPE's repeats replaced by untried grid points.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np
import optuna
import torch
from optuna.trial import TrialState

from . import data as fdata
from . import halving, train
from .search_space import SearchSpace, describe_config
# The names tests, notebooks and cv_results import from here.
from .sweep_storage import (  # noqa: F401
    CONFIG_ATTR, HOLDER_ATTR, PER_UNIT, READY_ATTR, SETTINGS_ATTR, StorageError, _open_study, _quiet, check_storage,
    data_fingerprint, describe_storage, fold_attr, load_study, open_storage, recorded_folds, recorded_units,
    requeue_dead_holders, stack_group, storage_url, sweep_settings,
)
from .sweep_worker import DECISION_ATTR, Worker, config_keys, rung_scores, spawn, work  # noqa: F401
from .train import TrainConfig


class IncompleteSweep(RuntimeError):
    """Raised by :func:`require_complete`: some (configuration, fold) units are not finished."""


@dataclass(frozen=True)
class SweepRun:
    """What one :func:`run_sweep` call did. Counts are (configuration, fold, rung) units."""

    study_name: str
    storage: str  # described: a database URL without its password
    n_configs: int
    n_units: int  # recorded + pending: what the rung schedule has trained or must train now
    reused: int  # recorded before the call started: not trained again
    trained: int  # recorded by this call (a diverged unit included)
    pending: int  # not recorded when the call ended, at the open rung
    diverged: int  # recorded at chance accuracy because training diverged
    workers: int
    seconds: float
    pending_units: tuple[str, ...] = ()  # what is pending and why, one line per configuration
    schedule: dict | None = None  # the rung schedule (halving.Schedule.to_dict)
    halving: str = ""  # what the schedule does, in words (printed before the sweep started)
    pruned: int = 0  # configurations stopped at a rung by the pruner

    def to_dict(self) -> dict:
        """Return the record as plain data."""
        return {**dataclasses.asdict(self), "pending_units": list(self.pending_units)}


def _pending(study: optuna.Study, space: SearchSpace, k: int, units: dict, st: halving.RungState,
             sched: halving.Schedule) -> list[str]:
    """Return one line per configuration with units of the open rung not recorded: which folds, and why."""
    latest = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if CONFIG_ATTR in t.user_attrs:
            latest[t.user_attrs[CONFIG_ATTR]] = t
    lines = []
    if st.open is not None:
        epochs = sched.rungs[st.open]
        for key in st.alive[st.open]:
            folds = [f for f in range(k) if (key, f, epochs) not in units]
            if folds:
                t = latest.get(key)
                why = {TrialState.RUNNING: "held by a worker", TrialState.WAITING: "queued"}.get(
                    t.state, "failed too often to be retried") if t is not None else "not queued"
                at = f" at {epochs} epochs" if sched.halving else ""
                lines.append(f"{describe_config(json.loads(key))}: fold{'s' if len(folds) > 1 else ''} "
                             f"{', '.join(str(f + 1) for f in folds)}{at} ({why})")
        if st.open < len(sched.rungs) - 1:
            lines.append(f"then the rung(s) at {', '.join(map(str, sched.rungs[st.open + 1:]))} epochs")
    proposed = len(st.alive[0])
    if space.kind == "tpe" and proposed < space.n_configs:
        lines.append(f"{space.n_configs - proposed} configuration(s) not proposed yet")
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
    min_epochs: int | None = None,
    reduction_factor: int = 4,
    study_name: str = "sweep",
    workers: int = 1,
    stack_size: int | None = None,
    wait: bool = True,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
    max_retry: int | None = 3,
    verbose: bool = True,
) -> SweepRun:
    """Cross-validate the configurations of ``space`` on the training split; return what was done.

    x: uint8 training images (N, 1, 28, 28); y: int64 labels (N,). The test split is not an
    argument: selection cannot read it. subset: a stratified subset of this many images (None =
    all). k: stratified folds of the subset (2 <= k <= smallest class). base: every setting a
    configuration does not set; ``base.epochs`` is the last rung. min_epochs / reduction_factor:
    successive halving's first rung and eta (:func:`fmnist_utils.halving.schedule`; None: no
    halving, every configuration trains ``base.epochs``). storage: an SQLite file path (one
    machine) or a database URL (several machines run this same call against one study). workers:
    processes on this machine (cores // workers torch threads each); with stacks, one per device is
    typical. stack_size: units trained at once by ``train.fit_many``, each recorded when its stack
    ends (None: a stack group's units per call, sized by fit_many). wait: when nothing is left to
    claim, wait for units other workers hold (they finish, or go stale after ``grace_period`` s
    without a heartbeat and are trained here). max_retry: how often a trial is re-queued after its
    worker was lost.

    Recorded units are never retrained; every setting is checked (ValueError) before training.
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
    sched = halving.schedule(base.epochs, min_epochs, reduction_factor, space.kind)
    idx = torch.as_tensor(np.arange(len(y)) if subset is None else fdata.stratified_subset(y, subset, seed))
    xs, ys = x[idx], y[idx]
    folds = fdata.stratified_kfold(ys, k, seed)  # ValueError for k > smallest class
    for params in space.configs() or [{n: v} for n, vs in space.values.items() for v in vs]:
        try:
            base.replace(**params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"configuration {describe_config(params)} is not a valid TrainConfig: {exc}") from None
    what = halving.describe(sched, space.n_configs_total())
    if verbose:
        print(what)
    settings = sweep_settings(space, k, seed, subset, len(idx), data_fingerprint(xs, ys), base, sched.to_dict())
    url = storage_url(storage)
    st = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry)
    study = _open_study(st, study_name, settings, space, base)

    before = recorded_units(study)
    run_id = uuid.uuid4().hex
    w = Worker(url, study_name, space, k, base, sched, xs, ys, folds, run_id, 0, stack_size, wait, verbose,
               heartbeat_interval, grace_period, max_retry, units_done=len(before))
    start = time.perf_counter()
    if workers == 1:
        work(w)
    else:
        spawn(w, workers)
    seconds = time.perf_counter() - start
    units = recorded_units(study)
    state = halving.rung_state(rung_scores(units, k), config_keys(study, space), sched)
    pending = _pending(study, space, k, units, state, sched)
    n_pending = 0 if state.open is None else sum(
        (key, f, sched.rungs[state.open]) not in units for key in state.alive[state.open] for f in range(k))
    return SweepRun(
        study_name=study_name, storage=describe_storage(url), n_configs=space.n_configs_total(),
        n_units=len(units) + n_pending, reused=len(before), trained=sum(d.get("run_id") == run_id for d in units.values()),
        pending=n_pending, diverged=sum(bool(d.get("diverged")) for d in units.values()), workers=workers,
        seconds=seconds, pending_units=tuple(pending), schedule=sched.to_dict(), halving=what,
        pruned=sum(1 for decided in state.decisions for promoted in decided.values() if not promoted),
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

