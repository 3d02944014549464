"""Tables of a cross-validated sweep: one row per fold, per configuration, per factor; the choice.

Every function here reads the sweep's stored results (:func:`fold_results`) or a table made from
them; none trains, and none sees the test set. Column names are stable (figures and the report
read them): folds have ``config``, the hyperparameters, ``fold``, ``val_accuracy``,
``val_loss``, ...; summaries have the hyperparameters, ``accuracy_mean``, ``accuracy_std``,
``loss_mean``, ``loss_std``, ``n_folds``, ``n_diverged``, ``epochs``, ``seconds``, ``rank``,
``config``.
"""

from __future__ import annotations

import json
import os

import pandas as pd

from . import sweep
from .config_labels import hyperparameter_names  # here too: the notebooks call cv_results.hyperparameter_names
from .search_space import SearchSpace, config_key
from .train import TrainConfig

FOLD_COLUMNS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss", "epochs", "seconds", "n_train", "n_val",
                "device", "diverged", "trial")


def fold_results(storage: str | os.PathLike, study_name: str = "sweep") -> pd.DataFrame:
    """Return one row per finished (configuration, fold): ``config``, its hyperparameters,
    ``fold`` (0-based), then :data:`FOLD_COLUMNS` (``val_accuracy`` is chance level and
    ``diverged`` the reason where training diverged; ``seconds`` is the unit's share of its
    stack's wall time; ``trial`` the Optuna trial number), in the space's configuration order.
    """
    study = sweep.load_study(storage, study_name)
    settings = study.user_attrs.get(sweep.SETTINGS_ATTR)
    space = SearchSpace.from_dict(settings["space"]) if settings else None
    rows = []
    for (key, fold), details in sweep.recorded_folds(study).items():
        params = json.loads(key)
        names = [n for n in (space.names() if space else ()) if n in params] + sorted(
            n for n in params if not space or n not in space.names())
        rows.append({"config": key, **{n: params[n] for n in names}, "fold": fold,
                     **{c: details.get(c) for c in FOLD_COLUMNS}})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {config_key(p): i for i, p in enumerate((space.configs() if space else None) or [])}
    first = df.groupby("config", sort=False)["trial"].min()
    df["_order"] = [order.get(c, len(order) + first[c]) for c in df["config"]]
    return df.sort_values(["_order", "fold"], kind="stable").drop(columns="_order").reset_index(drop=True)


def summarize(folds: pd.DataFrame) -> pd.DataFrame:
    """Return one row per configuration: hyperparameters, ``accuracy_mean`` / ``accuracy_std``
    and ``loss_mean`` / ``loss_std`` of validation over its folds (std: sample, ddof=1; NaN for
    one fold; the loss over the folds that did not diverge), ``n_folds``, ``n_diverged``,
    ``epochs``, ``seconds`` (all folds' training+validation), ``rank`` (1 = highest mean
    accuracy), ``config``. Row order follows ``folds``.
    """
    if folds.empty:
        raise ValueError("no finished (configuration, fold) units to summarise yet")
    names = hyperparameter_names(folds)
    folds = folds.assign(val_loss=pd.to_numeric(folds["val_loss"]),
                         _diverged=folds["diverged"].notna() if "diverged" in folds else False)
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
        "seconds": g["seconds"].sum(),
    })
    out["rank"] = out["accuracy_mean"].rank(ascending=False, method="min").astype(int)
    return out.reset_index()[[*names, "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds",
                              "n_diverged", "epochs", "seconds", "rank", "config"]]


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
        table = rows[[factor, "accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds", "seconds",
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
    folds, rank) as a dict; None for None (a configuration that is not there)."""
    if row is None:
        return None
    names = list(json.loads(row["config"]))
    keys = ["accuracy_mean", "accuracy_std", "loss_mean", "loss_std", "n_folds", "rank"]
    return {**{n: row[n] for n in names}, **{key: row[key] for key in keys}}


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
    test images, is the confirmatory one.)

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
    scores = folds.pivot(index="fold", columns="config", values="val_accuracy")  # (k, configurations), paired by fold
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
            out[key] = stats.verdict_cv_difference(
                key, scores[chosen], scores[row["config"]], int(folds["n_train"].min()), int(folds["n_val"].min()),
                "the chosen configuration", name, comparisons=max(1, m - 1),
                why=f"the chosen configuration is the best of {m} on these folds")
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
