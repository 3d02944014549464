"""Executing one notebook with papermill, and what a failure says: :func:`execute`, :class:`NotebookFailed`.

A notebook runs in its own kernel (IPC sockets, its stderr in a log beside the executed copy); each
line it prints reaches the runner's log as it is printed. A cell that raises becomes
:class:`NotebookFailed`, naming the notebook, the cell of the source notebook and the error, with the
exit status the kit's error classes map to (:data:`NOTEBOOK_FAULTS`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

# Parameters every notebook must declare in its `parameters` cell: papermill only warns about an
# injected name the cell lacks, and the notebook would then write into another run folder.
REQUIRED_PARAMETERS = ("profile", "run_dir")
KERNEL = "python3"

EXIT_NOTEBOOK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_PDF = 3
EXIT_DIVERGED = 4
EXIT_FILESYSTEM = 5
EXIT_BUSY = 6
EXIT_TOO_SLOW = 7
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

# The kit's error classes, by name, as raised inside a notebook: the exit status each maps to, so a
# fault gives the same status whether the CLI or a notebook met it (anything else: EXIT_NOTEBOOK_FAILED).
NOTEBOOK_FAULTS = {
    **dict.fromkeys(("DataError", "WeightsError", "CheckpointError", "StorageError", "FolderRoleError",
                     "RunFolderConflict", "OldResults"), EXIT_BAD_INPUT),
    "TrainingDiverged": EXIT_DIVERGED,
    **dict.fromkeys(("OSError", "FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError",
                     "FileExistsError"), EXIT_FILESYSTEM),
    "KeyboardInterrupt": EXIT_INTERRUPTED,
}


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
        self.kept = True  # False once the runner removed an executed copy that was not valid JSON
        super().__init__(str(self))

    def __reduce__(self):
        # Pickled whole when a notebook ran in a child process (pipeline, jobs > 1): keywords, not args.
        fields = ("ename", "evalue", "cell_number", "exec_count", "cell_source", "traceback_tail")
        return _notebook_failed, (self.stem, self.source_path, self.executed_path, {f: getattr(self, f) for f in fields})

    @property
    def status(self) -> int:
        """Return the exit status of the error the notebook raised (:data:`NOTEBOOK_FAULTS`), else 1."""
        return NOTEBOOK_FAULTS.get(self.ename, EXIT_NOTEBOOK_FAILED)

    def one_line(self) -> str:
        """Return the kit's own error (a bad input, a divergence, a filesystem fault) as the notebook
        raised it, naming the notebook and where its executed copy is kept."""
        kept = (f"the executed notebook is kept: {self.executed_path}" if self.kept
                else f"the executed notebook could not be saved whole: {self.executed_path}")
        return f"{self.evalue.strip()} [notebook {self.stem}; {kept}]"

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
        if self.kept:
            lines.append(f"  the partly executed notebook is kept for inspection: {self.executed_path}")
        else:
            lines.append(f"  the partly executed notebook could not be saved whole and was removed: {self.executed_path}")
        return "\n".join(lines)


def _notebook_failed(stem: str, source_path: Path, executed_path: Path, fields: dict) -> NotebookFailed:
    return NotebookFailed(stem, source_path, executed_path, **fields)


def check_parameters(notebook: Path) -> tuple[str, ...]:
    """Return the names the notebook's ``parameters`` cell declares; raise ValueError unless they
    include :data:`REQUIRED_PARAMETERS`."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    missing = [name for name in REQUIRED_PARAMETERS if name not in declared]
    if missing:
        raise ValueError(
            f"{notebook}: its cell tagged 'parameters' does not declare {', '.join(missing)} "
            f"(found {sorted(declared) or 'no parameters cell'}). Add e.g. `profile = \"auto\"` and `run_dir = None`, "
            "one per line, with no '=' inside the trailing comment (papermill cannot parse such lines)."
        )
    return tuple(declared)


def check_given(notebook: Path, parameters: dict) -> None:
    """Raise ValueError when ``parameters`` name one the notebook's ``parameters`` cell does not declare.

    Papermill only warns and injects it, and the notebook would run with the value ignored (a setting
    such as ``epochs`` is set by its dotted path in ``overrides``, :mod:`fmnist_utils.settings`).
    """
    if not parameters:
        return
    declared = check_parameters(notebook) if set(parameters) - set(REQUIRED_PARAMETERS) else REQUIRED_PARAMETERS
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise ValueError(
            f"{notebook.name} declares no parameter {', '.join(unknown)} (its parameters: {', '.join(declared)}); "
            "a notebook's settings are set by their dotted paths instead, e.g. "
            "overrides={'train.epochs': 3} (every setting: fmnist_utils.settings.meanings())")


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


class _LineSink:
    """A file for papermill's ``stdout_file``: hands each complete line the kernel prints to ``emit``.

    Stream messages arrive in arbitrary pieces; a line is emitted once its newline has come, and
    only its last ``\\r``-separated part (what a terminal would leave visible).
    """

    def __init__(self, emit: Callable[[str], None]):
        self.emit, self.pending = emit, ""

    def write(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self._emit(line)

    def flush(self) -> None:  # papermill flushes after every piece; a partial line waits for its end
        pass

    def close(self) -> None:
        self._emit(self.pending)
        self.pending = ""

    def _emit(self, line: str) -> None:
        visible = line.rsplit("\r", 1)[-1].rstrip()
        if visible.strip():
            self.emit(visible)


def kernel_log_path(output: Path) -> Path:
    """Return where the kernel's own stderr goes while it runs the notebook executed into ``output``."""
    return Path(output).with_name(Path(output).stem + ".kernel.log")


@contextlib.contextmanager
def _stderr_into(path: Path) -> Iterator[None]:
    """Send file descriptor 2 into ``path`` for the block: a kernel started inside inherits it, so
    its log lines and the tracebacks it prints while being interrupted or shut down land in the
    file, not among the runner's own lines (an interruption is then one line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "ab") as f:
            os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def execute(notebook: Path, output: Path, parameters: dict, log: Callable[[str], None] | None = None) -> None:
    """Execute ``notebook`` with papermill into ``output`` (cwd: the notebook's folder).

    The kernel's stderr (its warnings, and what it prints while being interrupted) goes to
    :func:`kernel_log_path` beside ``output``.

    ``log``: called with each line the notebook prints (``"02_train | epoch 2/4: 50% ..."``) as
    it runs: its kernel is started with ``FMNIST_PROGRESS=lines`` (unless that is set already),
    so training prints one line per epoch (see :mod:`fmnist_utils.progress`). Raises
    :class:`NotebookFailed` when a cell raised (papermill's exception, or a failure recorded only
    in the executed notebook's metadata) or the kernel could not run it.
    """
    import papermill

    from . import notebook as nbsetup, progress

    notebook, output = Path(notebook), Path(output)
    check_given(notebook, parameters)
    output.parent.mkdir(parents=True, exist_ok=True)
    stem = notebook.stem
    sink = _LineSink(lambda line: log(f"{stem} | {line}")) if log is not None else None
    # The kernel inherits this process's environment when papermill starts it.
    previous = os.environ.get(progress.ENV)
    os.environ.setdefault(progress.ENV, "lines")
    try:
        # IPC sockets: no "Kernel is running over TCP" warning; the kernel's stderr goes to its log.
        with nbsetup.kernel_config() as config, _stderr_into(kernel_log_path(output)):
            papermill.execute_notebook(
                str(notebook), str(output), parameters=parameters, kernel_name=KERNEL,
                cwd=str(notebook.parent), progress_bar=False, stdout_file=sink,
                request_save_on_cell_execute=True, config=config,
            )
    except papermill.PapermillExecutionError as exc:
        raise NotebookFailed(
            stem, notebook, output, ename=exc.ename, evalue=exc.evalue,
            cell_number=_source_cell_number(notebook, exc.source), exec_count=exc.exec_count,
            cell_source=exc.source, traceback_tail=_traceback_tail(exc.traceback),
        ) from None
    except Exception as exc:  # a dead kernel, a missing kernel spec, a timeout: papermill raises many types
        raise NotebookFailed(stem, notebook, output, ename=type(exc).__name__, evalue=str(exc)) from exc
    finally:
        if sink is not None:
            sink.close()
        if previous is None:
            os.environ.pop(progress.ENV, None)
    failure = recorded_failure(output)
    if failure is not None:
        raise NotebookFailed(
            stem, notebook, output, ename=failure["ename"], evalue=failure["evalue"],
            cell_number=_source_cell_number(notebook, failure["cell_source"]) if failure["cell_source"] else None,
            exec_count=failure["exec_count"], cell_source=failure["cell_source"],
            traceback_tail=_traceback_tail(failure["traceback"]),
        )
