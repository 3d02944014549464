"""What every notebook does first and last, so a notebook holds only its parameters, calls and prose.

    nb = notebook.setup("02_train", profile, run_dir)   # profile, run folder, output folder
    nb.save_figure(plots.plot_learning_curves(history), "learning_curves")
    nb.write_results(results, parameters={...}, device=device)

:func:`setup` resolves the profile and the run folder and creates the notebook's output folder
``<run folder>/<stem>``; :meth:`Notebook.save_figure` writes a figure there as PNG for the report,
shows it once in the notebook and records it; :meth:`Notebook.write_results` writes
``results.json`` with what every notebook's results carry (stem, profile, the resolved
parameters, environment, figures, seconds). :data:`INSTALL_CELL` is the first code cell of
every notebook, the same in each (a test checks it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths, profiles, provenance

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
    """One notebook's run: its ``stem`` (``02_train``), resolved ``profile``, ``run`` folder and
    ``out`` folder (``run / stem``, created), the figures saved so far (``{name: file}``) and
    ``started`` (``time.perf_counter()`` at set-up, for the results' ``seconds``).
    """

    stem: str
    profile: profiles.Profile
    run: Path
    out: Path
    figures: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

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

    def write_results(self, results: dict, parameters: dict, device: str = "auto") -> None:
        """Write ``out/results.json``: ``results`` with ``notebook`` (the stem), ``profile`` (as
        a dict), ``parameters`` (the resolved record this run used, with the profile name and the
        run folder), ``environment`` (of ``device``), ``data_verified`` (False when the data was
        loaded without its SHA-256 check, ``FMNIST_DATA_UNVERIFIED``), ``figures`` and ``seconds``
        since set-up.

        Prints the file it wrote and returns None, so that a cell ending with the call shows that
        line alone, without a ``PosixPath(...)`` repr under it.
        """
        from . import data

        taken = {"notebook", "profile", "parameters", "environment", "data_verified", "figures", "seconds"} & set(results)
        if taken:
            raise ValueError(f"results must not set {sorted(taken)}: write_results adds them")
        record = {
            "notebook": self.stem,
            "profile": self.profile.to_dict(),
            "parameters": {"profile": self.profile.name, "run_dir": str(self.run), **parameters},
            "environment": provenance.environment(device),
            "data_verified": not data.verification_skipped(),
            **results,
            "figures": dict(self.figures),
            "seconds": time.perf_counter() - self.started,
        }
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


def setup(stem: str, profile: str = "auto", run_dir: str | Path | None = None, budget: str | None = None) -> Notebook:
    """Return the :class:`Notebook` of ``stem``: profile ``profile`` resolved (``auto``: full with
    CUDA, else quick), run folder ``run_dir`` (None: ``runs/<profile>``), output folder created.
    With a ``budget`` (``"30m"``), or a budgeted profile name (``budget-30m``), the sizes are
    :func:`fmnist_utils.budget.plan`'s, read from (or measured into) the run folder's budget.json.
    """
    from . import budget as budgets

    if budget is not None or budgets.is_budget_name(profile):
        plan = budgets.plan(budget if budget is not None else profile.removeprefix("budget-"), run_dir)
        name, prof = plan.profile.name, plan.profile
    else:
        name = profiles.resolve_name(profile)
        prof = profiles.get(name)
    run = paths.run_folder(name, run_dir)
    out = run / stem
    out.mkdir(parents=True, exist_ok=True)
    nb = Notebook(stem=stem, profile=prof, run=run, out=out)
    print(f"profile {name}, writing into {out}")
    return nb


def find_results(run: str | Path, name: str) -> dict:
    """Return the results of the notebook ``NN_<name>`` in the run folder ``run`` (for example the
    sweep's, ``name="sweep"``), whatever its number. Raises FileNotFoundError naming the notebook
    to run first when it has not written them.
    """
    found = sorted(Path(run).glob(f"[0-9][0-9]_{name}/results.json"))
    if len(found) > 1:
        raise ValueError(f"{run} holds results of several '{name}' notebooks: {[str(p) for p in found]}")
    if not found:
        raise FileNotFoundError(
            f"no results of the '{name}' notebook in {run}: run {_notebook_file(name)} with the same "
            "profile and run_dir first"
        )
    return provenance.read_json(found[0])


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


def _notebook_file(name: str) -> str:
    """Return the notebook that writes the results called ``name`` (``notebooks/01_sweep.ipynb``),
    or ``notebooks/NN_<name>.ipynb`` when no notebook of that name is in the kit's notebooks folder.
    """
    found = sorted((paths.project_root() / "notebooks").glob(f"[0-9][0-9]_{name}.ipynb"))
    return f"notebooks/{found[0].name}" if len(found) == 1 else f"notebooks/NN_{name}.ipynb"


def base_config(source: str, run: str | Path):
    """Return the :class:`~fmnist_utils.train.TrainConfig` a notebook starts from: a recipe of
    ``train.PRESETS`` (``study``: the study's) or ``sweep``, the configuration the sweep notebook
    chose, read from its results in the run folder ``run``.
    """
    from . import train

    if source == "sweep":
        try:
            chosen = find_results(run, "sweep")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; or start from the study's recipe instead (config_source='study')") from None
        return train.TrainConfig(**chosen["best_config"])
    if source not in train.PRESETS:
        raise ValueError(f"unknown configuration source {source!r}; choose 'sweep' or one of {sorted(train.PRESETS)}")
    return train.preset(source)
