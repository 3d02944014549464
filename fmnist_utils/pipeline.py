"""Run the notebooks into a run folder, reusing the ones that are up to date, then build the report.

``make report`` calls :func:`build`. The notebooks are ``notebooks/NN_name.ipynb``, run in sorted
order by papermill with two injected parameters, ``profile`` (the resolved profile name) and
``run_dir`` (the run folder). Each executed copy is kept in ``<run folder>/notebooks/``.

Papermill cannot resume, so the runner decides what is up to date. Each notebook gets a stamp,
``<run folder>/notebooks/<stem>.stamp.json``, holding a key: a hash of the notebook's source
cells, the injected parameters, the package's code (:func:`package_digest`), the inputs it reads
(:func:`snapshot_inputs`: the data's location and content, the ResNet-18 weights file's hash or
its absence, the environment variables that choose them) and the keys of the notebooks before
it. A notebook is reused when its stamp has the same key, its last run succeeded and its
``results.json`` exists; otherwise it and every later notebook run again, and the log says which
input changed. When its key changed, its output folder is emptied first (a stale checkpoint must
not be continued); when only the last run was interrupted or failed under the same key, the
folder is kept so that a training checkpoint resumes.

One writer per run folder: :func:`build` holds an exclusive ``fcntl`` lock on
``<run folder>/.lock`` (released by the kernel when the process ends, even when it is killed); a
second run on the same folder stops with :class:`RunFolderBusy`, naming the holder. A run folder
holding another profile's results is not overwritten without ``force`` (:class:`RunFolderConflict`).

A failure stops the run with :class:`NotebookFailed`, naming the notebook, the cell and the
error; the partly executed notebook is kept and no report is left behind. The report is written
only after every notebook succeeded (see :mod:`fmnist_utils.report`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from . import paths, profiles, provenance
from . import settings as settings_tree

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
# Parameters every notebook must declare in its `parameters` cell: papermill only warns about an
# injected name the cell lacks, and the notebook would then write into another run folder.
REQUIRED_PARAMETERS = ("profile", "run_dir")
# Modules that only run or assemble the report: editing them must not re-execute the notebooks.
REPORT_ONLY_MODULES = provenance.REPORT_ONLY_MODULES
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
                     "RunFolderConflict"), EXIT_BAD_INPUT),
    "TrainingDiverged": EXIT_DIVERGED,
    **dict.fromkeys(("OSError", "FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError",
                     "FileExistsError"), EXIT_FILESYSTEM),
    "KeyboardInterrupt": EXIT_INTERRUPTED,
}
REPLACED = ".replaced"  # <run folder>/.replaced/<stem>: the last finished results, until their successor exists


class RunFolderBusy(RuntimeError):
    """Another process is running in this run folder (or report folder): it holds the folder's lock."""


class RunFolderConflict(ValueError):
    """The run folder holds results of another profile, which this run would replace."""


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


_digest = provenance.digest


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
    """Return the kit's code hash (:func:`fmnist_utils.provenance.code_hash`): the package's Python
    sources that notebooks run, without :data:`REPORT_ONLY_MODULES`."""
    return provenance.code_hash(package_dir)


def notebook_key(source: str, parameters: dict, package: str, previous: list[str], inputs: dict | None = None) -> str:
    """Return the key a notebook's run is identified by: everything its results depend on.

    ``previous``: the keys of the notebooks it reads (:func:`declared_reads`). ``inputs``: the part of :func:`snapshot_inputs` the key covers (see :func:`input_key`).
    """
    return _digest({"source": source, "parameters": parameters, "package": package, "previous": previous,
                    "inputs": inputs})


# --------------------------------------------------------------------------------------------
# Inputs: what a notebook reads besides its code and parameters

# Environment variables that choose an input (or how it is read), per input; a notebook's key
# covers those of the inputs it declares, plus ENVIRONMENT_ALWAYS.
INPUT_ENV = {
    "data": ("FMNIST_DATA", "FMNIST_ROOT", "FMNIST_DATA_UNVERIFIED"),
    "resnet18_weights": ("FMNIST_RESNET18_WEIGHTS", "TORCH_HOME", "XDG_CACHE_HOME"),
}
ENVIRONMENT_ALWAYS = ("FMNIST_CPU_BF16",)  # chooses the precision every notebook computes in


def declared_inputs(notebook: str | Path) -> tuple[str, ...]:
    """Return the inputs a notebook reads, from its metadata ``{"fmnist": {"inputs": [...]}}``.

    A notebook that declares nothing is taken to read every input in :data:`INPUT_ENV`: reusing
    too little costs time, reusing too much gives a stale report.
    """
    meta = json.loads(Path(notebook).read_text()).get("metadata", {}).get("fmnist", {}).get("inputs")
    if meta is None:
        return tuple(INPUT_ENV)
    unknown = sorted(set(meta) - set(INPUT_ENV))
    if unknown:
        raise ValueError(f"{notebook}: metadata fmnist.inputs names {unknown}; the inputs are {sorted(INPUT_ENV)}")
    return tuple(name for name in INPUT_ENV if name in meta)


def declared_reads(notebook: str | Path, earlier: list[str]) -> tuple[str, ...]:
    """Return the earlier notebooks whose results ``notebook`` reads, from its metadata
    ``{"fmnist": {"reads": ["01_sweep"]}}``; ``earlier``: the stems that run before it.

    These are the edges of the run's graph: a notebook reruns when a notebook it reads ran
    again, and only then (04 reads none of 01-03, so a change in 01 leaves it as it was). A
    notebook that declares nothing is taken to read every earlier one (reusing too little costs
    time, reusing too much gives a stale report). Naming a notebook that is not earlier is an
    error: the notebooks run in the order of their numbers.
    """
    meta = json.loads(Path(notebook).read_text()).get("metadata", {}).get("fmnist", {}).get("reads")
    if meta is None:
        return tuple(earlier)
    if not isinstance(meta, list) or not all(isinstance(m, str) for m in meta):
        raise ValueError(f"{notebook}: metadata fmnist.reads must be a list of notebook names, got {meta!r}")
    later = [m for m in meta if m not in earlier]
    if later:
        raise ValueError(f"{notebook}: metadata fmnist.reads names {later}, which do not run before it "
                         f"(the notebooks before it: {earlier or 'none'}); a notebook reads only earlier ones")
    return tuple(m for m in earlier if m in meta)


def read_graph(found: list[Path], running: list[Path] | None = None) -> dict[str, tuple[str, ...]]:
    """Return ``{stem: the stems it reads}`` for the notebooks of a run, in run order (checked).

    ``found``: every notebook of the folder, in order; ``running``: those this run executes (a
    budget may leave some out; default: all). Reads are checked against ``found`` and kept only
    where the notebook read runs too: one left out adds nothing to the key (the notebook reading
    it says what it does without it, as 02 trains the study's recipe without 01's choice).
    """
    stems = [nb.stem for nb in found]
    kept = {nb.stem for nb in (found if running is None else running)}
    graph = {nb.stem: declared_reads(nb, stems[:i]) for i, nb in enumerate(found)}
    return {stem: tuple(r for r in reads if r in kept) for stem, reads in graph.items() if stem in kept}


_file_record = provenance.file_record


def _data_input(seen: dict | None) -> dict:
    """The data set the notebooks will load: its folder and each file's content SHA-256."""
    from . import data

    files = data.locate()  # the notebooks' own search (an explicit FMNIST_DATA lacking files raises)
    if files is None:  # the first notebook will download it: recorded once it is there
        return {"location": None, "files": None}
    known = (seen or {}).get("files") or {}
    return {
        "location": str(Path(files["train_images"]).parent.resolve()),
        "files": {key: _file_record(path, known.get(key), data.content_sha256) for key, path in files.items()},
    }


def _weights_input(seen: dict | None) -> dict:
    """The ResNet-18 weights file models.imagenet_resnet18 will find (FMNIST_RESNET18_WEIGHTS, else
    torchvision's cache), with its SHA-256, or None where there is no file (random init, or a download).
    """
    from . import models

    given = settings_tree.env(models.RESNET18_WEIGHTS_ENV) or ""
    path = Path(given) if given else models.resnet18_cache_file()
    return {"how": models.RESNET18_WEIGHTS_ENV if given else "torchvision cache",
            **_file_record(path, seen, models.sha256_of)}


INPUTS: dict[str, Callable[[dict | None], dict]] = {"data": _data_input, "resnet18_weights": _weights_input}


def snapshot_inputs(names: tuple[str, ...], seen: dict | None = None) -> dict:
    """Return the state of the inputs ``names`` (keys of :data:`INPUTS`) and of their environment variables.

    ``{"data": {...}, "resnet18_weights": {...}, "environment": {VAR: value or None}}``. ``seen``,
    an earlier snapshot, supplies the hashes of files whose size and modification time are
    unchanged, so a repeated snapshot costs a ``stat`` a file (the first: ~0.3 s for the data).
    """
    seen = seen or {}
    out = {name: INPUTS[name](seen.get(name)) for name in names}
    variables = [*ENVIRONMENT_ALWAYS, *(v for name in names for v in INPUT_ENV[name])]
    out["environment"] = {v: os.environ.get(v) for v in variables}
    return out


def check_inputs(snapshot: dict) -> None:
    """Raise the error the notebooks would raise on these inputs, before anything is touched.

    The data: each file's content SHA-256 against Fashion-MNIST's (unless ``FMNIST_DATA_UNVERIFIED``
    asks otherwise), :class:`fmnist_utils.data.DataError`. The ResNet-18 weights: a file named by
    ``FMNIST_RESNET18_WEIGHTS`` must exist, and a file found must carry torchvision's SHA-256
    prefix (:class:`fmnist_utils.models.WeightsError`), as ``models.imagenet_resnet18`` demands
    by default. A finished run's results are thus never removed for an input that would be refused.
    """
    from . import data, models

    files = (snapshot.get("data") or {}).get("files")
    if files and not data.verification_skipped():
        for key, record in files.items():
            data.check_official_sha256(key, record["path"], record["sha256"])
    weights = snapshot.get("resnet18_weights")
    if weights:
        if weights["sha256"] is not None:
            models.check_weights_digest(weights["path"], weights["sha256"])
        elif weights["how"] == models.RESNET18_WEIGHTS_ENV:
            models.load_resnet18_weights(weights["path"])  # raises WeightsError naming the missing file


def input_key(snapshot: dict) -> dict:
    """Return what of a snapshot a key covers: locations and content hashes, not sizes or times."""
    out = {"environment": snapshot.get("environment", {})}
    if "data" in snapshot:
        files = snapshot["data"]["files"]
        out["data"] = {"location": snapshot["data"]["location"],
                       "sha256": {k: f["sha256"] for k, f in files.items()} if files is not None else None}
    if "resnet18_weights" in snapshot:
        w = snapshot["resnet18_weights"]
        out["resnet18_weights"] = {"path": w["path"], "sha256": w["sha256"]}
    return out


def settle_inputs(before: dict, after: dict) -> dict:
    """Return the snapshot a finished run is recorded with: ``before``, except that an input the
    notebook fetched itself (data not on disk, no weights file before; there after) takes its
    ``after`` state, so that the download does not make the next run execute it again.
    """
    out = dict(before)
    if "data" in before and before["data"]["location"] is None and after.get("data", {}).get("location"):
        out["data"] = after["data"]
    w_before, w_after = before.get("resnet18_weights"), after.get("resnet18_weights")
    if w_before and w_before["sha256"] is None and w_after and w_after["path"] == w_before["path"]:
        out["resnet18_weights"] = w_after
    return out


def _short(sha: str | None) -> str:
    return f"SHA-256 {sha[:12]}..." if sha else "no file"


def input_changes(old: dict | None, new: dict) -> list[str]:
    """Return, in words, each input that differs between two :func:`input_key` values."""
    old = old or {}
    out = []
    if "data" in new and old.get("data") != new["data"]:
        o, n = old.get("data"), new["data"]
        if o is None:
            out.append("the data (not recorded by its last run)")
        elif o["location"] != n["location"]:
            out.append(f"the data's location ({o['location'] or 'not on disk'} -> {n['location'] or 'not on disk'})")
        else:
            changed = sorted(k for k in (n["sha256"] or {}) if (o["sha256"] or {}).get(k) != n["sha256"][k])
            out.append(f"the data's content ({', '.join(changed)})")
    if "resnet18_weights" in new and old.get("resnet18_weights") != new["resnet18_weights"]:
        o, n = old.get("resnet18_weights") or {}, new["resnet18_weights"]
        if o.get("path") not in (None, n["path"]):
            out.append(f"the ResNet-18 weights file ({o['path']} -> {n['path']}, {_short(n['sha256'])})")
        else:
            out.append(f"the ResNet-18 weights at {n['path']} ({_short(o.get('sha256'))} -> {_short(n['sha256'])})")
    o_env, n_env = old.get("environment", {}), new.get("environment", {})
    for var in n_env:
        if o_env.get(var) != n_env[var]:
            out.append(f"${var} ({o_env.get(var) or 'unset'} -> {n_env[var] or 'unset'})")
    return out or ["the inputs it reads"]


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


def stamp_damage(run: Path, stem: str) -> str | None:
    """Return why the stamp of ``stem`` exists but cannot be used (cut short, not a stamp), or None."""
    path = stamp_path(run, stem)
    if not path.exists():
        return None
    try:
        stamp = provenance.read_json(path)
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if not isinstance(stamp, dict) or not isinstance(stamp.get("key"), str):
        return "it holds no key"
    return None


def why_rerun(stamp: dict | None, key: str, parts: dict, has_results: bool) -> str | None:
    """Return why a notebook must run again, or None when its last run can be reused."""
    if stamp is None:
        return "no earlier run in this run folder"
    if stamp.get("key") != key:
        old = stamp.get("parts", {})
        names = ("source", "parameters", "package", "inputs", "previous")
        changed = [name for name in names if name in parts and old.get(name) != parts[name]]
        words = {"source": ["its cells"], "parameters": ["its parameters"], "package": ["the fmnist_utils code"],
                 "previous": ["a notebook it reads"]}
        if "inputs" in changed:
            words["inputs"] = input_changes(old.get("inputs"), parts["inputs"])
        return ("changed since its last run: " + ", ".join(w for c in changed for w in words[c]) if changed
                else "its stamp is from another version of the runner")
    if stamp.get("status") != "ok":
        return f"its last run did not finish (status {stamp.get('status')!r}); resuming with its output folder kept"
    if not has_results:
        return "its results.json is missing"
    return None


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


# --------------------------------------------------------------------------------------------
# Running them all


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# One writer per run folder

LOCK_NAME = ".lock"
_HELD: dict[str, int] = {}  # lock files this process holds -> depth, so build() may call run_notebooks()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a process that has only just started (no details written yet)"
    return (f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started_utc')} "
            f"({info.get('command')})")


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run folder") -> Iterator[Path]:
    """Hold an exclusive lock on ``<folder>/.lock`` for the block; yield the lock file's path.

    ``fcntl.flock`` on one machine: the kernel drops the lock when the holder exits, however it
    exits, so a killed run never leaves a stale lock. The file records who holds it (pid, host,
    start time, command) for the message of :class:`RunFolderBusy`, raised when another process
    holds it. Re-entrant within one process. ``what``: "run folder" or "report folder", for the message.
    """
    path = Path(folder) / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            flag = "--report-dir" if what == "report folder" else "--run-dir"
            raise RunFolderBusy(
                f"the {what} {Path(folder)} is in use by another run: {_holder(path)}. Wait for it to finish, "
                f"or give this run another folder ({flag}). Two runs in one folder would overwrite each other's "
                "results; the lock is released as soon as that process ends."
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started_utc": _now(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _HELD[key] = 1
        try:
            yield path
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


def run_folder_lock(run: str | Path) -> contextlib.AbstractContextManager[Path]:
    """Hold the run folder's lock (:func:`folder_lock`)."""
    return folder_lock(run, "run folder")


def recorded_profiles(run: str | Path) -> dict[str, str]:
    """Return {notebook stem: profile name} for the results a run folder holds (from its stamps,
    else from each ``<stem>/results.json``'s ``profile.name``).
    """
    run = Path(run)
    found: dict[str, str] = {}
    for stamp_file in sorted((run / "notebooks").glob("*.stamp.json")):
        stamp = read_stamp(run, stamp_file.name.removesuffix(".stamp.json"))
        if stamp and stamp.get("parameters", {}).get("profile"):
            found[stamp["notebook"]] = stamp["parameters"]["profile"]
    for results in sorted(run.glob("*/results.json")):
        stem = results.parent.name
        if stem not in found:
            try:
                name = (provenance.read_json(results).get("profile") or {}).get("name")
            except (OSError, ValueError, AttributeError):
                name = None
            if name:
                found[stem] = name
    return found


def check_profile(run: Path, name: str, force: bool) -> list[str]:
    """Raise RunFolderConflict when ``run`` holds results of a profile other than ``name`` (unless
    ``force``); return the notebooks whose results would be replaced.
    """
    others = {stem: p for stem, p in recorded_profiles(run).items() if p != name}
    if others and not force:
        listed = ", ".join(f"{stem} ({p})" for stem, p in others.items())
        raise RunFolderConflict(
            f"the run folder {run} holds results of another profile: {listed}. Running profile {name!r} there "
            f"would delete them. Use a folder of its own (leave out --run-dir: runs/{name}), or pass --force "
            "to replace them."
        )
    return sorted(others)


def _discard_if_unreadable(notebook: Path) -> bool:
    """Remove ``notebook`` when it is not valid JSON (a write cut short); return True when it is kept."""
    try:
        json.loads(notebook.read_text())
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        notebook.unlink(missing_ok=True)
        return False
    return True


def _remove_owned(folder: Path, path: Path) -> None:
    """Delete ``path`` (a file or folder inside ``folder``), only where ``folder`` carries the run folder's marker."""
    if not paths.is_owned(folder, "run folder") or folder not in path.parents:
        raise paths.FolderRoleError(f"refusing to delete {path}: {folder} carries no {paths.RUN_MARKER} marker")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def set_aside(run: Path, stem: str) -> Path | None:
    """Move ``<run>/<stem>`` to ``<run>/.replaced/<stem>`` before the notebook runs under a new key;
    return where the last finished results now are (None: there were none).

    They are deleted only once the new run has written its own (:func:`_drop_replaced`). When an
    earlier replacement never finished, the set-aside results are the last finished ones: they
    stay, and the unfinished attempt's output is removed instead.
    """
    out, aside = run / stem, run / REPLACED / stem
    if aside.exists():
        if out.exists():
            _remove_owned(run, out)
        return aside
    if not out.exists():
        return None
    aside.parent.mkdir(exist_ok=True)
    out.rename(aside)
    return aside


def _drop_replaced(run: Path, stem: str) -> None:
    aside = run / REPLACED / stem
    if aside.exists():
        _remove_owned(run, aside)
    with contextlib.suppress(OSError):  # not empty: other notebooks' results still wait for their successors
        (run / REPLACED).rmdir()


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
    """Run (or reuse) every notebook in order and return their stamps, in notebook order.

    Each stamp is a dict: ``notebook`` (stem), ``key``, ``parts``, ``parameters``, ``status``
    ("ok"), ``seconds`` (papermill wall time of the run that produced the results, kernel
    start included), ``started_utc``, ``finished_utc``, ``executed`` (True when run now, False
    when reused), ``source`` and ``executed_notebook`` paths, ``input_files`` (the inputs'
    files with size, time and hash). ``settings``: the run's settings tree, resolved once
    (None: :func:`fmnist_utils.settings.resolve` of ``profile``); each notebook whose parameters
    cell declares ``settings`` is passed it whole, the others the profile's name and the run folder.
    ``force`` re-executes everything (and may replace another
    profile's results). ``progress``: pass each line the notebooks print (one per epoch) to
    ``log`` as they run. Raises :class:`NotebookFailed` on the first failure; its stamp then
    says ``"failed"`` (``"interrupted"`` after Ctrl-C), and an executed copy that is not valid
    JSON is removed.

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
        return _run_locked(found, name, run, force, progress, log, snapshot, graph,
                           {stem: _parameters(name, run, tree, names) for stem, names in declared.items()})


def _parameters(name: str, run: Path, tree: settings_tree.Settings, declared: tuple[str, ...]) -> dict:
    """Return the papermill parameters of a notebook declaring ``declared``: the profile's name, the
    run folder, and the whole settings tree (as plain JSON values) where it declares ``settings``."""
    out = {"profile": name, "run_dir": str(run)}
    if "settings" in declared:
        out["settings"] = json.loads(json.dumps(tree.to_dict()))
    return out


def _run_locked(found: list[Path], name: str, run: Path, force: bool, progress: bool,
                log: Callable[[str], None], snapshot: dict | None = None,
                graph: dict[str, tuple[str, ...]] | None = None, injected: dict[str, dict] | None = None) -> list[dict]:
    package = package_digest()
    injected = injected or {}
    log(f"profile {name}: {len(found)} notebook(s) from {found[0].parent} into {run}")

    stamps: list[dict] = []
    graph = read_graph(found) if graph is None else graph
    keys: dict[str, str] = {}  # stem -> the key of its run (this one or the reused one)
    executed: list[str] = []  # stems run again now
    snapshot = snapshot or {}
    for nb in found:
        stem = nb.stem
        parameters = injected.get(stem) or {"profile": name, "run_dir": str(run)}
        old = read_stamp(run, stem)
        damage = stamp_damage(run, stem)
        # Hashes are taken from this notebook's last run, else from the notebook before it.
        snapshot = snapshot_inputs(declared_inputs(nb), {**snapshot, **((old or {}).get("input_files") or {})})
        parts = {"source": source_digest(nb), "parameters": parameters, "package": package,
                 "inputs": input_key(snapshot), "previous": [keys[r] for r in graph[stem]]}
        key = keys[stem] = notebook_key(parts["source"], parameters, package, parts["previous"], parts["inputs"])
        reran = [r for r in graph[stem] if r in executed]
        if force:
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
            log(f"{stem}: up to date, reused (its run took {old['seconds']:.1f} s, finished {old['finished_utc']})")
            if old.get("input_files") != snapshot:  # same content, new file times: keep the hashes for next time
                provenance.write_json(stamp_path(run, stem), {**old, "input_files": snapshot})
            stamps.append({**old, "input_files": snapshot, "executed": False})
            continue

        executed.append(stem)
        resume = not force and (damage is not None or
                                (old is not None and old.get("key") == key and old.get("status") != "ok"))
        aside = None if resume else set_aside(run, stem)
        stamp = {
            "notebook": stem, "key": key, "parts": parts, "parameters": parameters, "status": "running",
            "started_utc": _now(), "source": str(nb), "executed_notebook": str(executed_path(run, stem)),
            "input_files": snapshot,
        }
        provenance.write_json(stamp_path(run, stem), stamp)
        log(f"{stem}: running ({reason})")
        start, wall_start = time.perf_counter(), time.time()
        try:
            execute(nb, executed_path(run, stem), parameters, log=log if progress else None)
            written = results_path(run, stem)
            # A results.json older than this run would be an earlier run's, not this one's.
            if not written.is_file() or written.stat().st_mtime < wall_start - 1:
                raise NotebookFailed(
                    stem, nb, executed_path(run, stem), ename="MissingResults",
                    evalue=f"the notebook finished without writing {results_path(run, stem)} "
                    "(every notebook must write its results.json into <run folder>/<its name>/)",
                )
        except BaseException as exc:
            _record_failure(exc, stamp, run, stem, time.perf_counter() - start, log)
            if aside is not None or (run / REPLACED / stem).exists():
                log(f"{stem}: its last finished results are kept in {run / REPLACED / stem} until a run of it succeeds")
            if isinstance(exc, NotebookFailed) and isinstance(exc.__cause__, OSError):
                raise exc.__cause__ from None  # the runner could not write (disk full...): say so, with the path
            raise
        settled = settle_inputs(snapshot, snapshot_inputs(declared_inputs(nb), snapshot))
        if settled != snapshot:  # the notebook fetched an input itself (a download): record it as used
            parts["inputs"] = input_key(settled)
            key = keys[stem] = notebook_key(parts["source"], parameters, package, parts["previous"], parts["inputs"])
            stamp.update(key=key, parts=parts, input_files=settled)
        stamp.update(status="ok", seconds=time.perf_counter() - start, finished_utc=_now())
        provenance.write_json(stamp_path(run, stem), stamp)
        _drop_replaced(run, stem)  # its successor exists now
        log(f"{stem}: done in {stamp['seconds']:.1f} s")
        stamps.append({**stamp, "executed": True})
    return stamps


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


REPORT_FILES = ("report.html", "report.pdf", "report.pdf.tmp.pdf")
STAGING = ".building"  # <report folder>/.building: the new report, until it replaces the old one
STAGING_MARKER = ".fmnist-building"  # inside .building: the kit made it, so a leftover one may be removed


def _rendered_is_ours(folder: Path) -> bool:
    """Return True when ``folder`` (``<report folder>/notebooks``) holds the kit's rendered notebooks:
    its marker, or (from before the markers) nothing but ``.html`` files."""
    return (folder / paths.RENDERED_MARKER).is_file() or all(
        p.is_file() and p.suffix == ".html" for p in folder.iterdir())


def check_report_folder(report_dir: Path) -> None:
    """Raise FolderRoleError unless the report folder is the kit's to write (see
    :func:`fmnist_utils.paths.check_owned`) and its ``notebooks`` folder, if any, holds the kit's
    rendered notebooks: checked before any notebook runs, so the refusal costs nothing."""
    paths.check_owned(report_dir, "report folder")
    rendered = report_dir / "notebooks"
    if rendered.is_dir() and not _rendered_is_ours(rendered):
        raise paths.FolderRoleError(_not_rendered(rendered))


def _not_rendered(rendered: Path) -> str:
    return (f"{rendered} holds files that are not the kit's rendered notebooks (no {paths.RENDERED_MARKER}); the kit "
            "will not delete it. Give the report a folder of its own (--report-dir or FMNIST_REPORT).")


def remove_report(report_dir: Path) -> list[Path]:
    """Delete the built report (HTML, PDF, rendered notebooks, a PDF print cut short) from
    ``report_dir``; return what was removed. A ``notebooks`` folder there is removed only when it
    holds the kit's rendered notebooks (:func:`_rendered_is_ours`); otherwise FolderRoleError.
    """
    report_dir = Path(report_dir)
    rendered = report_dir / "notebooks"
    if rendered.is_dir() and not _rendered_is_ours(rendered):
        raise paths.FolderRoleError(_not_rendered(rendered))
    removed = []
    for path in (report_dir / name for name in REPORT_FILES):
        if path.exists():
            path.unlink()
            removed.append(path)
    if rendered.is_dir():
        shutil.rmtree(rendered)
        removed.append(rendered)
    return removed


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
    out = build(args.profile, args.run_dir, args.report_dir, args.notebooks, force=args.force,
                pdf=not args.no_pdf, install=not args.no_install, log=log,
                ignore_estimate=args.ignore_estimate, title=title, budget=args.budget, overrides=overrides)
    ran = sum(s["executed"] for s in out["stamps"])
    log(f"done in {out['seconds']:.1f} s ({ran} notebook(s) executed, {len(out['stamps']) - ran} reused)")
    log(f"HTML: {out['html']}")
    if out["pdf"] is not None:
        log(f"PDF:  {out['pdf']}")
    return 0
