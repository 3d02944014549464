"""The ablation's verdicts: each row against its reference, paired by seed, decided within its family.

A row is compared with its reference row by a paired t-test across seeds (:func:`paired_difference`;
seed ``s`` of both rows shares its initialisation seed and data). The comparisons form two families
declared from the rows alone (:func:`families`): Holm over the primary ones, Benjamini-Hochberg over
the exploratory rest (:func:`verdicts`). :func:`summary_table` is the notebook's table and
:func:`power_note` what the test can detect with the seeds run.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import stats
from .improve_rows import PRIMARY_ROWS, Row
from .improve_runs import Outcome


# Student t with n - 1 degrees of freedom on the n per-seed differences.
TEST_NAME = "paired t-test across seeds"
# Confidence level of every interval.
LEVEL = stats.LEVEL


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """Return the mean of ``a - b`` over seeds (paired: ``a[i]`` and ``b[i]`` share seed i) with its
    Student-t interval and two-sided p-value: ``{"value", "low", "high", "level", "p", "n", "sd"}``.

    With fewer than two seeds there is no spread: low, high, p and sd are None. When every
    difference is the same (sd 0) the t statistic is undefined: low, high and p are None as well
    (as :func:`fmnist_utils.stats.corrected_resampled_ttest` does), since three equal numbers cannot
    give the certainty a p of 0 would claim. ``reason`` says why p is None (None when it is not).
    """
    from scipy import stats as sps

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_difference needs two equal-length 1-D sequences, got shapes {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    d = a - b
    n, mean = len(d), float(d.mean())
    out = {"value": mean, "low": None, "high": None, "level": level, "p": None, "n": n, "sd": None,
           "reason": "one seed: no spread across seeds to test a difference against"}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        return {**out, "sd": sd, "reason": "every seed gave the same difference, so its spread is unknown"}
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * se
    p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    return {**out, "low": mean - half, "high": mean + half, "p": p, "sd": sd, "reason": None}


def row_verdict(row: Row, reference: Row, outcome: Outcome, ref_outcome: Outcome, level: float = LEVEL, *,
                family: str | None = None, p_adjusted: float | None = None, family_note: str = "") -> dict:
    """Return the verdict record ``row:<name>``: the row's test accuracy minus its reference's,
    paired by seed, on these test images. verdict: "higher" / "lower" when the interval at
    ``level`` excludes 0, "no_significant_difference" when it covers it, "n/a" with one seed or no
    spread. As one of a family (:func:`verdicts`), ``level`` is the level its family's correction
    decides it at, ``p_adjusted`` the adjusted p printed in its place, and ``family_note`` (the
    correction and the unadjusted p) is added to the test's description.
    """
    if outcome.seeds != ref_outcome.seeds:
        raise ValueError(f"rows {row.name} and {reference.name} have different seeds: they cannot be paired")
    diff = paired_difference(outcome.test_accuracy, ref_outcome.test_accuracy, level)
    if diff["low"] is None:
        verdict = "n/a"
    elif diff["low"] > 0:
        verdict = stats.HIGHER
    elif diff["high"] < 0:
        verdict = stats.LOWER
    else:
        verdict = stats.NO_DIFFERENCE
    test = TEST_NAME + " (these test images, averaged over the seeds)" + (f"; {family_note}" if family_note else "")
    return stats.record(
        f"row:{row.name}", f"{row.label} against {reference.label}: test accuracy on these test images, paired by seed",
        "difference in test accuracy (row minus reference, mean over seeds)", test, verdict,
        value=diff["value"], low=diff["low"], high=diff["high"], level=level,
        p=diff["p"] if p_adjusted is None else p_adjusted, n=diff["n"], reason=diff["reason"], family=family)


def families(rows: Sequence[Row]) -> dict[str, list[str]]:
    """Return {``"primary"``: [...], ``"exploratory"``: [...]}: the names of the compared rows
    (those with a reference) in each family, in table order. Primary are those of
    :data:`PRIMARY_ROWS` that are selected; the rest are exploratory. Declared from the rows alone,
    before any result exists."""
    compared = [r.name for r in rows if r.reference is not None]
    return {stats.PRIMARY: [n for n in compared if n in PRIMARY_ROWS],
            stats.EXPLORATORY: [n for n in compared if n not in PRIMARY_ROWS]}


def verdicts(rows: Sequence[Row], outcomes: dict[str, Outcome], alpha: float = stats.ALPHA) -> dict[str, dict]:
    """Return {``row:<name>``: :func:`row_verdict`} for every row that has a reference, each
    decided within its family (:func:`families`): Holm over the primary comparisons, Benjamini-
    Hochberg over the exploratory ones (:func:`fmnist_utils.stats.holm`,
    :func:`~fmnist_utils.stats.benjamini_hochberg`). A comparison with no p-value (one seed, no
    spread) is n/a and not counted in its family. The printed p is the adjusted one and the
    interval is at the level the correction decides the comparison at, so the two agree with the
    verdict; the unadjusted p is named in the test's description.
    """
    by_name = {r.name: r for r in rows}
    out = {}
    for family, names in families(rows).items():
        raw = {n: paired_difference(outcomes[n].test_accuracy, outcomes[by_name[n].reference].test_accuracy)["p"]
               for n in names}
        tested = [n for n in names if raw[n] is not None]
        method, procedure = stats.FAMILY_METHODS[family]
        decided = procedure([raw[n] for n in tested], alpha)
        for n in names:
            row, ref = by_name[n], by_name[by_name[n].reference]
            if n not in tested:
                out[f"row:{n}"] = row_verdict(row, ref, outcomes[n], outcomes[ref.name], family=family)
                continue
            i = tested.index(n)
            note = (f"{family} family: {method} over {len(tested)} comparison{'s' if len(tested) != 1 else ''}, "
                    f"unadjusted {stats.p_text(raw[n])}")
            out[f"row:{n}"] = row_verdict(row, ref, outcomes[n], outcomes[ref.name], 1 - float(decided["alpha_each"][i]),
                                          family=family, p_adjusted=float(decided["p_adjusted"][i]), family_note=note)
    return {f"row:{r.name}": out[f"row:{r.name}"] for r in rows if r.reference is not None}


def summary_table(rows: Sequence[Row], outcomes: dict[str, Outcome], records: dict[str, dict]) -> list[dict]:
    """Return one dict per row: accuracy mean and sd over seeds (fractions), validation accuracy,
    training seconds and optimizer steps per model, and the difference from the reference with its
    interval (at ``level``, its family's), adjusted p, verdict and family.
    """
    table = []
    for r in rows:
        o = outcomes[r.name]
        v = records.get(f"row:{r.name}", {})
        table.append({
            "row": r.name, "label": r.label, "kind": r.kind, "reference": r.reference, "changed": list(r.changed),
            "n_seeds": len(o.seeds),
            "accuracy_mean": float(o.test_accuracy.mean()),
            "accuracy_sd": float(o.test_accuracy.std(ddof=1)) if len(o.seeds) > 1 else None,
            "val_accuracy_mean": float(o.val_accuracy.mean()),
            "seconds_per_model": o.seconds_per_model,
            "steps": o.steps,
            "difference": v.get("value"), "low": v.get("low"), "high": v.get("high"), "level": v.get("level"),
            "p": v.get("p"), "verdict": v.get("verdict"), "family": v.get("family"),
            "diverged": int(sum(o.diverged)),
        })
    return table


def power_note(n_seeds: int, n_primary: int, alpha: float = stats.ALPHA, target: float = 0.8,
               effect_sd: float = 1.0) -> dict:
    """Return what the paired t-test across seeds can detect: ``power_at_seeds`` (the power with
    ``n_seeds`` seeds to detect a mean difference of ``effect_sd`` standard deviations of the
    per-seed differences at ``alpha``; None with fewer than two seeds), ``seeds`` (the fewest
    seeds giving ``target`` power at ``alpha``) and ``seeds_strictest`` (at the strictest level
    Holm uses in a primary family of ``n_primary``, ``alpha_strictest`` = alpha / n_primary), with
    ``alpha``, ``target`` and ``effect_sd``: the numbers the report's power sentence prints.
    """
    strictest = alpha / max(1, n_primary)
    return {"effect_sd": effect_sd, "target": target, "alpha": alpha, "alpha_strictest": strictest,
            "power_at_seeds": stats.paired_t_power(n_seeds, effect_sd, alpha) if n_seeds >= 2 else None,
            "seeds": stats.pairs_for_power(effect_sd, alpha, target),
            "seeds_strictest": stats.pairs_for_power(effect_sd, strictest, target)}
