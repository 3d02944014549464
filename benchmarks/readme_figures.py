"""The README's measured figures, written from a run's results, never typed by hand.

    python benchmarks/readme_figures.py --run runs/quick --wall-seconds 812   # after `time make report`
    python benchmarks/readme_figures.py --from benchmarks/results/quick-<device>-<date>.json
    python benchmarks/readme_figures.py --gpu benchmarks/results/<gpu>-<date>.json  # after `make verify-gpu`

The first form reads a finished run folder (each notebook's ``results.json`` and stamp), writes
``benchmarks/results/<profile>-<device>-<date>.json`` with the wall times and headline figures,
and rewrites the README's block between :data:`BEGIN` and :data:`END` from it. The second
re-renders the block from a saved file. A test checks that the README's block is exactly the
rendering of the file it names, so the README's numbers are those of a recorded run; the wording
comes from :mod:`fmnist_utils.report` (the same helpers as the report).

The third rewrites the README's GPU block (between :data:`GPU_BEGIN` and :data:`GPU_END`) from
a results file of ``make verify-gpu`` (``benchmarks/verify_gpu.py``): the device, every pace and
throughput it measured, the budgeted report's time and the full profile's estimate at that pace.
``--gpu none`` writes the block that says no GPU measurement is committed yet.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from fmnist_utils import notebook, pipeline, provenance, records, report, stats  # noqa: E402
from verify_gpu import slug  # noqa: E402  (the results files' naming)

README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN = "<!-- measured figures: written by benchmarks/readme_figures.py from {source}; do not edit by hand -->"
END = "<!-- end of measured figures -->"
BLOCK = re.compile(r"<!-- measured figures: written by benchmarks/readme_figures.py from (?P<source>\S+); "
                   r"do not edit by hand -->\n.*?<!-- end of measured figures -->", re.S)
NAMES = ("sweep", "train", "resnet_compare", "improvements")


def _results(run: Path) -> dict[str, records.Record]:
    out = {}
    for name in NAMES:
        try:
            out[name] = notebook.find_results(run, name)
        except FileNotFoundError:
            pass
    if not out:
        raise FileNotFoundError(f"{run} holds no notebook results: run `make report` (or pass --run) first")
    return out


def collect(run: str | Path, wall_seconds: float | None = None) -> dict:
    """Return the figures of the run folder ``run``: profile, device, revision, date, each
    notebook's wall time (from its stamp), ``wall_seconds`` of the whole ``make report`` when
    measured, and each notebook's headline numbers and verdict records."""
    run = Path(run)
    results = _results(run)
    first = next(iter(results.values()))
    env = first.environment
    notebooks, finished = [], []
    for r in results.values():
        stamp = pipeline.read_stamp(run, r.notebook) or {}  # its seconds include the kernel's start
        notebooks.append({"notebook": r.notebook, "seconds": stamp.get("seconds", r.seconds)})
        finished.append(stamp.get("finished_utc") or r.environment.get("time_utc") or "")
    figures = {"profile": first.profile["name"], "device_name": env["device_name"],
               "git_revision": env.get("git_revision"), "date": max(finished)[:10] or "unknown date",
               "notebooks": notebooks, "wall_seconds": wall_seconds}
    if "sweep" in results:
        s = results["sweep"]
        figures["sweep"] = {"k": s.protocol["k"], "n_configs": s.protocol["n_configs"], "best_cv": s.best_cv,
                            "chosen_vs_study": s.verdicts["chosen_vs_study"]}
    if "train" in results:
        t = results["train"]
        figures["train"] = {"config_source": t.config_source, "test_accuracy": t.test["accuracy"],
                            "test_images": t.data["test_images"], "train_images": t.data["train_images"],
                            "epochs": t.config["epochs"],
                            "study_recipe_accuracy": (t.study_recipe or {}).get("test", {}).get("accuracy"),
                            "chosen_vs_study_recipe": t.verdicts["chosen_vs_study_recipe"]}
    if "resnet_compare" in results:
        c = results["resnet_compare"]
        figures["compare"] = {"resnet_title": c.resnet_title, "matrix_agreement": c.verdicts["matrix_agreement"]}
    if "improvements" in results:
        i = results["improvements"]
        figures["improve"] = {"seeds": i.protocol["n_seeds"], "epochs": i.protocol["epochs"],
                              "train_images": i.protocol["train_images"],
                              "rows": [{k: t.get(k) for k in ("row", "label", "reference", "accuracy_mean", "accuracy_sd",
                                                              "difference", "low", "high", "level", "p", "verdict",
                                                              "family")}
                                       for t in i.table]}
    return figures


def _word(record: dict) -> str:
    # verdict_word reads a recorded run's old words ("tie") as what the test decided.
    return f"{report.verdict_word(record['verdict'])}: {report.verdict_numbers(record)}"


def _mantel(record: dict) -> dict:
    """The Mantel record without an interval: runs recorded before it was dropped kept the
    image-bootstrap range of rho as low/high, which is no interval of the test beside its p."""
    return {**record, "low": None, "high": None}


def render(fig: dict, source: str) -> str:
    """Return the README block (markdown, markers included) for the figures ``fig`` saved at ``source``."""
    lines = [BEGIN.format(source=source), "",
             f"Measured by `make report PROFILE={fig['profile']}` on {fig['device_name']} "
             f"({fig['date']}, git {fig['git_revision']}):", "",
             "| notebook | wall time |", "|---|---|"]
    lines += [f"| `{n['notebook']}` | {report.secs(n['seconds'])} |" for n in fig["notebooks"]]
    lines.append(f"| all notebooks | {report.secs(sum(n['seconds'] for n in fig['notebooks']))} |")
    if fig.get("wall_seconds") is not None:
        lines.append(f"| the whole `make report` (notebooks, report, PDF) | {report.secs(fig['wall_seconds'])} |")
    lines.append("")
    if "sweep" in fig:
        s, b = fig["sweep"], fig["sweep"]["best_cv"]
        lines.append(f"- `01_sweep`: {s['k']}-fold cross-validation over {s['n_configs']} configurations chose "
                     f"lr {report.num(b['lr'])}, batch {report.num(b['batch_size'])}, dropout {report.num(b['dropout'])} "
                     f"(CV accuracy {report.pct(b['accuracy_mean'])} ± {report.points(b['accuracy_std'])} points); "
                     f"against the study's configuration, {_word(s['chosen_vs_study'])}.")
    if "train" in fig:
        t = fig["train"]
        which = {"sweep": "the configuration cross-validation chose", "study": "the study's recipe"}.get(
            t["config_source"], f"the {t['config_source']} recipe")
        line = (f"- `02_train`: {which}, {t['epochs']} epochs on {report.num(t['train_images'])} "
                f"images, classifies {report.pct(t['test_accuracy'])} of {report.num(t['test_images'])} test images")
        if t["study_recipe_accuracy"] is not None:
            line += (f"; the study's recipe on the same budget {report.pct(t['study_recipe_accuracy'])}; "
                     f"{_word(t['chosen_vs_study_recipe'])}")
        lines.append(line + ".")
    if "compare" in fig:
        c = fig["compare"]
        lines.append(f"- `03_resnet_compare`: the class-by-class matrices of the CNN and of {c['resnet_title']}, "
                     f"{_word(_mantel(c['matrix_agreement']))}.")
    if "improve" in fig:
        i = fig["improve"]
        lines += ["", f"`04_improvements` ({i['seeds']} seeds, {i['epochs']} epochs on {report.num(i['train_images'])} "
                      "images; test accuracy, mean ± sd over seeds; difference from the reference row in points, "
                      "paired across seeds, on these test images; where a family is named, its p is adjusted and its "
                      "interval at the level the correction decides at):", "",
                  "| row | accuracy | vs | difference (interval; p) | verdict | family |", "|---|---|---|---|---|---|"]
        for r in i["rows"]:
            sd = f" ± {report.points(r['accuracy_sd'])} points" if r["accuracy_sd"] is not None else ""
            diff = "" if r["difference"] is None else (
                f"{report.points(r['difference'])} ({stats.level_text(r.get('level') or stats.LEVEL)} interval "
                f"{report.points(r['low'])} to {report.points(r['high'])}; {report.p_value(r['p'])})"
                if r["low"] is not None else f"{report.points(r['difference'])} ({report.p_value(r['p'])})")
            family = report.FAMILY_WORDS.get(r.get("family"), "")
            lines.append(f"| {r['label']} | {report.pct(r['accuracy_mean'])}{sd} | {r['reference'] or ''} | {diff} "
                         f"| {report.verdict_word(r['verdict'])} | {family} |")
    lines += ["", END]
    return "\n".join(lines)


def _find(pattern, text: str) -> tuple[str, str] | None:
    """Return (source, block) of the block ``pattern`` matches in README text ``text``, or None."""
    match = pattern.search(text)
    return (match["source"], match[0]) if match else None


def _replace(readme: Path, pattern, begin: str, end: str, block: str) -> None:
    """Replace the README's block matched by ``pattern`` (between ``begin`` and ``end``) with ``block``;
    fail, naming the markers, when it has none."""
    text = readme.read_text()
    if _find(pattern, text) is None:
        raise SystemExit(f"{readme} has no block between '{begin.split('{')[0]}...' and '{end}': add the two markers first")
    readme.write_text(pattern.sub(lambda _: block, text, count=1))


def readme_block(text: str) -> tuple[str, str] | None:
    """Return (source, block) of the measured-figures block in README text ``text``, or None."""
    return _find(BLOCK, text)


def update_readme(readme: Path, block: str) -> None:
    """Replace the README's measured-figures block with ``block``; fail when it has none."""
    _replace(readme, BLOCK, BEGIN, END, block)


# --------------------------------------------------------------------------------------------
# The GPU block: figures of a verify-gpu results file (benchmarks/verify_gpu.py)

GPU_BEGIN = "<!-- GPU figures: written by benchmarks/readme_figures.py --gpu from {source}; do not edit by hand -->"
GPU_END = "<!-- end of GPU figures -->"
GPU_BLOCK = re.compile(r"<!-- GPU figures: written by benchmarks/readme_figures.py --gpu from (?P<source>\S+); "
                       r"do not edit by hand -->\n.*?<!-- end of GPU figures -->", re.S)
NO_GPU = "none"  # the source named while no GPU measurement is committed
PACE_WORDS = {"cnn_train": "SeedCNN training", "cnn_eval": "SeedCNN evaluation", "resnet_train": "ResNet-18 training",
              "resnet_eval": "ResNet-18 evaluation", "imagenet_eval": "ImageNet ResNet-18 features"}
GPU_RECIPE = "docs/DEVELOPERS.md#a-gpu-check-with-the-device-tool"


def _stage(doc: dict, name: str) -> tuple[dict | None, str]:
    """Return (the figures of verify-gpu's stage ``name``, or None when it has none; why not, in words)."""
    record = (doc.get("stages") or {}).get(name)
    if record is None:
        return None, "not run"
    figures = record.get("figures") or None
    if record.get("status") == "ok" and figures:
        return figures, ""
    return figures, f"{record.get('status', 'not run')}: {record.get('error') or 'no figures'}"


def gpu_rows(doc: dict) -> list[tuple[str, str]]:
    """Return (what was measured, its figure) for every measurement of the verify-gpu results ``doc``;
    a stage that failed or did not run gives one row saying so."""
    rows = []
    est, why = _stage(doc, "estimate")
    if est and est.get("seconds_per_image"):
        rows += [(f"pace, {PACE_WORDS.get(kind, kind)}", f"{report.num(s * 1e3)} ms per image-pass")
                 for kind, s in est["seconds_per_image"].items()]
    else:
        rows.append(("pace of each kind of image-pass (`estimate`)", f"not measured ({why})"))
    check, why = _stage(doc, "stack_check")
    if check and "verdict" in check:
        rows.append((f"`fit_many` against separate `fit` runs ({check['units']} units, fp32, batch "
                     f"{check['batch_size']}, {check['epochs']} epochs)", check["verdict"]))
    else:
        rows.append(("`fit_many` against separate `fit` runs (`stack_check`)", f"not measured ({why})"))
    bench, why = _stage(doc, "bench_gpu")
    if bench and bench.get("loops"):
        for r in bench["loops"]:
            ratio = "" if r["loop"] == "tutorial" else f", {report.num(r['speedup_vs_tutorial'], 2)} times the tutorial loop"
            rows.append((f"study recipe, {r['loop']} loop ({report.num(bench['n_train'])} images, batch "
                         f"{bench['batch_size']})", f"{report.secs(r['seconds_per_epoch'])} per epoch "
                         f"({report.num(round(r['images_per_second']))} images/s{ratio})"))
        for name, reason in (bench.get("skipped") or {}).items():
            rows.append((f"study recipe, {name} loop", f"not measured: {reason}"))
        m = bench.get("modern") or {}
        if m:
            target = report.pct(m["target_val_accuracy"], 0)
            reached = (f"{report.secs(m['time_to_target_seconds'])} of training" if m.get("time_to_target_seconds") is not None
                       else f"not reached in {m['epochs']} epoch{'s' if m['epochs'] != 1 else ''} "
                            f"(final {report.pct(m['final_val_accuracy'])})")
            rows.append((f"modern recipe, time to {target} validation accuracy", reached))
    else:
        rows.append(("training loops (`bench_gpu`)", f"not measured ({why})"))
    sweep, why = _stage(doc, "bench_sweep")
    if sweep and sweep.get("rows"):
        for r in sweep["rows"]:
            ratio = "" if r["way"].startswith("tutorial") else f" ({report.num(r['ratio_vs_tutorial'], 2)} times the tutorial loop)"
            rows.append((f"sweep units, {r['way']}", f"{report.num(round(r['units_per_hour']))} units/h{ratio}"))
    else:
        rows.append(("sweep throughput (`bench_sweep`)", f"not measured ({why})"))
    rep = (doc.get("stages") or {}).get("report")
    if rep is None:
        rows.append(("the budgeted report (`report`)", "not run"))
    else:
        notebooks = (rep.get("figures") or {}).get("notebooks") or {}
        parts = [f"{stem} {report.secs(nb.get('seconds'))}" + ("" if nb.get("status") == "ok" else f" ({nb.get('status')})")
                 for stem, nb in notebooks.items()]
        status = {"ok": rep.get("note") or "done", "timeout": "stopped at its budget"}.get(rep["status"], rep["status"])
        headline = ((notebooks.get("02_train") or {}).get("accuracies") or {}).get("test.accuracy")
        rows.append((f"the report, `make report {rep['sized_by']}`" if rep.get("sized_by") else "the report stage",
                     f"{report.secs(rep.get('seconds'))}, {status}" + (f"; notebooks: {', '.join(parts)}" if parts else "")
                     + (f"; 02's test accuracy {report.pct(headline)}" if headline is not None else "")))
    return rows


def render_gpu(doc: dict | None, source: str) -> str:
    """Return the README's GPU block (markdown, markers included) for the verify-gpu results ``doc``
    saved at ``source``; ``doc`` None (source :data:`NO_GPU`): the block saying that no GPU
    measurement is committed, and how to make one."""
    lines = [GPU_BEGIN.format(source=source), ""]
    if doc is None:
        lines += ["No GPU measurement is committed yet, so this section has no GPU figures. On a machine with a CUDA "
                  "GPU, `make verify-gpu` measures them into `benchmarks/results/<gpu>-<date>.json`; then "
                  "`python benchmarks/readme_figures.py --gpu benchmarks/results/<gpu>-<date>.json` writes them here. "
                  f"With the device tool: the recipe in [docs/DEVELOPERS.md]({GPU_RECIPE}).", "", GPU_END]
        return "\n".join(lines)
    d = doc["device"]
    facts = [f"compute capability {'.'.join(map(str, d['capability']))}" if d.get("capability") else None,
             f"torch {d['torch']}", f"CUDA {d['cuda']}" if d.get("cuda") else None, f"Python {d['python']}",
             f"precision auto: {d['precision_auto']}", f"{d['cpu_count']} CPU threads" if d.get("cpu_count") else None]
    started = (doc.get("runs") or [{}])[0].get("started_utc", "")[:10] or "unknown date"
    lines.append(f"Measured by `make verify-gpu` (profile {doc['profile']}) on {d['device_name']} "
                 f"({', '.join(f for f in facts if f)}; {started}, git {d.get('git_revision') or 'not recorded'}).")
    runs = [r for r in doc.get("runs") or [] if r.get("seconds") is not None]
    if len(runs) == 1:
        target = doc.get("target_seconds")
        met = "" if target is None else (f"; the target, {report.secs(target)}, "
                                          f"{'met' if runs[0]['seconds'] <= target else 'NOT met'}")
        budget = "" if doc.get("budget_seconds") is None else f" (its budget {report.secs(doc['budget_seconds'])}{met})"
        lines.append(f"The whole command took {report.secs(runs[0]['seconds'])}{budget}.")
    elif runs:  # a report cut short, finished by `--stages report` on the same machine
        lines.append(f"It ran in {len(runs)} calls: " + "; ".join(
            f"{report.secs(r['seconds'])} ({', '.join(r.get('stages') or [])})" for r in runs) + ".")
    lines += ["", "| measured | figure |", "|---|---|"]
    lines += [f"| {what} | {figure} |" for what, figure in gpu_rows(doc)]
    est, why = _stage(doc, "estimate")
    lines.append("")
    if est and est.get("full_seconds") is not None:
        per = ", ".join(f"{stem} {report.secs(s)}" for stem, s in (est.get("full_notebooks") or {}).items())
        lines.append(f"The full profile at this pace, estimated (not measured): {report.num(est['full_cnn_train_passes'] / 1e6, 1)} "
                     f"million SeedCNN training image-passes, about {report.secs(est['full_seconds'])}"
                     + (f" ({per})" if per else "") + ".")
    else:
        lines.append(f"The full profile's estimate needs the measured pace, which this run does not have ({why}).")
    lines += ["", GPU_END]
    return "\n".join(lines)


def gpu_block(text: str) -> tuple[str, str] | None:
    """Return (source, block) of the GPU block in README text ``text``, or None."""
    return _find(GPU_BLOCK, text)


def update_gpu_readme(readme: Path, block: str) -> None:
    """Replace the README's GPU block with ``block``; fail when it has none."""
    _replace(readme, GPU_BLOCK, GPU_BEGIN, GPU_END, block)


def is_gpu_measurement(doc: dict) -> bool:
    """Return True when ``doc`` is verify-gpu's results of the full profile on a CUDA device."""
    return doc.get("kind") == "verify-gpu" and doc.get("profile") == "full" and str(doc["device"]["device"]).startswith("cuda")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, help="a finished run folder, e.g. runs/quick")
    where.add_argument("--from", dest="source", type=Path, help="a figures file written earlier by this script")
    where.add_argument("--gpu", help="a results file of `make verify-gpu` on a GPU (benchmarks/results/<gpu>-<date>.json): "
                                     f"rewrites the README's GPU block; '{NO_GPU}': the block saying none is committed")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="with --gpu: accept a results file of another profile or of a CPU (for tests)")
    parser.add_argument("--wall-seconds", type=float, help="the measured wall time of the whole make report")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if args.gpu is not None:
        if args.gpu == NO_GPU:
            update_gpu_readme(args.readme, render_gpu(None, NO_GPU))
        else:
            path = Path(args.gpu).resolve()
            doc = provenance.read_json(path)
            if not is_gpu_measurement(doc) and not args.allow_cpu:
                raise SystemExit(f"{args.gpu} is verify-gpu's {doc.get('profile')} profile on {doc['device']['device_name']}, "
                                 "not a GPU measurement of the full profile: run `make verify-gpu` on a CUDA GPU")
            update_gpu_readme(args.readme, render_gpu(doc, path.relative_to(ROOT).as_posix()
                                                      if path.is_relative_to(ROOT) else str(path)))
        print(f"updated {args.readme}")
        return 0
    if args.run:
        fig = collect(args.run, args.wall_seconds)
        path = RESULTS / f"{fig['profile']}-{slug(fig['device_name'])}-{fig['date']}.json"
        provenance.write_json(path, fig)
        print(f"wrote {path}")
    else:
        path = args.source.resolve()
        fig = provenance.read_json(path)
    update_readme(args.readme, render(fig, path.relative_to(ROOT).as_posix()))
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
