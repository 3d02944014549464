"""The cross-validated sweep: spaces, protocol (no test data in selection), resumption after a
kill, stale trials, claims by several workers, summaries against the stored trials, bad input."""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

import sweep_helpers
from fmnist_utils import data, sweep, train
from fmnist_utils.train import TrainConfig

HELPERS = Path(sweep_helpers.__file__)


@pytest.fixture(autouse=True)
def tiny_model():
    sweep_helpers.register()
    yield
    train.MODELS.pop("tiny", None)


@pytest.fixture
def tiny():
    """Sweep settings with the tiny model: 2 configurations x 2 folds of 200 images."""
    return dict(base=TrainConfig(model="tiny", epochs=1, batch_size=32, precision="fp32", device="cpu"),
                k=2, subset=200, seed=0, verbose=False)


def complete_trials(storage, study_name="sweep"):
    study = optuna.load_study(study_name=study_name, storage=sweep.open_storage(storage))
    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def units(trials):
    return [(t.user_attrs["config"], t.user_attrs["fold"]) for t in trials]


class Spy:
    """Records what train.fit and train.evaluate were given (wrapping the real functions)."""

    def __init__(self, monkeypatch):
        self.fit, self.evaluate = [], []
        real_fit, real_eval = train.fit, train.evaluate

        def fit(model, x, y, config, *a, **kw):
            self.fit.append((x.clone(), y.clone(), config))
            return real_fit(model, x, y, config, *a, **kw)

        def evaluate(model, x, y, *a, **kw):
            self.evaluate.append((x.clone(), y.clone()))
            return real_eval(model, x, y, *a, **kw)

        monkeypatch.setattr(train, "fit", fit)
        monkeypatch.setattr(train, "evaluate", evaluate)


# --------------------------------------------------------------------------------------------
# Spaces


def test_study_grid_is_every_combination_in_order():
    space = sweep.study_grid()
    expected = [{"lr": a, "batch_size": b, "dropout": c}
                for a in sweep.STUDY_LRS for b in sweep.STUDY_BATCH_SIZES for c in sweep.STUDY_DROPOUTS]
    assert space.configs() == expected and len(expected) == 60


def test_one_factor_at_a_time_varies_one_factor_around_the_base():
    space = sweep.study_space("oat")
    configs = space.configs()
    base = sweep.STUDY_BASE
    # Reference: the base, then per factor each non-base value, written as plain loops.
    expected = [dict(base)]
    for name, values in (("lr", sweep.STUDY_LRS), ("batch_size", sweep.STUDY_BATCH_SIZES),
                         ("dropout", sweep.STUDY_DROPOUTS)):
        for v in values:
            if v != base[name]:
                expected.append({**base, name: v})
    assert configs == expected
    assert len(configs) == 1 + 3 + 2 + 4
    assert all(sum(c[n] != base[n] for n in base) <= 1 for c in configs)


def test_study_space_can_vary_some_factors_only():
    lr_only = sweep.study_space("oat", factors=("lr",)).configs()
    assert lr_only == [{**sweep.STUDY_BASE, "lr": v} for v in (0.05, 0.1, 0.003, 0.0005)]
    assert sweep.study_space("grid", factors=("dropout", "lr")).grid_size() == 5 * 4
    with pytest.raises(ValueError, match="study's factors"):
        sweep.study_space("oat", factors=("momentum",))


def test_random_space_draws_distinct_grid_points_reproducibly():
    a = sweep.random_search(7, seed=3, lr=sweep.STUDY_LRS, dropout=sweep.STUDY_DROPOUTS)
    b = sweep.random_search(7, seed=3, lr=sweep.STUDY_LRS, dropout=sweep.STUDY_DROPOUTS)
    keys = [sweep.config_key(c) for c in a.configs()]
    assert a.configs() == b.configs() and len(set(keys)) == 7
    grid_keys = {sweep.config_key(c) for c in sweep.grid(lr=sweep.STUDY_LRS, dropout=sweep.STUDY_DROPOUTS).configs()}
    assert set(keys) <= grid_keys


def test_space_round_trips_through_json():
    for space in (sweep.study_space("oat"), sweep.study_space("grid"), sweep.study_space("tpe", n_configs=5)):
        assert sweep.SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space


@pytest.mark.parametrize("make, message", [
    (lambda: sweep.grid(learning_rate=[0.1]), "not a TrainConfig hyperparameter"),
    (lambda: sweep.grid(device=["cpu"]), "not a hyperparameter"),
    (lambda: sweep.grid(), "empty"),
    (lambda: sweep.grid(lr=[]), "no values"),
    (lambda: sweep.grid(lr=[0.1, 0.1]), "repeats"),
    (lambda: sweep.one_factor_at_a_time({"lr": 0.05}, lr=[0.1], dropout=[0.5]), "lacks"),
    (lambda: sweep.random_search(5, lr=[0.1, 0.05]), "exceeds"),
    (lambda: sweep.SearchSpace("bayes", {"lr": [0.1]}), "unknown search space kind"),
])
def test_bad_spaces_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------------------------
# Bad input: errors before any training


@pytest.mark.parametrize("change, message", [
    (dict(k=1), "k >= 2"),
    (dict(k=21), "larger than the smallest class"),  # 200 images: 20 per class
    (dict(space=sweep.grid(dropout=[0.5, 1.5])), "not a valid TrainConfig"),
    (dict(subset=0), "subset size"),
])
def test_bad_input_fails_before_training(fmnist, tiny, tmp_path, monkeypatch, change, message):
    spy = Spy(monkeypatch)
    args = {**tiny, "space": sweep.grid(lr=[0.05]), "storage": tmp_path / "s.journal", **change}
    with pytest.raises(ValueError, match=message):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, **args)
    assert spy.fit == [] and not (tmp_path / "s.journal").exists()


def test_test_split_shaped_input_is_checked(fmnist, tiny, tmp_path):
    with pytest.raises(ValueError, match="uint8 training images"):
        sweep.run_sweep(fmnist.x_train.float(), fmnist.y_train, sweep.grid(lr=[0.05]), tmp_path / "s.journal", **tiny)


@pytest.mark.parametrize("change", [
    lambda t: dict(space=sweep.grid(lr=[0.05, 0.01, 0.1])),
    lambda t: dict(k=3),
    lambda t: dict(subset=300),
    lambda t: dict(seed=1),
    lambda t: dict(base=t["base"].replace(epochs=2)),
], ids=["space", "k", "subset", "seed", "epochs"])
def test_existing_study_with_other_settings_is_refused(fmnist, tiny, tmp_path, monkeypatch, change):
    storage = tmp_path / "s.journal"
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, sweep.grid(lr=[0.05, 0.01]), storage, **tiny)
    spy = Spy(monkeypatch)
    args = {**tiny, "space": sweep.grid(lr=[0.05, 0.01]), **change(tiny)}
    with pytest.raises(ValueError, match="other settings"):
        sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=storage, **args)
    assert spy.fit == []
    assert len(complete_trials(storage)) == 4


def test_other_data_is_refused(fmnist, tiny, tmp_path):
    storage = tmp_path / "s.journal"
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, sweep.grid(lr=[0.05]), storage, **tiny)
    flipped = fmnist.x_train.flip(3)
    with pytest.raises(ValueError, match="data_sha256"):
        sweep.run_sweep(flipped, fmnist.y_train, sweep.grid(lr=[0.05]), storage, **tiny)


# --------------------------------------------------------------------------------------------
# Protocol: folds, and no test image anywhere near selection


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


def test_folds_are_disjoint_stratified_and_test_data_never_used(fmnist, tiny, tmp_path, monkeypatch):
    x_train, x_test = _coded(fmnist, False), _coded(fmnist, True)
    spy = Spy(monkeypatch)
    space = sweep.grid(lr=[0.05, 0.01])
    k, n = 4, 400
    sweep.run_sweep(x_train, fmnist.y_train, space, tmp_path / "s.journal", **{**tiny, "k": k, "subset": n})
    subset = set(data.stratified_subset(fmnist.y_train, n, seed=0).tolist())
    y = fmnist.y_train.numpy()
    assert len(spy.fit) == len(spy.evaluate) == 2 * k
    for c in range(2):
        vals = []
        for (xf, yf, config), (xe, ye) in zip(spy.fit[c * k:(c + 1) * k], spy.evaluate[c * k:(c + 1) * k]):
            (tr, tr_split), (va, va_split) = _rows(xf), _rows(xe)
            assert tr_split == va_split == {0}, "a test image reached selection"
            assert set(tr).isdisjoint(va) and set(tr) | set(va) == subset
            assert torch.equal(yf, fmnist.y_train[tr]) and torch.equal(ye, fmnist.y_train[va])
            # Stratified: each class's share of a fold is within one image of n_c / k.
            counts = np.bincount(y[va], minlength=10)
            assert np.all(np.abs(counts - n / 10 / k) <= 1)
            vals.append(va)
        flat = [i for v in vals for i in v]
        assert len(flat) == len(set(flat)) == n  # the k validation folds partition the subset

    # The final model: trained on training images only, evaluated on the test set exactly once.
    spy.fit.clear(), spy.evaluate.clear()
    _, final = sweep.final_model(tiny["base"], x_train, fmnist.y_train, x_test, fmnist.y_test,
                                 subset=500, test_subset=300, progress=False)
    assert [_rows(x)[1] for x, _, _ in spy.fit] == [{0}]
    assert [_rows(x)[1] for x, _ in spy.evaluate] == [{255}]
    assert (final["n_train"], final["n_test"]) == (500, 300)


def test_selection_ignores_the_test_set(fmnist, tiny, tmp_path, monkeypatch):
    """Selection is a function of the stored CV results alone: scoring any test image during the
    sweep fails this test, and the choice equals a plain argmax over the trials' validation scores."""
    test_rows = {bytes(img.numpy()) for img in fmnist.x_test[:2000]}
    real_eval = train.evaluate

    def guarded(model, x, y, *a, **kw):
        assert not any(bytes(img.numpy()) in test_rows for img in x), "selection scored test images"
        return real_eval(model, x, y, *a, **kw)

    monkeypatch.setattr(train, "evaluate", guarded)
    storage = tmp_path / "s.journal"
    space = sweep.grid(lr=[0.2, 0.05, 0.001], dropout=[0.1])
    sweep.run_sweep(fmnist.x_train[:10_000], fmnist.y_train[:10_000], space, storage, **tiny)
    summary = sweep.summarize(sweep.fold_results(storage))
    scores = {}
    for t in complete_trials(storage):
        scores.setdefault(t.user_attrs["config"], []).append((t.value, t.user_attrs["result"]["val_loss"]))
    # Highest mean validation accuracy; ties go to the lower mean validation loss.
    expected = max(scores, key=lambda c: (statistics.mean(a for a, _ in scores[c]),
                                          -statistics.mean(l for _, l in scores[c])))
    assert sweep.best_hyperparameters(summary) == json.loads(expected)
    assert sweep.best_config(summary, tiny["base"]) == tiny["base"].replace(**json.loads(expected))


# --------------------------------------------------------------------------------------------
# Summaries against the stored trials


def test_summary_equals_the_stored_trials(fmnist, tiny, tmp_path):
    storage = tmp_path / "s.journal"
    space = sweep.one_factor_at_a_time({"lr": 0.05, "dropout": 0.5}, lr=[0.1, 0.05, 0.01], dropout=[0.1, 0.5])
    sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **{**tiny, "k": 3, "subset": 300})
    folds = sweep.fold_results(storage)
    summary = sweep.summarize(folds)
    trials = complete_trials(storage)
    assert len(folds) == len(trials) == 4 * 3
    assert list(summary["config"]) == [sweep.config_key(c) for c in space.configs()]
    for _, row in summary.iterrows():
        mine = [t for t in trials if t.user_attrs["config"] == row["config"]]
        acc = [t.user_attrs["result"]["val_accuracy"] for t in mine]
        loss = [t.user_attrs["result"]["val_loss"] for t in mine]
        assert [t.value for t in mine] == acc
        np.testing.assert_allclose(row["accuracy_mean"], statistics.mean(acc))
        np.testing.assert_allclose(row["accuracy_std"], statistics.stdev(acc))
        np.testing.assert_allclose(row["loss_mean"], statistics.mean(loss))
        np.testing.assert_allclose(row["loss_std"], statistics.stdev(loss))
        np.testing.assert_allclose(row["seconds"], sum(t.user_attrs["result"]["seconds"] for t in mine))
        assert row["n_folds"] == 3 and row["epochs"] == 1
    tables = sweep.factor_tables(summary, {"lr": 0.05, "dropout": 0.5})
    assert list(tables) == ["lr", "dropout"]
    assert list(tables["lr"]["lr"]) == [0.05, 0.1, 0.01] and list(tables["lr"]["is_base"]) == [True, False, False]
    assert list(tables["dropout"]["dropout"]) == [0.5, 0.1]
    base_row = summary[summary["config"] == sweep.config_key({"lr": 0.05, "dropout": 0.5})]
    assert tables["lr"]["accuracy_mean"].iloc[0] == base_row["accuracy_mean"].iloc[0]


def test_best_needs_complete_configurations():
    import pandas as pd

    rows = pd.DataFrame({
        "config": ['{"lr": 0.1}', '{"lr": 0.1}', '{"lr": 0.2}', '{"lr": 0.3}', '{"lr": 0.3}'],
        "lr": [0.1, 0.1, 0.2, 0.3, 0.3], "fold": [0, 1, 0, 0, 1],
        "val_accuracy": [0.5, 0.7, 0.99, 0.6, 0.6], "val_loss": [1.0, 0.8, 0.1, 0.9, 0.9],
        "epochs": 1, "seconds": 1.0,
    })
    summary = sweep.summarize(rows)
    # lr=0.2 has the top accuracy but only one of two folds; lr=0.1 ties lr=0.3 on accuracy and wins on loss.
    assert sweep.best_hyperparameters(summary) == {"lr": 0.1}
    with pytest.raises(ValueError, match="no configuration has all 3 folds"):
        sweep.best_row(summary, k=3)


# --------------------------------------------------------------------------------------------
# Resumption, stale trials, several workers


def test_rerun_of_a_finished_sweep_trains_nothing(fmnist, tiny, tmp_path, monkeypatch):
    storage = tmp_path / "s.journal"
    first = sweep.run_sweep(fmnist.x_train, fmnist.y_train, sweep.grid(lr=[0.05, 0.01]), storage, **tiny)
    assert (first.trained, first.reused, first.pending, first.n_units) == (4, 0, 0, 4)
    spy = Spy(monkeypatch)
    again = sweep.run_sweep(fmnist.x_train, fmnist.y_train, sweep.grid(lr=[0.05, 0.01]), storage, **tiny)
    assert (again.trained, again.reused, again.pending) == (0, 4, 0) and spy.fit == []


@pytest.mark.slow
def test_killed_sweep_resumes_without_losing_or_retraining_a_fold(fmnist, tmp_path, monkeypatch):
    storage = tmp_path / "s.journal"
    env = {**os.environ, "FMNIST_TEST_UNIT_DELAY": "0.4"}
    proc = subprocess.Popen([sys.executable, str(HELPERS), str(storage)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if storage.exists():
                try:
                    if len(complete_trials(storage)) >= 3:
                        break
                except KeyError:  # the study is not created yet
                    pass
            time.sleep(0.1)
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = {(t.user_attrs["config"], t.user_attrs["fold"]): (t.number, t.user_attrs["result"])
              for t in complete_trials(storage)}
    n_units = 12
    assert 3 <= len(before) < n_units

    spy = Spy(monkeypatch)
    kwargs = sweep_helpers.sweep_kwargs()
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, storage=storage, **kwargs)
    after = complete_trials(storage)
    done = units(after)
    assert sorted(done) == sorted(set(done)) and len(done) == n_units  # every unit exactly once
    for t in after:  # the finished folds are the same trials with the same results
        unit = (t.user_attrs["config"], t.user_attrs["fold"])
        if unit in before:
            assert (t.number, t.user_attrs["result"]) == before[unit]
    assert (run.reused, run.trained, run.pending) == (len(before), n_units - len(before), 0)
    numbers = {number for number, _ in before.values()}
    new = [(t.user_attrs["config"], t.user_attrs["fold"]) for t in after if t.number not in numbers]
    assert set(new).isdisjoint(before) and len(new) == len(spy.fit) == n_units - len(before)
    # The unit the kill interrupted was left RUNNING and is now marked FAIL as stale.
    study = optuna.load_study(study_name="sweep", storage=sweep.open_storage(storage))
    failed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL]
    assert all("stale" in t.user_attrs["failed_because"] for t in failed)
    assert not [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]


def _running_trial(storage, space, params, fold, **owner):
    st = sweep.open_storage(storage)
    study_id = st.get_study_id_from_name("sweep")
    dists = space.distributions()
    attrs = {"config": sweep.config_key(params), "fold": fold, "run_id": "elsewhere", "worker": 9, **owner}
    t = optuna.trial.create_trial(state=TrialState.RUNNING, params=params,
                                  distributions={n: dists[n] for n in params}, user_attrs=attrs)
    return st.get_trial(st.create_new_trial(study_id, template_trial=t)).number


def _empty_study(fmnist, tiny, storage, space):
    """Create study "sweep" with the settings run_sweep(space, **tiny) expects, and no trials."""
    idx = data.stratified_subset(fmnist.y_train, tiny["subset"], seed=tiny["seed"])
    fingerprint = sweep.data_fingerprint(fmnist.x_train[idx], fmnist.y_train[idx])
    settings = sweep.sweep_settings(space, tiny["k"], tiny["seed"], tiny["subset"], len(idx), fingerprint,
                                    tiny["base"])
    st = sweep.open_storage(storage)
    optuna.create_study(storage=st, study_name="sweep", direction="maximize").set_user_attr(
        sweep.SETTINGS_ATTR, settings)
    return st


def test_stale_trials_are_redone_and_live_ones_left_alone(fmnist, tiny, tmp_path):
    storage = tmp_path / "s.journal"
    space = sweep.grid(lr=[0.05, 0.01, 0.1])
    st = _empty_study(fmnist, tiny, storage, space)
    dead = subprocess.Popen(["true"])
    dead.wait()
    now = time.time()
    here = socket.gethostname()
    c0, c1, c2 = space.configs()
    gone = _running_trial(storage, space, c0, 0, host=here, pid=dead.pid, pid_start=None, heartbeat=now)
    silent = _running_trial(storage, space, c1, 0, host="elsewhere", pid=1, heartbeat=now - 3600)
    alive = _running_trial(storage, space, c2, 1, host="elsewhere", pid=1, heartbeat=now)
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny)
    assert (run.trained, run.pending) == (5, 1)  # all but the unit a live worker elsewhere holds
    trials = {t.number: t for t in optuna.load_study(study_name="sweep", storage=st).get_trials()}
    assert trials[gone].state == trials[silent].state == TrialState.FAIL
    assert "is gone" in trials[gone].user_attrs["failed_because"]
    assert "no heartbeat" in trials[silent].user_attrs["failed_because"]
    assert trials[alive].state == TrialState.RUNNING


def test_a_later_claim_of_the_same_unit_withdraws(fmnist, tiny, tmp_path):
    """Across machines there is no shared lock: the storage decides, the earliest claim wins."""
    storage = tmp_path / "s.journal"
    space = sweep.grid(lr=[0.05])
    st = _empty_study(fmnist, tiny, storage, space)
    first = _running_trial(storage, space, {"lr": 0.05}, 0, host="elsewhere", pid=1, heartbeat=time.time())
    w = sweep._Worker(st, str(storage), "sweep", st.get_study_id_from_name("sweep"), space, 2, tiny["base"],
                      fmnist.x_train[:200], fmnist.y_train[:200], [], "me", 0, 30.0, 180.0, False)
    assert sweep._create_claim(w, {"lr": 0.05}, 0) is None  # the earlier live claim wins
    claim = sweep._create_claim(w, {"lr": 0.05}, 1)  # a free unit is claimed
    assert claim is not None and claim.number > first
    trials = optuna.load_study(study_name="sweep", storage=st).get_trials()
    withdrawn = [t for t in trials if t.state == TrialState.FAIL]
    assert len(withdrawn) == 1 and "withdrawn" in withdrawn[0].user_attrs["failed_because"]
    assert trials[first].state == TrialState.RUNNING


@pytest.mark.slow
def test_two_workers_train_each_unit_exactly_once_with_the_real_cnn(fmnist, tmp_path):
    storage = tmp_path / "s.journal"
    base = TrainConfig(epochs=1, batch_size=64, precision="fp32", device="cpu", eval_batch_size=256)
    space = sweep.grid(lr=[0.05, 0.01], dropout=[0.5])
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, base=base, k=2, subset=120,
                          workers=2, verbose=False)
    assert (run.trained, run.reused, run.pending, run.workers) == (4, 0, 0, 2)
    study = optuna.load_study(study_name="sweep", storage=sweep.open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    # The claim lock serialises claims on one machine: no duplicate, no withdrawn trial.
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(units(trials)) == sorted((sweep.config_key(c), f) for c in space.configs() for f in range(2))
    assert {t.user_attrs["result"]["n_train"] for t in trials} == {60}


@pytest.mark.slow
def test_two_workers_on_a_database_url_share_units_without_a_lock(fmnist, tmp_path):
    """A URL gets no file lock (the workers may sit on several machines): the storage arbitrates."""
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    base = TrainConfig(epochs=1, batch_size=64, precision="fp32", device="cpu", eval_batch_size=256)
    space = sweep.grid(lr=[0.05, 0.01], dropout=[0.5])
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, url, base=base, k=2, subset=120, workers=2,
                          verbose=False)
    assert (run.trained, run.pending) == (4, 0)
    trials = optuna.load_study(study_name="sweep", storage=url).get_trials(deepcopy=False)
    done = units([t for t in trials if t.state == TrialState.COMPLETE])
    assert sorted(done) == sorted((sweep.config_key(c), f) for c in space.configs() for f in range(2))
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all("withdrawn" in t.user_attrs["failed_because"] for t in others)


def test_database_url_storage(fmnist, tiny, tmp_path):
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    first = sweep.run_sweep(fmnist.x_train, fmnist.y_train, sweep.grid(lr=[0.05, 0.01]), url, **tiny)
    again = sweep.run_sweep(fmnist.x_train, fmnist.y_train, sweep.grid(lr=[0.05, 0.01]), url, **tiny)
    assert (first.trained, again.trained, again.reused) == (4, 0, 4)
    assert len(sweep.fold_results(url)) == 4


def test_tpe_proposes_distinct_configurations_and_resumes(fmnist, tiny, tmp_path, monkeypatch):
    storage = tmp_path / "s.journal"
    space = sweep.tpe_search(4, seed=0, lr=[0.1, 0.05, 0.01], dropout=[0.1, 0.5])
    run = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny)
    folds = sweep.fold_results(storage)
    assert run.trained == run.n_units == 8 and folds["config"].nunique() == 4
    assert folds.groupby("config")["fold"].apply(sorted).tolist() == [[0, 1]] * 4
    spy = Spy(monkeypatch)
    again = sweep.run_sweep(fmnist.x_train, fmnist.y_train, space, storage, **tiny)
    assert again.trained == 0 and spy.fit == []


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
    chosen = summary[sweep.config_key(first["best_hyperparameters"])]
    assert (best.lr, best.batch_size, best.dropout) == (chosen["lr"], chosen["batch_size"], chosen["dropout"])
    assert chosen["accuracy_mean"] == max(row["accuracy_mean"] for row in first["summary"])
    assert 0 <= first["final"]["test_accuracy"] <= 1 and first["final"]["n_test"] == first["protocol"]["test_images"]
    for name in first["figures"].values():
        assert (run / "01_sweep" / name).is_file()

    again = execute("again.ipynb")  # the report re-run: every fold comes from the journal
    assert (again["run"]["trained"], again["run"]["reused"]) == (0, n_units)
    assert again["summary"] == first["summary"] and again["best_config"] == first["best_config"]

    stamp = {"notebook": "01_sweep", "source": str(notebook), "seconds": again["seconds"], "executed": True,
             "finished_utc": "", "executed_notebook": "01_sweep.ipynb", "status": "done", "key": "", "parameters": {}}
    page = report.render(run, [stamp])
    assert '<section id="01_sweep"' in page and report.pct(first["best_cv"]["accuracy_mean"]) in page
