"""The ablation of 04_improvements: rows built from the presets (one option changed per row),
validation-only choices, the paired test across seeds, the table, the cache, and the notebook."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

import report_fixtures as F
from fmnist_utils import ensemble, improve, improve_runs, profiles, report, stats, train
from fmnist_utils.improve import OPTIONS, Outcome, ablation_rows, select_rows

ROOT = Path(__file__).resolve().parent.parent


def changed_fields(a: train.TrainConfig, b: train.TrainConfig) -> set[str]:
    da, db = a.to_dict(), b.to_dict()
    return {k for k in da if da[k] != db[k]}


# --------------------------------------------------------------------------------------------
# Rows


def test_options_cover_the_modern_preset_once_and_each_changes_something():
    fields = [f for o in OPTIONS.values() for f in o.fields]
    assert len(fields) == len(set(fields)), "a field belongs to two options"
    assert set(fields) == set(train.PRESETS["modern"]) - set(improve.BUDGET_FIELDS)
    default = train.TrainConfig()
    for o in OPTIONS.values():
        assert any(train.PRESETS["modern"][f] != getattr(default, f) for f in o.fields), o.name


def test_every_row_changes_exactly_its_named_settings_from_its_reference():
    rows = ablation_rows()
    order = list(rows)
    budget = {"epochs": 3, "seed": 7}
    for name, row in rows.items():
        assert row.kind in improve.KINDS
        if row.reference is None:
            assert name == "study" and row.config(**budget) == train.preset("study", **budget)
            continue
        ref = rows[row.reference]
        assert order.index(ref.name) < order.index(name), "a reference comes before its row"
        if row.members:
            assert set(row.members) <= set(order[: order.index(name)]) and ref.name in row.members
            continue
        diff = changed_fields(row.config(**budget), ref.config(**budget))
        assert diff == set(row.changed) and diff, name
        if row.kind in ("with", "without"):
            assert row.changed == OPTIONS[name.split("+" if row.kind == "with" else "-", 1)[1]].fields
    # The two recipes are the presets themselves at the same budget.
    assert rows["modern"].config(**budget) == train.preset("modern", **budget)


def test_with_and_without_rows_take_their_values_from_the_presets():
    rows, default = ablation_rows(), train.TrainConfig()
    for o in OPTIONS.values():
        added = rows[f"study+{o.name}"].config()
        removed = rows[f"modern-{o.name}"].config(epochs=train.PRESETS["modern"]["epochs"])
        for f in o.fields:
            assert getattr(added, f) == train.PRESETS["modern"][f]
            assert getattr(removed, f) == getattr(default, f)


def test_suggestions_resnet_and_ensemble_rows():
    rows = ablation_rows()
    assert {rows[f"study+{n}"].config().optimizer for n in ("adam", "rmsprop")} == {"adam", "rmsprop"}
    assert rows["study+kernel5"].config().kernel_size > train.TrainConfig().kernel_size
    assert rows["resnet18"].config().model == "resnet18" and rows["resnet18"].reference == "modern"
    assert rows["ensemble"].members == ("modern", "resnet18") and rows["ensemble"].settings is None
    with pytest.raises(ValueError, match="no TrainConfig"):
        rows["ensemble"].config()


def test_ema_warms_up_then_decays_at_its_rate():
    """The averaged weights follow e_n = d_n e_(n-1) + (1 - d_n) p_n, d_n = min(decay, (1 + n) / (10 + n))."""
    decay = 0.99
    model = torch.nn.Linear(1, 1, bias=False)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=train.ema_multi_avg_fn(decay), use_buffers=True)
    rng = np.random.default_rng(0)
    expected = None
    for n, value in enumerate(rng.normal(size=300)):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        d = min(decay, (1 + n) / (10 + n))
        expected = value if n == 0 else d * expected + (1 - d) * value
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # Early on the average forgets the initial weights quickly: after 60 steps they weigh little.
    weight_of_first = np.prod([min(decay, (1 + n) / (10 + n)) for n in range(1, 61)])
    assert weight_of_first < 0.01 < decay ** 60


@pytest.mark.parametrize("row", ["study+onecycle", "modern"])
def test_the_one_cycle_schedule_leaves_momentum_to_the_config(row):
    config = ablation_rows()[row].config(epochs=2)
    opt = train.build_optimizer(torch.nn.Linear(2, 2), config)
    schedule = train.SCHEDULES[config.schedule](opt, config, 10)
    for _ in range(20):
        assert opt.param_groups[0]["momentum"] == config.momentum
        opt.step()
        schedule.step()


def test_l1_pulls_each_weight_about_as_hard_as_the_studys_l2():
    model = train.build_model(train.TrainConfig())
    weights = torch.cat([p.detach().abs().flatten() for p in model.parameters() if p.ndim > 1])
    l2_pull = train.TrainConfig().weight_decay * weights.mean().item()
    assert 0.5 < improve.L1 / l2_pull < 2


def test_select_rows_keeps_table_order_and_needs_references_and_members():
    assert [r.name for r in select_rows(["modern", "study"])] == ["study", "modern"]
    assert len(select_rows()) == len(ablation_rows())
    with pytest.raises(ValueError, match="unknown ablation rows"):
        select_rows(["study", "nope"])
    with pytest.raises(ValueError, match=r"needs the rows \['study'\]"):
        select_rows(["modern"])
    with pytest.raises(ValueError, match="modern"):
        select_rows(["study", "resnet18", "ensemble"])
    for p in profiles.PROFILES.values():
        select_rows(p.improve.rows)  # every profile's selection is complete


# --------------------------------------------------------------------------------------------
# Data


def test_split_holds_validation_out_of_the_training_split(fmnist):
    split = improve.make_split(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test, 1_000, 0.2, 300)
    assert len(np.intersect1d(split.train_indices, split.val_indices)) == 0
    assert (len(split.train_indices), len(split.val_indices), len(split.y_test)) == (800, 200, 300)
    np.testing.assert_array_equal(np.bincount(split.y_val.numpy(), minlength=10), np.full(10, 20))
    again = improve.make_split(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test, 1_000, 0.2, 300)
    assert again.digest() == split.digest()
    with pytest.raises(ValueError, match="val_fraction"):
        improve.make_split(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test, 1_000, 0.0, 300)


# --------------------------------------------------------------------------------------------
# Statistics


def test_paired_difference_matches_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.9, 0.01, 5), rng.normal(0.89, 0.01, 5)
    d = improve.paired_difference(a, b)
    assert d["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    ci = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (d["low"], d["high"]) == pytest.approx((ci.low, ci.high))
    assert d["value"] == pytest.approx(np.mean(a - b)) and d["n"] == 5


def test_paired_difference_is_paired_by_seed():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.9, 0.01, 4), rng.normal(0.9, 0.01, 4)
    seed_effect = rng.normal(0, 0.05, 4)  # a seed that helps both rows alike cancels out
    shifted = improve.paired_difference(a + seed_effect, b + seed_effect)
    for k, v in improve.paired_difference(a, b).items():
        assert shifted[k] == pytest.approx(v)


def test_paired_difference_edge_cases():
    one = improve.paired_difference([0.9], [0.8])
    assert one["value"] == pytest.approx(0.1) and one["low"] is None and one["p"] is None
    same = improve.paired_difference([0.75, 0.5], [0.5, 0.25])  # exact in binary: the differences are equal
    # No spread: no p of 0 from a handful of equal numbers (as stats.corrected_resampled_ttest).
    assert (same["low"], same["high"], same["p"]) == (None, None, None) and same["value"] == 0.25
    assert "same difference" in same["reason"]
    zero = improve.paired_difference([0.5, 0.6], [0.5, 0.6])
    assert zero["p"] is None and zero["value"] == 0 and zero["reason"]
    with pytest.raises(ValueError, match="equal-length"):
        improve.paired_difference([0.9, 0.8], [0.8])


def fake_outcome(name, test_acc, val_probs=None, test_probs=None, seconds=10.0):
    n = len(test_acc)
    return Outcome(name, list(range(n)), np.full(n, 0.5), np.asarray(test_acc, dtype=float), seconds,
                   val_probs, test_probs, [False] * n)


@pytest.mark.parametrize("row_acc, verdict", [
    ([0.92, 0.93, 0.925], "higher"),
    ([0.80, 0.81, 0.805], "lower"),
    ([0.91, 0.89, 0.905], "no_significant_difference"),
    ([0.95], "n/a"),
    ([0.925, 0.925, 0.925], "n/a"),  # three equal differences: no spread to test against
])
def test_row_verdict_words_the_interval(row_acc, verdict):
    rows = ablation_rows()
    ref = fake_outcome("study", [0.90, 0.90, 0.90][: len(row_acc)])
    record = improve.row_verdict(rows["modern"], rows["study"], fake_outcome("modern", row_acc), ref)
    assert record["verdict"] == verdict and record["key"] == "row:modern"
    assert set(record) >= {"claim", "statistic", "value", "low", "high", "level", "p", "test", "n", "reason"}
    assert (record["reason"] is None) == (verdict != "n/a")
    assert "these test images" in record["claim"] and "averaged over the seeds" in record["test"]
    if verdict != "n/a":  # the interval printed beside the verdict agrees with it
        assert (record["low"] > 0 or record["high"] < 0) == (verdict in ("higher", "lower"))


def test_families_are_declared_from_the_rows_alone():
    rows = select_rows(["study", "modern", "modern-nesterov", "study+adam", "study+nesterov"])
    assert improve.families(rows) == {"primary": ["modern", "study+adam"],
                                      "exploratory": ["modern-nesterov", "study+nesterov"]}
    every = improve.families(select_rows())
    assert every["primary"] == list(improve.PRIMARY_ROWS)
    assert not set(every["primary"]) & set(every["exploratory"])


def test_verdicts_correct_each_family_and_print_adjusted_numbers_that_agree():
    rows = select_rows(["study", "modern", "modern-nesterov", "study+adam", "study+nesterov"])
    outcomes = {"study": fake_outcome("study", [0.80, 0.82, 0.81]),
                "modern": fake_outcome("modern", [0.88, 0.89, 0.875]),
                "modern-nesterov": fake_outcome("modern-nesterov", [0.87, 0.89, 0.88]),
                "study+adam": fake_outcome("study+adam", [0.79, 0.83, 0.80]),
                "study+nesterov": fake_outcome("study+nesterov", [0.85, 0.86, 0.84])}
    records = improve.verdicts(rows, outcomes)
    raw = {n: improve.paired_difference(outcomes[n].test_accuracy, outcomes[r.reference].test_accuracy)["p"]
           for r in rows if r.reference for n in [r.name]}
    holm = stats.holm([raw["modern"], raw["study+adam"]])
    assert records["row:modern"]["p"] == pytest.approx(holm["p_adjusted"][0])
    assert records["row:modern"]["family"] == "primary" and "Holm over 2 comparisons" in records["row:modern"]["test"]
    assert records["row:study+nesterov"]["family"] == "exploratory"
    assert "Benjamini-Hochberg over 2" in records["row:study+nesterov"]["test"]
    for r in records.values():
        assert (r["p"] < 0.05) == (r["verdict"] in ("higher", "lower")) == (r["low"] > 0 or r["high"] < 0)
    assert records["row:modern"]["level"] == pytest.approx(1 - holm["alpha_each"][0])


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_family_wise_error_of_the_primary_family_under_the_global_null(profile):
    # Every row equally good (a shared seed effect plus independent noise): the chance that any
    # primary comparison reads "higher" or "lower" must stay at or below 5%, Monte Carlo error allowed.
    prof = profiles.PROFILES[profile].improve
    names = list(prof.rows) if prof.rows is not None else list(ablation_rows())
    primary = [n for n in improve.families(select_rows(names))["primary"]]
    rows = select_rows(sorted({"study", *primary, *(ablation_rows()[n].reference for n in primary)},
                              key=list(ablation_rows()).index))
    assert improve.families(rows)["primary"] == primary and primary
    rng = np.random.default_rng(7)
    sims, any_rejected = 600, 0
    for _ in range(sims):
        seed_effect = rng.normal(0, 0.02, prof.seeds)
        outcomes = {r.name: fake_outcome(r.name, 0.85 + seed_effect + rng.normal(0, 0.01, prof.seeds)) for r in rows}
        records = improve.verdicts(rows, outcomes)
        any_rejected += any(records[f"row:{n}"]["verdict"] in ("higher", "lower") for n in primary)
    mc = 3 * np.sqrt(0.05 * 0.95 / sims)
    assert any_rejected / sims <= 0.05 + mc


def test_summary_table_has_one_row_per_row_with_its_reference():
    rows = select_rows(["study", "modern", "study+nesterov"])
    outcomes = {"study": fake_outcome("study", [0.80, 0.82, 0.81], seconds=30.0),
                "modern": fake_outcome("modern", [0.88, 0.89, 0.87]),
                "study+nesterov": fake_outcome("study+nesterov", [0.85, 0.86, 0.84])}
    records = improve.verdicts(rows, outcomes)
    assert set(records) == {"row:modern", "row:study+nesterov"}
    table = improve.summary_table(rows, outcomes, records)
    assert [t["row"] for t in table] == ["study", "modern", "study+nesterov"]
    assert [t["reference"] for t in table] == [None, "study", "study"]
    assert table[0]["verdict"] is None and table[1]["verdict"] == "higher"
    assert table[1]["accuracy_sd"] == pytest.approx(np.std([0.88, 0.89, 0.87], ddof=1))
    assert table[0]["seconds_per_model"] == pytest.approx(10.0)


# --------------------------------------------------------------------------------------------
# The ensemble weight is chosen on validation only


def random_probs(rng, n, c=10):
    p = rng.random((n, c)) ** 4
    return p / p.sum(1, keepdims=True)


def test_ensemble_weight_is_chosen_on_validation_and_blind_to_the_test_set(monkeypatch):
    rng = np.random.default_rng(0)
    seeds, n_val, n_test = 3, 60, 50
    y_val, y_test = rng.integers(0, 10, n_val), rng.integers(0, 10, n_test)
    val_a = np.stack([random_probs(rng, n_val) for _ in range(seeds)])
    val_b = np.stack([0.5 * np.eye(10)[y_val] + 0.5 * random_probs(rng, n_val) for _ in range(seeds)])
    test_a = np.stack([random_probs(rng, n_test) for _ in range(seeds)])
    test_b = np.stack([random_probs(rng, n_test) for _ in range(seeds)])
    row = ablation_rows()["ensemble"]

    def members(ta, tb):
        return [fake_outcome("modern", [0.8] * seeds, val_a, ta), fake_outcome("resnet18", [0.9] * seeds, val_b, tb)]

    seen = []
    real = ensemble.choose_weight
    monkeypatch.setattr(ensemble, "choose_weight", lambda a, b, y, **kw: seen.append((a, b, y)) or real(a, b, y, **kw))
    first = improve.ensemble_row(row, members(test_a, test_b), y_val, y_test)
    weights = first.extra["weight_modern"]
    assert weights == [real(val_a[i], val_b[i], y_val)["weight"] for i in range(seeds)]
    assert len(seen) == seeds
    for i, (a, b, y) in enumerate(seen):  # only validation probabilities and labels came in
        assert np.array_equal(a, val_a[i]) and np.array_equal(b, val_b[i]) and y is y_val
    # Test predictions that favour the other model, and other test labels, change nothing chosen.
    flipped = improve.ensemble_row(row, members(0.5 * np.eye(10)[y_test][None].repeat(seeds, 0) + 0.5 * test_b, test_a),
                                   y_val, rng.integers(0, 10, n_test))
    assert flipped.extra["weight_modern"] == weights
    for i, w in enumerate(weights):
        np.testing.assert_allclose(first.test_probs[i], w * test_a[i] + (1 - w) * test_b[i])
    assert first.seconds == 20.0


def test_a_diverged_model_predicts_the_uniform_distribution():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return torch.full((len(x), 10), float("nan")) * self.w

    p = improve.probabilities(Broken(), torch.zeros(4, 1, 28, 28, dtype=torch.uint8), train.TrainConfig(precision="fp32"))
    np.testing.assert_allclose(p, 0.1)


# --------------------------------------------------------------------------------------------
# Training rows, caching, the notebook


def test_run_rows_pairs_seeds_reads_each_split_once_and_reuses_a_cached_row(fmnist, tmp_path, monkeypatch):
    split = improve.make_split(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test, 200, 0.25, 100)
    rows = select_rows(["study", "study+nesterov"])
    budget = {"epochs": 1, "batch_size": 50, "device": "cpu", "precision": "fp32"}
    calls = []
    real_predict = train.predict_logits
    monkeypatch.setattr(train, "predict_logits", lambda m, x, *a, **k: calls.append(len(x)) or real_predict(m, x, *a, **k))
    first = improve.run_rows(rows, split, [0, 1], budget, cache=tmp_path)
    # Each final model reads the validation images once and the test images once.
    assert sorted(calls) == sorted([50, 100] * 4)
    assert first["study"].seeds == [0, 1] and first["study"].val_probs.shape == (2, 50, 10)
    assert first["study"].steps == 3  # 150 training images in batches of 50, one epoch
    monkeypatch.setattr(improve_runs, "train_seeds", lambda *a, **k: pytest.fail("a cached row was trained again"))
    again = improve.run_rows(rows, split, [0, 1], budget, cache=tmp_path)
    np.testing.assert_allclose(again["study"].test_accuracy, first["study"].test_accuracy)
    np.testing.assert_allclose(again["study"].test_probs, first["study"].test_probs, rtol=1e-6)
    with pytest.raises(pytest.fail.Exception):  # another budget is another experiment
        improve.run_rows(rows, split, [0, 1], {**budget, "epochs": 2}, cache=tmp_path)


def test_a_rows_time_is_its_epochs_alone_not_the_planners_probes(fmnist, monkeypatch):
    """Table 12's time per model: the epochs' seconds, whatever else ran around train_seeds."""
    split = improve.make_split(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test, 200, 0.25, 100)
    histories = [[{"epoch": 1, "train_loss": 0.5, "seconds": 1.5}, {"epoch": 2, "train_loss": 0.25, "seconds": 2.25}],
                 [{"epoch": 1, "train_loss": 0.5, "seconds": 1.5}, {"epoch": 2, "diverged": "loss is nan", "step": 3}]]
    planned = []

    def train_seeds(configs, *args, **kw):
        planned.append(len(configs))  # stands for the planner's probes: they take time, but record none
        return histories, [None] * len(configs)

    monkeypatch.setattr(improve_runs, "train_seeds", train_seeds)
    outcome = improve.train_row(select_rows(["study"])[0], split, [0, 1], {"epochs": 2, "device": "cpu"}, progress=False)
    assert planned == [2]
    assert outcome.seconds == improve.training_seconds(histories) == 5.25
    assert outcome.seconds_per_model == 2.625
    assert improve.training_seconds([]) == 0.0


def test_seeds_of_a_row_are_the_single_runs(fmnist):
    """train_seeds trains what fit trains: seed s of a row is the run TrainConfig(seed=s) would give."""
    x, y = fmnist.x_train[:96], fmnist.y_train[:96]
    configs = [train.TrainConfig(epochs=1, batch_size=32, device="cpu", precision="fp32", seed=s) for s in (0, 1)]
    histories, trained = improve.train_seeds(configs, fmnist.x_train, fmnist.y_train, np.arange(96))
    alone = train.build_model(configs[1])
    history = train.fit(alone, x, y, configs[1], progress=False)
    # fit_many trains what fit trains (stacked or not: per-epoch losses agree to float rounding).
    assert histories[1][-1]["train_loss"] == pytest.approx(history[-1]["train_loss"], rel=1e-3)
    assert histories[0][-1]["train_loss"] != pytest.approx(histories[1][-1]["train_loss"])


@pytest.mark.slow
def test_notebook_runs_at_smoke_size_and_its_section_renders(tmp_path):
    import papermill

    from fmnist_utils import provenance, settings

    notebook = ROOT / "notebooks" / "04_improvements.ipynb"
    run = tmp_path / "run"
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"),
                               parameters={"profile": "smoke", "run_dir": str(run)}, kernel_name="python3",
                               progress_bar=False)
    r = provenance.read_json(run / "04_improvements" / "results.json")
    smoke = profiles.get("smoke").improve
    assert [t["row"] for t in r["table"]] == list(smoke.rows)
    assert set(r["verdicts"]) == {f"row:{t['row']}" for t in r["table"] if t["reference"] is not None}
    assert all(len(row["seeds"]) == smoke.seeds for row in r["rows"])
    # the results carry the run's settings tree: 04's branch is the smoke profile's sizes plus its own settings
    tree = settings.resolve("smoke", log=lambda *a: None).improve
    assert r["profile"]["improve"] == json.loads(json.dumps(dataclasses.asdict(tree)))
    assert {k: r["profile"]["improve"][k] for k in json.loads(json.dumps(dataclasses.asdict(smoke)))} == json.loads(json.dumps(dataclasses.asdict(smoke)))
    assert r["protocol"]["test_images"] == smoke.test_subset
    assert (run / "04_improvements" / r["figures"]["accuracy_vs_time"]).is_file()
    ensemble_row = next(row for row in r["rows"] if row["name"] == "ensemble")
    assert all(0 <= s["weight_modern"] <= 1 for s in ensemble_row["seeds"])

    stamp = {"notebook": "04_improvements", "source": str(notebook), "seconds": r["seconds"], "executed": True,
             "finished_utc": "", "executed_notebook": "04_improvements.ipynb", "status": "done", "key": "",
             "parameters": {}}
    page = report.render(run, [stamp])
    assert '<section id="04_improvements"' in page and "Improvements beyond the original study" in page
    assert report.pct(r["table"][1]["accuracy_mean"]) in page
    # The rendered smoke report claims no equality from a non-significant test, and declares its families.
    assert not report.equality_claims(F.text_of(page)), report.equality_claims(F.text_of(page))
    assert r["protocol"]["families"] == improve.families(improve.select_rows(smoke.rows))
    assert "Declared before the run, the primary comparisons are" in F.text_of(page) and 'id="findings"' in page


def test_accuracy_vs_time_figure_puts_each_row_at_its_time_and_accuracy():
    from fmnist_utils import plots

    names, kinds = ["study", "modern", "study+nesterov"], ["recipe", "recipe", "with"]
    fig = plots.plot_accuracy_vs_time(names, [10.0, 12.0, 11.0], [0.80, 0.88, 0.85], [0.01, None, 0.02], kinds=kinds,
                                      chance=0.1)
    ax = fig.axes[0]
    centres, caps = set(), set()
    for container in ax.containers:  # one errorbar per kind: (data line, caps, bars)
        centres |= {tuple(np.round(p, 6)) for p in container.lines[0].get_xydata()}
        caps |= {tuple(np.round(p, 6)) for line in container.lines[1] for p in line.get_xydata()}
    assert centres == {(10.0, 80.0), (12.0, 88.0), (11.0, 85.0)}
    # Error bars are one sd over seeds, in points; a row with one seed has none to draw.
    assert {(10.0, 79.0), (10.0, 81.0), (11.0, 83.0), (11.0, 87.0)} <= caps
    assert sorted(t.get_text() for t in ax.texts) == sorted(names)
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {plots.KIND_LABELS[k] for k in set(kinds)} | {"chance"}
    assert any(np.allclose(line.get_ydata(), 10.0) for line in ax.lines)  # the chance line, in per cent
    with pytest.raises(ValueError, match="differ in length"):
        plots.plot_accuracy_vs_time(names, [1.0], [0.8], kinds=kinds)
    with pytest.raises(ValueError, match="unknown row kinds"):
        plots.plot_accuracy_vs_time(["a"], [1.0], [0.8], kinds=["other"])


def test_improve_profile_checks_its_sizes_and_explains_every_field():
    good = profiles.get("smoke").improve
    meanings = profiles.meanings()
    assert all(meanings[f"improve.{f.name}"] for f in dataclasses.fields(good))
    for bad in ({"seeds": 0}, {"epochs": 0}, {"val_fraction": 1.0}, {"subset": 0}, {"test_subset": 2.5}, {"rows": ()}):
        with pytest.raises(ValueError, match=f"ImproveProfile.{next(iter(bad))}"):
            dataclasses.replace(good, **bad)
    full = profiles.get("full").improve
    # full runs the study's recipe, its primary comparisons and the ResNet-18 ensemble (improve.rows=all: every row).
    assert full.subset is None and full.seeds == 3 and full.rows[0] == "study"
    assert set(improve.PRIMARY_ROWS) <= set(full.rows) and {"resnet18", "ensemble"} <= set(full.rows)


def test_image_passes_count_what_the_rows_read(fmnist):
    from fmnist_utils import estimate

    rows = select_rows(["study", "modern", "resnet18", "ensemble"])
    passes = improve.image_passes(rows, seeds=3, subset=1_000, val_fraction=0.2, epochs=2, test_subset=300)
    split = improve.make_split(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test, 1_000, 0.2, 300)
    n_train, n_read = len(split.train_indices), len(split.val_indices) + len(split.y_test)
    assert passes == {
        "cnn_train": 2 * 3 * n_train * 2,  # study and modern, three seeds, two epochs
        "cnn_eval": 3 * n_read * (1 + 2),  # the modern recipe reads every image twice (flip-TTA)
        "resnet_train": 3 * n_train * 2,
        "resnet_eval": 3 * n_read * 2,
    }
    assert set(passes) <= set(estimate.KINDS)


def test_shared_settings_are_the_fields_every_row_has_in_common():
    configs = [r.config(epochs=3) for r in select_rows(["study", "modern", "study+nesterov"])]
    shared = improve.shared_settings(configs)
    assert shared["epochs"] == 3 and shared["model"] == "seedcnn"
    assert "lr" not in shared and "momentum" not in shared
    assert all(getattr(c, k) == v for c in configs for k, v in shared.items())


def test_power_note_says_how_many_seeds_a_one_sd_effect_needs():
    note = improve.power_note(3, 2)
    assert note["seeds"] == stats.pairs_for_power(1.0, 0.05, 0.8) == 10
    assert note["seeds_strictest"] == stats.pairs_for_power(1.0, 0.025, 0.8) > note["seeds"]
    assert note["power_at_seeds"] == pytest.approx(stats.paired_t_power(3, 1.0, 0.05)) and note["power_at_seeds"] < 0.8
    assert improve.power_note(1, 2)["power_at_seeds"] is None
