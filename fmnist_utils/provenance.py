"""Where a result came from: versions, hardware, git revision, time. Saved beside every result."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from . import device as devices
from . import paths

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


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically: a kill never leaves half a file. Return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (a kill never leaves half a file); return the path."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path: str | Path):
    """Return the JSON content of ``path``."""
    return json.loads(Path(path).read_text())


def _jsonable(o):
    if isinstance(o, (Path, torch.device)):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")
