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
import hashlib
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

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
# Parameters every notebook must declare in its `parameters` cell: papermill only warns about an
# injected name the cell lacks, and the notebook would then write into another run folder.
REQUIRED_PARAMETERS = ("profile", "run_dir")
# Modules that only run or assemble the report: editing them must not re-execute the notebooks.
REPORT_ONLY_MODULES = frozenset({"pipeline.py", "report.py", "__main__.py"})
KERNEL = "python3"

EXIT_NOTEBOOK_FAILED = 1
EXIT_NO_PDF = 3
EXIT_BUSY = 6


class RunFolderBusy(RuntimeError):
    """Another process is running in this run folder (it holds the folder's lock)."""


class RunFolderConflict(ValueError):
    """The run folder holds results of another profile, which this run would replace."""
EXIT_TOO_SLOW = 7


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


def notebook_key(source: str, parameters: dict, package: str, previous: list[str], inputs: dict | None = None) -> str:
    """Return the key a notebook's run is identified by: everything its results depend on.

    ``inputs``: the part of :func:`snapshot_inputs` the key covers (see :func:`input_key`).
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


def _file_record(path: Path, seen: dict | None, hasher: Callable[[Path], str]) -> dict:
    """Return {"path", "size", "mtime_ns", "sha256"} of ``path`` (sha256 None when there is no file),
    taking the sum from ``seen`` when path, size and modification time are unchanged.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        return {"path": str(path), "size": None, "mtime_ns": None, "sha256": None}
    info = path.stat()
    record = {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    seen = seen or {}
    same = seen.get("sha256") and all(seen.get(k) == v for k, v in record.items())
    return {**record, "sha256": seen["sha256"] if same else hasher(path)}


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

    given = os.environ.get(models.RESNET18_WEIGHTS_ENV, "").strip()
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


def why_rerun(stamp: dict | None, key: str, parts: dict, has_results: bool) -> str | None:
    """Return why a notebook must run again, or None when its last run can be reused."""
    if stamp is None:
        return "no earlier run in this run folder"
    if stamp.get("key") != key:
        old = stamp.get("parts", {})
        names = ("source", "parameters", "package", "inputs", "previous")
        changed = [name for name in names if name in parts and old.get(name) != parts[name]]
        words = {"source": ["its cells"], "parameters": ["its parameters"], "package": ["the fmnist_utils code"],
                 "previous": ["an earlier notebook"]}
        if "inputs" in changed:
            words["inputs"] = input_changes(old.get("inputs"), parts["inputs"])
        return ("changed since its last run: " + ", ".join(w for c in changed for w in words[c]) if changed
                else "its stamp is from another version of the runner")
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
            f"(found {sorted(declared) or 'no parameters cell'}). Add e.g. `profile = \"auto\"` and `run_dir = None`, "
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


def execute(notebook: Path, output: Path, parameters: dict, log: Callable[[str], None] | None = None) -> None:
    """Execute ``notebook`` with papermill into ``output`` (cwd: the notebook's folder).

    ``log``: called with each line the notebook prints (``"02_train | epoch 2/4: 50% ..."``) as
    it runs: its kernel is started with ``FMNIST_PROGRESS=lines`` (unless that is set already),
    so training prints one line per epoch (see :mod:`fmnist_utils.progress`). Raises
    :class:`NotebookFailed` when a cell raised (papermill's exception, or a failure recorded only
    in the executed notebook's metadata) or the kernel could not run it.
    """
    import papermill

    from . import progress

    notebook, output = Path(notebook), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stem = notebook.stem
    sink = _LineSink(lambda line: log(f"{stem} | {line}")) if log is not None else None
    # The kernel inherits this process's environment when papermill starts it.
    previous = os.environ.get(progress.ENV)
    os.environ.setdefault(progress.ENV, "lines")
    try:
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=KERNEL,
            cwd=str(notebook.parent), progress_bar=False, stdout_file=sink,
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
def run_folder_lock(run: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<run>/.lock`` for the block; yield the lock file's path.

    ``fcntl.flock`` on one machine: the kernel drops the lock when the holder exits, however it
    exits, so a killed run never leaves a stale lock. The file records who holds it (pid, host,
    start time, command) for the message of :class:`RunFolderBusy`, raised when another process
    holds it. Re-entrant within one process.
    """
    path = Path(run) / LOCK_NAME
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
            raise RunFolderBusy(
                f"the run folder {Path(run)} is in use by another run: {_holder(path)}. Wait for it to finish, "
                "or give this run another folder (--run-dir). Two runs in one folder would overwrite each other's "
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


def run_notebooks(
    profile: str = "auto",
    run_dir: str | Path | None = None,
    notebooks: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run (or reuse) every notebook in order and return their stamps, in notebook order.

    Each stamp is a dict: ``notebook`` (stem), ``key``, ``parts``, ``parameters``, ``status``
    ("ok"), ``seconds`` (papermill wall time of the run that produced the results, kernel
    start included), ``started_utc``, ``finished_utc``, ``executed`` (True when run now, False
    when reused), ``source`` and ``executed_notebook`` paths, ``input_files`` (the inputs'
    files with size, time and hash). ``force`` re-executes everything (and may replace another
    profile's results). ``progress``: pass each line the notebooks print (one per epoch) to
    ``log`` as they run. Raises :class:`NotebookFailed` on the first failure; its stamp then
    says ``"failed"`` (``"interrupted"`` after Ctrl-C), and an executed copy that is not valid
    JSON is removed. Raises :class:`RunFolderBusy` or :class:`RunFolderConflict` before anything runs.
    """
    name = profiles.resolve_name(profile)
    run = paths.run_folder(name, run_dir)
    found = discover(notebooks)
    # Notebooks the budget left out (a budgeted run's are in its budget.json).
    budgeted = name.startswith("budget-") and (run / "budget.json").is_file()
    fixed = profiles.PROFILES.get(name)
    dropped = provenance.read_json(run / "budget.json")["dropped"] if budgeted else getattr(fixed, "skip", ())
    found = [nb for nb in found if nb.stem not in dropped]
    for nb in found:  # before anything runs: a contract error should not cost minutes of training first
        check_parameters(nb)
    with run_folder_lock(run):
        replaced = check_profile(run, name, force)
        if replaced:
            log(f"--force: replacing the results of another profile in {run}: {', '.join(replaced)}")
        for debris in (run / "notebooks").glob("*.tmp"):  # a stamp write cut short by a kill
            debris.unlink(missing_ok=True)
        return _run_locked(found, name, run, force, progress, log)


def _run_locked(found: list[Path], name: str, run: Path, force: bool, progress: bool,
                log: Callable[[str], None]) -> list[dict]:
    package = package_digest()
    parameters = {"profile": name, "run_dir": str(run)}
    log(f"profile {name}: {len(found)} notebook(s) from {found[0].parent} into {run}")

    stamps: list[dict] = []
    previous: list[str] = []
    rerun_rest = False
    snapshot: dict = {}
    for nb in found:
        stem = nb.stem
        old = read_stamp(run, stem)
        # Hashes are taken from this notebook's last run, else from the notebook before it.
        snapshot = snapshot_inputs(declared_inputs(nb), {**snapshot, **((old or {}).get("input_files") or {})})
        parts = {"source": source_digest(nb), "parameters": parameters, "package": package,
                 "inputs": input_key(snapshot), "previous": list(previous)}
        key = notebook_key(parts["source"], parameters, package, previous, parts["inputs"])
        previous.append(key)
        if force:
            reason = "forced"
        elif rerun_rest:
            reason = "an earlier notebook was executed again"
        else:
            reason = why_rerun(old, key, parts, results_path(run, stem).is_file())
        if reason is None:
            log(f"{stem}: up to date, reused (its run took {old['seconds']:.1f} s, finished {old['finished_utc']})")
            if old.get("input_files") != snapshot:  # same content, new file times: keep the hashes for next time
                provenance.write_json(stamp_path(run, stem), {**old, "input_files": snapshot})
            stamps.append({**old, "input_files": snapshot, "executed": False})
            continue

        rerun_rest = True
        resume = not force and old is not None and old.get("key") == key and old.get("status") != "ok"
        if not resume:
            shutil.rmtree(run / stem, ignore_errors=True)
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
            if isinstance(exc, NotebookFailed) and isinstance(exc.__cause__, OSError):
                raise exc.__cause__ from None  # the runner could not write (disk full...): say so, with the path
            raise
        settled = settle_inputs(snapshot, snapshot_inputs(declared_inputs(nb), snapshot))
        if settled != snapshot:  # the notebook fetched an input itself (a download): record it as used
            parts["inputs"] = input_key(settled)
            key = previous[-1] = notebook_key(parts["source"], parameters, package, parts["previous"], parts["inputs"])
            stamp.update(key=key, parts=parts, input_files=settled)
        stamp.update(status="ok", seconds=time.perf_counter() - start, finished_utc=_now())
        provenance.write_json(stamp_path(run, stem), stamp)
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


def remove_report(report_dir: Path) -> list[Path]:
    """Delete the built report (HTML, PDF, rendered notebooks, a PDF print cut short) from
    ``report_dir``; return what was removed.
    """
    removed = []
    for path in (report_dir / "report.html", report_dir / "report.pdf", report_dir / "report.pdf.tmp.pdf"):
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
    progress: bool = True,
    log: Callable[[str], None] = print,
    ignore_estimate: bool = False,
    budget: str | None = None,
) -> dict:
    """Run the notebooks and build the report; return ``{"html", "pdf", "stamps", "seconds"}``.

    The run folder is locked for the whole build (:func:`run_folder_lock`), and both folders are
    checked for writing before any notebook runs. The old report is deleted first, so a failure
    (:class:`NotebookFailed`) or an interruption leaves no report that could pass for this run's.
    ``pdf=False`` skips the PDF; when it cannot be printed,
    :class:`fmnist_utils.report.PdfUnavailable` is raised after the HTML is written.
    Before anything runs, :func:`fmnist_utils.estimate.check_budget` raises
    :class:`fmnist_utils.estimate.TooSlow` for a ``full`` report on a machine without CUDA that
    would take hours, unless ``ignore_estimate`` (or ``FMNIST_IGNORE_ESTIMATE=1``). ``budget``
    (``"30m"``): size the report to that time instead (:func:`fmnist_utils.budget.plan`).
    """
    from . import budget as budgets, estimate, report

    start = time.perf_counter()
    if budget is not None:  # sized before anything runs; the pace is measured once per run folder
        plan = budgets.plan(budget, run_dir, log=log)
        log(budgets.describe(plan.record))
        profile, run_dir = plan.profile.name, plan.run
    else:
        estimate.check_budget(profile, ignore=ignore_estimate, log=log)
        if profiles.resolve_name(profile) == "quick":  # the Method section states the budget quick was sized to
            provenance.write_json(paths.run_folder("quick", run_dir) / "budget.json", budgets.quick()[1])
    name = profiles.resolve_name(profile)
    run = paths.run_folder(name, run_dir)
    report_dir = paths.writable_dir(report_dir if report_dir is not None else paths.report_dir(), "report folder")
    with run_folder_lock(run):
        check_profile(run, name, force)  # before the old report is removed: a refusal changes nothing
        for path in remove_report(report_dir):
            log(f"removed the previous {path}")
        stamps = run_notebooks(name, run, notebooks, force=force, progress=progress, log=log)
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
    parser.add_argument("--force", action="store_true",
                        help="execute every notebook even when up to date, replacing another profile's results in --run-dir")
    parser.add_argument("--no-pdf", action="store_true", help="build only the HTML")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install Chromium for the PDF")
    parser.add_argument("--ignore-estimate", action="store_true",
                        help="run the full profile even where its estimate says hours (no CUDA); "
                        "or set FMNIST_IGNORE_ESTIMATE=1")
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

    out = build(args.profile, args.run_dir, args.report_dir, args.notebooks, force=args.force,
                pdf=not args.no_pdf, install=not args.no_install, log=log,
                ignore_estimate=args.ignore_estimate, budget=args.budget)
    ran = sum(s["executed"] for s in out["stamps"])
    log(f"done in {out['seconds']:.1f} s ({ran} notebook(s) executed, {len(out['stamps']) - ran} reused)")
    log(f"HTML: {out['html']}")
    if out["pdf"] is not None:
        log(f"PDF:  {out['pdf']}")
    return 0
