"""The runner's scheduling: which notebooks may start, how many at once, failures and interruptions.

The runner's loop is exercised through a launcher of the test's own (it "runs" a notebook by writing
its results.json and ends them in the order they started, so every interleaving is decided by the
test, not by timings); one heavy test runs real notebooks in child processes, two of which can only
finish when they run at the same time.
"""

import json
from pathlib import Path

import nbformat
import pytest

from fmnist_utils import paths, pipeline, schedule
from fmnist_utils import settings as settings_tree
from process_helpers import assert_gone
from test_pipeline import results_cell, write_notebook

GRAPH = {"01_a": (), "02_b": ("01_a",), "03_c": ("02_b",), "04_d": ()}  # the kit's shape: 04 reads none of 01-03


def declare(path: Path, reads) -> Path:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["fmnist"] = {"inputs": [], "reads": list(reads)}
    nbformat.write(nb, path)
    return path


def notebooks(folder: Path, graph=GRAPH) -> list[Path]:
    return [declare(write_notebook(folder / f"{stem}.ipynb", results_cell(stem, 0.5)), reads)
            for stem, reads in graph.items()]


# --------------------------------------------------------------------------------------------
# The ready set and the automatic number of jobs


def test_a_notebook_is_ready_once_everything_it_reads_has_finished():
    assert schedule.ready(GRAPH, set(), set()) == ["01_a", "04_d"]
    assert schedule.ready(GRAPH, set(), {"01_a"}) == ["04_d"]  # 01 running: 02 waits for it
    assert schedule.ready(GRAPH, {"01_a"}, {"01_a", "04_d"}) == ["02_b"]
    assert schedule.ready(GRAPH, {"01_a", "02_b", "03_c", "04_d"}, {"01_a", "02_b", "03_c", "04_d"}) == []
    diamond = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}
    assert schedule.ready(diamond, {"a"}, {"a"}) == ["b", "c"]
    assert schedule.ready(diamond, {"a", "b"}, {"a", "b", "c"}) == []  # d reads c too
    # One at a time, always starting the first ready notebook, is the notebooks' own order.
    finished, order = set(), []
    while len(order) < len(GRAPH):
        order.append(schedule.ready(GRAPH, finished, finished)[0])
        finished.add(order[-1])
    assert order == list(GRAPH)


@pytest.mark.parametrize("device_type, gib, budgeted, expected", [
    ("cpu", None, False, 1), ("mps", None, False, 1),
    ("cuda", 80, False, 2), ("cuda", 24, False, 2), ("cuda", 23.9, False, 1), ("cuda", 15, False, 1),
    ("cuda", None, False, 1), ("cuda", 80, True, 1),
])
def test_automatic_jobs_from_the_device_its_memory_and_the_budget(device_type, gib, budgeted, expected):
    total = None if gib is None else int(gib * schedule.GIB)
    count, why = schedule.auto_jobs(device_type, total, budgeted)
    assert count == expected and why.startswith("automatic: ")
    assert ("budget" in why) == budgeted
    assert schedule.choose_jobs(3, "cpu", "budget-30m") == (3, "set: jobs=3")  # a set value is kept as set
    assert schedule.choose_jobs(None, "cpu", "smoke")[0] == 1


def test_jobs_is_a_setting_of_the_tree_that_no_notebook_is_given(tmp_path):
    tree = settings_tree.resolve("smoke")
    assert tree.jobs is None and "jobs" in settings_tree.meanings()
    two = settings_tree.override(tree, {"jobs": 2})
    with pytest.raises(ValueError, match=r"Settings.jobs=0: must be a whole number >= 1"):
        settings_tree.override(tree, {"jobs": 0})
    declared = ("profile", "run_dir", "settings")
    given = [pipeline._parameters("smoke", tmp_path, t, declared) for t in (tree, two)]
    assert given[0] == given[1] and "jobs" not in given[0]["settings"]  # parameters (and keys) do not depend on it
    assert settings_tree.from_dict(given[1]["settings"]).jobs is None


# --------------------------------------------------------------------------------------------
# The runner's loop, with a launcher of the test's own


class Launcher:
    """Runs nothing itself: a started notebook ends when the runner asks for the next one done, in
    the order they started; one named in ``fail`` raises, one in ``interrupt_at`` is where Ctrl-C
    reaches the runner."""

    def __init__(self, run: Path, fail=(), interrupt_after_starts: int | None = None):
        self.run, self.fail, self.interrupt_after = run, set(fail), interrupt_after_starts
        self.running: list[str] = []
        self.started: list[tuple[str, tuple[str, ...]]] = []  # (stem, the stems running once it started)
        self.finished: list[str] = []
        self.interrupted = False

    def start(self, stem, notebook, output, parameters, log):
        self.running.append(stem)
        self.started.append((stem, tuple(self.running)))

    def next_done(self):
        if self.interrupt_after is not None and len(self.started) >= self.interrupt_after and not self.interrupted:
            raise KeyboardInterrupt
        stem = self.running.pop(0)
        if self.interrupted:
            return stem, KeyboardInterrupt()
        if stem in self.fail:
            return stem, pipeline.NotebookFailed(stem, Path(stem), Path(stem), ename="ValueError", evalue="boom")
        out = pipeline.results_path(self.run, stem)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"notebook": stem}))
        self.finished.append(stem)
        return stem, None

    def interrupt(self):
        self.interrupted = True

    def kill(self):
        return []

    def close(self):
        pass


def run_graph(tmp_path, jobs, launcher=None, force=False, lines=None, **kw):
    found = notebooks(tmp_path / "nbs") if not (tmp_path / "nbs").exists() else pipeline.discover(tmp_path / "nbs")
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True, exist_ok=True)
    paths.mark(run, "run folder")  # as run_notebooks does: results are set aside and removed only in the kit's folders
    launcher = launcher or Launcher(run, **kw)
    log = lines.append if lines is not None else (lambda m: None)
    stamps = pipeline._run_locked(found, "smoke", run, force, False, log, None, pipeline.read_graph(found),
                                  jobs=(jobs, "the test's"), launcher=launcher)
    return stamps, launcher


def test_two_jobs_start_independent_notebooks_together_and_readers_after_what_they_read(tmp_path):
    lines = []
    stamps, launcher = run_graph(tmp_path, 2, lines=lines)
    assert launcher.started == [("01_a", ("01_a",)), ("04_d", ("01_a", "04_d")), ("02_b", ("04_d", "02_b")),
                                ("03_c", ("03_c",))]
    assert [s["notebook"] for s in stamps] == list(GRAPH) and all(s["executed"] for s in stamps)  # notebook order
    assert all(s["status"] == "ok" and s["jobs"] == {"count": 2, "why": "the test's"} for s in stamps)
    assert lines[0].endswith("; up to 2 notebooks at once (the test's)")
    assert lines.index("02_b: running (a notebook it reads ran again (01_a))") > next(
        i for i, line in enumerate(lines) if line.startswith("01_a: done"))
    # One at a time: the notebooks' own order, each alone.
    _, alone = run_graph(tmp_path, 1, force=True, lines=lines)
    assert alone.started == [(stem, (stem,)) for stem in GRAPH]


def test_keys_and_reuse_do_not_depend_on_the_number_of_jobs(tmp_path):
    one, _ = run_graph(tmp_path, 1)
    two, _ = run_graph(tmp_path, 2, force=True)
    assert [s["key"] for s in one] == [s["key"] for s in two] and all(s["executed"] for s in two)
    assert [s["parts"] for s in one] == [s["parts"] for s in two]
    again, launcher = run_graph(tmp_path, 1)  # what two jobs ran is up to date for one
    assert not any(s["executed"] for s in again) and launcher.started == []
    # A change in 01 reruns what reads it, and not 04, whatever the jobs.
    write_notebook(tmp_path / "nbs" / "01_a.ipynb", results_cell("01_a", 0.25))
    declare(tmp_path / "nbs" / "01_a.ipynb", [])
    changed, launcher = run_graph(tmp_path, 2)
    assert [s["executed"] for s in changed] == [True, True, True, False]


def test_a_failure_stops_new_starts_lets_the_running_finish_and_is_raised(tmp_path):
    lines = []
    with pytest.raises(pipeline.NotebookFailed, match="notebook 01_a failed: ValueError: boom"):
        run_graph(tmp_path, 2, fail={"01_a"}, lines=lines)
    run = tmp_path / "run"
    status = {stem: (pipeline.read_stamp(run, stem) or {}).get("status") for stem in GRAPH}
    assert status == {"01_a": "failed", "02_b": None, "03_c": None, "04_d": "ok"}  # 04 was running: it finished
    assert any(line.startswith("04_d: done") for line in lines)
    assert not any(line.startswith(("02_b: running", "03_c: running")) for line in lines)
    # Fixed: 04 is reused, 01 and what reads it run.
    stamps, launcher = run_graph(tmp_path, 2)
    assert [s["executed"] for s in stamps] == [True, True, True, False]


def test_ctrl_c_at_the_runner_interrupts_every_running_notebook_and_records_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_graph(tmp_path, 2, interrupt_after_starts=2)
    run = tmp_path / "run"
    status = {stem: (pipeline.read_stamp(run, stem) or {}).get("status") for stem in GRAPH}
    assert status == {"01_a": "interrupted", "02_b": None, "03_c": None, "04_d": "interrupted"}


# --------------------------------------------------------------------------------------------
# Real notebooks in child processes

MEET = """
import pathlib, time
mine, other = pathlib.Path({mine!r}), pathlib.Path({other!r})
mine.write_text("here")
deadline = time.time() + 180  # the other notebook must be running at the same time
while not other.exists():
    if time.time() > deadline:
        raise TimeoutError("the other notebook never ran beside this one")
    time.sleep(0.05)
print("met", other.name)
"""


@pytest.mark.heavy
def test_two_notebooks_run_at_the_same_time_in_child_processes(tmp_path):
    nbs, run, lines = tmp_path / "nbs", tmp_path / "run", []
    a, b = tmp_path / "a.here", tmp_path / "b.here"
    declare(write_notebook(nbs / "01_a.ipynb", MEET.format(mine=str(a), other=str(b)), results_cell("01_a", 0.5)), [])
    declare(write_notebook(nbs / "02_b.ipynb", MEET.format(mine=str(b), other=str(a)), results_cell("02_b", 0.5)), [])
    reads_a = ('import json, pathlib\nassert json.loads(pathlib.Path(run_dir, "01_a", "results.json").read_text())'
               '["notebook"] == "01_a"\nx = 41\nraise ValueError(f"boom {x + 1}")')
    declare(write_notebook(nbs / "03_c.ipynb", reads_a), ["01_a"])
    declare(write_notebook(nbs / "04_d.ipynb", results_cell("04_d", 0.5)), ["03_c"])
    two = settings_tree.override(settings_tree.resolve("smoke"), {"jobs": 2})

    with pytest.raises(pipeline.NotebookFailed) as failed:
        pipeline.run_notebooks("smoke", run, nbs, log=lines.append, settings=two)
    # The failure crossed the process boundary whole: the cell, its source, the error.
    assert failed.value.stem == "03_c" and failed.value.ename == "ValueError" and failed.value.evalue == "boom 42"
    assert failed.value.cell_number == 3 and "raise ValueError" in failed.value.cell_source
    assert lines[0].endswith("; up to 2 notebooks at once (set: jobs=2)")
    assert "01_a | met b.here" in lines and "02_b | met a.here" in lines  # its lines, through the runner's log
    assert lines.index("03_c: running (a notebook it reads ran again (01_a))") > next(
        i for i, line in enumerate(lines) if line.startswith("01_a: done"))
    assert not any(line.startswith("04_d: running") for line in lines)  # it reads the failed one
    stamps = {stem: pipeline.read_stamp(run, stem) for stem in ("01_a", "02_b", "03_c")}
    assert [s["status"] for s in stamps.values()] == ["ok", "ok", "failed"]

    # Fixed and run one at a time: what two jobs ran is reused (the same keys), the rest runs.
    declare(write_notebook(nbs / "03_c.ipynb", results_cell("03_c", 0.5)), ["01_a"])
    again = pipeline.run_notebooks("smoke", run, nbs, log=lines.append,
                                   settings=settings_tree.override(two, {"jobs": 1}))
    assert [s["executed"] for s in again] == [False, False, True, True]
    assert [s["key"] for s in again[:2]] == [stamps["01_a"]["key"], stamps["02_b"]["key"]]


def test_the_report_states_how_many_notebooks_ran_at_once(tmp_path):
    import report_fixtures as F
    from fmnist_utils import report

    F.render(tmp_path, {"02_train": F.train_results(), "04_improvements": F.improvements_results()})  # the run folder

    def page(jobs, executed=True):
        stamps = [{"notebook": stem, "source": str(tmp_path / f"{stem}.ipynb"), "executed_notebook": f"{stem}.ipynb",
                   "seconds": 20.5, "finished_utc": "2026-01-01T00:00:00+00:00", "executed": executed, "jobs": jobs}
                  for stem in ("02_train", "04_improvements")]
        return F.text_of(report.render(tmp_path / "run", stamps, generated_utc="2026-01-01 00:00 UTC"))

    two = schedule.auto_jobs("cuda", 80 * schedule.GIB, False)
    assert (f"The notebooks executed in this build ran up to 2 at once, each as soon as the notebooks whose results it "
            f"reads had finished, so the total above adds up wall times that overlapped ({two[1]}; the setting jobs).") \
        in page({"count": two[0], "why": two[1]})
    one = schedule.auto_jobs("cpu", None, False)
    assert f"ran one at a time ({one[1]}; the setting jobs)." in page({"count": one[0], "why": one[1]})
    assert "in this build ran" not in page({"count": 2, "why": "x"}, executed=False)  # reused: the build ran none


def test_one_at_a_time_while_the_data_is_not_on_disk():
    count, why = schedule.choose_jobs(2, "cpu", "smoke", data_on_disk=False)
    assert count == 1 and why.startswith("the data is not on disk yet") and "set: jobs=2" in why
    assert schedule.choose_jobs(2, "cpu", "smoke", data_on_disk=True) == (2, "set: jobs=2")


def test_jobs_flag_and_make_variable_set_the_setting(report_cli):
    status, seen = report_cli(["--profile", "smoke", "--jobs", "2", "--set", "train.epochs=3"])
    assert status == 0 and seen["overrides"] == {"train.epochs": 3, "jobs": 2}
    status, seen = report_cli(["--profile", "smoke"])
    assert status == 0 and seen["overrides"] == {}
    make = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "$(if $(JOBS),--jobs $(JOBS))" in make


@pytest.mark.heavy
def test_sigterm_interrupts_every_child_and_its_kernel(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    nbs = tmp_path / "nbs"
    for stem in ("01_slow", "02_slow"):
        started, cleaned = tmp_path / f"{stem}.pid", tmp_path / f"{stem}.cleaned"
        # The cell's own clean-up must run before its kernel goes, as when the runner runs it itself.
        declare(write_notebook(nbs / f"{stem}.ipynb", f"import os, time\nopen({str(started)!r}, 'w').write(str(os.getpid()))\n"
                               f"try:\n    time.sleep(120)\nfinally:\n    open({str(cleaned)!r}, 'w').write('yes')"), [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "fmnist_utils", "report", "--profile", "smoke", "--run-dir",
                             str(tmp_path / "run"), "--report-dir", str(tmp_path / "report"), "--notebooks", str(nbs),
                             "--no-pdf", "--jobs", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = [tmp_path / "01_slow.pid", tmp_path / "02_slow.pid"]
    deadline = time.time() + 180
    while not all(p.is_file() and p.read_text() for p in pids) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    kernels = [int(p.read_text()) for p in pids]  # both kernels run at once
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == pipeline.EXIT_TERMINATED, (out, err)
    assert err.startswith("error: terminated (SIGTERM). Finished work is kept"), err
    for stem in ("01_slow", "02_slow"):
        assert pipeline.read_stamp(tmp_path / "run", stem)["status"] == "interrupted"
        assert (tmp_path / f"{stem}.cleaned").read_text() == "yes"
    for kernel in kernels:  # shut down with their runners
        assert_gone(kernel, f"the kernel {kernel} outlived its runner")
