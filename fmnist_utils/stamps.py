"""Whether a notebook's last run can be reused: the notebooks, what each reads, its key and its stamp.

The notebooks are ``notebooks/NN_name.ipynb`` (:func:`discover`); each declares in its metadata the
inputs it reads (:func:`declared_inputs`: the data, the ResNet-18 weights) and the earlier notebooks
whose results it reads (:func:`declared_reads`), the edges of the run's graph (:func:`read_graph`).
Each gets a stamp, ``<run folder>/notebooks/<stem>.stamp.json``, holding a key (:func:`notebook_key`):
a hash of the notebook's source cells (:func:`source_digest`), the injected parameters, the package's
code (:func:`package_digest`, the kit's one code hash), the inputs it reads (:func:`snapshot_inputs`:
the data's location and content, the ResNet-18 weights file's hash or its absence, the environment
variables that choose them) and the keys of the notebooks it reads. :func:`why_rerun` says in words
why a notebook must run again, or that its last run can be reused.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Callable

from . import paths, provenance
from . import settings as settings_tree

NOTEBOOK_PATTERN = "[0-9][0-9]_*.ipynb"
# Modules that only run or assemble the report: editing them must not re-execute the notebooks.
REPORT_ONLY_MODULES = provenance.REPORT_ONLY_MODULES


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
