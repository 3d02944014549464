"""The run folder and the report folder: one writer each (:func:`folder_lock`), another profile's
results never replaced silently (:func:`check_profile`), finished results set aside until their
successor exists (:func:`set_aside`), and only the kit's own report files removed (:func:`remove_report`).

One writer per run folder: the runner holds an exclusive ``fcntl`` lock on ``<run folder>/.lock``
(released by the kernel when the process ends, even when it is killed); a second run on the same
folder stops with :class:`RunFolderBusy`, naming the holder. A run folder holding another profile's
results is not overwritten without ``force`` (:class:`RunFolderConflict`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Iterator

from . import paths, provenance
from .stamps import _now, read_stamp

REPLACED = ".replaced"  # <run folder>/.replaced/<stem>: the last finished results, until their successor exists


class RunFolderBusy(RuntimeError):
    """Another process is running in this run folder (or report folder): it holds the folder's lock."""


class RunFolderConflict(ValueError):
    """The run folder holds results of another profile, which this run would replace."""


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


REPORT_FILES = ("report.html", "report.pdf", "report.pdf.tmp.pdf")
STAGING = ".building"  # <report folder>/.building: the new report, until it replaces the old one
STAGING_MARKER = ".fmnist-building"  # inside .building: the kit made it, so a leftover one may be removed


def _rendered_is_ours(folder: Path) -> bool:
    """Return True when ``folder`` (``<report folder>/notebooks``) carries the marker of the kit's
    rendered notebooks. Nothing else counts, not even a folder of ``.html`` files only: it is
    deleted whole, and such a folder may be a user's exported notebooks."""
    return (folder / paths.RENDERED_MARKER).is_file()


def check_report_folder(report_dir: Path) -> None:
    """Raise FolderRoleError unless the report folder is the kit's to write (see
    :func:`fmnist_utils.paths.check_owned`) and its ``notebooks`` folder, if any, holds the kit's
    rendered notebooks: checked before any notebook runs, so the refusal costs nothing."""
    paths.check_owned(report_dir, "report folder")
    rendered = report_dir / "notebooks"
    if rendered.is_dir() and not _rendered_is_ours(rendered):
        raise paths.FolderRoleError(_not_rendered(rendered))


def _not_rendered(rendered: Path) -> str:
    return (f"{rendered} carries no {paths.RENDERED_MARKER} marker, so the kit did not render it and will not delete "
            "it (one rendered by a version of the kit older than the marker: move or delete it yourself). Give the "
            "report a folder of its own (--report-dir or FMNIST_REPORT).")


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


def clean(runs: Path, report_dir: Path) -> tuple[list[Path], list[Path]]:
    """Delete the kit's run folders in ``runs`` (those carrying its marker) and the built report in
    ``report_dir`` (:func:`remove_report`, only where that folder carries its marker); return
    (what was removed, what was left because the kit did not mark it as its own)."""
    removed, left = [], []
    if runs.is_dir():
        for folder in sorted(runs.iterdir()):
            if folder.is_dir() and not folder.is_symlink() and paths.is_owned(folder, "run folder"):
                shutil.rmtree(folder)
                removed.append(folder)
            else:
                left.append(folder)
    if report_dir.is_dir():
        if paths.is_owned(report_dir, "report folder"):
            removed += remove_report(report_dir)
        else:
            left.append(report_dir)
    return removed, left
