"""Every folder the kit reads or writes, derived from one root.

The root is the project checkout (the folder holding ``pyproject.toml`` above this package) when
the package is used from a clone, otherwise the current directory. Each folder can be moved by an
environment variable, so a notebook, the CLI and the Makefile always agree on where things are.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def project_root() -> Path:
    """Return the kit's root folder: ``FMNIST_ROOT``, else the checkout holding this package, else cwd."""
    env = os.environ.get("FMNIST_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "fmnist_utils").is_dir():
        return here
    return Path.cwd().resolve()


def data_dir() -> Path:
    """Return the folder where a downloaded Fashion-MNIST copy lives (``<root>/data``)."""
    return project_root() / "data"


def runs_dir() -> Path:
    """Return the folder holding run folders (``FMNIST_RUNS``, else ``<root>/runs``)."""
    env = os.environ.get("FMNIST_RUNS")
    return Path(env).expanduser().resolve() if env else project_root() / "runs"


def report_dir() -> Path:
    """Return the folder the finished report is written to (``FMNIST_REPORT``, else ``<root>/report``)."""
    env = os.environ.get("FMNIST_REPORT")
    return Path(env).expanduser().resolve() if env else project_root() / "report"


DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def writable_dir(folder: str | os.PathLike, what: str) -> Path:
    """Return ``folder``, created with its parents, once a file could be created in it.

    Raises OSError (its ``filename`` set, its message naming ``what`` the folder is for) when
    it is a file, cannot be created (a parent is a file, ``/proc``, no permission) or is not
    writable, so that a bad folder fails before any work rather than after it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"the {what} is a file, not a folder", str(folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (the {what})", exc.filename or str(folder)) from None
    return folder


def run_folder(profile: str, run_dir: str | os.PathLike | None = None) -> Path:
    """Return (and create) the run folder: ``run_dir`` when given, else ``runs_dir()/<profile>``.

    Each notebook writes into its own sub-folder named after it (``<run folder>/01_train``).
    Raises OSError naming the folder when it cannot be written (see :func:`writable_dir`).
    """
    folder = Path(run_dir).expanduser().resolve() if run_dir else runs_dir() / profile
    return writable_dir(folder, "run folder")
