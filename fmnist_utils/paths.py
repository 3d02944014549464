"""Every folder the kit reads or writes, derived from one root.

The root is the project checkout (the folder holding ``pyproject.toml`` above this package) when
the package is used from a clone, otherwise the current directory. Each folder can be moved by an
environment variable, so a notebook, the CLI and the Makefile always agree on where things are.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from . import env


def resolve(folder: str | os.PathLike, what: str = "folder") -> Path:
    """Return ``folder`` made absolute with its links followed (it need not exist).

    Raises OSError ``ELOOP`` naming the path when its links form a loop (pathlib raises a bare
    RuntimeError there, which would surface as a traceback).
    """
    path = Path(folder).expanduser()
    try:
        return path.resolve()
    except RuntimeError:  # "Symlink loop from ..."
        raise OSError(errno.ELOOP, f"its symbolic links form a loop (the {what})", str(path)) from None


def project_root() -> Path:
    """Return the kit's root folder: ``FMNIST_ROOT``, else the checkout holding this package, else cwd."""
    value = env.env("FMNIST_ROOT")
    if value:
        return resolve(value, "FMNIST_ROOT")
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "fmnist_utils").is_dir():
        return here
    return Path.cwd().resolve()


def data_dir() -> Path:
    """Return the folder where a downloaded Fashion-MNIST copy lives (``<root>/data``)."""
    return project_root() / "data"


def runs_dir() -> Path:
    """Return the folder holding run folders (``FMNIST_RUNS``, else ``<root>/runs``)."""
    value = env.env("FMNIST_RUNS")
    return resolve(value, "FMNIST_RUNS folder") if value else project_root() / "runs"


def report_dir() -> Path:
    """Return the folder the finished report is written to (``FMNIST_REPORT``, else ``<root>/report``)."""
    value = env.env("FMNIST_REPORT")
    return resolve(value, "FMNIST_REPORT folder") if value else project_root() / "report"


DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def writable_dir(folder: str | os.PathLike, what: str) -> Path:
    """Return ``folder``, created with its parents, once a file could be created in it.

    Raises OSError (its ``filename`` set, its message naming ``what`` the folder is for) when
    it is a file, cannot be created (a parent is a file, ``/proc``, no permission) or is not
    writable, so that a bad folder fails before any work rather than after it.
    """
    folder = resolve(folder, what)
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"the {what} is a file, not a folder", str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        # The folder is what the user chose and can fix: name it, not the probe file inside it.
        where = exc.filename if exc.filename and not Path(exc.filename).name.startswith(".write-test-") else folder
        raise OSError(exc.errno, f"{exc.strerror} (the {what})", str(where)) from None
    return folder


def run_folder(profile: str, run_dir: str | os.PathLike | None = None) -> Path:
    """Return (and create) the run folder: ``run_dir`` when given, else ``runs_dir()/<profile>``.

    Each notebook writes into its own sub-folder named after it (``<run folder>/02_train``).
    Raises OSError naming the folder when it cannot be written (see :func:`writable_dir`).
    """
    folder = resolve(run_dir, "run folder") if run_dir else runs_dir() / profile
    return writable_dir(folder, "run folder")


# --------------------------------------------------------------------------------------------
# Which folder is whose: the kit deletes only inside folders it made and marked

RUN_MARKER = ".fmnist-run"  # in every run folder the kit uses
REPORT_MARKER = ".fmnist-report"  # in every report folder the kit writes
RENDERED_MARKER = ".fmnist-rendered"  # in <report folder>/notebooks, the rendered notebooks
# What the kit itself puts in each kind of folder: a folder holding only these (and no marker)
# was written by a version of the kit from before the markers, and is adopted.
_RUN_ENTRIES = re.compile(r"^(\d\d_.+|notebooks|budget\.json|\.lock|\.replaced|\.write-test-.*)$")
_REPORT_ENTRIES = re.compile(r"^(report\.html|report\.pdf|report\.pdf\.tmp\.pdf|notebooks|README\.md|template|"
                             r"\.lock|\.building|\.write-test-.*)$")
ROLES = {"run folder": (RUN_MARKER, _RUN_ENTRIES, "--run-dir or FMNIST_RUNS"),
         "report folder": (REPORT_MARKER, _REPORT_ENTRIES, "--report-dir or FMNIST_REPORT")}


class FolderRoleError(ValueError):
    """A folder given for one role is (or holds, or lies inside) a folder of another role, or
    holds files the kit did not make."""


def checkout_folders() -> dict[str, Path]:
    """Return {what: folder} of the kit's own source folders, which no run may write into: the
    checkout (when this is one), its ``notebooks/``, the package and ``tests/``."""
    package = Path(__file__).resolve().parent
    root = package.parent
    if not (root / "pyproject.toml").is_file():  # installed, not a clone: only the package is the kit's
        return {"the kit's package": package}
    return {"the kit's checkout": root, "the kit's source notebooks": root / "notebooks",
            "the kit's package": package, "the kit's tests": root / "tests"}


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_roles(run: Path, report: Path | None = None, notebooks: Path | None = None) -> None:
    """Raise :class:`FolderRoleError` (one line) unless the run folder, the report folder, the
    notebooks' folder and the checkout's own folders are distinct: none equal to another, none
    inside another (the run and report folders may lie inside the checkout, as runs/ and report/ do).
    Paths must be resolved.
    """
    given = {"run folder": run, "report folder": report}
    given = {what: folder for what, folder in given.items() if folder is not None}
    protected = checkout_folders()
    root = protected.get("the kit's checkout")
    user_notebooks = notebooks if notebooks is not None and notebooks not in protected.values() else None
    if user_notebooks is not None:
        protected["the notebooks folder (--notebooks)"] = user_notebooks
    for what, folder in given.items():
        how = ROLES[what][2]
        for other, theirs in protected.items():
            if theirs == root:
                clash = folder == root  # runs/ and report/ live inside the checkout by default
            elif theirs == user_notebooks:  # only NN_*.ipynb at its top level are read: a run folder may lie inside
                clash = _inside(theirs, folder)
            else:
                clash = _inside(folder, theirs) or _inside(theirs, folder)
            if clash:
                relation = "is" if folder == theirs else ("lies inside" if _inside(folder, theirs) else "holds")
                raise FolderRoleError(
                    f"the {what} {folder} {relation} {other} {theirs}: the kit would write over it. "
                    f"Give the {what} a folder of its own ({how})."
                )
    if len(given) == 2 and (_inside(run, report) or _inside(report, run)):
        relation = "is" if run == report else ("lies inside" if _inside(run, report) else "holds")
        raise FolderRoleError(
            f"the run folder {run} {relation} the report folder {report}: each needs a folder of its own "
            "(--run-dir or FMNIST_RUNS, --report-dir or FMNIST_REPORT)."
        )


def check_owned(folder: Path, what: str) -> None:
    """Raise :class:`FolderRoleError` (one line) unless ``folder`` (a ``what``: "run folder" or
    "report folder") is new, empty, marked as the kit's, or holds only what the kit writes there.

    Also refuses a folder marked for the other role (a run folder given as the report folder).
    Writes nothing: :func:`mark` does, once every check has passed.
    """
    marker, entries, how = ROLES[what]
    for other, (other_marker, _, _) in ROLES.items():
        if other != what and (folder / other_marker).exists():
            raise FolderRoleError(f"{folder} is a {other} of the kit, not a {what}: give the {what} a folder of "
                                  f"its own ({how}).")
    if what == "report folder" and any((folder / "notebooks").glob("*.stamp.json")):
        raise FolderRoleError(f"{folder} is a run folder of the kit (it holds notebooks/*.stamp.json), not a "
                              f"report folder: give the report folder a folder of its own ({how}).")
    if not folder.is_dir() or (folder / marker).exists():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not entries.match(p.name))
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FolderRoleError(
            f"the {what} {folder} holds files the kit did not make ({listed}) and no {marker} marker: the kit "
            f"only writes into and deletes from folders of its own. Give an empty or new folder ({how})."
        )


def mark(folder: Path, what: str) -> None:
    """Write the marker of a ``what`` into ``folder`` (once :func:`check_owned` passed)."""
    marker = folder / ROLES[what][0]
    if not marker.exists():
        marker.write_text(f"This {what} is written by the Fashion-MNIST report kit, which deletes only inside "
                          "folders carrying this file.\n")


def is_owned(folder: Path, what: str) -> bool:
    """Return True when ``folder`` carries the marker of a ``what`` (checked before any removal)."""
    return (Path(folder) / ROLES[what][0]).is_file()
