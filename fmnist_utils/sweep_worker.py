"""A sweep worker: claims configurations, trains their (fold, rung) units in stacks, waits at rungs.

A worker holds several trials (configurations) at once. Its loop: read every recorded unit of the
study, work out where the rung schedule stands (:func:`fmnist_utils.halving.rung_state`, the
same on every worker), settle its held trials (report each finished rung's per-epoch mean
accuracy, mark a trial PRUNED when its rung pruned it, complete it with its last rung's mean),
claim more configurations while there is room in the current stack, and train the next stack of
units with ``train.fit_many`` (units that share every setting but :data:`PER_UNIT` and the rung's
epochs), recording each unit as its stack ends. With nothing to train it waits for the units other
workers hold (they finish, or go stale and are re-queued), or returns when nothing is left.

Written here because Optuna lacks it: stacks over trials, one heartbeat thread for every held
trial (Optuna beats only inside ``Study.optimize``), rung-synchronous halving, an interrupted call
re-queuing its trials at once, and TPE's repeats replaced by untried grid points.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from . import device as devices
from . import halving, stacked, train
from .progress import bar as progress_bar
from .search_space import SearchSpace, config_key, describe_config
from .sweep_storage import (CONFIG_ATTR, Heartbeat, _quiet, fold_attr, mark_holder, open_storage, recorded_units,
                            requeue_dead_holders, stack_group)
from .train import TrainConfig

DECISION_ATTR = "rung_{epochs}"  # a trial's decision at a rung: "promoted" or "pruned"


@dataclass
class Held:
    """A trial (configuration) this worker holds."""

    trial: optuna.Trial
    trial_id: int
    key: str
    params: dict
    config: TrainConfig  # the base with the configuration's values (epochs: the last rung's)
    lost: bool = False  # failed as stale by another worker, which re-queued it


@dataclass
class Worker:
    """A worker's settings (picklable, for spawned processes); :func:`work` adds its study."""

    url: str
    study_name: str
    space: SearchSpace
    k: int
    base: TrainConfig
    schedule: halving.Schedule
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
    held: list = field(default_factory=list)  # Held trials, in claim order
    units_done: int = 0  # units recorded before this call, for the ETA
    bar: Any = None  # progress.bar over the sweep's units: one line per recorded unit
    study: Any = None
    storage: Any = None
    n_classes: int = 10


# --------------------------------------------------------------------------------------------
# Where the sweep stands


def config_keys(study: optuna.Study, space: SearchSpace) -> list[str]:
    """Return the sweep's configurations in the space's order (TPE: in the order proposed)."""
    if space.kind != "tpe":
        return [config_key(c) for c in space.configs()]
    keys: list[str] = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        key = t.user_attrs.get(CONFIG_ATTR)
        if key is not None and "duplicate_of" not in t.user_attrs and key not in keys:
            keys.append(key)
    return keys


def rung_scores(units: dict, k: int) -> dict[str, dict[int, tuple[float, float]]]:
    """Return key -> rung epochs -> (mean validation accuracy, mean validation loss) over the k
    folds, for every (configuration, rung) whose k folds are all recorded (loss: over the folds
    that did not diverge; NaN when all did)."""
    by: dict[tuple[str, int], dict[int, dict]] = {}
    for (key, fold, epochs), d in units.items():
        by.setdefault((key, epochs), {})[fold] = d
    out: dict[str, dict[int, tuple[float, float]]] = {}
    for (key, epochs), folds in by.items():
        if len(folds) == k:
            losses = [d["val_loss"] for d in folds.values() if d.get("val_loss") is not None]
            out.setdefault(key, {})[epochs] = (float(np.mean([d["val_accuracy"] for d in folds.values()])),
                                               float(np.mean(losses)) if losses else float("nan"))
    return out


def epoch_means(units: dict, key: str, k: int, epochs: int) -> list[float]:
    """Return the mean validation accuracy over the k folds after each epoch 1..``epochs`` of the
    (``key``, rung ``epochs``) units (a diverged fold counts at chance from its divergence on)."""
    rows = [units[(key, fold, epochs)]["val_accuracy_by_epoch"] for fold in range(k)]
    return [float(np.mean([r[e] for r in rows])) for e in range(epochs)]


def state(w: Worker) -> tuple[dict, halving.RungState]:
    """Return (the recorded units, the rung state) of the study, read now."""
    units = recorded_units(w.study)
    return units, halving.rung_state(rung_scores(units, w.k), config_keys(w.study, w.space), w.schedule)


# --------------------------------------------------------------------------------------------
# Claims


def _adopt(w: Worker, trial: optuna.Trial) -> optuna.Trial | None:
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


def claim_group(w: Worker, params: dict) -> tuple:
    """Return the stack group of a configuration at the schedule's first rung."""
    return stack_group(w.base.replace(**params, epochs=w.schedule.rungs[0]))


def _claim(w: Worker, group: tuple | None) -> Held | None:
    """Pop the next queued configuration (of ``group`` when given) or, for TPE, propose one."""
    waiting = w.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if waiting:
        nxt = waiting[0].user_attrs.get(CONFIG_ATTR)
        if group is not None and nxt and claim_group(w, json.loads(nxt)) != group:
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
    mark_holder(w.storage, trial_id)
    frozen = w.storage.get_trial(trial_id)
    params = {n: frozen.params[n] for n in w.space.names()}
    return Held(trial, trial_id, config_key(params), params, w.base.replace(**params))


def top_up(w: Worker, beat: Heartbeat, todo: list) -> None:
    """Claim configurations until the stack group of the first unit to train has ``stack_size``
    units (None: all of that group's queued configurations); with nothing to train, start a group."""
    group = claim_group(w, todo[0][0].params) if todo else None
    units = sum(1 for h, _, _ in todo if claim_group(w, h.params) == group) if todo else 0
    # TPE learns from each result: propose a stack's worth at a time, no more.
    limit = max(1, (w.stack_size or w.k) // w.k) if w.space.kind == "tpe" else None
    claimed = 0
    while limit is None or claimed < limit:
        if group is not None and w.stack_size is not None and units >= w.stack_size:
            return
        h = _claim(w, group)
        if h is None:
            return
        beat.hold(h.trial_id)
        w.held.append(h)
        claimed += 1
        units += w.k  # at most: an inherited trial may have some of its units already
        group = group if group is not None else claim_group(w, h.params)


def release(w: Worker) -> None:
    """Fail the held trials and queue them again with their recorded units (an interrupted call,
    or a call that does not wait at a rung)."""
    retry = w.storage.get_heartbeat_stale_trial_callback()
    for h in w.held:
        try:
            w.study.tell(h.trial, state=TrialState.FAIL)
            retry(w.study, w.storage.get_trial(h.trial_id))
        except Exception:  # already failed as stale by another worker, or the database is gone
            pass
    w.held = []


# --------------------------------------------------------------------------------------------
# Settling held trials at rungs, and training


def _settle_one(w: Worker, h: Held, units: dict, st: halving.RungState, scores: dict) -> bool:
    """Report ``h``'s finished rungs and tell its fate when decided; return True when it is done."""
    rungs = w.schedule.rungs
    frozen = w.storage.get_trial(h.trial_id)
    if frozen.state != TrialState.RUNNING:
        h.lost = True  # failed as stale by another worker meanwhile: its re-queued copy is the one to train
        return True
    previous = 0
    for j, epochs in enumerate(rungs):
        if epochs not in scores.get(h.key, {}) or j > (st.rung_of(h.key) or 0):
            break
        # The epochs since the last rung, from this rung's units (the earlier ones were reported from theirs).
        for e, value in enumerate(epoch_means(units, h.key, w.k, epochs)[previous:], start=previous + 1):
            if e not in frozen.intermediate_values:
                h.trial.report(value, e)
        previous = epochs
        if j < len(st.decisions):
            promoted = st.decisions[j][h.key]
            name = DECISION_ATTR.format(epochs=epochs)
            if name not in frozen.user_attrs:
                h.trial.set_user_attr(name, "promoted" if promoted else "pruned")
            if not promoted:
                w.study.tell(h.trial, state=TrialState.PRUNED)
                return True
        elif j == len(rungs) - 1:
            w.study.tell(h.trial, scores[h.key][epochs][0])
            return True
    return False


def settle(w: Worker, units: dict, st: halving.RungState, beat: Heartbeat) -> None:
    """Report, prune and complete the held trials whose rungs are decided."""
    scores = rung_scores(units, w.k)
    for h in list(w.held):
        try:
            done = _settle_one(w, h, units, st, scores)
        except UpdateFinishedTrialError:
            h.lost, done = True, True  # declared stale meanwhile; the re-queued copy is someone else's now
        if done:
            beat.release(h.trial_id)
            w.held.remove(h)


def todo(w: Worker, units: dict, st: halving.RungState) -> list[tuple[Held, int, int]]:
    """Return the (held trial, fold, epochs) units to train now: the open rung's, of held
    configurations alive at it (each configuration once)."""
    if st.open is None:
        return []
    epochs = w.schedule.rungs[st.open]
    out, seen = [], set()
    for h in w.held:
        if h.key in st.alive[st.open] and h.key not in seen:
            seen.add(h.key)
            out += [(h, fold, epochs) for fold in range(w.k) if (h.key, fold, epochs) not in units]
    return out


def unit_details(w: Worker, h: Held, fold: int, epochs: int, history: list[dict], seconds: float,
                 n_units: int) -> dict:
    """Return what is recorded for one trained unit: the last epoch's metrics, every epoch's
    validation accuracy and loss (a diverged unit at chance from its divergence on), where and how."""
    diverged = history[-1].get("diverged") if history else "no history"
    rows = [r for r in history if "diverged" not in r]
    last = rows[-1] if rows else {}
    chance = 1.0 / w.n_classes
    by_epoch = [r["val_accuracy"] for r in rows] + [chance] * (epochs - len(rows))
    return {
        "val_accuracy": chance if diverged else last["val_accuracy"], "val_loss": None if diverged else last["val_loss"],
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"), "epochs": len(rows),
        "rung_epochs": epochs, "val_accuracy_by_epoch": by_epoch,
        "val_loss_by_epoch": [r["val_loss"] for r in rows] + [None] * (epochs - len(rows)),
        "seconds": seconds / n_units, "stack_units": n_units, "n_train": len(w.folds[fold][0]),
        "n_val": len(w.folds[fold][1]), "device": str(devices.resolve_device(h.config.device)),
        "diverged": diverged, "run_id": w.run_id, "worker": w.worker, "host": socket.gethostname(), "pid": os.getpid(),
    }


def train_stack(w: Worker, units: list[tuple[Held, int, int]]) -> None:
    """Train the next stack of ``units`` (those sharing the first one's stack group) with
    train.fit_many and record each unit when the stack ends."""
    units = [(h, fold, epochs, h.config.replace(epochs=epochs)) for h, fold, epochs in units]
    group = stack_group(units[0][3])
    units = [u for u in units if stack_group(u[3]) == group]
    # One fit_many call is one stack, so a finished stack is recorded before the next starts
    # (resume per stack) and its lines print as it ends.
    units = units[:w.stack_size or stacked.plan_stack_size(units[0][3]).size]
    start = time.perf_counter()
    histories = train.fit_many([c for *_, c in units], w.x, w.y, [w.folds[f][0] for _, f, _, _ in units],
                               [w.folds[f][1] for _, f, _, _ in units], on_diverged="record", progress=False,
                               stack_size=w.stack_size)
    seconds = time.perf_counter() - start
    for (h, fold, epochs, _), history in zip(units, histories):
        if h.lost:
            continue
        d = unit_details(w, h, fold, epochs, history, seconds, len(units))
        try:
            h.trial.set_user_attr(fold_attr(fold, epochs), d)  # one write: the unit is recorded, or not at all
        except UpdateFinishedTrialError:
            h.lost = True  # declared stale meanwhile; the re-queued copy is someone else's now
            continue
        what = "diverged, at chance" if d["diverged"] else f"val acc {d['val_accuracy']:.4f}"
        w.bar.update()
        w.bar.set_postfix_str(f"{describe_config(h.params)} fold {fold + 1}/{w.k}, {epochs} epochs: {what}")


def _blocking(w: Worker, units: dict, st: halving.RungState) -> list:
    """Return the running trials of other workers that hold units of the open rung: what this
    worker waits for (none: the rung cannot finish now, e.g. a configuration failed too often)."""
    if st.open is None:
        return []
    epochs = w.schedule.rungs[st.open]
    missing = {key for key in st.alive[st.open] if any((key, f, epochs) not in units for f in range(w.k))}
    mine = {h.trial.number for h in w.held}
    return [t for t in w.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number not in mine and t.user_attrs.get(CONFIG_ATTR) in missing]


def bound_units(w: Worker) -> int:
    """Return the most (configuration, fold, rung) units the schedule trains (for the progress bar)."""
    return w.k * sum(halving.survivors(w.space.n_configs_total(), w.schedule))


def work(w: Worker) -> None:
    """Claim and train until the sweep is done (or, with ``wait=False``, nothing is free to train)."""
    w.storage = open_storage(w.url, heartbeat_interval=w.heartbeat_interval, grace_period=w.grace_period,
                             max_retry=w.max_retry)
    with _quiet():  # constant_liar: workers proposing at once see each other's running trials
        sampler = optuna.samplers.TPESampler(seed=w.space.seed + w.worker, constant_liar=True)
    w.study = optuna.load_study(study_name=w.study_name, storage=w.storage, sampler=sampler,
                                pruner=w.schedule.pruner() if w.schedule.halving else None)
    study_id = w.storage.get_study_id_from_name(w.study_name)
    timed: set[int] = set()  # others' running trials this worker has started a heartbeat clock for
    w.n_classes = int(torch.unique(w.y).numel())
    beat = Heartbeat(w.storage, w.heartbeat_interval)
    # Elapsed time and ETA over the schedule's units (at most), one line per recorded unit where no
    # one watches a widget (make report's log); tqdm counts the rate from the units done now.
    w.bar = progress_bar(bound_units(w), desc=f"sweep worker {w.worker}", unit="unit", enabled=w.verbose,
                         initial=w.units_done)
    try:
        while True:
            with _quiet():
                requeue_dead_holders(w.study, w.storage)
                optuna.storages.fail_stale_trials(w.study)
            units, st = state(w)
            settle(w, units, st, beat)
            top_up(w, beat, todo(w, units, st))
            units, st = state(w)
            settle(w, units, st, beat)
            pending = todo(w, units, st)
            if pending:
                train_stack(w, pending)
                continue
            if w.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                continue  # the configurations just claimed had their units (a re-queued trial): claim on
            others = _blocking(w, units, st)
            if not w.wait or not others:
                release(w)  # held at a rung that cannot finish now: free to be claimed by a later call
                return
            # Other workers hold units of this rung: they finish, or go stale and are re-queued. Optuna ages
            # only trials that have beaten once, so a worker killed between its claim and its first beat
            # would hold a trial forever: one beat on its behalf starts that clock.
            for t in others:
                if t.number not in timed:
                    w.storage.record_heartbeat(w.storage.get_trial_id_from_study_id_trial_number(study_id, t.number))
                    timed.add(t.number)
            time.sleep(beat.interval)
    except BaseException:
        release(w)
        raise
    finally:
        beat.stop()
        w.bar.close()


def _worker_main(w: Worker, threads: int, errors) -> None:
    """Entry point of a spawned worker process."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a terminated worker re-queues its trials
    try:
        work(w)
    except BaseException:
        errors.put((w.worker, traceback.format_exc()))
        raise SystemExit(1)


def spawn(w: Worker, workers: int) -> None:
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
