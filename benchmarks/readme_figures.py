"""The README's measured figures, written from a run's results, never typed by hand.

    python benchmarks/readme_figures.py --run runs/quick --wall-seconds 812   # after `time make report`
    python benchmarks/readme_figures.py --from benchmarks/results/quick-<device>-<date>.json

The first form reads a finished run folder (each notebook's ``results.json`` and stamp), writes
``benchmarks/results/<profile>-<device>-<date>.json`` with the wall times and headline figures,
and rewrites the README's block between :data:`BEGIN` and :data:`END` from it. The second
re-renders the block from a saved file. A test checks that the README's block is exactly the
rendering of the file it names, so the README's numbers are those of a recorded run; the wording
comes from :mod:`fmnist_utils.report` (the same helpers as the report).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from fmnist_utils import notebook, pipeline, provenance, report, stats  # noqa: E402
from verify_gpu import slug  # noqa: E402  (the results files' naming)

README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BEGIN = "<!-- measured figures: written by benchmarks/readme_figures.py from {source}; do not edit by hand -->"
END = "<!-- end of measured figures -->"
BLOCK = re.compile(r"<!-- measured figures: written by benchmarks/readme_figures.py from (?P<source>\S+); "
                   r"do not edit by hand -->\n.*?<!-- end of measured figures -->", re.S)
NAMES = ("sweep", "train", "resnet_compare", "improvements")


def _results(run: Path) -> dict[str, dict]:
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
    env = first["environment"]
    notebooks, finished = [], []
    for r in results.values():
        stamp = pipeline.read_stamp(run, r["notebook"]) or {}  # its seconds include the kernel's start
        notebooks.append({"notebook": r["notebook"], "seconds": stamp.get("seconds", r["seconds"])})
        finished.append(stamp.get("finished_utc") or r["environment"].get("time_utc") or "")
    figures = {"profile": first["profile"]["name"], "device_name": env["device_name"],
               "git_revision": env.get("git_revision"), "date": max(finished)[:10] or "unknown date",
               "notebooks": notebooks, "wall_seconds": wall_seconds}
    if "sweep" in results:
        s = results["sweep"]
        figures["sweep"] = {"k": s["protocol"]["k"], "n_configs": s["protocol"]["n_configs"], "best_cv": s["best_cv"],
                            "chosen_vs_study": s["verdicts"]["chosen_vs_study"]}
    if "train" in results:
        t = results["train"]
        figures["train"] = {"config_source": t["config_source"], "test_accuracy": t["test"]["accuracy"],
                            "test_images": t["data"]["test_images"], "train_images": t["data"]["train_images"],
                            "epochs": t["config"]["epochs"],
                            "study_recipe_accuracy": (t.get("study_recipe") or {}).get("test", {}).get("accuracy"),
                            "chosen_vs_study_recipe": t["verdicts"]["chosen_vs_study_recipe"]}
    if "resnet_compare" in results:
        c = results["resnet_compare"]
        figures["compare"] = {"resnet_title": c["resnet_title"], "matrix_agreement": c["verdicts"]["matrix_agreement"]}
    if "improvements" in results:
        i = results["improvements"]
        figures["improve"] = {"seeds": i["protocol"]["n_seeds"], "epochs": i["protocol"]["epochs"],
                              "train_images": i["protocol"]["train_images"],
                              "rows": [{k: t.get(k) for k in ("row", "label", "reference", "accuracy_mean", "accuracy_sd",
                                                              "difference", "low", "high", "level", "p", "verdict",
                                                              "family")}
                                       for t in i["table"]]}
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


def readme_block(text: str) -> tuple[str, str] | None:
    """Return (source, block) of the measured-figures block in README text ``text``, or None."""
    match = BLOCK.search(text)
    return (match["source"], match[0]) if match else None


def update_readme(readme: Path, block: str) -> None:
    """Replace the README's measured-figures block with ``block``; fail when it has none."""
    text = readme.read_text()
    if readme_block(text) is None:
        raise SystemExit(f"{readme} has no block between '{BEGIN.split('{')[0]}...' and '{END}': add the two markers first")
    readme.write_text(BLOCK.sub(lambda _: block, text, count=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path, help="a finished run folder, e.g. runs/quick")
    where.add_argument("--from", dest="source", type=Path, help="a figures file written earlier by this script")
    parser.add_argument("--wall-seconds", type=float, help="the measured wall time of the whole make report")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
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
