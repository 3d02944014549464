"""Size a whole report to the time a user has: ``make report BUDGET=30m``.

:func:`size` is the sizing rule, a pure function from (budget in seconds, measured seconds per
image-pass of each kind of :data:`fmnist_utils.estimate.KINDS`, device type) to a
:class:`~fmnist_utils.profiles.Profile` and a record of every decision. It spends the budget in a
stated order of priority:

1. ``train`` (02): the headline comparison on all training images, with as many of the study's
   10 epochs as fit;
2. ``compare`` (03);
3. ``sweep`` (01);
4. ``improve`` (04): its primary comparisons with the study's recipe;
5. everything else (03's ResNet-18 trained on Fashion-MNIST).

02 starts at :data:`HEADLINE_EPOCHS` and 03 is added where it fits; then 02 grows, an epoch at a
time, up to the study's 10 epochs while the estimate fits, before 01 or 04 get any time (so a
larger budget never gives the report's main network fewer epochs). Then 01 and 04 get their
smallest useful size, in that order, where it still fits (a part that does not fit is dropped: its
notebook does not run), and every kept part grows, in the same order, one step at a time while the
estimate still fits. No trained model is ever given fewer
than :data:`FLOOR_STEPS` optimizer steps: rows, folds, configurations and seeds go first.

The estimate is :func:`fmnist_utils.estimate.image_passes` times the pace, plus
:data:`OVERHEAD_S` per notebook run, :data:`REPORT_S` for the report and :data:`PACE_S` for
measuring the pace. The pace is measured once per run folder and saved in its ``budget.json``
(:func:`plan`); a rerun reuses it, so the sizes never depend on the machine's load at rerun time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from . import estimate, paths, profiles, provenance

# The floor of optimizer steps (batch 128) below which no model is trained: the first measured step
# count at which the study's recipe reached 80% test accuracy on all 60,000 training images (81.1%
# at 400 steps; 76.7% at 283) in benchmarks/results/steps-curve-amd-epyc-2-threads-2026-12-07.json,
# one seed scored on 2,000 stratified test images. A curve in steps: the load of the machine that
# measured it changes how long it took, not the curve.
FLOOR_STEPS = 400
FLOOR_SOURCE = "benchmarks/results/steps-curve-amd-epyc-2-threads-2026-12-07.json"
# The fewest epochs of 02's headline (the study's recipe on all 54,000 training images: 1,266 steps),
# so that the report's main network gets well past the floor: the same curve was at 84.6% after
# 800 steps and 87.2% after 1,131 (the issue asks 85% of the headline).
HEADLINE_EPOCHS = 3
# The study's training: 10 epochs of 60,000 images at batch 128.
STUDY_STEPS = 10 * math.ceil(60_000 / 128)
STUDY_EPOCHS = 10
# Seconds spent outside image-passes by each notebook (kernel start, imports, data loading,
# statistics, figures), fitted to the quick run of 2026-11-27 on the idle 2-core CPU
# (benchmarks/results/quick-amd-epyc-2-threads-2026-11-27.json) at REFERENCE_PACE.
OVERHEAD_S = {"sweep": 30.0, "train": 20.0, "compare": 35.0, "improve": 20.0}
# Building the report (HTML and PDF) and measuring the pace before anything runs (seconds).
REPORT_S = 15.0
PACE_S = 20.0
# What each part is, in the report's words (the Method section states the order).
PRIORITY = {"train": "02's headline network on all training images, with as many of the study's epochs as fit",
            "compare": "03's comparison with ResNet-18", "sweep": "01's cross-validated sweep",
            "improve": "04's primary comparisons with the study's recipe",
            "else": "everything else (a ResNet-18 trained on Fashion-MNIST)"}
FLOOR_REASON = "the optimizer steps after which the study's recipe first reached 80% test accuracy"
# The parts of a report in priority order, and the notebook each one is.
PARTS = ("train", "compare", "sweep", "improve")
NOTEBOOKS = {"sweep": "01_sweep", "train": "02_train", "compare": "03_resnet_compare", "improve": "04_improvements"}
# The reference machine's pace (seconds per image-pass), committed in this file:
PACE_FILE = "benchmarks/results/pace-amd-epyc-2-threads.json"
REFERENCE_PACE = {"cnn_train": 2.63e-3, "cnn_eval": 7.28e-4, "resnet_train": 8.46e-3, "resnet_eval": 2.31e-3,
                  "imagenet_eval": 1.21e-2}
QUICK_BUDGET_S = 15 * 60.0
TRAIN_SPLIT = 60_000
VAL_FRACTION = 0.1
# 04's primary comparisons, cheapest first (each with the study's recipe as reference), then the
# modern recipe and ResNet-18 with the ensemble. The full list of rows: improve.rows=all.
IMPROVE_ROWS = ("study", "study+adam", "study+rmsprop", "study+l1", "study+kernel5", "modern", "resnet18", "ensemble")
IMPROVE_FIRST = 2  # rows of the smallest 04: the study's recipe and one comparison
BIGGEST_BATCH = {"study": 128, "modern": 256, "resnet18": 256}  # a row's batch size (steps per image)


class BudgetTooSmall(ValueError):
    """Even the headline comparison at the floor does not fit the budget on this machine."""


def parse(budget: str | float | int) -> float:
    """Return ``budget`` in seconds: ``"30m"``, ``"2h"``, ``"90s"``, ``"1h30m"`` or a number of minutes."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds = float(budget) * 60
    else:
        text = str(budget).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text) * 60
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
            if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*[hms]", "", text).strip():
                raise ValueError(f"budget {budget!r}: write it as 30m, 2h, 1h30m, 90s or a number of minutes")
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError(f"budget {budget!r}: must be more than zero")
    return seconds


def label(seconds: float) -> str:
    """Return a short name for a budget of ``seconds``: ``20m``, ``2h``, ``1h30m``, ``45s``."""
    s = round(seconds)
    h, m, sec = s // 3600, (s % 3600) // 60, s % 60
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def profile_name(seconds: float) -> str:
    """Return the profile (and run folder) name of a budgeted report: ``budget-20m``."""
    return f"budget-{label(seconds)}"


def is_budget_name(name: str) -> bool:
    """Return True for a budgeted profile's name (``budget-20m``)."""
    return isinstance(name, str) and name.startswith("budget-")


# --------------------------------------------------------------------------------------------
# Sizes of each part at a level (level 0: the smallest useful size)


def _epochs_for(steps: int, images: int, batch: int) -> int:
    """Return the fewest epochs over ``images`` at ``batch`` that give at least ``steps`` optimizer steps."""
    return max(1, math.ceil(steps / math.ceil(images / batch)))


def _pool_for(steps: int, epochs: int, batch: int, trained_part: float) -> int | None:
    """Return the fewest training-split images (a multiple of 100, stratifiable) of which ``trained_part``
    gives ``steps`` optimizer steps in ``epochs`` epochs at ``batch``; None when that is the whole split."""
    pool = math.ceil(steps * batch / epochs / trained_part / 100) * 100
    return None if pool >= TRAIN_SPLIT else pool


def train_part(epochs: int) -> profiles.TrainProfile:
    """Return 02's sizes: all training images, ``epochs`` epochs, every test image."""
    return profiles.TrainProfile(subset=None, val_fraction=VAL_FRACTION, epochs=epochs, test_subset=None)


def compare_part(resnet_epochs: int | None) -> profiles.CompareProfile:
    """Return 03's sizes; ``resnet_epochs``: epochs of the ResNet-18 trained on Fashion-MNIST (None: not trained)."""
    return profiles.CompareProfile(per_class=100, n_boot=300, probe_train=2_000, probe_test=1_000,
                                   fmnist_resnet=resnet_epochs is not None, fmnist_resnet_subset=None,
                                   fmnist_resnet_epochs=resnet_epochs or 1)


# 01's designs, smallest first: (factors, folds). Every unit gets at least the floor.
SWEEP_DESIGNS = ((("lr",), 2), (("lr",), 3), (("lr", "batch_size", "dropout"), 3), (("lr", "batch_size", "dropout"), 5))


def sweep_part(design: int, extra_epochs: int, floor: int) -> profiles.SweepProfile:
    """Return 01's sizes: the study's one-factor-at-a-time design over ``SWEEP_DESIGNS[design]``,
    on all training images, each fold's model trained for the fewest epochs that give its largest
    batch size ``floor`` steps, plus ``extra_epochs`` (up to the study's 10)."""
    from .study import VALUES

    factors, k = SWEEP_DESIGNS[design]
    batch = max(max(VALUES[f]) if f == "batch_size" else 128 for f in factors)
    epochs = min(STUDY_EPOCHS, _epochs_for(floor, TRAIN_SPLIT * (k - 1) // k, batch) + extra_epochs)
    final = min(STUDY_EPOCHS, _epochs_for(floor, TRAIN_SPLIT, batch) + extra_epochs)
    # At the smallest size each fold's model trains on just enough images for the floor.
    subset = _pool_for(floor, epochs, batch, (k - 1) / k) if extra_epochs == 0 else None
    final_subset = _pool_for(floor, final, batch, 1.0) if extra_epochs == 0 else None
    return profiles.SweepProfile(space="oat", n_configs=None, factors=factors, k=k, subset=subset, epochs=epochs,
                                 workers=1, final_subset=final_subset, final_epochs=final, test_subset=None)


def improve_part(rows: int, seeds: int, extra_epochs: int, floor: int) -> profiles.ImproveProfile:
    """Return 04's sizes: the first ``rows`` of :data:`IMPROVE_ROWS` over ``seeds`` seeds on all training
    images, for the fewest epochs that give its largest batch ``floor`` steps, plus ``extra_epochs``."""
    chosen = IMPROVE_ROWS[:rows]
    if "resnet18" in chosen and "ensemble" not in chosen:
        chosen = IMPROVE_ROWS[: rows + 1]  # ResNet-18 is added with the ensemble it is for
    batch = max(BIGGEST_BATCH.get(r, 128) for r in chosen if r != "ensemble")
    n_train = TRAIN_SPLIT - round(VAL_FRACTION * TRAIN_SPLIT)
    epochs = min(STUDY_EPOCHS, _epochs_for(floor, n_train, batch) + max(0, extra_epochs - 1))
    # At the smallest size (extra_epochs 0) every model trains on just enough images for the floor.
    subset = _pool_for(floor, epochs, batch, 1 - VAL_FRACTION) if extra_epochs == 0 else None
    return profiles.ImproveProfile(rows=chosen, seeds=seeds, subset=subset, val_fraction=VAL_FRACTION, epochs=epochs,
                                   test_subset=None)


# --------------------------------------------------------------------------------------------
# The sizing rule


@dataclass(frozen=True)
class Levels:
    """How far each part has grown; None: the part is dropped (its notebook does not run)."""

    train: int | None = None  # 02's epochs
    compare: int | None = None  # 0: features only; >= 1: also the Fashion-MNIST ResNet-18 for that many epochs
    sweep: tuple[int, int] | None = None  # (design, extra epochs)
    improve: tuple[int, int, int] | None = None  # (rows, seeds, extra epochs)


def build(levels: Levels, floor: int = FLOOR_STEPS, name: str = "budget") -> profiles.Profile:
    """Return the :class:`~fmnist_utils.profiles.Profile` of ``levels`` (dropped parts listed in ``skip``)."""
    smallest = Levels(train=1, compare=0, sweep=(0, 0), improve=(IMPROVE_FIRST, 2, 0))
    pick = {p: getattr(levels, p) if getattr(levels, p) is not None else getattr(smallest, p) for p in PARTS}
    return profiles.Profile(
        name=name,
        train=train_part(pick["train"]),
        compare=compare_part(pick["compare"] or None),
        sweep=sweep_part(*pick["sweep"], floor),
        improve=improve_part(*pick["improve"], floor),
        skip=tuple(NOTEBOOKS[p] for p in PARTS if getattr(levels, p) is None),
    )


def seconds(profile: profiles.Profile, pace: dict[str, float], measured_here: bool = True) -> dict[str, float]:
    """Return the estimated seconds of each part that runs, plus ``report`` (and ``pace`` when it is measured)."""
    passes = estimate.image_passes(estimate.profile_sizes(profile))
    out = {}
    for part in PARTS:
        if NOTEBOOKS[part] in profile.skip:
            continue
        out[part] = OVERHEAD_S[part] + sum(n * pace[kind] for kind, n in passes[part].items() if n)
    out["report"] = REPORT_S
    if measured_here:
        out["pace"] = PACE_S
    return out


def _grow(levels: Levels, part: str, floor: int) -> Levels | None:
    """Return ``levels`` with ``part`` one step larger, or None when it is at its largest."""
    value = getattr(levels, part)
    if value is None:
        return None
    if part == "train":
        new = value + 1 if value < STUDY_EPOCHS else None
    elif part == "compare":
        new = None  # 03's features have one size; its ResNet-18 is grown last (everything else)
    elif part == "sweep":
        design, extra = value
        if design + 1 < len(SWEEP_DESIGNS):
            new = (design + 1, extra)
        elif extra == 0 or sweep_part(design, extra, floor).epochs < STUDY_EPOCHS:
            new = (design, extra + 1)
        else:
            new = None
    else:
        rows, seeds, extra = value
        if rows < len(IMPROVE_ROWS) - 1:
            new = (rows + 1 if IMPROVE_ROWS[rows] != "resnet18" else rows + 2, seeds, extra)
        elif seeds < 3:
            new = (rows, seeds + 1, extra)
        elif extra == 0 or improve_part(rows, seeds, extra, floor).epochs < STUDY_EPOCHS:
            new = (rows, seeds, extra + 1)
        else:
            new = None
    return None if new is None else dataclasses.replace(levels, **{part: new})


def size(budget_s: float, pace: dict[str, float], device: str = "cpu", floor: int = FLOOR_STEPS,
         name: str | None = None, measured_here: bool = True) -> tuple[profiles.Profile, dict]:
    """Return (the Profile that fits ``budget_s`` seconds at ``pace``, the record of the decisions).

    ``pace``: {kind: seconds per image-pass} for every kind of :data:`fmnist_utils.estimate.KINDS`.
    ``device``: ``cpu`` or ``cuda`` (recorded; a ResNet-18 is trained on Fashion-MNIST only where its
    epochs fit, which in practice is a GPU). ``floor``: the fewest optimizer steps any model gets.
    ``measured_here``: count :data:`PACE_S` for measuring the pace. Raises :class:`BudgetTooSmall`
    when 02's study's recipe at the floor does not fit, naming the smallest budget that does.
    """
    missing = [k for k in estimate.KINDS if k not in pace]
    if missing:
        raise ValueError(f"pace lacks {missing}; measure it with estimate.measure_seconds_per_image()")
    if not budget_s > 0:
        raise ValueError(f"budget_s={budget_s!r}: must be more than zero")
    name = name or profile_name(budget_s)

    def total(levels: Levels) -> float:
        return sum(seconds(build(levels, floor, name), pace, measured_here).values())

    first = Levels(train=max(HEADLINE_EPOCHS, _epochs_for(floor, TRAIN_SPLIT - round(VAL_FRACTION * TRAIN_SPLIT), 128)))
    if total(first) > budget_s:
        raise BudgetTooSmall(
            f"a budget of {label(budget_s)} is too small on this {device}: the smallest report (the study's recipe "
            f"for {first.train} epoch(s), {floor} steps at least) is estimated at {label(total(first))}; "
            f"give at least that, or use PROFILE=smoke for a test run")
    levels = first
    # 1. 03 (one size) where it fits; then the headline grows to the study's 10 epochs before 01 or
    # 04 get any time: a larger budget never gives the report's main network fewer epochs.
    if total(with_compare := dataclasses.replace(levels, compare=0)) <= budget_s:
        levels = with_compare
    while (bigger := _grow(levels, "train", floor)) is not None and total(bigger) <= budget_s:
        levels = bigger
    # 2. the smallest useful size of 01 and 04, in priority order, where it fits
    for part, smallest in (("sweep", (0, 0)), ("improve", (IMPROVE_FIRST, 2, 0))):
        trial = dataclasses.replace(levels, **{part: smallest})
        if total(trial) <= budget_s:
            levels = trial
    # 3. every kept part grows, in priority order, while it fits
    for part in PARTS:
        while (bigger := _grow(levels, part, floor)) is not None and total(bigger) <= budget_s:
            levels = bigger
    # 4. everything else: the ResNet-18 trained on Fashion-MNIST, at the floor and beyond
    if levels.compare is not None:
        resnet = Levels(**{**dataclasses.asdict(levels), "compare": _epochs_for(floor, TRAIN_SPLIT, 128)})
        while resnet.compare <= STUDY_EPOCHS and total(resnet) <= budget_s:
            levels = resnet
            resnet = dataclasses.replace(resnet, compare=resnet.compare + 1)
    profile = build(levels, floor, name)
    parts = seconds(profile, pace, measured_here)
    record = {
        "budget_seconds": budget_s, "budget": label(budget_s), "device": device, "pace": dict(pace),
        "floor_steps": floor, "floor_source": FLOOR_SOURCE, "study_steps": STUDY_STEPS,
        "estimate_seconds": parts, "estimate_total_seconds": sum(parts.values()),
        "dropped": list(profile.skip), "models": model_steps(profile), "sizes": profile.to_dict(),
    }
    return profile, record


def model_steps(profile: profiles.Profile) -> list[dict]:
    """Return one row per kind of trained model: ``notebook``, ``model``, ``count`` (models of that
    kind), ``steps`` (optimizer steps each) and ``study_steps`` (the study's 4,690)."""
    from . import improve
    from .study import VALUES

    rows = []

    def add(part, model, count, images, epochs, batch):
        rows.append({"notebook": NOTEBOOKS[part], "model": model, "count": count,
                     "steps": math.ceil(images / batch) * epochs, "study_steps": STUDY_STEPS})

    s, t, c, i = profile.sweep, profile.train, profile.compare, profile.improve
    if NOTEBOOKS["sweep"] not in profile.skip:
        configs = estimate.count_configs(s.space, s.n_configs, s.factors)
        pool = s.subset or TRAIN_SPLIT
        for batch in sorted({b for b in VALUES["batch_size"] if "batch_size" in s.factors} | {128}):
            add("sweep", f"fold model at batch {batch}", configs * s.k, pool * (s.k - 1) // s.k, s.epochs, batch)
        add("sweep", "final model (batch 128)", 1, s.final_subset or TRAIN_SPLIT, s.final_epochs, 128)
    if NOTEBOOKS["train"] not in profile.skip:
        n = (t.subset or TRAIN_SPLIT) - round(t.val_fraction * (t.subset or TRAIN_SPLIT))
        chosen = "the study's recipe" if NOTEBOOKS["sweep"] in profile.skip else "the study's recipe and the CV choice"
        add("train", chosen + " (batch 128)", 1 if NOTEBOOKS["sweep"] in profile.skip else 2, n, t.epochs, 128)
    if NOTEBOOKS["compare"] not in profile.skip and c.fmnist_resnet:
        add("compare", "ResNet-18 on Fashion-MNIST (batch 128)", 1, c.fmnist_resnet_subset or TRAIN_SPLIT,
            c.fmnist_resnet_epochs, 128)
    if NOTEBOOKS["improve"] not in profile.skip:
        pool = i.subset or TRAIN_SPLIT
        n = pool - round(i.val_fraction * pool)
        for row in improve.select_rows(i.rows):
            if row.settings is not None:
                add("improve", row.name, i.seeds, n, i.epochs, row.config(epochs=i.epochs).batch_size)
    return rows


# --------------------------------------------------------------------------------------------
# The pace, measured once per run folder


@dataclass(frozen=True)
class Plan:
    """A budgeted run: its ``profile``, ``record`` (:func:`size`'s) and ``run`` folder."""

    profile: profiles.Profile
    record: dict
    run: Path


def plan(budget: str | float, run_dir: str | Path | None = None, device: str = "auto",
         pace: dict[str, float] | None = None, log=print) -> Plan:
    """Return the :class:`Plan` of ``budget`` (as :func:`parse` reads it), saved as ``<run>/budget.json``.

    The run folder is ``runs/budget-<budget>`` unless ``run_dir``. When it already holds a
    ``budget.json`` for this budget, its pace is reused (never measured again), so a rerun gets the
    same sizes whatever the machine's load; otherwise the pace is ``pace`` or measured now on
    ``device`` with :func:`fmnist_utils.estimate.measure_seconds_per_image`.
    """
    from . import device as devices

    budget_s = parse(budget)
    name = profile_name(budget_s)
    run = paths.run_folder(name, run_dir)
    saved = run / "budget.json"
    if saved.is_file():
        old = provenance.read_json(saved)
        pace, dev_type, dev_name = old["pace"], old["device"], old.get("device_name")
        log(f"budget {label(budget_s)}: reusing the pace measured on {dev_name} ({saved})")
    else:
        dev = devices.resolve_device(device)
        dev_type, dev_name = dev.type, devices.describe(dev)
        if pace is None:
            log(f"budget {label(budget_s)}: measuring the pace of each kind of image-pass on {dev_name}")
            pace = estimate.measure_seconds_per_image(device=dev)
    # The pace's measuring time is counted on a rerun too, so that a rerun gets the first run's sizes.
    profile, record = size(budget_s, pace, dev_type, name=name, measured_here=True)
    record["device_name"] = dev_name
    # Rewritten every time (the pace kept): the record always describes the sizes this run uses.
    run.mkdir(parents=True, exist_ok=True)
    provenance.write_json(saved, record)
    return Plan(profile, record, run)


def quick() -> tuple[profiles.Profile, dict]:
    """Return (the ``quick`` profile, its record): :data:`QUICK_BUDGET_S` sized at :data:`REFERENCE_PACE`.

    Its sizes are committed in :data:`fmnist_utils.profiles.PROFILES` (a test checks they are this).
    """
    profile, record = size(QUICK_BUDGET_S, REFERENCE_PACE, "cpu", name="quick", measured_here=False)
    record["device_name"] = f"the reference 2-core CPU ({PACE_FILE})"
    return profile, record


def describe(record: dict) -> str:
    """Return the plan in a few lines: budget, pace, what runs, each model's steps, the estimate."""
    lines = [f"budget {record['budget']} on {record.get('device_name') or record['device']}: estimated "
             f"{label(record['estimate_total_seconds'])}; floor {record['floor_steps']} steps",
             "pace (ms per image-pass): " + ", ".join(f"{k} {v * 1e3:.3g}" for k, v in record["pace"].items())]
    if record["dropped"]:
        lines.append("not run within the budget: " + ", ".join(record["dropped"]))
    for m in record["models"]:
        lines.append(f"  {m['notebook']}: {m['count']} x {m['model']}: {m['steps']:,} steps (the study: {m['study_steps']:,})")
    return "\n".join(lines)


def reference_pace(path: str | Path | None = None) -> dict[str, float]:
    """Return the pace saved in :data:`PACE_FILE` (the reference 2-core CPU), read from the repository."""
    path = Path(path) if path is not None else Path(__file__).resolve().parent.parent / PACE_FILE
    return json.loads(Path(path).read_text())["seconds_per_image"]


def main(argv=None) -> int:
    """``python -m fmnist_utils.budget 20m``: print the plan a budget gets on this machine (the pace
    measured now, nothing written); ``--measure-reference``: measure the pace here and write it to
    :data:`PACE_FILE` (run it on the idle reference CPU, then update :data:`REFERENCE_PACE` and quick)."""
    import argparse
    import datetime as dt

    from . import device as devices

    parser = argparse.ArgumentParser(prog="python -m fmnist_utils.budget", description=main.__doc__.splitlines()[0])
    parser.add_argument("budget", nargs="?", default=None, help="30m, 2h, or minutes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--measure-reference", action="store_true", help=f"write the measured pace to {PACE_FILE}")
    parser.add_argument("--reference-pace", action="store_true",
                        help=f"plan at the reference CPU's committed pace ({PACE_FILE}) instead of measuring this machine")
    parser.add_argument("--steps", type=int, default=10, help="timed batches of each kind")
    parser.add_argument("--json", default=None, help="write the pace and the full profile's estimate here")
    args = parser.parse_args(argv)
    dev = devices.resolve_device(args.device)
    pace = reference_pace() if args.reference_pace else estimate.measure_seconds_per_image(device=dev, steps=args.steps)
    if args.json:
        full = estimate.estimate("full", pace, dev)
        cnn = sum(c.get("cnn_train", 0) for c in full["passes"].values())
        provenance.write_json(args.json, {"device_name": devices.describe(dev), "seconds_per_image": pace,
                                          "full_seconds": full["total_seconds"], "full_notebooks": full["notebooks"],
                                          "full_cnn_train_passes": cnn})
        print(f"pace measured; the full profile ({cnn / 1e6:.1f} M SeedCNN training passes) would take "
              f"{label(full['total_seconds'])} here")
    if args.measure_reference:
        path = Path(__file__).resolve().parent.parent / PACE_FILE
        old = json.loads(path.read_text()) if path.is_file() else {}
        provenance.write_json(path, {**old, "device_name": devices.describe(dev), "date": dt.date.today().isoformat(),
                                     "seconds_per_image": pace,
                                     "how": "estimate.measure_seconds_per_image(steps=10) on the idle machine"})
        print(f"wrote {path}")
    if args.budget is not None:
        try:
            _, record = size(parse(args.budget), pace, dev.type, measured_here=not args.reference_pace)
        except ValueError as exc:  # a budget too small, or one that does not parse: one line, no traceback
            print(f"error: {exc}", file=sys.stderr)
            return 2
        record["device_name"] = "the reference CPU's committed pace" if args.reference_pace else devices.describe(dev)
        print(describe(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
