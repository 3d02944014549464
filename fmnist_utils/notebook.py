"""What every notebook does first and last, so a notebook holds only its parameters, calls and prose.

    nb = notebook.setup("02_train", profile, run_dir, budget, overrides, settings)  # the parameters cell's five
    S = nb.settings.train                                                             # this notebook's branch
    nb.save_figure(plots.plot_learning_curves(history), "learning_curves")
    nb.write_results(results, data=ds)

:func:`setup` takes the run's settings tree (:mod:`fmnist_utils.settings`: the one ``make report``
passes, else resolved from the profile, budget and overrides), prints the notebook's branch of it,
and creates the notebook's output folder ``<run folder>/<stem>``; :meth:`Notebook.save_figure`
writes a figure there as PNG for the report, shows it once in the notebook and records it;
:meth:`Notebook.write_results` writes ``results.json``, the notebook's typed record
(:mod:`fmnist_utils.records`). :data:`INSTALL_CELL` is the first code cell of every notebook, the
same in each (a test checks it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths, provenance, records
from .records import base_config, find_results  # noqa: F401  (notebook.find_results, notebook.base_config: where the notebooks call them)
from . import settings as settings_tree

# The first code cell of every notebook, word for word: it installs the kit only where it is not
# importable (a fresh Colab runtime), and only from inside a clone of the kit.
INSTALL_CELL = '''\
# Installs the kit when it is not importable (a fresh kernel inside a clone of the kit). On Colab, open
# notebooks/colab.ipynb from the README's "Open in Colab" badge instead: it clones the kit and runs every
# notebook in one session (each Colab notebook runs on its own machine, and 02 reads 01's results).
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("fmnist_utils") is None:
    if not (Path.cwd().parent / "pyproject.toml").is_file():
        raise RuntimeError(
            "fmnist_utils is not installed and this notebook is not inside a clone of the kit: clone it and "
            "open the notebook from its notebooks/ folder (see the comment at the top of this cell)"
        )
    %pip install -q -e ..
    sys.path.insert(0, str(Path.cwd().parent))  # a running kernel does not see a new editable install'''

FIGURE_DPI = 150


@dataclass
class Notebook:
    """One notebook's run: its ``stem`` (``02_train``), the run's ``settings`` tree, the settings set
    by the notebook's ``overrides`` (``{dotted path: value}``, recorded as its parameters), its
    ``run`` folder and ``out`` folder (``run / stem``, created), the figures saved so far
    (``{name: file}``) and ``started`` (``time.perf_counter()`` at set-up, for the results' ``seconds``).
    """

    stem: str
    settings: settings_tree.Settings
    run: Path
    out: Path
    overrides: dict = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def profile(self) -> settings_tree.Settings:
        """The settings tree (its branches hold the profile's sizes: ``nb.profile.train.epochs``)."""
        return self.settings

    def save_figure(self, fig, name: str) -> None:
        """Write ``fig`` to ``out/<name>.png`` for the report, show it in the notebook, record it
        (the file is ``out / figures[name]``).

        Shown once wherever the call is (inside a loop too); a pyplot figure is closed afterwards
        so the inline backend does not show it a second time. Returns None so that a call ending a
        cell leaves the figure alone in the output, without a ``PosixPath('...png')`` under it.
        """
        if not name or "/" in name or name.endswith(".png"):
            raise ValueError(f"figure name {name!r} must be a plain file stem such as 'learning_curves'")
        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=FIGURE_DPI, bbox_inches="tight")
        self.figures[name] = path.name
        _show(fig)

    def write_results(self, results: dict, parameters: dict | None = None, device: str | None = None,
                      data=None) -> None:
        """Write ``out/results.json``: the notebook's typed record (:class:`fmnist_utils.records.Record`),
        ``results`` (its findings: the fields of its body in :data:`fmnist_utils.records.BODIES`)
        in the envelope every notebook's results carry: the stem, the settings tree as
        ``profile``, ``parameters`` (the profile name, the run folder, the settings the notebook's
        overrides set, and ``parameters`` given here), the ``environment`` of ``device`` (None: the
        settings' device), ``data_verified``, ``data_fingerprint`` (of ``data``: a dataset with
        ``x_train``, ``y_train``, ``x_test``, ``y_test``, or a tuple of arrays; None when none is
        given), the ``code_hash``, ``figures`` and ``seconds`` since set-up.

        Prints the file it wrote and returns None, so that a cell ending with the call shows that
        line alone, without a ``PosixPath(...)`` repr under it.
        """
        from . import data as datasets

        if data is not None and hasattr(data, "x_train"):
            data = (data.x_train, data.y_train, data.x_test, data.y_test)
        envelope = records.Envelope(
            notebook=self.stem,
            profile=self.settings.to_dict(),
            parameters={"profile": self.settings.name, "run_dir": str(self.run), **self.overrides, **(parameters or {})},
            environment=provenance.environment(device or self.settings.device),
            data_verified=not datasets.verification_skipped(),
            data_fingerprint=provenance.fingerprint(*data) if data is not None else None,
            code_hash=provenance.code_hash(),
            figures=dict(self.figures),
            seconds=time.perf_counter() - self.started,
        )
        record = records.Record(envelope, records.body(self.stem, results)).to_dict()
        path = provenance.write_json(self.out / "results.json", record)
        print(f"wrote {path} after {record['seconds']:.1f} s")


def _show(fig) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # plain Python: nothing to show in
        return
    if get_ipython() is None:
        return
    display(fig)
    if getattr(fig.canvas, "manager", None) is not None:  # made by pyplot, which would show it again
        import matplotlib.pyplot as plt

        plt.close(fig)


def setup(stem: str, profile: str = "quick", run_dir: str | Path | None = None, budget: str | None = None,
          overrides: dict | None = None, settings: dict | None = None) -> Notebook:
    """Return the :class:`Notebook` of ``stem``, its output folder created, its settings printed.

    ``settings``: the whole tree as ``make report`` passes it (a dict, :meth:`Settings.to_dict`);
    None: resolved here (:func:`fmnist_utils.settings.resolve`) from ``profile`` (``auto``: full on
    a CUDA device fast enough, else quick), ``budget`` (``"30m"``, or a profile named
    ``budget-30m``: the sizes of :func:`fmnist_utils.budget.plan`) and ``overrides``
    (``{"train.epochs": 3}``), which apply to a passed tree too. The run folder is ``run_dir``
    (None: ``runs/<profile>``).
    """
    if settings is not None:
        tree = settings_tree.override(settings_tree.from_dict(settings), overrides)
    else:
        tree = settings_tree.resolve(profile, budget, run_dir, overrides)
    run = paths.run_folder(tree.name, run_dir)
    out = run / stem
    out.mkdir(parents=True, exist_ok=True)
    nb = Notebook(stem=stem, settings=tree, run=run, out=out, overrides=dict(overrides or {}))
    branch = settings_tree.BRANCHES.get(stem)
    print(f"profile {tree.name}, writing into {out}")
    print(settings_tree.describe(tree, branch) if branch else settings_tree.describe(tree))
    return nb


@contextlib.contextmanager
def kernel_config():
    """Yield the traitlets ``Config`` that papermill starts a notebook's kernel with.

    On POSIX the kernel talks over IPC (Unix sockets) instead of TCP on localhost: only this user
    can reach those sockets, and ipykernel then does not print "Kernel is running over TCP without
    encryption". The connection file and sockets live in a private temporary folder with a short
    path (a socket path must stay under about 100 characters, which a deep Jupyter runtime folder
    can exceed), removed afterwards. Elsewhere (Windows has no IPC transport) the defaults stand.
    """
    from traitlets.config import Config

    if os.name != "posix":
        yield Config()
        return
    folder = tempfile.mkdtemp(prefix="fmnist-kernel-")
    try:
        yield Config({"KernelManager": {"transport": "ipc", "connection_file": os.path.join(folder, "kernel.json")}})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


