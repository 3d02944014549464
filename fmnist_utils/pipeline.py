"""Run the notebooks into a run folder, reusing the ones that are up to date, then build the report.

``make report`` calls :func:`build`. The notebooks are ``notebooks/NN_name.ipynb``, run by papermill
with the injected parameters ``profile``, ``run_dir`` and, where declared, ``settings`` (the run's
settings tree); each executed copy is kept in ``<run folder>/notebooks/``. The run is a graph: a
notebook starts once the notebooks whose results it reads (:func:`fmnist_utils.stamps.read_graph`)
have finished, run again or reused (:func:`fmnist_utils.schedule.ready`). Up to ``jobs`` run at once
(the tree's; None: :func:`fmnist_utils.schedule.auto_jobs`, 2 on a CUDA device of 24 GiB or more
outside a budget, else 1), each in a child process of its own; one at a time, they run in this
process in the order of their numbers. How many and why is logged first and recorded in each stamp;
``jobs`` is not passed to the notebooks, so no key or result depends on it.

The parts, each a module: :mod:`fmnist_utils.stamps` (the notebooks, their graph, keys, inputs and
stamps), :mod:`fmnist_utils.schedule` (what may start, how many at once, child processes),
:mod:`fmnist_utils.execution` (papermill, and :class:`NotebookFailed`), :mod:`fmnist_utils.run_folders`
(locks, profile checks, results set aside, the report's files). Their names are importable from here
too (``pipeline.execute``, ``pipeline.stamp_path``).

Papermill cannot resume, so the runner decides what is up to date. Each notebook gets a stamp,
``<run folder>/notebooks/<stem>.stamp.json``, holding a key: a hash of the notebook's source
cells, the injected parameters, the package's code (:func:`package_digest`), the inputs it reads
(:func:`snapshot_inputs`: the data's location and content, the ResNet-18 weights file's hash or
its absence, the environment variables that choose them) and the keys of the notebooks it reads.
A notebook is reused when its stamp has the same key, its last run succeeded and its
``results.json`` exists; otherwise it runs again, and so does every notebook reading it, directly or
not (editing 01 reruns 02 and 03, never 04), and the log says which input changed. When its key
changed, its output folder is emptied first (a stale checkpoint must not be continued); when only
the last run was interrupted or failed under the same key, the folder is kept so that a training
checkpoint resumes.

One writer per run folder: :func:`build` holds an exclusive ``fcntl`` lock on
``<run folder>/.lock`` (released by the kernel when the process ends, even when it is killed); a
second run on the same folder stops with :class:`RunFolderBusy`, naming the holder. A run folder
holding another profile's results is not overwritten without ``force`` (:class:`RunFolderConflict`).

A failure stops the run with :class:`NotebookFailed`, naming the notebook, the cell and the error:
nothing starts after it, the notebooks running finish and are recorded, the partly executed notebook
is kept and no report is left behind. Ctrl-C (or SIGTERM) interrupts every running notebook and
records it. The report is written only after every notebook succeeded (:mod:`fmnist_utils.report`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from . import paths, profiles, provenance, schedule
from . import settings as settings_tree
from .execution import (  # noqa: F401  (the runner's names, importable from here)
    REQUIRED_PARAMETERS, KERNEL, EXIT_NOTEBOOK_FAILED, EXIT_BAD_INPUT, EXIT_NO_PDF, EXIT_DIVERGED, EXIT_FILESYSTEM,
    EXIT_BUSY, EXIT_TOO_SLOW, EXIT_INTERRUPTED, EXIT_TERMINATED, NOTEBOOK_FAULTS, NotebookFailed, check_parameters,
    _ANSI, _source_cell_number, recorded_failure, _traceback_tail, _LineSink, kernel_log_path, _stderr_into,
    execute,
)
from .run_folders import (  # noqa: F401
    REPLACED, RunFolderBusy, RunFolderConflict, LOCK_NAME, _HELD, _holder, folder_lock, run_folder_lock,
    recorded_profiles, check_profile, _discard_if_unreadable, _remove_owned, set_aside, _drop_replaced,
    REPORT_FILES, STAGING, STAGING_MARKER, _rendered_is_ours, check_report_folder, _not_rendered, remove_report,
)
from .stamps import (  # noqa: F401
    NOTEBOOK_PATTERN, notebooks_dir, discover, _digest, source_digest, package_digest, notebook_key, INPUT_ENV,
    ENVIRONMENT_ALWAYS, declared_inputs, declared_reads, read_graph, _file_record, _data_input, _weights_input,
    INPUTS, snapshot_inputs, check_inputs, input_key, settle_inputs, _short, input_changes, stamp_path,
    executed_path, results_path, read_stamp, stamp_damage, why_rerun, _now, REPORT_ONLY_MODULES,
)


def check_run(found: list[Path], name: str, run: Path, force: bool) -> tuple[list[str], dict]:
    """Check everything a run depends on and change nothing; return (notebooks whose results of
    another profile ``force`` replaces, the inputs' snapshot).

    Raises :class:`fmnist_utils.paths.FolderRoleError` for a folder that is not the kit's,
    :class:`RunFolderConflict`, and the data and weights errors of :func:`check_inputs`.
    """
    paths.check_owned(run, "run folder")
    replaced = check_profile(run, name, force)
    names = tuple(dict.fromkeys(n for nb in found for n in declared_inputs(nb)))
    seen: dict = {}
    for nb in found:  # hashes recorded by earlier runs, so unchanged files are not read again
        seen.update((read_stamp(run, nb.stem) or {}).get("input_files") or {})
    snapshot = snapshot_inputs(names, seen)
    check_inputs(snapshot)
    return replaced, snapshot


def run_notebooks(
    profile: str = "auto",
    run_dir: str | Path | None = None,
    notebooks: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    settings: settings_tree.Settings | None = None,
) -> list[dict]:
    """Run (or reuse) every notebook, each once what it reads has finished, and return their stamps,
    in notebook order.

    Each stamp is a dict: ``notebook`` (stem), ``key``, ``parts``, ``parameters``, ``status``
    ("ok"), ``seconds`` (papermill wall time of the run that produced the results, kernel
    start included), ``started_utc``, ``finished_utc``, ``executed`` (True when run now, False
    when reused), ``source`` and ``executed_notebook`` paths, ``input_files`` (the inputs'
    files with size, time and hash), and for a notebook run now ``jobs`` (``{"count", "why"}``: how
    many notebooks this run executed at once, :func:`fmnist_utils.schedule.choose_jobs`). ``settings``: the run's settings tree, resolved once
    (None: :func:`fmnist_utils.settings.resolve` of ``profile``); each notebook whose parameters
    cell declares ``settings`` is passed it whole, the others the profile's name and the run folder.
    ``force`` re-executes everything (and may replace another
    profile's results). ``progress``: pass each line the notebooks print (one per epoch) to
    ``log`` as they run (from a child process too: each line carries its notebook's name). Raises
    :class:`NotebookFailed` on the first failure, once the notebooks still running have ended; its
    stamp then says ``"failed"`` (``"interrupted"`` after Ctrl-C), and an executed copy that is not
    valid JSON is removed.

    Check, then touch: before anything in the run folder changes, :func:`check_run` raises
    :class:`RunFolderBusy`, :class:`RunFolderConflict`, ``FolderRoleError`` (a folder of another
    role, or not the kit's), ``DataError`` or ``WeightsError``. Results are replaced only once
    their successor exists (:func:`set_aside`).
    """
    tree = settings if settings is not None else settings_tree.resolve(profile, run_dir=run_dir, log=log)
    name = tree.name
    run = paths.run_folder(name, run_dir)
    everything = discover(notebooks)
    found = [nb for nb in everything if nb.stem not in tree.skip]  # the notebooks a budget left out do not run
    # Before anything runs: a contract error should not cost minutes of training first.
    declared = {nb.stem: check_parameters(nb) for nb in found}
    graph = read_graph(everything, found)
    paths.check_roles(run, None, found[0].parent.resolve())
    with run_folder_lock(run):
        replaced, snapshot = check_run(found, name, run, force)
        paths.mark(run, "run folder")
        if replaced:
            log(f"--force: replacing the results of another profile in {run}: {', '.join(replaced)}")
        for debris in (run / "notebooks").glob("*.tmp"):  # a stamp write cut short by a kill
            debris.unlink(missing_ok=True)
        on_disk = "data" not in snapshot or snapshot["data"]["location"] is not None
        jobs = schedule.choose_jobs(tree.jobs, tree.device, name, data_on_disk=on_disk)
        return _run_locked(found, name, run, force, progress, log, snapshot, graph,
                           {stem: _parameters(name, run, tree, names) for stem, names in declared.items()}, jobs=jobs)


def _parameters(name: str, run: Path, tree: settings_tree.Settings, declared: tuple[str, ...]) -> dict:
    """Return the papermill parameters of a notebook declaring ``declared``: the profile's name, the
    run folder, and the whole settings tree (as plain JSON values, less ``jobs``) where it declares ``settings``."""
    out = {"profile": name, "run_dir": str(run)}
    if "settings" in declared:
        # Without jobs, the runner's own setting: how many notebooks run at once changes no notebook's
        # parameters, key or results (a notebook reading the tree takes its default, None).
        out["settings"] = {k: v for k, v in json.loads(json.dumps(tree.to_dict())).items() if k != "jobs"}
    return out


def _run_locked(found: list[Path], name: str, run: Path, force: bool, progress: bool,
                log: Callable[[str], None], snapshot: dict | None = None,
                graph: dict[str, tuple[str, ...]] | None = None, injected: dict[str, dict] | None = None,
                jobs: tuple[int, str] = (1, "one at a time"), launcher=None) -> list[dict]:
    """Run the graph: each notebook once every notebook it reads has finished (:func:`schedule.ready`),
    up to ``jobs[0]`` at once (``jobs``: (count, why)); return the stamps in notebook order.

    One at a time, the notebooks run in this process in their own order; more, each in a child
    process (:class:`fmnist_utils.schedule.Processes`). After a failure no notebook starts; those
    running finish and are recorded, then the first failure is raised. ``launcher``: where the
    notebooks run (tests pass their own; default by ``jobs``).
    """
    count, why = jobs
    at_once = "one notebook at a time" if count == 1 else f"up to {count} notebooks at once"
    log(f"profile {name}: {len(found)} notebook(s) from {found[0].parent} into {run}; {at_once} ({why})")
    graph = read_graph(found) if graph is None else graph
    state = _Run(run, name, force, package_digest(), graph, injected or {}, snapshot or {}, log,
                 {"count": count, "why": why})
    if launcher is None:  # execute looked up when called, so that it can be replaced (tests)
        launcher = schedule.InProcess(lambda *a, **k: execute(*a, **k)) if count == 1 else schedule.Processes()
    notebooks = {nb.stem: nb for nb in found}
    try:
        while True:
            waiting = [] if state.failures else schedule.ready(graph, state.done.keys(), state.taken())
            if waiting and len(state.running) < count:
                nb = notebooks[waiting[0]]
                parameters = state.begin(nb)  # None: reused, finished already
                if parameters is not None:
                    try:
                        launcher.start(nb.stem, nb, executed_path(run, nb.stem), parameters, log if progress else None)
                    except BaseException as exc:  # no process could be started for it: recorded as failed
                        state.finish(nb.stem, exc, quiet=True)
                        raise
                continue
            if not state.running:
                break
            state.finish(*launcher.next_done())
    except BaseException as exc:
        _stop(state, launcher, exc)
        raise
    finally:
        launcher.close()
    if state.failures:
        first = state.failures[0]
        if isinstance(first, NotebookFailed) and isinstance(first.__cause__, OSError):
            raise first.__cause__ from None  # the runner could not write (disk full...): say so, with the path
        raise first
    return [state.done[nb.stem] for nb in found]


def _stop(state: "_Run", launcher, exc: BaseException) -> None:
    """The runner itself failed or was interrupted (``exc``): interrupt the notebooks still running,
    wait for each and record how it ended; a second Ctrl-C kills them. Never raises over ``exc``."""
    if not state.running:
        return
    launcher.interrupt()
    try:
        while state.running:
            state.finish(*launcher.next_done(), quiet=True)
    except KeyboardInterrupt:
        for stem, outcome in launcher.kill():
            state.finish(stem, outcome, quiet=True)
    except Exception as error:  # their stamps still say "running", which the next run treats as interrupted
        state.log(f"could not wait for {', '.join(state.running)} to stop ({error})")


class _Run:
    """The bookkeeping of one run, notebook by notebook: keys, stamps, what is running, failures."""

    def __init__(self, run: Path, name: str, force: bool, package: str, graph: dict[str, tuple[str, ...]],
                 injected: dict[str, dict], snapshot: dict, log: Callable[[str], None], jobs: dict):
        self.run, self.name, self.force, self.package, self.graph = run, name, force, package, graph
        self.injected, self.snapshot, self.log, self.jobs = injected, snapshot, log, jobs
        self.keys: dict[str, str] = {}  # stem -> the key of its run (this one or the reused one)
        self.executed: list[str] = []  # stems run again now
        self.done: dict[str, dict] = {}  # stem -> its stamp, run or reused
        self.running: dict[str, tuple] = {}  # stem -> (notebook, stamp, perf_counter start, wall start, set aside)
        self.failures: list[BaseException] = []
        self.failed: set[str] = set()

    def taken(self) -> set[str]:
        """Return the stems started, finished or failed in this run."""
        return set(self.done) | set(self.running) | self.failed

    def begin(self, nb: Path) -> dict | None:
        """Decide whether ``nb`` (whose reads have finished) is reused; return None when it is,
        else its parameters, its stamp written as running and its run logged with the reason."""
        run, stem = self.run, nb.stem
        parameters = self.injected.get(stem) or {"profile": self.name, "run_dir": str(run)}
        old = read_stamp(run, stem)
        damage = stamp_damage(run, stem)
        # Hashes are taken from this notebook's last run, else from the notebook decided before it.
        snapshot = self.snapshot = snapshot_inputs(
            declared_inputs(nb), {**self.snapshot, **((old or {}).get("input_files") or {})})
        parts = {"source": source_digest(nb), "parameters": parameters, "package": self.package,
                 "inputs": input_key(snapshot), "previous": [self.keys[r] for r in self.graph[stem]]}
        key = self.keys[stem] = notebook_key(parts["source"], parameters, self.package, parts["previous"],
                                             parts["inputs"])
        reran = [r for r in self.graph[stem] if r in self.executed]
        if self.force:
            reason = "forced"
        elif damage is not None:
            # Its last run cannot be told apart from an interrupted one: keep its folder, as for a
            # resume; a checkpoint or sweep made under other settings refuses itself.
            reason = (f"its stamp {stamp_path(run, stem)} is unreadable ({damage}); running it again with its "
                      "output folder kept, so finished work is resumed")
        elif reran:
            reason = f"a notebook it reads ran again ({', '.join(reran)})"
        else:
            reason = why_rerun(old, key, parts, results_path(run, stem).is_file())
        if reason is None:
            self.log(f"{stem}: up to date, reused (its run took {old['seconds']:.1f} s, finished {old['finished_utc']})")
            if old.get("input_files") != snapshot:  # same content, new file times: keep the hashes for next time
                provenance.write_json(stamp_path(run, stem), {**old, "input_files": snapshot})
            self.done[stem] = {**old, "input_files": snapshot, "executed": False}
            return None

        self.executed.append(stem)
        resume = not self.force and (damage is not None or
                                     (old is not None and old.get("key") == key and old.get("status") != "ok"))
        aside = None if resume else set_aside(run, stem)
        stamp = {
            "notebook": stem, "key": key, "parts": parts, "parameters": parameters, "status": "running",
            "started_utc": _now(), "source": str(nb), "executed_notebook": str(executed_path(run, stem)),
            "input_files": snapshot, "jobs": self.jobs,
        }
        provenance.write_json(stamp_path(run, stem), stamp)
        self.log(f"{stem}: running ({reason})")
        self.running[stem] = (nb, stamp, time.perf_counter(), time.time(), aside is not None)
        return parameters

    def finish(self, stem: str, outcome: BaseException | None, quiet: bool = False) -> None:
        """Record how the run of ``stem`` ended (``outcome``: None, or what it raised). ``quiet``:
        while the runner stops for an error of its own, which stays the one raised (nothing here raises)."""
        nb, stamp, start, wall_start, aside = self.running.pop(stem)
        run = self.run
        if outcome is None:
            written = results_path(run, stem)
            # A results.json older than this run would be an earlier run's, not this one's.
            if not written.is_file() or written.stat().st_mtime < wall_start - 1:
                outcome = NotebookFailed(
                    stem, nb, executed_path(run, stem), ename="MissingResults",
                    evalue=f"the notebook finished without writing {results_path(run, stem)} "
                    "(every notebook must write its results.json into <run folder>/<its name>/)",
                )
        if outcome is not None:
            _record_failure(outcome, stamp, run, stem, time.perf_counter() - start, self.log)
            if aside or (run / REPLACED / stem).exists():
                self.log(f"{stem}: its last finished results are kept in {run / REPLACED / stem} until a run of it succeeds")
            self.failures.append(outcome)
            self.failed.add(stem)
            return
        try:
            snapshot, parts, parameters = stamp["input_files"], stamp["parts"], stamp["parameters"]
            settled = settle_inputs(snapshot, snapshot_inputs(declared_inputs(nb), snapshot))
            if settled != snapshot:  # the notebook fetched an input itself (a download): record it as used
                parts["inputs"] = input_key(settled)
                key = self.keys[stem] = notebook_key(parts["source"], parameters, self.package, parts["previous"],
                                                     parts["inputs"])
                stamp.update(key=key, parts=parts, input_files=settled)
            stamp.update(status="ok", seconds=time.perf_counter() - start, finished_utc=_now())
            provenance.write_json(stamp_path(run, stem), stamp)
            _drop_replaced(run, stem)  # its successor exists now
        except Exception as exc:
            if not quiet:
                raise
            self.log(f"{stem}: finished, but its stamp could not be written ({exc}); the next run executes it again")
            return
        self.log(f"{stem}: done in {stamp['seconds']:.1f} s")
        self.done[stem] = {**stamp, "executed": True}


def _record_failure(exc: BaseException, stamp: dict, run: Path, stem: str, seconds: float,
                    log: Callable[[str], None]) -> None:
    """Mark the stamp failed (or interrupted) and drop a broken executed copy; never raise over ``exc``."""
    kept = _discard_if_unreadable(executed_path(run, stem))
    if isinstance(exc, NotebookFailed):
        exc.kept = kept
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    stamp.update(status=status, seconds=seconds, finished_utc=_now(), error=str(exc) or type(exc).__name__)
    try:
        provenance.write_json(stamp_path(run, stem), stamp)
    except Exception as bookkeeping:  # e.g. the same full disk: the original error is the one to report
        log(f"{stem}: could not record the {status} run in {stamp_path(run, stem)} ({bookkeeping}); "
            "its stamp still says 'running', which the next run treats as interrupted")


def replace_report(run: Path, stamps: list[dict], report_dir: Path, log: Callable[[str], None] = print,
                   title=None) -> Path:
    """Write the new report into ``<report_dir>/.building``, then put it in place of the old one
    (HTML and rendered notebooks; an old PDF, no longer of this run, is removed); return ``report.html``.
    Until the new page exists, the old report stays whole. ``title``: as for :func:`build`.
    """
    from . import report

    staging = report_dir / STAGING
    if staging.exists():  # a build cut short: removed only when it carries the kit's marker
        if not (staging / STAGING_MARKER).is_file():
            raise paths.FolderRoleError(f"refusing to delete {staging}: it carries no {STAGING_MARKER} marker, so the "
                                        "kit did not make it; move it out of the report folder")
        shutil.rmtree(staging)
    staging.mkdir()
    (staging / STAGING_MARKER).write_text("A report being built by the Fashion-MNIST report kit.\n")
    try:
        report.write_report(run, stamps, staging, log=log, title=title)
        (staging / "notebooks").mkdir(exist_ok=True)
        (staging / "notebooks" / paths.RENDERED_MARKER).write_text("Rendered by the Fashion-MNIST report kit.\n")
        remove_report(report_dir)
        (staging / "notebooks").rename(report_dir / "notebooks")
        (staging / "report.html").replace(report_dir / "report.html")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report_dir / "report.html"


def build(
    profile: str = "auto",
    run_dir: str | Path | None = None,
    report_dir: str | Path | None = None,
    notebooks: str | Path | None = None,
    force: bool = False,
    pdf: bool = True,
    install: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    ignore_estimate: bool = False,
    title=None,
    budget: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Run the notebooks and build the report; return ``{"html", "pdf", "stamps", "seconds"}``.

    Check, then touch: the folders' roles (:func:`fmnist_utils.paths.check_roles`), both locks
    (:func:`folder_lock`: one build per run folder and per report folder), the folders'
    ownership, the profile, the stamps and the inputs are checked before anything is written, so a
    refusal leaves the previous report and run folder as they were. The old report is replaced
    only by a finished new one (:func:`replace_report`); after a failure it stays, from its own
    run. ``pdf=False`` skips the PDF; when it cannot be printed,
    :class:`fmnist_utils.report.PdfUnavailable` is raised after the HTML is written.
    Before anything runs, :func:`fmnist_utils.estimate.check_budget` raises
    :class:`fmnist_utils.estimate.TooSlow` for a ``full`` report on a machine without CUDA that
    would take hours, unless ``ignore_estimate`` (or ``FMNIST_IGNORE_ESTIMATE=1``). ``budget``
    (``"30m"``): size the report to that time instead (:func:`fmnist_utils.budget.plan`).
    ``title``: the report's author, course and date (:class:`fmnist_utils.report.TitleBlock`).
    ``overrides``: ``{dotted setting: value}`` set over the profile's (:func:`fmnist_utils.settings.override`),
    checked before anything runs; the resolved tree is passed whole to every notebook.
    """
    from . import budget as budgets, estimate, report

    start = time.perf_counter()
    settings_tree.check_paths(overrides)  # a misspelt setting is refused before any folder is touched
    if budget is not None:
        name = budgets.profile_name(budgets.parse(budget))
    else:
        estimate.check_budget(profile, ignore=ignore_estimate, log=log)
        name = profiles.resolve_name(profile)  # auto resolved once: the settings below take this name
    run = paths.run_folder(name, run_dir)
    report_dir = paths.writable_dir(report_dir if report_dir is not None else paths.report_dir(), "report folder")
    found = discover(notebooks)
    paths.check_roles(run, report_dir, found[0].parent.resolve())
    with run_folder_lock(run), folder_lock(report_dir, "report folder"):
        check_report_folder(report_dir)
        paths.check_owned(run, "run folder")  # before budget.json is written into it
        check_profile(run, name, force)
        if budget is not None:  # sized before anything runs; the pace is measured once per run folder
            plan = budgets.plan(budget, run, log=log)
            log(budgets.describe(plan.record))
            tree = settings_tree.override(settings_tree.from_profile(plan.profile), overrides)
        else:
            tree = settings_tree.resolve(name, overrides=overrides)
            if name == "quick":  # the Method section states the budget quick was sized to
                provenance.write_json(run / "budget.json", budgets.quick()[1])
        if overrides:
            log("settings set over the profile's: " + ", ".join(f"{k}={v!r}" for k, v in overrides.items()))
        try:
            stamps = run_notebooks(name, run, notebooks, force=force, progress=progress, log=log, settings=tree)
        except BaseException:
            if (report_dir / "report.html").exists():
                log(f"no new report: the previous one, from an earlier run, is kept: {report_dir / 'report.html'}")
            raise
        paths.mark(report_dir, "report folder")
        html = replace_report(run, stamps, report_dir, log=log, title=title)
        out = {"html": html, "pdf": None, "stamps": stamps}
        if pdf:
            out["pdf"] = report.write_pdf(html, report_dir / "report.pdf", install=install, log=log,
                                          author=title.author if title is not None else None)
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
    parser.add_argument("--force", action="store_true",
                        help="execute every notebook even when up to date, replacing another profile's results in --run-dir")
    parser.add_argument("--no-pdf", action="store_true", help="build only the HTML")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install Chromium for the PDF")
    parser.add_argument("--author", default=None, help="the report's author, for its title block")
    parser.add_argument("--course", default=None, help="the course it is handed in for, for its title block")
    parser.add_argument("--date", default=None, help="the title block's date, YYYY-MM-DD (default: the run's date)")
    parser.add_argument("--ignore-estimate", action="store_true",
                        help="run the full profile even where its estimate says hours (no CUDA); "
                        "or set FMNIST_IGNORE_ESTIMATE=1")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="set one setting over the profile's, by its dotted path (repeatable): --set train.epochs=3")
    parser.add_argument("--budget", default=None,
                        help="size the whole report to this time (30m, 2h, or minutes) from the pace measured here")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="run up to N notebooks at once where none reads another's results (the setting jobs; "
                        "default: automatic, 2 on a CUDA GPU of 24 GiB or more outside a budget, else 1)")


def cli(args: argparse.Namespace) -> int:
    """Run :func:`build` from parsed arguments; return 0. Errors propagate to the CLI's one error
    handler (:func:`fmnist_utils.__main__.main`), which maps them to exit statuses: 1 a notebook
    failed, 3 the HTML was written but the PDF could not be, 6 the run folder is busy, 7 refused: the estimate
    says hours on this machine.
    """

    def log(message: str) -> None:
        print(f"[report] {message}", flush=True)

    from .report import TitleBlock

    title = TitleBlock(args.author, args.course, args.date)  # checked before any notebook runs
    if args.budget is not None and args.profile != "auto":
        raise ValueError(f"--budget {args.budget} sizes the whole report itself; drop --profile {args.profile} "
                         "(or drop --budget to run that profile's fixed sizes)")
    overrides = settings_tree.parse_assignments(getattr(args, "overrides", None) or [])
    if getattr(args, "jobs", None) is not None:
        overrides["jobs"] = args.jobs  # --jobs N is --set jobs=N
    out = build(args.profile, args.run_dir, args.report_dir, args.notebooks, force=args.force,
                pdf=not args.no_pdf, install=not args.no_install, log=log,
                ignore_estimate=args.ignore_estimate, title=title, budget=args.budget, overrides=overrides)
    ran = sum(s["executed"] for s in out["stamps"])
    log(f"done in {out['seconds']:.1f} s ({ran} notebook(s) executed, {len(out['stamps']) - ran} reused)")
    log(f"HTML: {out['html']}")
    if out["pdf"] is not None:
        log(f"PDF:  {out['pdf']}")
    return 0
