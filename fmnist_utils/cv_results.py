"""Tables of a cross-validated sweep: one row per fold, per configuration, per factor; the choice.

Every function here reads the sweep's stored results (:func:`fold_results`) or a table made from
them; none trains, and none sees the test set. Column names are stable (figures and the report
read them): folds have ``config``, the hyperparameters, ``fold``, ``val_accuracy``,
``val_loss``, ..., ``rung_epochs``, ``pruned``; summaries have the hyperparameters,
``accuracy_mean``, ``accuracy_std``, ``loss_mean``, ``loss_std``, ``n_folds``, ``n_diverged``,
``epochs``, ``rung_epochs``, ``pruned``, ``seconds``, ``rank``, ``config``.

Successive halving (:mod:`fmnist_utils.halving`): a configuration's score is its mean over the
folds at the deepest rung it finished (``rung_epochs``: the epochs it reached; ``pruned``: the
pruner stopped it there). Configurations are ranked by the rung they reached, then by that score,
so the chosen one is the best of those that reached the last rung, and two configurations are
compared after the same number of epochs (:func:`verdicts`).
"""

from __future__ import annotations

import json
import os

import pandas as pd

from . import halving, sweep
from .config_labels import hyperparameter_names  # here too: the notebooks call cv_results.hyperparameter_names
from .search_space import SearchSpace, config_key
from .train import TrainConfig

FOLD_COLUMNS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "epochs", "seconds", "n_train", "n_val",
                "device", "diverged", "trial", "rung_epochs", "val_accuracy_by_epoch")


def _shown_rungs(units: dict, k: int) -> dict[str, int]:
    """Return config key -> the rung (epochs) its rows show: the deepest with all k folds
    recorded, else (a sweep still at its first rung) the deepest with any."""
    folds: dict[tuple[str, int], int] = {}
    for key, _, epochs in units:
        folds[(key, epochs)] = folds.get((key, epochs), 0) + 1
    out: dict[str, int] = {}
    for (key, epochs), n in sorted(folds.items(), key=lambda item: (item[1] == k, item[0][1])):
        out[key] = epochs  # complete rungs sort last, deepest last among them
    return out


def fold_results(storage: str | os.PathLike, study_name: str = "sweep", rungs: str = "deepest") -> pd.DataFrame:
    """Return one row per recorded (configuration, fold) unit: ``config``, its hyperparameters,
    ``fold`` (0-based), then :data:`FOLD_COLUMNS` (``val_accuracy`` is chance level and
    ``diverged`` the reason where training diverged; ``seconds`` is the unit's share of its
    stack's wall time; ``trial`` the Optuna trial number; ``rung_epochs`` the epochs the unit
    trained for; ``val_accuracy_by_epoch`` its accuracy after each epoch), and ``pruned`` (the
    pruner stopped the configuration at this rung), in the space's configuration order.

    rungs: ``deepest`` keeps each configuration's deepest rung with all its folds (one row per
    (configuration, fold)); ``all`` keeps every rung's units.
    """
    if rungs not in ("deepest", "all"):
        raise ValueError(f"rungs={rungs!r}: choose 'deepest' (one row per configuration and fold) or 'all'")
    study = sweep.load_study(storage, study_name)
    settings = study.user_attrs.get(sweep.SETTINGS_ATTR)
    space = SearchSpace.from_dict(settings["space"]) if settings else None
    units = sweep.recorded_units(study)
    k = settings["k"] if settings else max((f for _, f, _ in units), default=0) + 1
    schedule = (settings or {}).get("schedule")
    sched = halving.Schedule(schedule["epochs"], schedule["min_epochs"], schedule["reduction_factor"],
                             tuple(schedule["rungs"]), schedule["reason"]) if schedule else None
    pruned: dict[str, int] = {}
    if sched is not None and space is not None:
        state = halving.rung_state(sweep.rung_scores(units, k), sweep.config_keys(study, space), sched)
        pruned = {key: sched.rungs[j] for j, decided in enumerate(state.decisions)
                  for key, promoted in decided.items() if not promoted}
    shown = _shown_rungs(units, k)
    rows = []
    for (key, fold, epochs), details in units.items():
        if rungs == "deepest" and shown[key] != epochs:
            continue
        params = json.loads(key)
        names = [n for n in (space.names() if space else ()) if n in params] + sorted(
            n for n in params if not space or n not in space.names())
        rows.append({"config": key, **{n: params[n] for n in names}, "fold": fold,
                     **{c: details.get(c) for c in FOLD_COLUMNS}, "pruned": pruned.get(key) == epochs})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {config_key(p): i for i, p in enumerate((space.configs() if space else None) or [])}
    first = df.groupby("config", sort=False)["trial"].min()
    df["_order"] = [order.get(c, len(order) + first[c]) for c in df["config"]]
    return (df.sort_values(["_order", "rung_epochs", "fold"], kind="stable").drop(columns="_order")
            .reset_index(drop=True))


def _rank(rung_epochs, accuracy) -> list[int]:
    """Return each row's rank (1 = best; ties share the lower rank): the rung reached first, then
    the mean accuracy."""
    pairs = list(zip(rung_epochs, accuracy))
    return [1 + sum(1 for r2, a2 in pairs if r2 > r or (r2 == r and a2 > a)) for r, a in pairs]


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """Return one row per configuration: hyperparameters, ``accuracy_mean`` / ``accuracy_std``
    and ``loss_mean`` / ``loss_std`` of validation over its folds (std: sample, ddof=1; NaN for
    one fold; the loss over the folds that did not diverge), ``n_folds``, ``n_diverged``,
    ``epochs``, ``rung_epochs`` (the rung the rows are from: the epochs it reached; ``epochs``
    where the table has no such column), ``pruned`` (stopped there by the pruner), ``seconds``
    (all folds' training+validation), ``rank`` (1 = best: the deepest rung, then the highest mean
    accuracy), ``config``. Row order follows ``folds`` (one rung per configuration: see
    :func:`fold_results`).
    """
    if folds.empty:
        raise ValueError("no finished (configuration, fold) units to summarise yet")
    names = hyperparameter_names(folds)
    if folds.duplicated(["config", "fold"]).any():
        raise ValueError("folds holds several rungs of one configuration; summarise fold_results(..., rungs='deepest')")
    folds = folds.assign(val_loss=pd.to_numeric(folds["val_loss"]),
                         _diverged=folds["diverged"].notna() if "diverged" in folds else False,
                         _rung=folds["rung_epochs"] if "rung_epochs" in folds else folds["epochs"],
                         _pruned=folds["pruned"].astype(bool) if "pruned" in folds else False)
    g = folds.groupby("config", sort=False)
    out = pd.DataFrame({
        **{n: g[n].first() for n in names},
        "accuracy_mean": g["val_accuracy"].mean(),
        "accuracy_std": g["val_accuracy"].std(ddof=1),
        "loss_mean": g["val_loss"].mean(),
        "loss_std": g["val_loss"].std(ddof=1),
        "n_folds": g["fold"].count(),
        "n_diverged": g["_diverged"].sum().astype(int),
        "epochs": g["epochs"].max(),
        "rung_epochs": g["_rung"].max(),
        "pruned": g["_pruned"].any(),
        "seconds": g["seconds"].sum(),
    })
    out["rank"] = _rank(out["rung_epochs"], out["accuracy_mean"])
    return out.reset_index()[[*names, "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds",
                              "n_diverged", "epochs", "rung_epochs", "pruned", "seconds", "rank", "config"]]


def ranked(summary: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """Return the configurations with all ``k`` folds done (default: the most folds any has),
    best first: the deepest rung reached (successive halving; one rung without it), then the
    highest CV mean accuracy, ties to the lower mean loss, then the earlier row. The first is the
    best of the configurations that reached the last rung.
    """
    if summary.empty:
        raise ValueError("the summary is empty: no configuration to choose from")
    k = int(summary["n_folds"].max()) if k is None else k
    complete = summary[summary["n_folds"] == k]
    if complete.empty:
        raise ValueError(f"no configuration has all {k} folds finished yet; finish the sweep first")
    complete = complete.assign(_rung=complete["rung_epochs"] if "rung_epochs" in complete else 0)
    return complete.sort_values(["_rung", "accuracy_mean", "loss_mean"], ascending=[False, False, True],
                                kind="stable").drop(columns="_rung")


def best_hyperparameters(summary: pd.DataFrame, k: int | None = None) -> dict:
    """Return the hyperparameters of the best configuration (the first of :func:`ranked`)."""
    return json.loads(ranked(summary, k).iloc[0]["config"])


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
        extra = [c for c in ("rung_epochs", "pruned") if c in rows]
        table = rows[[factor, "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds", *extra, "seconds",
                      "config"]].copy()
        table["is_base"] = [params[i][factor] == base[factor] for i in keep]
        tables[factor] = table.reset_index(drop=True)
    return tables


def paired_fold_differences(folds: pd.DataFrame, key_a: str, key_b: str, value: str = "val_accuracy") -> pd.Series:
    """Return ``value`` of configuration ``key_a`` minus that of ``key_b`` on each fold both
    have finished: a Series indexed by fold (sorted), named ``difference``. The folds are the
    same images for every configuration, so these are paired differences.
    """
    missing = [key for key in (key_a, key_b) if key not in set(folds["config"])]
    if missing:
        raise ValueError(f"configuration(s) {missing} have no finished fold in this table; use config_key(params)")
    a = folds[folds["config"] == key_a].set_index("fold")[value]
    b = folds[folds["config"] == key_b].set_index("fold")[value]
    shared = sorted(set(a.index) & set(b.index))
    return (a.loc[shared] - b.loc[shared]).rename("difference")


def records(table: pd.DataFrame) -> list[dict]:
    """Return the rows of a fold, summary or factor table as plain dicts, without ``config``
    (results.json keeps the hyperparameters as columns)."""
    return table.drop(columns="config").to_dict("records")


def cv_record(row: pd.Series | None) -> dict | None:
    """Return one summary row's hyperparameters and CV statistics (accuracy and loss mean/std,
    folds, rank; the rung reached and whether it was pruned there, where the summary has them) as
    a dict; None for None (a configuration that is not there)."""
    if row is None:
        return None
    names = list(json.loads(row["config"]))
    keys = ["accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds", "rank",
            *(key for key in ("rung_epochs", "pruned") if key in row)]
    return {**{n: row[n] for n in names}, **{key: row[key].item() if hasattr(row[key], "item") else row[key]
                                             for key in keys}}


def study_row(summary: pd.DataFrame, study: dict) -> pd.Series | None:
    """Return the summary row of the study's configuration ``study`` ({factor: value}), or None
    when the sweep did not try it."""
    rows = summary[summary["config"] == config_key(study)]
    return rows.iloc[0] if len(rows) else None


def verdicts(folds: pd.DataFrame, summary: pd.DataFrame, study: dict, n_classes: int, k: int | None = None,
             final: dict | None = None) -> dict:
    """Return the sweep's verdict records, by key.

    ``chosen_vs_runner_up`` and ``chosen_vs_study``: does the chosen configuration (the first of
    :func:`ranked`) score higher than the runner-up / the study's configuration ``study`` on the
    same folds (corrected resampled t-test, :func:`fmnist_utils.stats.verdict_cv_difference`);
    n/a, with the reason, when there is no such other configuration. The chosen configuration is
    the best of the m ranked ones *on these folds*, so its lead over any other is inflated by the
    choice (the winner's curse): each comparison is corrected by Bonferroni over the m - 1
    comparisons of the chosen configuration with the others, which holds the error rate whichever
    configuration the choice lands on. (02_train's comparison with the study's recipe, on fresh
    test images, is the confirmatory one.) Like is compared with like: where the other
    configuration was pruned at an earlier rung, both are compared after that rung's epochs (the
    chosen configuration's accuracy after those epochs, ``val_accuracy_by_epoch``; with the same
    seeds its longer run replays the shorter one's epochs).

    ``above_chance``: is the final model's *test* accuracy above 1 / ``n_classes`` (exact
    binomial)? ``final``: ``{"test_accuracy", "n_test"}`` of the chosen configuration retrained
    and tested once (:func:`fmnist_utils.sweep.final_model`). The selected cross-validated score is
    not tested: it is the maximum of m noisy scores, and above chance far more often than 5% of
    the time when no configuration is. n/a without ``final``.
    """
    from . import stats

    order = ranked(summary, k)
    chosen = order.iloc[0]["config"]
    m = len(order)
    rung = dict(zip(order["config"], order["rung_epochs"])) if "rung_epochs" in order else {}

    def scores_at(config: str, epochs: int | None) -> pd.Series:
        """Return the folds' validation accuracy of ``config`` after ``epochs`` epochs, by fold."""
        rows = folds[folds["config"] == config].set_index("fold").sort_index()
        if epochs is None or epochs == rung.get(config, epochs):
            return rows["val_accuracy"]
        return rows["val_accuracy_by_epoch"].map(lambda by_epoch: by_epoch[epochs - 1])

    others = {"chosen_vs_runner_up": (order.iloc[1] if len(order) > 1 else None, "the runner-up",
                                      "only one configuration finished all its folds"),
              "chosen_vs_study": (study_row(summary, study), "the study's configuration",
                                  "the study's configuration was not part of this sweep")}
    out = {}
    for key, (row, name, missing) in others.items():
        if row is None or row["config"] == chosen:
            out[key] = stats.record(
                key, f"the chosen configuration and {name} differ in cross-validated accuracy",
                "mean difference in fold validation accuracy", "none", "n/a",
                reason=missing if row is None else "cross-validation chose the study's configuration itself")
        else:
            epochs = min(rung[chosen], rung[row["config"]]) if rung else None
            a, b = scores_at(chosen, epochs), scores_at(row["config"], epochs)
            shared = sorted(set(a.index) & set(b.index))  # paired by fold
            at = (f"; both after {epochs} epoch{'s' if epochs != 1 else ''}, the deepest rung both reached"
                  if epochs is not None and epochs < rung[chosen] else "")
            out[key] = stats.verdict_cv_difference(
                key, a.loc[shared].to_numpy(), b.loc[shared].to_numpy(), int(folds["n_train"].min()),
                int(folds["n_val"].min()), "the chosen configuration", name, comparisons=max(1, m - 1),
                why=f"the chosen configuration is the best of {m} on these folds{at}")
    what = "the test accuracy of the chosen configuration, retrained and tested once"
    if final is None:
        out["above_chance"] = stats.record(
            "above_chance", f"{what} is above chance (one in {n_classes})", "accuracy", "none", "n/a",
            reason="the chosen configuration was not retrained and tested")
    else:
        n_test = int(final["n_test"])
        out["above_chance"] = stats.verdict_above_chance(
            int(round(final["test_accuracy"] * n_test)), n_test, n_classes, what)
    return out
