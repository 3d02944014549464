"""The cross-validated sweep: spaces, protocol (no test data in selection), stacks, divergence,
resumption after a kill (fold by fold), several workers on SQLite and on PostgreSQL, results
tables against the stored trials, bad input."""

import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

import sweep_helpers
from fmnist_utils import cv_results, data, halving, models, search_space, study, sweep, train
from fmnist_utils.search_space import config_key
from fmnist_utils.train import TrainConfig

HELPERS = Path(sweep_helpers.__file__)


@pytest.fixture(autouse=True)
def tiny_model():
    sweep_helpers.register()
    yield
    models.MODELS.pop("tiny", None)


@pytest.fixture
def tiny():
    """Sweep settings with the tiny model: k=2 folds of 200 images."""
    return dict(base=TrainConfig(model="tiny", epochs=1, batch_size=32, precision="fp32", device="cpu"),
                k=2, subset=200, seed=0, verbose=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fmnist):
    """An SQLite file holding a finished tiny sweep (2 configurations x 2 folds); copy before use."""
    sweep_helpers.register()
    path = tmp_path_factory.mktemp("finished") / "s.sqlite3"
    base = TrainConfig(model="tiny", epochs=1, batch_size=32, precision="fp32", device="cpu")
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, search_space.grid(lr=[0.05, 0.01]), path, base=base, k=2,
                    subset=200, seed=0, verbose=False)
    return path


def copy_of(path, tmp_path):
    return shutil.copy(path, tmp_path / "s.sqlite3")


def trials(storage, states=None):
    return sweep.load_study(storage).get_trials(deepcopy=False, states=states)


class Interrupted(Exception):
    """Stands in for Ctrl-C or a crash in the middle of a sweep."""


class Spy:
    """Records each unit train.fit_many was given (wrapping the real function); can stop after
    ``fail_after`` calls, or mark units as diverged, the way fit_many itself would."""

    def __init__(self, monkeypatch, fail_after=None, diverge=lambda config: False):
        self.calls = []
        real = getattr(train.fit_many, "real", train.fit_many)

        def fit_many(configs, x, y, train_indices, val_indices=None, **kw):
            if fail_after is not None and len(self.calls) >= fail_after:
                raise Interrupted("the test stops the sweep here")
            self.calls.append(dict(configs=list(configs), x=x.clone(), y=y.clone(), kw=kw,
                                   train=[np.asarray(i) for i in train_indices],
                                   val=[np.asarray(i) for i in val_indices]))
            histories = real(configs, x, y, train_indices, val_indices, **kw)
            return [[{"epoch": 1, "diverged": "loss is nan (epoch 1, step 3); lower the learning rate"}]
                    if diverge(c) else h for c, h in zip(configs, histories)]

        fit_many.real = real
        monkeypatch.setattr(train, "fit_many", fit_many)

    def units(self, names=("lr", "dropout")):
        """Return (config key over ``names``, first validation index) of each unit trained."""
        return [sweep_helpers.unit_id(c, v, names) for call in self.calls for c, v in zip(call["configs"], call["val"])]


def recorded(storage):
    """(config key, fold) -> details of every fold stored so far (storage: a path, URL or RDBStorage)."""
    if isinstance(storage, optuna.storages.RDBStorage):
        try:
            return sweep.recorded_folds(optuna.load_study(study_name="sweep", storage=storage))
        except KeyError:
            raise ValueError("no study yet") from None
    return sweep.recorded_folds(sweep.load_study(storage))


def fold_of(fmnist, subset=200, k=2):
    """Return first validation index -> fold, for the folds run_sweep(subset, k, seed=0) makes."""
    ys = fmnist.y_train[torch.as_tensor(data.stratified_subset(fmnist.y_train, subset, seed=0))]
    return {int(va[0]): f for f, (_, va) in enumerate(data.stratified_kfold(ys, k, seed=0))}


# --------------------------------------------------------------------------------------------
# Spaces


def test_study_grid_is_every_combination_in_order():
    expected = [{"lr": a, "batch_size": b, "dropout": c}
                for a in study.LRS for b in study.BATCH_SIZES for c in study.DROPOUTS]
    assert search_space.study_space("grid").configs() == expected and len(expected) == 60


def test_one_factor_at_a_time_varies_one_factor_around_the_study_recipe():
    base = search_space.STUDY_BASE
    assert TrainConfig().replace(**base) == TrainConfig()  # the base is the recipe's defaults
    # Reference: the base, then per factor each non-base value, written as plain loops.
    expected = [dict(base)]
    for name, values in (("lr", study.LRS), ("batch_size", study.BATCH_SIZES), ("dropout", study.DROPOUTS)):
        for v in values:
            if v != base[name]:
                expected.append({**base, name: v})
    configs = search_space.study_space("oat").configs()
    assert configs == expected and len(configs) == 1 + 3 + 2 + 4
    assert all(sum(c[n] != base[n] for n in base) <= 1 for c in configs)


def test_study_space_can_vary_some_factors_only():
    lr_only = search_space.study_space("oat", factors=("lr",)).configs()
    assert lr_only == [{**search_space.STUDY_BASE, "lr": v} for v in (0.05, 0.1, 0.003, 0.0005)]
    assert search_space.study_space("grid", factors=("dropout", "lr")).grid_size() == 5 * 4
    with pytest.raises(ValueError, match="study's factors"):
        search_space.study_space("oat", factors=("momentum",))


def test_random_space_draws_distinct_grid_points_reproducibly():
    a = search_space.random_search(7, seed=3, lr=study.LRS, dropout=study.DROPOUTS)
    b = search_space.random_search(7, seed=3, lr=study.LRS, dropout=study.DROPOUTS)
    keys = [config_key(c) for c in a.configs()]
    assert a.configs() == b.configs() and len(set(keys)) == 7
    assert set(keys) <= {config_key(c) for c in search_space.grid(lr=study.LRS, dropout=study.DROPOUTS).configs()}


def test_space_round_trips_through_json():
    for space in (search_space.study_space("oat"), search_space.study_space("grid"),
                  search_space.study_space("tpe", n_configs=5)):
        assert search_space.SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize("make, message", [
    (lambda: search_space.grid(learning_rate=[0.1]), "not a TrainConfig hyperparameter"),
    (lambda: search_space.grid(device=["cpu"]), "not a hyperparameter"),
    (lambda: search_space.grid(), "empty"),
    (lambda: search_space.grid(lr=[]), "no values"),
    (lambda: search_space.grid(lr=[0.1, 0.1]), "repeats"),
    (lambda: search_space.one_factor_at_a_time({"lr": 0.05}, lr=[0.1], dropout=[0.5]), "lacks"),
    (lambda: search_space.random_search(5, lr=[0.1, 0.05]), "exceeds"),
    (lambda: search_space.SearchSpace("bayes", {"lr": [0.1]}), "unknown search space kind"),
])
def test_bad_spaces_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------------------------
# Bad input: errors before any training


@pytest.mark.parametrize("change, message", [
    (dict(k=1), "k must be an integer >= 2"),
    (dict(k=21), "larger than the smallest class"),  # 200 images: 20 per class
    (dict(space=search_space.grid(dropout=[0.5, 1.5])), "not a valid TrainConfig"),
    (dict(subset=0), "subset size"),
    (dict(stack_size=0), "stack_size"),
    (dict(heartbeat_interval=0), "heartbeat_interval"),
])
def test_bad_input_fails_before_training(fmnist, tiny, tmp_path, monkeypatch, change, message):
    spy = Spy(monkeypatch)
    args = {**tiny, "space": search_space.grid(lr=[0.05]), "storage": tmp_path / "s.sqlite3", **change}
    with pytest.raises(ValueError, match=message):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, **args)
    assert spy.calls == [] and not (tmp_path / "s.sqlite3").exists()


def test_test_split_shaped_input_is_checked(fmnist, tiny, tmp_path):
    with pytest.raises(ValueError, match="uint8 training images"):
        sweep.run_sweep(fmnist.x_train.float(), fmnist.y_train, search_space.grid(lr=[0.05]), tmp_path / "s", **tiny)


@pytest.mark.parametrize("change", [
    lambda t: dict(space=search_space.grid(lr=[0.05, 0.01, 0.1])),
    lambda t: dict(k=3),
    lambda t: dict(subset=300),
    lambda t: dict(seed=1),
    lambda t: dict(base=t["base"].replace(epochs=2)),
], ids=["space", "k", "subset", "seed", "epochs"])
def test_existing_study_with_other_settings_is_refused(fmnist, tiny, finished, tmp_path, monkeypatch, change):
    storage = copy_of(finished, tmp_path)
    spy = Spy(monkeypatch)
    args = {**tiny, "space": search_space.grid(lr=[0.05, 0.01]), **change(tiny)}
    with pytest.raises(ValueError, match="other settings"):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=storage, **args)
    assert spy.calls == [] and len(recorded(storage)) == 4


def test_other_data_is_refused(fmnist, tiny, finished, tmp_path):
    with pytest.raises(ValueError, match="data_sha256"):
        sweep.run_sweep(fmnist.x_train.flip(3), fmnist.y_train, search_space.grid(lr=[0.05, 0.01]),
                        copy_of(finished, tmp_path), **tiny)


# --------------------------------------------------------------------------------------------
# Protocol: folds, stacks, and no test image anywhere near selection


def _coded(fmnist, is_test: bool):
    """Images whose first pixels encode (index, split), so a spy can tell which rows it got."""
    x = (fmnist.x_test if is_test else fmnist.x_train).clone()
    idx = torch.arange(len(x))
    x[:, 0, 0, 0] = (idx // 256).to(torch.uint8)
    x[:, 0, 0, 1] = (idx % 256).to(torch.uint8)
    x[:, 0, 0, 2] = 255 if is_test else 0
    return x


def _rows(x):
    return (x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist(), set(x[:, 0, 0, 2].tolist())


def test_folds_are_disjoint_stratified_stacked_and_test_data_never_used(fmnist, tiny, tmp_path, monkeypatch):
    x_train, x_test = _coded(fmnist, False), _coded(fmnist, True)
    spy = Spy(monkeypatch)
    space = search_space.grid(lr=[0.05, 0.01], batch_size=[32, 64])
    k, n = 4, 400
    run = sweep.run_sweep(x_train, fmnist.y_train, space, tmp_path / "s.sqlite3",
                          **{**tiny, "k": k, "subset": n, "stack_size": 3})
    assert (run.trained, run.pending) == (4 * k, 0)
    subset = set(data.stratified_subset(fmnist.y_train, n, seed=0).tolist())
    y = fmnist.y_train.numpy()
    per_config: dict[str, list] = {}
    for call in spy.calls:
        rows, split = _rows(call["x"])
        assert split == {0}, "a test image reached selection"
        assert set(rows) == subset and torch.equal(call["y"], fmnist.y_train[rows])
        # A stack: at most stack_size units, all of one batch size (every setting but PER_UNIT shared).
        assert len(call["configs"]) <= 3 and call["kw"]["stack_size"] == 3
        assert len({sweep.stack_group(c) for c in call["configs"]}) == 1
        for c, tr, va in zip(call["configs"], call["train"], call["val"]):
            tr_rows, va_rows = {rows[i] for i in tr}, {rows[i] for i in va}
            assert tr_rows.isdisjoint(va_rows) and tr_rows | va_rows == subset
            # Stratified: each class's share of a fold is within one image of n_c / k.
            counts = np.bincount(y[sorted(va_rows)], minlength=10)
            assert np.all(np.abs(counts - n / 10 / k) <= 1)
            per_config.setdefault(config_key({"lr": c.lr, "batch_size": c.batch_size}), []).append(va_rows)
    assert len(per_config) == 4
    for vals in per_config.values():  # each configuration's k validation folds partition the subset
        flat = [i for v in vals for i in v]
        assert len(vals) == k and len(flat) == len(set(flat)) == n

    # The final model: trained on training images only, evaluated on the test set exactly once.
    fits, evals = [], []
    real_fit, real_eval = train.fit, train.evaluate
    monkeypatch.setattr(train, "fit", lambda m, x, *a, **kw: fits.append(_rows(x)[1]) or real_fit(m, x, *a, **kw))
    monkeypatch.setattr(train, "evaluate", lambda m, x, *a, **kw: evals.append(_rows(x)[1]) or real_eval(m, x, *a, **kw))
    _, final = sweep.final_model(tiny["base"], x_train, fmnist.y_train, x_test, fmnist.y_test,
                                 subset=500, test_subset=300, progress=False)
    assert fits == [{0}] and evals == [{255}]
    assert (final["n_train"], final["n_test"]) == (500, 300)


def test_selection_ignores_the_test_set(fmnist, tiny, tmp_path, monkeypatch):
    """Selection is a function of the stored CV results alone: training on any test image fails
    this test, and the choice equals a plain argmax over the trials' fold scores."""
    test_rows = {bytes(img.numpy()) for img in fmnist.x_test[:2000]}
    real = train.fit_many

    def guarded(configs, x, y, *a, **kw):
        assert not any(bytes(img.numpy()) in test_rows for img in x), "selection saw test images"
        return real(configs, x, y, *a, **kw)

    monkeypatch.setattr(train, "fit_many", guarded)
    storage = tmp_path / "s.sqlite3"
    space = search_space.grid(lr=[0.2, 0.05, 0.001], dropout=[0.1])
    sweep.run_sweep(fmnist.x_train[:10_000], fmnist.y_train[:10_000], space, storage, **tiny)
    summary = cv_results.summarize(cv_results.fold_results(storage))
    scores = {}
    for t in trials(storage, (TrialState.COMPLETE,)):
        units = [t.user_attrs[sweep.fold_attr(f, 1)] for f in range(2)]
        folds = [(u["val_accuracy"], u["val_loss"]) for u in units]
        # The trial reports the mean over its folds after each epoch, and is valued at the last one's.
        assert t.intermediate_values == {1: pytest.approx(statistics.mean(a for a, _ in folds))}
        assert t.value == pytest.approx(statistics.mean(a for a, _ in folds))
        scores[t.user_attrs["config"]] = folds
    # Highest mean validation accuracy; ties go to the lower mean validation loss.
    expected = max(scores, key=lambda c: (statistics.mean(a for a, _ in scores[c]),
                                          -statistics.mean(l for _, l in scores[c])))
    assert cv_results.best_hyperparameters(summary) == json.loads(expected)
    assert cv_results.best_config(summary, tiny["base"]) == tiny["base"].replace(**json.loads(expected))


def test_a_diverged_unit_is_recorded_at_chance_not_a_crash(fmnist, tiny, tmp_path, monkeypatch):
    Spy(monkeypatch, diverge=lambda c: c.lr == 0.5)
    storage = tmp_path / "s.sqlite3"
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, search_space.grid(lr=[0.5, 0.05]), storage, **tiny)
    assert (run.trained, run.pending, run.diverged) == (4, 0, 2)
    folds = cv_results.fold_results(storage)
    bad = folds[folds["lr"] == 0.5]
    assert list(bad["val_accuracy"]) == [0.1, 0.1]  # 10 classes
    assert all("lower the learning rate" in reason for reason in bad["diverged"])
    assert bad["val_loss"].isna().all() and folds[folds["lr"] == 0.05]["diverged"].isna().all()
    summary = cv_results.summarize(folds)
    assert list(summary["n_diverged"]) == [2, 0] and list(summary["lr"]) == [0.5, 0.05]
    assert len(trials(storage, (TrialState.COMPLETE,))) == 2


# --------------------------------------------------------------------------------------------
# Results tables against the stored trials


def test_summary_equals_the_stored_trials(fmnist, tiny, tmp_path):
    storage = tmp_path / "s.sqlite3"
    space = search_space.one_factor_at_a_time({"lr": 0.05, "dropout": 0.5}, lr=[0.1, 0.05, 0.01], dropout=[0.1, 0.5])
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **{**tiny, "k": 3, "subset": 300})
    folds = cv_results.fold_results(storage)
    summary = cv_results.summarize(folds)
    done = trials(storage, (TrialState.COMPLETE,))
    assert len(folds) == 4 * 3 and len(done) == 4
    assert list(summary["config"]) == [config_key(c) for c in space.configs()]
    for _, row in summary.iterrows():
        (t,) = [t for t in done if t.user_attrs["config"] == row["config"]]
        acc = [t.user_attrs[sweep.fold_attr(f, 1)]["val_accuracy"] for f in range(3)]
        loss = [t.user_attrs[sweep.fold_attr(f, 1)]["val_loss"] for f in range(3)]
        assert t.value == pytest.approx(statistics.mean(acc))
        np.testing.assert_allclose(row["accuracy_mean"], statistics.mean(acc))
        np.testing.assert_allclose(row["accuracy_std"], statistics.stdev(acc))
        np.testing.assert_allclose(row["loss_mean"], statistics.mean(loss))
        np.testing.assert_allclose(row["loss_std"], statistics.stdev(loss))
        np.testing.assert_allclose(row["seconds"], sum(t.user_attrs[sweep.fold_attr(f, 1)]["seconds"] for f in range(3)))
        assert (row["n_folds"], row["n_diverged"], row["epochs"], row["rung_epochs"], row["pruned"]) == (3, 0, 1, 1, False)
    tables = cv_results.factor_tables(summary, {"lr": 0.05, "dropout": 0.5})
    assert list(tables) == ["lr", "dropout"]
    assert list(tables["lr"]["lr"]) == [0.05, 0.1, 0.01] and list(tables["lr"]["is_base"]) == [True, False, False]
    assert list(tables["dropout"]["dropout"]) == [0.5, 0.1]
    base_row = summary[summary["config"] == config_key({"lr": 0.05, "dropout": 0.5})]
    assert tables["lr"]["accuracy_mean"].iloc[0] == base_row["accuracy_mean"].iloc[0]


def _folds_table():
    return pd.DataFrame({
        "config": ['{"lr": 0.1}', '{"lr": 0.1}', '{"lr": 0.2}', '{"lr": 0.3}', '{"lr": 0.3}', '{"lr": 0.3}'],
        "lr": [0.1, 0.1, 0.2, 0.3, 0.3, 0.3], "fold": [0, 1, 0, 0, 1, 2],
        "val_accuracy": [0.5, 0.7, 0.99, 0.6, 0.6, 0.4], "val_loss": [1.0, 0.8, 0.1, 0.9, 0.9, 1.2],
        "epochs": 1, "seconds": 1.0, "diverged": None,
    })


def test_best_needs_complete_configurations():
    summary = cv_results.summarize(_folds_table().query("fold < 2"))
    # lr=0.2 has the top accuracy but only one of two folds; lr=0.1 ties lr=0.3 on accuracy and wins on loss.
    assert cv_results.best_hyperparameters(summary) == {"lr": 0.1}
    with pytest.raises(ValueError, match="no configuration has all 3 folds"):
        cv_results.ranked(summary, k=3)


def test_paired_fold_differences_are_taken_on_shared_folds():
    folds = _folds_table()
    diff = cv_results.paired_fold_differences(folds, '{"lr": 0.3}', '{"lr": 0.1}')
    # Reference: a loop over the folds both configurations finished.
    acc = {(c, f): a for c, f, a in zip(folds["config"], folds["fold"], folds["val_accuracy"])}
    expected = {f: acc['{"lr": 0.3}', f] - acc['{"lr": 0.1}', f] for f in range(3)
                if ('{"lr": 0.3}', f) in acc and ('{"lr": 0.1}', f) in acc}
    assert list(diff.index) == list(expected) == [0, 1]
    np.testing.assert_allclose(diff.to_numpy(), list(expected.values()))
    assert list(cv_results.paired_fold_differences(folds, '{"lr": 0.2}', '{"lr": 0.3}').index) == [0]
    with pytest.raises(ValueError, match="no finished fold"):
        cv_results.paired_fold_differences(folds, '{"lr": 0.4}', '{"lr": 0.1}')


# --------------------------------------------------------------------------------------------
# Resumption, stale workers, partial sweeps


def test_rerun_of_a_finished_sweep_trains_nothing(fmnist, tiny, finished, tmp_path, monkeypatch):
    storage = copy_of(finished, tmp_path)
    spy = Spy(monkeypatch)
    again = sweep.run_sweep(fmnist.x_train, fmnist.y_train, search_space.grid(lr=[0.05, 0.01]), storage, **tiny)
    assert (again.n_units, again.trained, again.reused, again.pending) == (4, 0, 4, 0) and spy.calls == []
    # A path and its SQLite URL are the same storage.
    url = sweep.storage_url(storage)
    assert url.startswith("sqlite:///") and len(cv_results.fold_results(url)) == 4


def test_an_interrupted_call_requeues_its_trials_and_keeps_finished_folds(fmnist, tiny, tmp_path, monkeypatch):
    storage = tmp_path / "s.sqlite3"
    space = search_space.grid(lr=[0.1, 0.05, 0.01])
    Spy(monkeypatch, fail_after=1)  # the first stack (3 units) finishes, the second is interrupted
    with pytest.raises(Interrupted):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny, stack_size=3)
    before = recorded(storage)
    assert len(before) == 3
    assert not trials(storage, (TrialState.RUNNING,))  # re-queued at once, not left to go stale
    spy = Spy(monkeypatch)
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny, stack_size=3)
    assert (run.reused, run.trained, run.pending) == (3, 3, 0)
    after = recorded(storage)
    assert {u: after[u] for u in before} == before  # the finished folds, untouched
    first = fold_of(fmnist)
    trained = [(key, first[v]) for key, v in spy.units(("lr",))]
    assert sorted(trained) == sorted(set(after) - set(before))  # only the unfinished folds, once each


def _dead_worker_trial(storage, fold_done: int, accuracy: float, beat: bool):
    """Play a worker that claimed the first queued configuration, finished one fold and died
    (after its first heartbeat, or before it)."""
    st = sweep.open_storage(storage, heartbeat_interval=1, grace_period=1)
    s = optuna.load_study(study_name="sweep", storage=st)
    with sweep._quiet():
        trial = s.ask(search_space.grid(lr=[0.1, 0.05]).distributions())
    trial.set_user_attr(sweep.fold_attr(fold_done, 1), {"val_accuracy": accuracy, "val_loss": 1.0, "seconds": 0.5,
                                                         "val_accuracy_by_epoch": [accuracy]})
    if beat:
        st.record_heartbeat(st.get_trial_id_from_study_id_trial_number(st.get_study_id_from_name("sweep"),
                                                                       trial.number))
    return trial.user_attrs["config"]


@pytest.mark.parametrize("beat", [True, False], ids=["after its first heartbeat", "before any heartbeat"])
def test_a_dead_workers_trial_resumes_with_its_finished_fold(fmnist, tiny, tmp_path, monkeypatch, beat):
    storage = tmp_path / "s.sqlite3"
    space = search_space.grid(lr=[0.1, 0.05])
    Spy(monkeypatch, fail_after=0)  # create and queue the study, train nothing
    with pytest.raises(Interrupted):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny)
    key = _dead_worker_trial(storage, fold_done=1, accuracy=0.123, beat=beat)
    assert json.loads(key) == {"lr": 0.1}  # the first queued configuration

    # Without waiting, its unit is pending and a ranking is refused, naming it.
    spy = Spy(monkeypatch)
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny, wait=False, grace_period=600)
    assert (run.trained, run.pending) == (2, 1) and len(spy.units(("lr",))) == 2
    with pytest.raises(sweep.IncompleteSweep, match=r"lr=0\.1: fold 1 \(held by a worker\)"):
        sweep.require_complete(run)
    assert sweep.require_complete(run, allow_partial=True) == run.pending_units

    # Waiting: its heartbeat stops, it is failed as stale and re-queued with fold 2 inherited.
    spy = Spy(monkeypatch)
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny, heartbeat_interval=1,
                          grace_period=1)
    assert (run.trained, run.reused, run.pending) == (1, 3, 0) and sweep.require_complete(run) == ()
    assert [(k, fold_of(fmnist)[v]) for k, v in spy.units(("lr",))] == [(key, 0)]  # the dead worker's fold kept
    (t,) = [t for t in trials(storage, (TrialState.COMPLETE,)) if t.user_attrs["config"] == key]
    done = [t.user_attrs[sweep.fold_attr(f, 1)] for f in range(2)]
    assert done[1]["val_accuracy"] == 0.123 and done[1]["seconds"] == 0.5
    assert t.value == pytest.approx((done[0]["val_accuracy"] + 0.123) / 2) == t.intermediate_values[1]


@pytest.mark.slow
def test_killed_sweep_loses_only_the_unfinished_units_of_its_stack(fmnist, tmp_path, monkeypatch):
    storage = tmp_path / "s.sqlite3"
    env = {**os.environ, "FMNIST_TEST_STACK_DELAY": "1.5"}
    proc = subprocess.Popen([sys.executable, str(HELPERS), str(storage)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if len(recorded(storage)) >= 3:  # the first stack of 3 units is in
                    break
            except ValueError:  # the study is not created yet
                pass
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = recorded(storage)
    n_units = 12
    assert len(before) == 3  # killed in its second stack
    partial = {key for key, fold in before} - {key for key, fold in before if (key, 1 - fold) in before}
    assert len(partial) == 1  # one configuration had one of its two folds done

    spy = Spy(monkeypatch)
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=storage, **sweep_helpers.sweep_kwargs())
    after = recorded(storage)
    assert len(after) == n_units and {u: after[u] for u in before} == before  # nothing finished was lost
    assert (run.reused, run.trained, run.pending) == (3, n_units - 3, 0)
    assert len(spy.units()) == len(set(spy.units())) == n_units - 3  # every other unit exactly once
    first = fold_of(fmnist)
    assert sorted((key, first[v]) for key, v in spy.units()) == sorted(set(after) - set(before))
    assert not trials(storage, (TrialState.RUNNING, TrialState.WAITING))
    # The killed worker's trials went stale, and each was queued again with its finished folds.
    retried = {n for t in trials(storage) for n in t.system_attrs.get("retry_history", [])}
    assert {t.number for t in trials(storage, (TrialState.FAIL,))} == retried and retried


def test_claims_on_sqlite_are_atomic(tmp_path):
    """Three workers popping one queue: each queued trial goes to exactly one of them. (With
    pysqlite's default transactions, this same race hands some trials to two workers.)"""
    import threading

    path = tmp_path / "q.sqlite3"
    queue = optuna.create_study(storage=sweep.open_storage(path), study_name="q")
    for i in range(40):
        queue.enqueue_trial({"x": i}, user_attrs={"x": i})
    popped = []

    def work():
        s = optuna.load_study(study_name="q", storage=sweep.open_storage(path))
        while s.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            popped.append(s.ask().user_attrs.get("x"))  # None: the queue emptied meanwhile

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(x for x in popped if x is not None) == list(range(40))


@pytest.mark.slow
def test_two_workers_train_each_unit_exactly_once_with_the_real_cnn(fmnist, tmp_path):
    storage = tmp_path / "s.sqlite3"
    base = TrainConfig(epochs=1, batch_size=64, precision="fp32", device="cpu", eval_batch_size=256)
    space = search_space.grid(lr=[0.05, 0.01], dropout=[0.5], batch_size=[64, 32])
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, base=base, k=2, subset=120,
                          workers=2, stack_size=2, verbose=False)
    assert (run.trained, run.reused, run.pending, run.workers) == (8, 0, 0, 2)
    done = recorded(storage)
    assert sorted(done) == sorted((config_key(c), f) for c in space.configs() for f in range(2))
    # Optuna's queue gives each configuration to one worker: no trial failed, none was duplicated.
    assert len(trials(storage)) == 4 and all(t.state == TrialState.COMPLETE for t in trials(storage))
    assert {d["n_train"] for d in done.values()} == {60}


def test_tpe_proposes_distinct_configurations_and_resumes(fmnist, tiny, tmp_path, monkeypatch):
    storage = tmp_path / "s.sqlite3"
    # Six of the six grid points: TPE repeats itself, and each repeat is replaced by an untried point.
    space = search_space.tpe_search(6, seed=0, lr=[0.1, 0.05, 0.01], dropout=[0.1, 0.5])
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny)
    folds = cv_results.fold_results(storage)
    assert run.trained == run.n_units == 12 and run.pending == 0
    assert set(folds["config"]) == {config_key(c) for c in search_space.grid(**space.values).configs()}
    assert folds.groupby("config")["fold"].apply(sorted).tolist() == [[0, 1]] * 6
    assert [t for t in trials(storage, (TrialState.FAIL,)) if "duplicate_of" in t.user_attrs]
    spy = Spy(monkeypatch)
    again = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny)
    assert again.trained == 0 and spy.calls == []


# --------------------------------------------------------------------------------------------
# Several machines: two worker processes against a real PostgreSQL server


def _postgres_bin() -> Path | None:
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True) + [shutil.which("initdb")]:
        if initdb and Path(initdb).is_file():
            return Path(initdb).parent
    return None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a loopback port, run as an unprivileged user; its URL."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install \"psycopg[binary]\"")
    folder = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(folder, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pgdata, log = folder / "data", folder / "log"
    subprocess.run([*as_user, bin_dir / "initdb", "-D", pgdata, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True, cwd=folder)
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", pgdata, "-l", log, "-w", "-o",
                    f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True,
                   cwd=folder)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", pgdata, "-m", "immediate", "stop"], capture_output=True,
                       cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_postgresql_do_each_unit_once_and_a_kill_loses_nothing(fmnist, postgres_url, tmp_path):
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = []
    for log in logs:
        env = {**os.environ, "FMNIST_TEST_STACK_DELAY": "1.0", "FMNIST_TEST_UNIT_LOG": str(log)}
        procs.append(subprocess.Popen([sys.executable, str(HELPERS), postgres_url], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    a, b = procs
    st = sweep.open_storage(postgres_url)
    try:
        deadline = time.monotonic() + 120
        a_done = {}
        while time.monotonic() < deadline and a.poll() is None and not a_done:
            try:
                a_done = {u: d for u, d in recorded(st).items() if d.get("pid") == a.pid}
            except ValueError:  # the study is not created yet
                pass
            time.sleep(0.1)
        assert a.poll() is None and a_done, f"worker A finished no unit:\n{a.stdout.read().decode()}"
        a.send_signal(signal.SIGKILL)
        a.wait()
        a_done = {u: d for u, d in recorded(st).items() if d.get("pid") == a.pid}
        try:
            out = b.communicate(timeout=180)[0].decode()
        except subprocess.TimeoutExpired:
            b.kill()
            pytest.fail("worker B did not finish:\n" + b.communicate()[0].decode())
        assert b.returncode == 0, out
    finally:
        for p in procs:
            p.kill()
            p.wait()
    first_val = fold_of(fmnist)
    space = sweep_helpers.sweep_kwargs()["space"]
    units = {(config_key(c), f) for c in space.configs() for f in range(2)}
    after = recorded(st)
    assert set(after) == units and {u: after[u] for u in a_done} == a_done  # everything done; A's kept
    b_units = [(key, first_val[v]) for key, v in map(json.loads, logs[1].read_text().splitlines())]
    # B trained every unit A had not recorded, each once, and nothing A had finished.
    assert sorted(b_units) == sorted(units - set(a_done))
    assert {d["pid"] for d in after.values()} == {a.pid, b.pid}
    assert not optuna.load_study(study_name="sweep", storage=st).get_trials(
        states=(TrialState.RUNNING, TrialState.WAITING))
    st.engine.dispose()


# --------------------------------------------------------------------------------------------
# The notebook, end to end with the smoke profile


@pytest.mark.slow
def test_notebook_runs_resumes_and_hands_on_its_choice(tmp_path):
    import papermill

    from fmnist_utils import provenance, report

    notebook = Path(__file__).resolve().parent.parent / "notebooks" / "01_sweep.ipynb"
    run = tmp_path / "run"

    def execute(name):
        papermill.execute_notebook(str(notebook), str(tmp_path / name), parameters={"profile": "smoke", "run_dir": str(run)},
                                   kernel_name="python3", progress_bar=False)
        return provenance.read_json(run / "01_sweep" / "results.json")

    first = execute("first.ipynb")
    n_units = first["run"]["n_units"]
    assert first["run"]["trained"] == n_units == first["protocol"]["n_configs"] * first["protocol"]["k"]
    best = TrainConfig(**first["best_config"])  # what 02_train reads with config_source="sweep"
    summary = {json.dumps({n: row[n] for n in ("batch_size", "dropout", "lr")}, sort_keys=True): row
               for row in first["summary"]}
    chosen = summary[config_key(first["best_hyperparameters"])]
    assert (best.lr, best.batch_size, best.dropout) == (chosen["lr"], chosen["batch_size"], chosen["dropout"])
    assert chosen["accuracy_mean"] == max(row["accuracy_mean"] for row in first["summary"])
    assert 0 <= first["final"]["test_accuracy"] <= 1 and first["final"]["n_test"] == first["protocol"]["test_images"]
    for name in first["figures"].values():
        assert (run / "01_sweep" / name).is_file()

    again = execute("again.ipynb")  # the report re-run: every fold comes from the study's storage
    assert (again["run"]["trained"], again["run"]["reused"]) == (0, n_units)
    assert again["summary"] == first["summary"] and again["best_config"] == first["best_config"]

    stamp = {"notebook": "01_sweep", "source": str(notebook), "seconds": again["seconds"], "executed": True,
             "finished_utc": "", "executed_notebook": "01_sweep.ipynb", "status": "done", "key": "", "parameters": {}}
    page = report.render(run, [stamp])
    assert '<section id="01_sweep"' in page and report.pct(first["best_cv"]["accuracy_mean"]) in page


def _folds(accuracies: dict[float, list[float]], n_val: int = 100) -> pd.DataFrame:
    rows = []
    for lr, accs in accuracies.items():
        for fold, acc in enumerate(accs):
            rows.append({"config": config_key({"lr": lr, "batch_size": 128, "dropout": 0.5}), "lr": lr,
                         "batch_size": 128, "dropout": 0.5, "fold": fold, "val_accuracy": acc, "val_loss": 1 - acc,
                         "train_accuracy": acc, "train_loss": 1 - acc, "epochs": 1, "seconds": 1.0,
                         "n_train": 2 * n_val, "n_val": n_val, "device": "cpu", "diverged": None, "trial": 0})
    return pd.DataFrame(rows)


def test_cv_verdicts_compare_the_choice_on_paired_folds_and_test_chance():
    study_base = {"lr": 0.05, "batch_size": 128, "dropout": 0.5}
    folds = _folds({0.1: [0.80, 0.82, 0.81], 0.05: [0.70, 0.73, 0.71], 0.003: [0.30, 0.31, 0.29]})
    summary = cv_results.summarize(folds)
    v = cv_results.verdicts(folds, summary, study_base, 10, k=3, final={"test_accuracy": 0.8, "n_test": 300})
    assert set(v) == {"chosen_vs_runner_up", "chosen_vs_study", "above_chance"}
    # The runner-up is the study's configuration here: the same record twice, on the paired folds,
    # Bonferroni-corrected over the two comparisons of the winner with the others.
    from fmnist_utils import stats
    expected = stats.verdict_cv_difference("chosen_vs_study", folds.val_accuracy[:3].to_numpy(),
                                           folds.val_accuracy[3:6].to_numpy(), 200, 100,
                                           "the chosen configuration", "the study's configuration", comparisons=2,
                                           why="the chosen configuration is the best of 3 on these folds")
    assert v["chosen_vs_study"] == expected and v["chosen_vs_study"]["verdict"] == "higher"
    assert v["chosen_vs_runner_up"]["value"] == pytest.approx(expected["value"])
    # Chance is tested on the final model's test accuracy, not on the selected CV score.
    assert v["above_chance"]["verdict"] == "above_chance" and v["above_chance"]["n"] == 300
    assert v["above_chance"]["value"] == pytest.approx(0.8) and "tested once" in v["above_chance"]["claim"]
    assert cv_results.verdicts(folds, summary, study_base, 10, k=3)["above_chance"]["verdict"] == "n/a"
    record = cv_results.cv_record(cv_results.study_row(summary, study_base))
    assert record["lr"] == 0.05 and record["accuracy_mean"] == pytest.approx(np.mean([0.70, 0.73, 0.71])) and record["rank"] == 2
    assert cv_results.records(summary)[0]["lr"] == 0.1 and "config" not in cv_results.records(summary)[0]


def test_cv_verdicts_are_n_a_with_a_reason_when_there_is_nothing_to_compare():
    study_base = {"lr": 0.05, "batch_size": 128, "dropout": 0.5}
    alone = _folds({0.05: [0.5, 0.6]})
    v = cv_results.verdicts(alone, cv_results.summarize(alone), study_base, 10)
    assert v["chosen_vs_runner_up"]["verdict"] == "n/a" and "only one configuration" in v["chosen_vs_runner_up"]["reason"]
    assert v["chosen_vs_study"]["reason"] == "cross-validation chose the study's configuration itself"
    other = _folds({0.1: [0.5, 0.6], 0.003: [0.2, 0.1]})
    v = cv_results.verdicts(other, cv_results.summarize(other), study_base, 10)
    assert v["chosen_vs_study"]["reason"] == "the study's configuration was not part of this sweep"
    assert cv_results.study_row(cv_results.summarize(other), study_base) is None and cv_results.cv_record(None) is None


# --------------------------------------------------------------------------------------------
# Successive halving over epochs


def test_rung_schedule_follows_optunas_rungs_and_says_when_there_is_no_halving():
    assert halving.schedule(10, 3, 4).rungs == (3, 10)  # the full profile: 3 * 4 = 12 is past 10
    assert halving.schedule(10, 1, 2).rungs == (1, 2, 4, 8, 10)
    assert halving.schedule(27, 1, 3).rungs == (1, 3, 9, 27)
    for sched, why in ((halving.schedule(2, None), "off"), (halving.schedule(2, 2, 4), "not below"),
                       (halving.schedule(10, 3, 4, "tpe"), "TPE")):
        assert not sched.halving and sched.rungs == (sched.epochs,) and why in sched.reason
        assert halving.describe(sched).startswith("no successive halving")
    assert halving.survivors(10, halving.schedule(10, 3, 4)) == (10, 2)
    assert halving.survivors(10, halving.schedule(10, 1, 2)) == (10, 5, 2, 1, 1)
    assert halving.units_epochs(10, halving.schedule(10, 3, 4)) == 10 * 3 + 2 * 10
    with pytest.raises(ValueError, match="reduction_factor"):
        halving.schedule(10, 3, 1)


@pytest.mark.parametrize("n, eta", [(1, 4), (3, 4), (4, 4), (10, 4), (10, 2), (7, 3), (60, 4)])
def test_each_rung_decision_is_the_pruners_synchronous_rule_in_any_order(n, eta):
    sched = halving.schedule(10, 1, eta)
    rng = np.random.default_rng(n * eta)
    values = {f"c{i}": [float(v)] for i, v in enumerate(rng.random(n))}
    decided = halving.decide(values, {}, sched, 0)
    # Reference: the best max(1, n // eta) of the n values at the rung, all of them known.
    best = sorted(values, key=lambda key: -values[key][0])[:max(1, n // eta)]
    assert {key for key, promoted in decided.items() if promoted} == set(best)
    shuffled = dict(sorted(values.items(), key=lambda item: rng.random()))
    assert halving.decide(shuffled, {}, sched, 0) == decided  # the order of arrival does not matter


def test_a_tie_at_the_cut_is_broken_by_loss_then_order_so_the_bound_holds():
    sched = halving.schedule(10, 3, 4)
    values = {f"c{i}": [0.5] for i in range(10)}  # the pruner promotes every one of equal values
    losses = {f"c{i}": 1.0 for i in range(10)} | {"c7": 0.9}
    decided = halving.decide(values, losses, sched, 0)
    assert [key for key, promoted in decided.items() if promoted] == ["c0", "c7"]  # 10 // 4 = 2 go on


def _scripted_fit_many(delay=0.0):
    """A stand-in for train.fit_many whose validation accuracy is a fixed function of (configuration,
    fold, epoch), after ``delay`` s at most (drawn at random: workers then finish in any order)."""
    def fit_many(configs, x, y, train_indices, val_indices=None, **kw):
        time.sleep(delay * np.random.default_rng().random())  # workers finish in any order
        out = []
        for c, va in zip(configs, val_indices):
            fold = int(va[0]) % 7
            acc = [0.5 + 0.4 * (1 - np.exp(-e * c.lr * 20)) - 0.05 * c.dropout + 0.001 * fold for e in range(1, c.epochs + 1)]
            out.append([{"epoch": e + 1, "train_loss": 1 - a, "train_accuracy": a, "val_loss": 1 - a,
                         "val_accuracy": float(a), "seconds": 0.0, "lr": c.lr} for e, a in enumerate(acc)])
        return out
    return fit_many


HALVING = dict(space=search_space.grid(lr=[0.1, 0.05, 0.01, 0.005], dropout=[0.1, 0.5]), min_epochs=1,
               reduction_factor=2)


def _fates(storage):
    """config -> (trial state, decisions at rungs), for the latest trial of each configuration."""
    out = {}
    for t in sorted(trials(storage), key=lambda t: t.number):
        if t.state != TrialState.FAIL:
            out[t.user_attrs["config"]] = (t.state.name, {n: v for n, v in t.user_attrs.items() if n.startswith("rung_")})
    return out


def test_halving_is_rung_synchronous_and_its_promotions_do_not_depend_on_stacks_or_interruptions(
        fmnist, tiny, tmp_path, monkeypatch):
    args = {**tiny, **HALVING, "base": tiny["base"].replace(epochs=4)}  # rungs 1, 2, 4: 8 -> 4 -> 2 configurations
    runs = {}
    for name, stack_size in (("one at a time", 1), ("stacks of 5", 5)):
        monkeypatch.setattr(train, "fit_many", _scripted_fit_many())
        spy = Spy(monkeypatch)
        run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=tmp_path / f"{stack_size}.sqlite3",
                              stack_size=stack_size, **args)
        # Every unit of a rung is trained before any unit of the next: decisions wait for the whole rung.
        epochs = [c.epochs for call in spy.calls for c in call["configs"]]
        assert epochs == sorted(epochs) and epochs.count(1) == 8 * 2 and epochs.count(2) == 4 * 2
        assert epochs.count(4) == 2 * 2 and (run.trained, run.pending, run.pruned) == (28, 0, 6)
        runs[name] = _fates(tmp_path / f"{stack_size}.sqlite3")
    # Killed mid-rung (after its second stack), then resumed: the same promotions.
    monkeypatch.setattr(train, "fit_many", _scripted_fit_many())
    Spy(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=tmp_path / "i.sqlite3", stack_size=3, **args)
    monkeypatch.setattr(train, "fit_many", _scripted_fit_many())
    again = sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=tmp_path / "i.sqlite3", stack_size=3, **args)
    assert (again.reused, again.reused + again.trained) == (6, 28)
    runs["interrupted"] = _fates(tmp_path / "i.sqlite3")
    assert runs["one at a time"] == runs["stacks of 5"] == runs["interrupted"]
    fates = runs["interrupted"]
    assert sorted(state for state, _ in fates.values()) == ["COMPLETE"] * 2 + ["PRUNED"] * 6

    # The decisions are the reference rule on the stored means at each rung; the survivors are the best at the last.
    folds = cv_results.fold_results(tmp_path / "i.sqlite3", rungs="all")
    means = folds.groupby(["config", "rung_epochs"])["val_accuracy"].mean()
    alive = list(fates)
    for epochs in (1, 2):
        best = sorted(alive, key=lambda c: -means[c, epochs])[:len(alive) // 2]
        assert {c for c in alive if fates[c][1][f"rung_{epochs}"] == "promoted"} == set(best)
        alive = best
    summary = cv_results.summarize(cv_results.fold_results(tmp_path / "i.sqlite3"))
    assert sorted(summary["rung_epochs"]) == [1] * 4 + [2] * 2 + [4] * 2
    assert list(summary["pruned"]) == [summary["rung_epochs"].iloc[i] < 4 for i in range(8)]
    top = cv_results.ranked(summary).iloc[0]
    assert top["rung_epochs"] == 4 and top["config"] == max(alive, key=lambda c: means[c, 4])
    assert cv_results.ranked(summary)["rung_epochs"].tolist() == sorted(summary["rung_epochs"], reverse=True)
    # Each trial reports the mean over its folds after every epoch it reached.
    (t,) = [t for t in trials(tmp_path / "i.sqlite3", (TrialState.COMPLETE,)) if t.user_attrs["config"] == top["config"]]
    assert sorted(t.intermediate_values) == [1, 2, 3, 4] and t.value == pytest.approx(means[top["config"], 4])


def test_two_workers_wait_for_each_other_at_each_rung_and_promote_the_same(fmnist, tiny, tmp_path, monkeypatch):
    import threading

    args = {**tiny, **HALVING, "base": tiny["base"].replace(epochs=4), "stack_size": 2, "heartbeat_interval": 1}
    monkeypatch.setattr(train, "fit_many", _scripted_fit_many())
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=tmp_path / "alone.sqlite3", **args)
    monkeypatch.setattr(train, "fit_many", _scripted_fit_many(delay=0.3))
    errors = []

    def worker():
        try:
            sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=tmp_path / "two.sqlite3", **args)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    assert _fates(tmp_path / "two.sqlite3") == _fates(tmp_path / "alone.sqlite3")
    assert len(sweep.recorded_units(sweep.load_study(tmp_path / "two.sqlite3"))) == 28  # each unit once


def test_the_verdicts_compare_a_survivor_with_a_pruned_configuration_after_the_same_epochs(
        fmnist, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "fit_many", _scripted_fit_many())
    storage = tmp_path / "s.sqlite3"
    space = search_space.grid(lr=[0.1, 0.01, 0.001])
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **{**tiny, "base": tiny["base"].replace(epochs=3)},
                    min_epochs=1, reduction_factor=3)  # 3 -> 1 after one epoch
    folds = cv_results.fold_results(storage)
    summary = cv_results.summarize(folds)
    order = cv_results.ranked(summary)
    chosen, runner_up = order.iloc[0], order.iloc[1]
    assert (chosen["rung_epochs"], runner_up["rung_epochs"], bool(runner_up["pruned"])) == (3, 1, True)
    v = cv_results.verdicts(folds, summary, {"lr": 0.1}, 10, k=2)
    a = [by[0] for by in folds[folds["config"] == chosen["config"]].sort_values("fold")["val_accuracy_by_epoch"]]
    b = folds[folds["config"] == runner_up["config"]].sort_values("fold")["val_accuracy"].tolist()
    from fmnist_utils import stats
    expected = stats.verdict_cv_difference(
        "chosen_vs_runner_up", a, b, int(folds["n_train"].min()), int(folds["n_val"].min()), "the chosen configuration",
        "the runner-up", comparisons=2,
        why="the chosen configuration is the best of 3 on these folds; both after 1 epoch, the deepest rung both reached")
    assert v["chosen_vs_runner_up"] == expected
