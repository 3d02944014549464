"""Which notebooks may run now, how many at once, and where each runs: the runner's scheduling.

:func:`ready` is the whole rule: a notebook may start once every notebook it reads
(:func:`fmnist_utils.stamps.read_graph`) has finished in this run, run again or reused; only then
can its key be computed, since the key holds theirs. :func:`auto_jobs` says how many run at once
when the settings tree's ``jobs`` is None, from the device, its memory and whether a budget sized the
run; :func:`choose_jobs` reads those from the run's settings.

Where a notebook runs: :class:`InProcess` executes it in the runner's own process, one at a time (the
runner as it always was); :class:`Processes` gives each notebook a child process of its own (the
``spawn`` start method), because :func:`fmnist_utils.execution.execute` redirects file descriptor 2
and sets an environment variable for the kernel it starts, both of which belong to the whole
process. A child prints nothing of its own: each line its notebook prints (already prefixed with the
notebook's name) and its outcome come back to the runner through one queue. A child sits in a
process group of its own, so a Ctrl-C at the terminal reaches the runner alone, which forwards one
interruption to each child; the child then stops its notebook as the runner itself would
(:func:`fmnist_utils.execution.execute` shuts the kernel down, the cell's own clean-up runs).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Callable

GIB = 2**30
# Two notebooks at once on one CUDA device only where its total memory is at least this. A notebook
# plans its stacks of models from the device's total memory (stacked.plan_stack_size: up to 80% of
# it, never from what is free, so the plan and the numbers do not depend on what else runs), so the
# notebook beside it has the other 20%. 04_improvements, the notebook that runs beside 01-03 (it reads
# none of them), stacks one row's seeds: 3 in the full profile, about 0.7 GB each at its largest
# batch (256, with an EMA copy) by stacked._estimated_bytes_per_unit, so 2.1 GB, plus a CUDA context
# of about 0.5 GB per process. 20% of 24 GiB is 4.8 GiB, twice that need; 20% of a 16 GB card
# (a T4's 15 GiB) would leave it no margin.
MIN_GPU_BYTES_FOR_TWO = 24 * GIB
# A child that has exited but sent no outcome is declared lost after this many empty polls (s each).
_POLL_S = 0.5
_GRACE_POLLS = 4


def ready(graph: dict[str, tuple[str, ...]], finished: set[str] | frozenset[str],
          taken: set[str] | frozenset[str]) -> list[str]:
    """Return the notebooks that may start now, in run order: those not ``taken`` (started, finished
    or failed) whose every read (``graph[stem]``, the stems it reads) is ``finished``.

    ``graph``: ``{stem: stems it reads}`` in run order (:func:`fmnist_utils.stamps.read_graph`).
    Since a notebook reads only earlier ones, the first notebook not taken is always ready once all
    before it finished: one at a time, this is the notebooks' own order.
    """
    return [stem for stem, reads in graph.items() if stem not in taken and all(r in finished for r in reads)]


def auto_jobs(device_type: str, total_bytes: int | None, budgeted: bool) -> tuple[int, str]:
    """Return (notebooks run at once, why) for ``jobs = None``: 2 on a CUDA device with at least
    :data:`MIN_GPU_BYTES_FOR_TWO` of memory (``total_bytes``), else 1.

    ``device_type``: "cpu", "cuda" or "mps"; ``budgeted``: a run sized by :mod:`fmnist_utils.budget`,
    whose plan adds up the notebooks' times at a pace measured one notebook at a time, so its
    estimate holds for one at a time only.
    """
    if budgeted:
        return 1, ("automatic: a budgeted run is sized by adding the notebooks' times at a pace measured with "
                   "one notebook at a time, so they run one at a time")
    if device_type != "cuda":
        return 1, (f"automatic: on {device_type.upper() if device_type != 'mps' else 'Apple MPS'} the notebooks "
                   "share the same cores, so two at once would only slow each other")
    total = f"{total_bytes / GIB:.0f} GiB" if total_bytes else "unknown memory"
    if not total_bytes or total_bytes < MIN_GPU_BYTES_FOR_TWO:
        return 1, (f"automatic: the CUDA device's {total} is under the {MIN_GPU_BYTES_FOR_TWO // GIB} GiB that two "
                   "notebooks' models need side by side")
    return 2, (f"automatic: the CUDA device's {total} hold two notebooks' models side by side (at least "
               f"{MIN_GPU_BYTES_FOR_TWO // GIB} GiB)")


def choose_jobs(jobs: int | None, device: str, profile_name: str, data_on_disk: bool = True) -> tuple[int, str]:
    """Return (notebooks run at once, why) for the settings ``jobs``, ``device`` and profile name:
    ``jobs`` where set, else :func:`auto_jobs` of the device the notebooks will use; one while the
    data is not on disk (``data_on_disk``), since the first notebook reading it downloads it and two
    would both download it into the same folder."""
    if jobs is not None:
        count, why = jobs, f"set: jobs={jobs}"
    else:
        from . import device as devices

        dev = devices.resolve_device(device)
        total = None
        if dev.type == "cuda":
            import torch

            total = int(torch.cuda.get_device_properties(dev).total_memory)
        count, why = auto_jobs(dev.type, total, profile_name.startswith("budget-"))
    if count > 1 and not data_on_disk:
        return 1, f"the data is not on disk yet: the first notebook downloads it alone (instead of {count}: {why})"
    return count, why


# --------------------------------------------------------------------------------------------
# Where a notebook runs

Outcome = tuple[str, "BaseException | None"]  # (stem, None when it succeeded, else what it raised)


class InProcess:
    """Run each notebook in this process, to its end, when it is started: one at a time.

    ``execute``: called as ``execute(notebook, output, parameters, log=log)``; what it raises
    (KeyboardInterrupt included) becomes the notebook's outcome.
    """

    def __init__(self, execute: Callable[..., None]):
        self.execute = execute
        self.outcomes: collections.deque[Outcome] = collections.deque()

    def start(self, stem: str, notebook: Path, output: Path, parameters: dict,
              log: Callable[[str], None] | None) -> None:
        try:
            self.execute(notebook, output, parameters, log=log)
        except BaseException as exc:  # noqa: BLE001  (the runner records it, then raises it)
            self.outcomes.append((stem, exc))
        else:
            self.outcomes.append((stem, None))

    def next_done(self) -> Outcome:
        return self.outcomes.popleft()

    def interrupt(self) -> None:
        pass  # a notebook run here has already ended when the runner can interrupt anything

    def kill(self) -> list[Outcome]:
        out, self.outcomes = list(self.outcomes), collections.deque()
        return out

    def close(self) -> None:
        pass


class Processes:
    """Run each notebook in a child process of its own (``spawn``), as many at once as are started."""

    def __init__(self):
        self.context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
        self.messages = self.context.Queue()
        self.children: dict[str, multiprocessing.process.BaseProcess] = {}
        self.logs: dict[str, Callable[[str], None] | None] = {}
        self.silent: dict[str, int] = {}
        self.paths: dict[str, tuple[Path, Path]] = {}

    def start(self, stem: str, notebook: Path, output: Path, parameters: dict,
              log: Callable[[str], None] | None) -> None:
        child = self.context.Process(
            target=_child, name=f"fmnist notebook {stem}", daemon=True,
            args=(stem, str(notebook), str(output), parameters, log is not None, self.messages, os.getpid()))
        child.start()
        self.children[stem], self.logs[stem], self.silent[stem] = child, log, 0
        self.paths[stem] = (Path(notebook), Path(output))

    def next_done(self) -> Outcome:
        """Wait for a child to end; pass on the lines its notebook prints meanwhile; return its outcome."""
        if not self.children:
            raise RuntimeError("no notebook is running in a child process")
        while True:
            try:
                kind, stem, payload = self.messages.get(timeout=_POLL_S)
            except queue.Empty:
                lost = self._lost()
                if lost is not None:
                    return lost
                continue
            if kind == "line":
                if self.logs.get(stem) is not None:
                    self.logs[stem](payload)
                continue
            self.children.pop(stem).join()
            return stem, _restore(payload)

    def _lost(self) -> Outcome | None:
        """Return the outcome of a child that ended without saying how (killed: out of memory...)."""
        from .execution import NotebookFailed

        for stem, child in self.children.items():
            if child.exitcode is None:
                continue
            self.silent[stem] += 1  # its last message may still be on its way
            if self.silent[stem] >= _GRACE_POLLS:
                del self.children[stem]
                return stem, NotebookFailed(
                    stem, *self.paths[stem], ename="WorkerLost",
                    evalue=f"the process running it ended with status {child.exitcode} without reporting "
                    "(killed, e.g. by the out-of-memory killer?)")
        return None

    def interrupt(self) -> None:
        """Ask every running child to stop its notebook, as Ctrl-C stops the runner (once each)."""
        for child in self.children.values():
            if child.exitcode is None:
                os.kill(child.pid, signal.SIGINT)

    def kill(self) -> list[Outcome]:
        """Kill every running child (a second Ctrl-C: stop now); return their outcomes, interruptions."""
        out = []
        for stem, child in list(self.children.items()):
            child.kill()
            child.join()
            out.append((stem, KeyboardInterrupt()))
        self.children.clear()
        return out

    def close(self) -> None:
        for child in self.children.values():
            child.kill()
            child.join()
        self.children.clear()
        self.messages.close()


def _child(stem: str, notebook: str, output: str, parameters: dict, progress: bool,
           messages, parent: int) -> None:
    """Execute one notebook in this child process; send its lines and its outcome to ``messages``."""
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)  # a Ctrl-C at the terminal reaches the runner, which forwards it once

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # the runner's exit terminates a daemonic child: stop cleanly
    threading.Thread(target=_watch, args=(parent,), daemon=True).start()
    from .execution import execute

    log = (lambda line: messages.put(("line", stem, line))) if progress else None
    try:
        execute(Path(notebook), Path(output), parameters, log=log)
        outcome = None
    except BaseException as exc:  # noqa: BLE001  (sent whole to the runner, which records and raises it)
        outcome = exc
    messages.put(("done", stem, _portable(outcome)))


def _watch(parent: int) -> None:
    """Interrupt this child when the runner that started it is gone (killed outright)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)


def _portable(outcome: BaseException | None) -> bytes:
    """Return ``outcome`` pickled with the filesystem error it was raised from (which pickling drops);
    an exception that cannot be pickled is sent as a RuntimeError naming it."""
    cause = outcome.__cause__ if outcome is not None and isinstance(outcome.__cause__, OSError) else None
    try:
        return pickle.dumps((outcome, cause))
    except Exception:  # noqa: BLE001
        return pickle.dumps((RuntimeError(f"{type(outcome).__name__}: {outcome}"), cause))


def _restore(payload: bytes) -> BaseException | None:
    outcome, cause = pickle.loads(payload)
    if outcome is not None and cause is not None:
        outcome.__cause__ = cause
    return outcome
