"""Successive halving over epochs for the sweep: the rung schedule, what it can cost, each rung's decision.

Schedule. With ``min_epochs`` r and ``reduction_factor`` eta (Optuna's ``min_resource`` and
``reduction_factor`` of :class:`optuna.pruners.SuccessiveHalvingPruner`, ``min_early_stopping_rate``
0), configurations are compared after r, r eta, r eta^2, ... epochs (the *rungs*), every one below
``epochs``; the last rung is ``epochs`` itself, where the survivors are scored. With one rung (no
``min_epochs``, or r eta^0 >= ``epochs``) nothing is pruned.

Rung-synchronous. Optuna's pruner is asynchronous: a trial reaching a rung competes with those
that reached it before, so early arrivals are promoted on less evidence and the result depends on
which worker finished first. Here every configuration still alive finishes a rung (all its folds)
before any decision at that rung, and each configuration's decision is the pruner's, taken on a
replay in which that configuration reaches the rung *last*, after every other: the synchronous
rule "promote the best ``n // eta`` of the ``n`` configurations at the rung, at least one", the
same whatever the machine's load, the number of workers or their timing. A rung's value is the
mean validation accuracy over the folds at that epoch (``trial.report(value, epoch)``).

Cost. A promoted configuration is retrained from scratch to the next rung's epochs, not
continued: ``train.fit_many`` trains stacks of units and keeps no optimizer or random state
between calls, and with the study's constant learning rate and seeded shuffling the first epochs
of the longer run replay the shorter one exactly, so only the cost differs. The cost bound,
:func:`units_epochs`, counts that retraining; Optuna's rule promotes more than ``n // eta`` only on
an exact tie at the cut, which :func:`decide` breaks (lower mean loss, then the space's order) so
that the bound holds.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import optuna

# Why a sweep has no halving, by cause (printed by the sweep, stored in its settings).
NO_MIN_EPOCHS = "successive halving is off (min_epochs not set): every configuration trains all its epochs"
TPE = ("a TPE space proposes each configuration from the finished ones, so there is no rung of known "
       "configurations to halve: every configuration trains all its epochs")


@dataclass(frozen=True)
class Schedule:
    """The epochs at which configurations are compared (``rungs``; the last is ``epochs``).

    min_epochs: the first rung (Optuna's ``min_resource``), None for no halving.
    reduction_factor: eta, the share 1 / eta of a rung's configurations promoted to the next.
    reason: why nothing is pruned, when ``rungs`` has one entry; "" otherwise.
    """

    epochs: int
    min_epochs: int | None
    reduction_factor: int
    rungs: tuple[int, ...]
    reason: str = ""

    @property
    def halving(self) -> bool:
        """Return True when some configurations can be pruned before the last rung."""
        return len(self.rungs) > 1

    def pruner(self) -> optuna.pruners.SuccessiveHalvingPruner:
        """Return the Optuna pruner whose rule decides each rung."""
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=self.min_epochs, reduction_factor=self.reduction_factor,
                                                      min_early_stopping_rate=0, bootstrap_count=0)

    def to_dict(self) -> dict:
        """Return the schedule as plain JSON data (stored with the study, written to results)."""
        return {"epochs": self.epochs, "min_epochs": self.min_epochs, "reduction_factor": self.reduction_factor,
                "rungs": list(self.rungs), "reason": self.reason}


def _positive_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")


def schedule(epochs: int, min_epochs: int | None = None, reduction_factor: int = 4, space_kind: str = "oat") -> Schedule:
    """Return the rung schedule of a sweep trained for at most ``epochs`` epochs.

    Rungs: ``min_epochs * reduction_factor**i`` for i = 0, 1, ... while below ``epochs``, then
    ``epochs`` (the rungs of Optuna's SuccessiveHalvingPruner with min_early_stopping_rate 0).
    One rung, and the reason, when ``min_epochs`` is None or not below ``epochs``, or for a
    ``tpe`` space (see :data:`TPE`).
    """
    _positive_int("epochs", epochs, 1)
    _positive_int("reduction_factor", reduction_factor, 2)
    if min_epochs is not None:
        _positive_int("min_epochs", min_epochs, 1)
    if min_epochs is None:
        return Schedule(epochs, None, reduction_factor, (epochs,), NO_MIN_EPOCHS)
    if space_kind == "tpe":
        return Schedule(epochs, min_epochs, reduction_factor, (epochs,), TPE)
    if min_epochs >= epochs:
        return Schedule(epochs, min_epochs, reduction_factor, (epochs,),
                        f"min_epochs={min_epochs} is not below the {epochs} epoch(s) trained, so there is no rung "
                        "before the last: every configuration trains all its epochs")
    rungs = []
    rung = min_epochs
    while rung < epochs:
        rungs.append(rung)
        rung *= reduction_factor
    return Schedule(epochs, min_epochs, reduction_factor, (*rungs, epochs))


def survivors(n_configs: int, sched: Schedule) -> tuple[int, ...]:
    """Return, per rung, the most configurations that train to it: ``n_configs`` at the first,
    then ``max(1, n // reduction_factor)`` of the ``n`` at the rung before (ties broken, see :func:`decide`)."""
    _positive_int("n_configs", n_configs, 1)
    out = [n_configs]
    for _ in sched.rungs[1:]:
        out.append(max(1, out[-1] // sched.reduction_factor))
    return tuple(out)


def units_epochs(n_configs: int, sched: Schedule) -> int:
    """Return the most configuration-epochs the schedule trains per fold: each rung's
    configurations trained from scratch to its epochs, summed over the rungs (a bound)."""
    return sum(n * e for n, e in zip(survivors(n_configs, sched), sched.rungs))


def describe(sched: Schedule, n_configs: int | None = None) -> str:
    """Return one line saying what the schedule does (printed before a sweep starts)."""
    if not sched.halving:
        return f"no successive halving: {sched.reason}"
    line = (f"successive halving (Optuna's SuccessiveHalvingPruner, min_epochs {sched.min_epochs}, reduction factor "
            f"{sched.reduction_factor}): configurations compared after {', '.join(map(str, sched.rungs[:-1]))} epoch(s), "
            f"survivors trained to {sched.epochs}")
    if n_configs is not None:
        line += (f"; at most {' -> '.join(map(str, survivors(n_configs, sched)))} configurations, each rung retrained "
                 f"from scratch ({units_epochs(n_configs, sched)} configuration-epochs per fold at most)")
    return line


@contextlib.contextmanager
def _optuna_quiet():
    """Silence Optuna's "A new study created in memory" lines of the replays."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _pruner_promotes(sched: Schedule, values: dict[str, list[float]], rung: int, last: str) -> bool:
    """Return True when the pruner promotes ``last`` at ``rung`` on a replay in which every other
    configuration of ``values`` (key -> its values at rungs 0..rung) reached each rung before it."""
    study = optuna.create_study(direction="maximize", pruner=sched.pruner())
    order = [key for key in values if key != last] + [last]
    trials = {key: study.ask() for key in order}
    decision = True
    for i in range(rung + 1):
        for key in order:
            trials[key].report(values[key][i], sched.rungs[i])
            # Every call records the trial's value at the rung (the pruner's side effect); only the last
            # configuration's decision at this rung is the synchronous one.
            pruned = trials[key].should_prune()
            if i == rung and key == last:
                decision = not pruned
    return decision


@functools.lru_cache(maxsize=64)
def _promoted(sched: Schedule, values: tuple, rung: int) -> tuple[str, ...]:
    """Return the keys the pruner promotes at ``rung`` (cached: workers ask again at every poll)."""
    as_dict = {key: list(v) for key, v in values}
    with _optuna_quiet():
        return tuple(key for key in as_dict if _pruner_promotes(sched, as_dict, rung, key))


def decide(values: dict[str, list[float]], losses: dict[str, float], sched: Schedule, rung: int) -> dict[str, bool]:
    """Return key -> promoted? for the configurations at ``rung`` (an index into ``sched.rungs``
    below the last).

    values: key -> mean validation accuracy over the folds at rungs 0..``rung`` (in the space's
    order: ties are broken by it); losses: key -> mean validation loss at ``rung``. Each decision is
    :func:`optuna.pruners.SuccessiveHalvingPruner`'s with that configuration reaching the rung last
    (see the module's docstring). Where an exact tie at the cut makes the pruner promote more than
    ``max(1, n // reduction_factor)``, the lower mean loss, then the earlier configuration, go on.
    """
    if not 0 <= rung < len(sched.rungs) - 1:
        raise ValueError(f"rung {rung}: decisions are taken at rungs 0..{len(sched.rungs) - 2} of {sched.rungs}")
    if not values:
        raise ValueError("no configuration reached the rung: nothing to decide")
    short = [key for key, v in values.items() if len(v) != rung + 1]
    if short:
        raise ValueError(f"configurations {short} lack a value at some rung up to {sched.rungs[rung]} epochs")
    promoted = list(_promoted(sched, tuple((key, tuple(v)) for key, v in values.items()), rung))
    keep = max(1, len(values) // sched.reduction_factor)
    if len(promoted) > keep:
        order = {key: i for i, key in enumerate(values)}
        loss = {key: losses[key] if losses.get(key) is not None and not math.isnan(losses[key]) else math.inf
                for key in promoted}
        promoted = sorted(promoted, key=lambda k: (-values[k][rung], loss[k], order[k]))[:keep]
    return {key: key in promoted for key in values}


@dataclass(frozen=True)
class RungState:
    """Where a sweep stands on its rung schedule, from its recorded scores alone.

    alive: per rung reached so far, the configurations that train to it (in the space's order).
    decisions: per decided rung, key -> promoted to the next rung?
    open: the first rung some configuration in ``alive[open]`` has not finished (all folds); None
    when every rung is finished.
    """

    alive: tuple[tuple[str, ...], ...]
    decisions: tuple[dict, ...]
    open: int | None

    def rung_of(self, key: str) -> int | None:
        """Return the deepest rung ``key`` trains to so far (None: not in the sweep)."""
        deepest = None
        for j, keys in enumerate(self.alive):
            if key in keys:
                deepest = j
        return deepest

    def pruned_at(self, key: str) -> int | None:
        """Return the rung at which ``key`` was pruned, or None (alive, or finished)."""
        for j, decided in enumerate(self.decisions):
            if decided.get(key) is False:
                return j
        return None


def rung_state(scores: dict[str, dict[int, tuple[float, float]]], keys: list[str], sched: Schedule) -> RungState:
    """Return the :class:`RungState` of a sweep over ``keys`` (in the space's order).

    scores: key -> rung epochs -> (mean validation accuracy, mean validation loss) over the folds,
    for every rung at which all of the configuration's folds are recorded. Deterministic: the same
    scores give the same state whichever worker computes it, and whenever.
    """
    alive, decisions = [tuple(keys)], []
    for j, epochs in enumerate(sched.rungs):
        members = alive[j]
        if any(epochs not in scores.get(key, {}) for key in members):
            return RungState(tuple(alive), tuple(decisions), j)
        if j == len(sched.rungs) - 1 or not members:
            break
        values = {key: [scores[key][sched.rungs[i]][0] for i in range(j + 1)] for key in members}
        decided = decide(values, {key: scores[key][epochs][1] for key in members}, sched, j)
        decisions.append(decided)
        alive.append(tuple(key for key in members if decided[key]))
    return RungState(tuple(alive), tuple(decisions), None)
