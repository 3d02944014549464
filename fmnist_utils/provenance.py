"""Where a result came from: versions, hardware, git revision, time. Saved beside every result."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from . import device as devices
from . import paths

# Modules that only run or assemble the report: editing them changes no result, so they are not in :func:`code_hash`.
REPORT_ONLY_MODULES = frozenset({"pipeline.py", "stamps.py", "execution.py", "run_folders.py", "report.py",
                                 "report_format.py", "report_pdf.py", "__main__.py"})

PACKAGES = ("fmnist_utils", "torch", "torchvision", "numpy", "optuna", "matplotlib", "seaborn", "papermill")


def git_revision() -> str | None:
    """Return the checkout's commit (with ``-dirty`` when it has local changes), or None."""
    try:
        root = paths.project_root()
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    """Return {package: version or None when not installed} for the packages results depend on."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(device: str | torch.device = "auto") -> dict:
    """Return a JSON-able record of the machine, device, precision, versions and git revision."""
    dev = devices.resolve_device(device)
    return {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": devices.describe(dev),
        "precision_auto": devices.resolve_precision("auto", dev),
        "precision_reason": devices.precision_reason(dev),
        "cpu_threads": torch.get_num_threads(),
        "git_revision": git_revision(),
        "packages": package_versions(),
    }


def digest(obj) -> str:
    """Return the SHA-256 (hex) of a JSON-able object, keys sorted: the same value, the same digest."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fingerprint(*arrays) -> str:
    """Return the SHA-256 (hex) of data: the dtype, shape and bytes of each array, in order.

    The kit's one data fingerprint (a split's images and labels, a subset's indices), taken from
    torch tensors or numpy arrays alike; stored in checkpoints, sweeps and caches so that work is
    never continued on other data. About 30 ms for the 60,000 training images.
    """
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        # A numpy array is read as the tensor sharing its memory: the same data, the same fingerprint.
        t = a.detach().cpu().contiguous() if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(memoryview(t.numpy()).cast("B"))
    return h.hexdigest()


def code_hash(package_dir: str | Path | None = None) -> str:
    """Return the kit's one code hash: the SHA-256 of the package's Python sources that notebooks
    run (``*.py`` in ``fmnist_utils``, without :data:`REPORT_ONLY_MODULES`)."""
    root = Path(package_dir) if package_dir is not None else Path(__file__).resolve().parent
    files = sorted(p for p in root.rglob("*.py") if p.name not in REPORT_ONLY_MODULES and "__pycache__" not in p.parts)
    return digest([[p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()] for p in files])


def file_record(path: str | Path, seen: dict | None = None, hasher=None) -> dict:
    """Return ``{"path", "size", "mtime_ns", "sha256"}`` of a file (sha256 None when there is no file).

    ``hasher(path) -> hex`` computes the sum (default: the SHA-256 of the bytes); ``seen``, an
    earlier record of the same file, supplies it when path, size and modification time are
    unchanged, so a repeated record costs a ``stat``.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        return {"path": str(path), "size": None, "mtime_ns": None, "sha256": None}
    info = path.stat()
    record = {"path": str(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    seen = seen or {}
    same = seen.get("sha256") and all(seen.get(k) == v for k, v in record.items())
    if same:
        return {**record, "sha256": seen["sha256"]}
    return {**record, "sha256": (hasher or _file_sha256)(path)}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: a kill never leaves half a file. Return the path.

    The text goes to ``<name>.tmp`` beside ``path`` and is renamed over it; when anything fails
    (a full disk, ``path`` being a folder, an interrupt) the temporary file is removed again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file: say which one (a full disk...)
            raise OSError(exc.errno, exc.strerror, str(tmp)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as strict, indented JSON atomically (a kill never leaves half a file); return the path.

    Strict: a NaN or infinity anywhere raises ValueError naming its key (``history[2].train_loss``)
    instead of writing the ``NaN`` token, which is not JSON. Where a value is missing, write None
    (see :func:`missing_as_none`); nothing is converted silently. Paths, devices, numpy and torch
    scalars and arrays are written as their plain values.
    """
    return write_text(path, json.dumps(_plain(obj, Path(path).name), indent=2, allow_nan=False) + "\n")


def missing_as_none(obj):
    """Return a copy of ``obj`` (dicts, lists, floats) with every NaN replaced by None.

    For records where NaN means "no value" (e.g. pandas' ``to_dict("records")`` of a column with
    gaps): call it explicitly there, so that a NaN anywhere else still stops :func:`write_json`.
    """
    if isinstance(obj, dict):
        return {k: missing_as_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [missing_as_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def read_json(path: str | Path):
    """Return the JSON content of ``path``."""
    return json.loads(Path(path).read_text())


def _plain(obj, where: str):
    """Return ``obj`` as plain JSON types; raise ValueError naming the key of a non-finite float."""
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(
                f"{where} is {obj}, which JSON cannot hold: a diverged or empty computation upstream? "
                "Write None where a value is missing (provenance.missing_as_none), or fix what produced it."
            )
        return obj
    if isinstance(obj, (Path, torch.device)):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return _plain(obj.tolist(), where)
    if hasattr(obj, "item"):
        return _plain(obj.item(), where)
    raise TypeError(f"{where}: cannot write {type(obj).__name__} as JSON")
