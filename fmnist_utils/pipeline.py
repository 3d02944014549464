"""Run the notebooks into a run folder, reusing the ones that are up to date, then build the report.

``make report`` calls :func:`build`. The notebooks are ``notebooks/NN_name.ipynb``, run in sorted
order by papermill with two injected parameters, ``profile`` (the resolved profile name) and
``run_dir`` (the run folder). Each executed copy is kept in ``<run folder>/notebooks/``.

Papermill cannot resume, so the runner decides what is up to date. Each notebook gets a stamp,
``<run folder>/notebooks/<stem>.stamp.json``, holding a key: a hash of the notebook's source
cells, the injected parameters, the package's code (:func:`package_digest`) and the keys of the
notebooks before it. A notebook is reused when its stamp has the same key, its last run
succeeded and its ``results.json`` exists; otherwise it and every later notebook run again.
When its key changed, its output folder is emptied first (a stale checkpoint must not be
continued); when only the last run was interrupted or failed under the same key, the folder is
kept so that a training checkpoint resumes.

A failure stops the run with :class:`NotebookFailed`, naming the notebook, the cell and the
error; the partly executed notebook is kept and no report is left behind. The report is written
only after every notebook succeeded (see :mod:`fmnist_utils.report`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

from . import paths, profiles, provenance

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
# Parameters every notebook must declare in its `parameters` cell: papermill only warns about an
# injected name the cell lacks, and the notebook would then write into another run folder.
REQUIRED_PARAMETERS = ("profile", "run_dir")
# Modules that only run or assemble the report: editing them must not re-execute the notebooks.
REPORT_ONLY_MODULES = frozenset({"pipeline.py", "report.py", "__main__.py"})
KERNEL = "python3"

EXIT_NOTEBOOK_FAILED = 1
EXIT_NO_PDF = 3
EXIT_TOO_SLOW = 4


class NotebookFailed(RuntimeError):
    """A notebook raised (or finished without its results): where, what, and where to look."""

    def __init__(self, stem: str, source_path: Path, executed_path: Path, *, ename: str, evalue: str,
                 cell_number: int | None = None, exec_count: int | None = None, cell_source: str = "",
                 traceback_tail: str = ""):
        self.stem = stem
        self.source_path = Path(source_path)
        self.executed_path = Path(executed_path)
        self.ename, self.evalue = ename, evalue
        self.cell_number, self.exec_count = cell_number, exec_count
        self.cell_source, self.traceback_tail = cell_source, traceback_tail
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [f"notebook {self.stem} failed: {self.ename}: {self.evalue}".rstrip(": ")]
        if self.cell_source:
            # A cell missing from the source is the one papermill injected with the parameters.
            where = (f"  in cell {self.cell_number} of {self.source_path}" if self.cell_number is not None
                     else "  in the cell papermill injected with the parameters")
            if self.exec_count is not None:
                where += f" (In [{self.exec_count}] of the executed notebook)"
            lines.append(where + ", which starts:")
            excerpt = self.cell_source.strip("\n").splitlines()[:6]
            lines += [f"    | {line}" for line in excerpt]
        if self.traceback_tail:
            lines.append("  last lines of the traceback:")
            lines += [f"    {line}" for line in self.traceback_tail.splitlines()]
        lines.append(f"  the partly executed notebook is kept for inspection: {self.executed_path}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# What there is to run, and whether it is up to date


def notebooks_dir() -> Path:
    """Return the folder holding the kit's notebooks (``<root>/notebooks``)."""
    return paths.project_root() / "notebooks"


def discover(folder: str | Path | None = None) -> list[Path]:
    """Return the notebooks ``NN_name.ipynb`` in ``folder`` (default :func:`notebooks_dir`), sorted."""
    folder = Path(folder) if folder is not None else notebooks_dir()
    found = sorted(p for p in folder.glob(NOTEBOOK_PATTERN) if p.is_file())
    if not found:
        raise ValueError(f"no notebooks named like {NOTEBOOK_PATTERN} in {folder}; pass the folder that holds them")
    return found


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_digest(notebook: str | Path) -> str:
    """Return a hash of a notebook's cells as written (type, source, tags), ignoring outputs,
    execution counts and other metadata, so opening and re-saving it changes nothing.
    """
    nb = json.loads(Path(notebook).read_text())
    cells = [
        [c.get("cell_type"), "".join(c.get("source", "")), sorted(c.get("metadata", {}).get("tags", []))]
        for c in nb.get("cells", [])
    ]
    return _digest(cells)


def package_digest(package_dir: str | Path | None = None) -> str:
    """Return a hash of the package's Python sources that notebooks run (``*.py`` in
    ``fmnist_utils``, without :data:`REPORT_ONLY_MODULES`).
    """
    root = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    files = sorted(p for p in root.rglob("*.py") if p.name not in REPORT_ONLY_MODULES and "__pycache__" not in p.parts)
    return _digest([[p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()] for p in files])


def notebook_key(source: str, parameters: dict, package: str, previous: list[str]) -> str:
    """Return the key a notebook's run is identified by: everything its results depend on."""
    return _digest({"source": source, "parameters": parameters, "package": package, "previous": previous})


def stamp_path(run: Path, stem: str) -> Path:
    """Return where the stamp of notebook ``stem`` lives in the run folder."""
    return Path(run) / "notebooks" / f"{stem}.stamp.json"


def executed_path(run: Path, stem: str) -> Path:
    """Return where the executed copy of notebook ``stem`` is written in the run folder."""
    return Path(run) / "notebooks" / f"{stem}.ipynb"


def results_path(run: Path, stem: str) -> Path:
    """Return the ``results.json`` notebook ``stem`` writes (``<run>/<stem>/results.json``)."""
    return Path(run) / stem / "results.json"


def read_stamp(run: Path, stem: str) -> dict | None:
    """Return the stamp of ``stem`` in ``run``, or None when there is none (or it is unreadable)."""
    try:
        return provenance.read_json(stamp_path(run, stem))
    except (OSError, ValueError):
        return None


def why_rerun(stamp: dict | None, key: str, parts: dict, has_results: bool) -> str | None:
    """Return why a notebook must run again, or None when its last run can be reused."""
    if stamp is None:
        return "no earlier run in this run folder"
    if stamp.get("key") != key:
        old = stamp.get("parts", {})
        changed = [name for name in ("source", "parameters", "package", "previous") if old.get(name) != parts[name]]
        words = {"source": "its cells", "parameters": "its parameters", "package": "the fmnist_utils code",
                 "previous": "an earlier notebook"}
        return "changed since its last run: " + ", ".join(words[c] for c in changed) if changed else "its stamp is from another version of the runner"
    if stamp.get("status") != "ok":
        return f"its last run did not finish (status {stamp.get('status')!r}); resuming with its output folder kept"
    if not has_results:
        return "its results.json is missing"
    return None


def check_parameters(notebook: Path) -> None:
    """Raise ValueError unless the notebook's ``parameters`` cell declares :data:`REQUIRED_PARAMETERS`."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    missing = [name for name in REQUIRED_PARAMETERS if name not in declared]
    if missing:
        raise ValueError(
            f"{notebook}: its cell tagged 'parameters' does not declare {', '.join(missing)} "
            f"(found {sorted(declared) or 'no parameters cell'}). Add e.g. `profile = \"auto\"` and `run_dir = \"\"`, "
            "one per line, with no '=' inside the trailing comment (papermill cannot parse such lines)."
        )


# --------------------------------------------------------------------------------------------
# Executing one notebook

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _source_cell_number(notebook: Path, cell_source: str) -> int | None:
    # papermill's cell index counts its injected-parameters cell; the reader wants the cell of
    # the notebook they edit, so match the failing cell's source there (1-based).
    cells = json.loads(notebook.read_text()).get("cells", [])
    for i, cell in enumerate(cells, start=1):
        if cell.get("cell_type") == "code" and "".join(cell.get("source", "")) == cell_source:
            return i
    return None


def recorded_failure(executed: Path) -> dict | None:
    """Return the first failure papermill recorded in an executed notebook's metadata or outputs
    (``{"cell_source", "exec_count", "ename", "evalue", "traceback"}``), or None when it has none.
    """
    nb = json.loads(Path(executed).read_text())
    flagged = bool(nb.get("metadata", {}).get("papermill", {}).get("exception"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        meta = cell.get("metadata", {}).get("papermill", {})
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"
                  and not (o.get("ename") == "SystemExit" and o.get("evalue") in ("", "0"))]
        if errors or meta.get("exception") is True or meta.get("status") == "failed":
            err = errors[0] if errors else {}
            return {
                "cell_source": "".join(cell.get("source", "")),
                "exec_count": cell.get("execution_count"),
                "ename": err.get("ename", "CellExecutionError"),
                "evalue": err.get("evalue", "papermill marked this cell as failed"),
                "traceback": err.get("traceback", []),
            }
    if flagged:
        return {"cell_source": "", "exec_count": None, "ename": "PapermillExecutionError",
                "evalue": "papermill recorded an exception in the notebook's metadata", "traceback": []}
    return None


def _traceback_tail(traceback: list[str], lines: int = 10) -> str:
    text = _ANSI.sub("", "\n".join(traceback)).strip()
    return "\n".join(text.splitlines()[-lines:])


def execute(notebook: Path, output: Path, parameters: dict, progress: bool = False) -> None:
    """Execute ``notebook`` with papermill into ``output`` (cwd: the notebook's folder).

    Raises :class:`NotebookFailed` when a cell raised (papermill's exception, or a failure
    recorded only in the executed notebook's metadata) or the kernel could not run it.
    """
    import papermill

    notebook, output = Path(notebook), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stem = notebook.stem
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=KERNEL,
            cwd=str(notebook.parent), progress_bar=progress, log_output=False,
            request_save_on_cell_execute=True,
        )
    except papermill.PapermillExecutionError as exc:
        raise NotebookFailed(
            stem, notebook, output, ename=exc.ename, evalue=exc.evalue,
            cell_number=_source_cell_number(notebook, exc.source), exec_count=exc.exec_count,
            cell_source=exc.source, traceback_tail=_traceback_tail(exc.traceback),
        ) from None
    except Exception as exc:  # a dead kernel, a missing kernel spec, a timeout: papermill raises many types
        raise NotebookFailed(stem, notebook, output, ename=type(exc).__name__, evalue=str(exc)) from exc
    failure = recorded_failure(output)
    if failure is not None:
        raise NotebookFailed(
            stem, notebook, output, ename=failure["ename"], evalue=failure["evalue"],
            cell_number=_source_cell_number(notebook, failure["cell_source"]) if failure["cell_source"] else None,
            exec_count=failure["exec_count"], cell_source=failure["cell_source"],
            traceback_tail=_traceback_tail(failure["traceback"]),
        )


# --------------------------------------------------------------------------------------------
# Running them all


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_notebooks(
    profile: str = "auto",
    run_dir: str | Path | None = None,
    notebooks: str | Path | None = None,
    force: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run (or reuse) every notebook in order and return their stamps, in notebook order.

    Each stamp is a dict: ``notebook`` (stem), ``key``, ``parts``, ``parameters``, ``status``
    ("ok"), ``seconds`` (papermill wall time of the run that produced the results, kernel
    start included), ``started_utc``, ``finished_utc``, ``executed`` (True when run now, False
    when reused), ``source`` and ``executed_notebook`` paths. ``force`` re-executes everything.
    Raises :class:`NotebookFailed` on the first failure; its stamp then says ``"failed"``.
    """
    name = profiles.resolve_name(profile)
    run = paths.run_folder(name, run_dir)
    found = discover(notebooks)
    for nb in found:  # before anything runs: a contract error should not cost minutes of training first
        check_parameters(nb)
    if progress is None:
        progress = sys.stderr.isatty()
    package = package_digest()
    parameters = {"profile": name, "run_dir": str(run)}
    log(f"profile {name}: {len(found)} notebook(s) from {found[0].parent} into {run}")

    stamps: list[dict] = []
    previous: list[str] = []
    rerun_rest = False
    for nb in found:
        stem = nb.stem
        parts = {"source": source_digest(nb), "parameters": parameters, "package": package, "previous": list(previous)}
        key = notebook_key(parts["source"], parameters, package, previous)
        previous.append(key)
        old = read_stamp(run, stem)
        if force:
            reason = "forced"
        elif rerun_rest:
            reason = "an earlier notebook was executed again"
        else:
            reason = why_rerun(old, key, parts, results_path(run, stem).is_file())
        if reason is None:
            log(f"{stem}: up to date, reused (its run took {old['seconds']:.1f} s, finished {old['finished_utc']})")
            stamps.append({**old, "executed": False})
            continue

        rerun_rest = True
        resume = not force and old is not None and old.get("key") == key and old.get("status") != "ok"
        if not resume:
            shutil.rmtree(run / stem, ignore_errors=True)
        stamp = {
            "notebook": stem, "key": key, "parts": parts, "parameters": parameters, "status": "running",
            "started_utc": _now(), "source": str(nb), "executed_notebook": str(executed_path(run, stem)),
        }
        provenance.write_json(stamp_path(run, stem), stamp)
        log(f"{stem}: running ({reason})")
        start, wall_start = time.perf_counter(), time.time()
        try:
            execute(nb, executed_path(run, stem), parameters, progress=progress)
            written = results_path(run, stem)
            # A results.json older than this run would be an earlier run's, not this one's.
            if not written.is_file() or written.stat().st_mtime < wall_start - 1:
                raise NotebookFailed(
                    stem, nb, executed_path(run, stem), ename="MissingResults",
                    evalue=f"the notebook finished without writing {results_path(run, stem)} "
                    "(every notebook must write its results.json into <run folder>/<its name>/)",
                )
        except NotebookFailed as exc:
            stamp.update(status="failed", seconds=time.perf_counter() - start, finished_utc=_now(), error=str(exc))
            provenance.write_json(stamp_path(run, stem), stamp)
            raise
        stamp.update(status="ok", seconds=time.perf_counter() - start, finished_utc=_now())
        provenance.write_json(stamp_path(run, stem), stamp)
        log(f"{stem}: done in {stamp['seconds']:.1f} s")
        stamps.append({**stamp, "executed": True})
    return stamps


def remove_report(report_dir: Path) -> list[Path]:
    """Delete the built report (HTML, PDF, rendered notebooks) from ``report_dir``; return what was removed."""
    removed = []
    for path in (report_dir / "report.html", report_dir / "report.pdf"):
        if path.exists():
            path.unlink()
            removed.append(path)
    if (report_dir / "notebooks").is_dir():
        shutil.rmtree(report_dir / "notebooks")
        removed.append(report_dir / "notebooks")
    return removed


def build(
    profile: str = "auto",
    run_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    notebooks: str | Path | None = None,
    force: bool = False,
    pdf: bool = True,
    install: bool = True,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    ignore_estimate: bool = False,
) -> dict:
    """Run the notebooks and build the report; return ``{"html", "pdf", "stamps", "seconds"}``.

    The old report is deleted first, so a failure (:class:`NotebookFailed`) or an interruption
    leaves no report that could pass for this run's. ``pdf=False`` skips the PDF; when it cannot
    be printed, :class:`fmnist_utils.report.PdfUnavailable` is raised after the HTML is written.
    Before anything runs, :func:`fmnist_utils.estimate.check_budget` raises
    :class:`fmnist_utils.estimate.TooSlow` for a ``full`` report on a machine without CUDA that
    would take hours, unless ``ignore_estimate`` (or ``FMNIST_IGNORE_ESTIMATE=1``).
    """
    from . import estimate, report

    estimate.check_budget(profile, ignore=ignore_estimate, log=log)
    start = time.perf_counter()
    report_dir = Path(report_dir) if report_dir is not None else paths.report_dir()
    for path in remove_report(report_dir):
        log(f"removed the previous {path}")
    stamps = run_notebooks(profile, run_dir, notebooks, force=force, progress=progress, log=log)
    name = profiles.resolve_name(profile)
    run = paths.run_folder(name, run_dir)
    html = report.write_report(run, stamps, report_dir, log=log)
    out = {"html": html, "pdf": None, "stamps": stamps}
    if pdf:
        out["pdf"] = report.write_pdf(html, report_dir / "report.pdf", install=install, log=log)
    out["seconds"] = time.perf_counter() - start
    return out


# --------------------------------------------------------------------------------------------
# Command line (python -m fmnist_utils report)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` subcommand's options to ``parser``."""
    parser.add_argument("--profile", default="auto", help="auto | smoke | quick | full (auto: full with CUDA, else quick)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: runs/<profile>, or $FMNIST_RUNS/<profile>)")
    parser.add_argument("--report-dir", default=None, help="where report.html/.pdf go (default: report/, or $FMNIST_REPORT)")
    parser.add_argument("--notebooks", default=None, help="folder of NN_name.ipynb notebooks (default: notebooks/)")
    parser.add_argument("--force", action="store_true", help="execute every notebook even when up to date")
    parser.add_argument("--no-pdf", action="store_true", help="build only the HTML")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install Chromium for the PDF")
    parser.add_argument("--ignore-estimate", action="store_true",
                        help="run the full profile even where its estimate says hours (no CUDA); "
                        "or set FMNIST_IGNORE_ESTIMATE=1")


def cli(args: argparse.Namespace) -> int:
    """Run :func:`build` from parsed arguments; return the exit status (0 ok, 1 a notebook failed,
    3 the HTML was written but the PDF could not be, 4 refused: the estimate says hours).
    """
    from . import estimate, report

    def log(message: str) -> None:
        print(f"[report] {message}", flush=True)

    try:
        out = build(args.profile, args.run_dir, args.report_dir, args.notebooks, force=args.force,
                    pdf=not args.no_pdf, install=not args.no_install, log=log,
                    ignore_estimate=args.ignore_estimate)
    except estimate.TooSlow as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_TOO_SLOW
    except NotebookFailed as exc:
        print(f"error: {exc}\n  no report was written; fix the notebook (or the code it calls) and run again: "
              "the notebooks before it are reused", file=sys.stderr, flush=True)
        return EXIT_NOTEBOOK_FAILED
    except report.PdfUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_NO_PDF
    ran = sum(s["executed"] for s in out["stamps"])
    log(f"done in {out['seconds']:.1f} s ({ran} notebook(s) executed, {len(out['stamps']) - ran} reused)")
    log(f"HTML: {out['html']}")
    if out["pdf"] is not None:
        log(f"PDF:  {out['pdf']}")
    return 0
