"""Download, here, what a GPU machine without internet needs to run the kit: ``make wheelhouse PY=3.12``.

Writes into ``wheelhouse/`` (ignored by git):
  - wheels of the kit's runtime dependencies (``pyproject.toml``) and all of theirs, for one
    CPython version on manylinux x86_64, fetched with ``pip download --only-binary=:all:``
    (the closure then checked under the target's markers, which pip evaluates for itself);
    torch and torchvision are left out (the GPU machine's own CUDA builds must stay), and so are
    the packages in ``--skip`` (default :data:`DEFAULT_SKIP`: the scientific stack that every
    PyTorch GPU image carries, 85 MB of the 110 MB);
  - ``requirements.txt``: the requirements ``benchmarks/verify_gpu.py`` installs from here
    when the machine lacks them (``pip install --no-index --find-links wheelhouse``);
  - ``fashion-mnist/``: the four IDX files (gzip), so the machine needs no download;
  - ``manifest.json``: the Python version, platforms, what was skipped, every file and its size.

The kit itself needs no wheel: ``verify_gpu.py`` runs it from the checkout that travels with
it (``PYTHONPATH``), so the code that runs is the code in the tree.

Usage: ``python benchmarks/wheelhouse.py --python 3.12 [--glibc 2.35] [--skip NAME ...] [--dest wheelhouse]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries it
    from pip._vendor.packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# The GPU machine's own CUDA builds: a wheel from here would replace them with another build.
EXCLUDED = ("torch", "torchvision")
# Wheels never fetched even if a requirement pulled them in (torch's CUDA runtime and compiler).
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*)$")
# Every PyTorch GPU image we know (this workplace's, Colab, NGC) carries these, and they are
# 85 of the 110 MB; leaving them out keeps wheels + data under the device tool's 64 MiB carry.
DEFAULT_SKIP = ("numpy", "scipy", "pandas", "matplotlib", "pillow", "fonttools", "kiwisolver", "contourpy")
# Not a dependency of the package, but tqdm.auto inside a Jupyter kernel draws its bar with
# ipywidgets and raises without it whenever a bar is shown.
EXTRA = ("ipywidgets",)
CARRY_LIMIT_BYTES = 64 * 2**20  # the device tool's limit on what travels with the working tree
DATA_DIR = "fashion-mnist"


def normalize(name: str) -> str:
    """Return a distribution name in PEP 503 normal form (``Jinja2`` -> ``jinja2``, ``a_b`` -> ``a-b``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """Return the normalised distribution name of a PEP 508 requirement (``"pandas>=2.0"`` -> ``"pandas"``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from the requirement {requirement!r}")
    return normalize(match.group(1))


def wheel_name(filename: str) -> str:
    """Return the normalised distribution name of a wheel file (``jinja2-3.1.6-py3-none-any.whl`` -> ``jinja2``)."""
    if not filename.endswith(".whl") or filename.count("-") < 4:
        raise ValueError(f"{filename!r} is not a wheel file name (name-version-python-abi-platform.whl)")
    return normalize(filename.split("-", 1)[0])


def runtime_requirements(pyproject: Path = ROOT / "pyproject.toml", exclude=EXCLUDED, extra=EXTRA) -> list[str]:
    """Return the ``[project] dependencies`` and the ``pipeline`` extra's of ``pyproject`` (the
    report runs there) without ``exclude``, plus ``extra``."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: pip vendors the same parser
        from pip._vendor import tomli as tomllib
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    deps = project["dependencies"] + project.get("optional-dependencies", {}).get("pipeline", [])
    excluded = {normalize(n) for n in exclude}
    kept = [d for d in deps if requirement_name(d) not in excluded]
    return kept + [e for e in extra if requirement_name(e) not in {requirement_name(d) for d in kept}]


def platform_tags(glibc: str) -> list[str]:
    """Return pip ``--platform`` tags of the wheels that run on x86_64 Linux with glibc ``glibc`` ("2.35").

    pip matches ``--platform`` exactly, so every manylinux_2_N from 2_17 up to the machine's
    glibc is named, plus the legacy aliases of 2_17 and 2_5.
    """
    match = re.fullmatch(r"2\.(\d+)", glibc)
    if match is None or int(match.group(1)) < 17:
        raise ValueError(f"glibc={glibc!r}: give the GPU machine's glibc as 2.N with N >= 17 (`ldd --version`)")
    newest = int(match.group(1))
    return [f"manylinux_2_{n}_x86_64" for n in range(newest, 16, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]


def download_command(requirements: list[str], dest: Path, python: str, glibc: str) -> list[str]:
    """Return the ``pip download`` command fetching ``requirements`` and their dependencies as wheels."""
    if not re.fullmatch(r"3\.\d+", python):
        raise ValueError(f"python={python!r}: give the GPU machine's Python as 3.N, e.g. 3.12 (`python3 --version` there)")
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", python,
           "--implementation", "cp", "--dest", str(dest), "--progress-bar", "off", "--disable-pip-version-check"]
    for tag in platform_tags(glibc):
        cmd += ["--platform", tag]
    return cmd + list(requirements)


def target_environment(python: str) -> dict:
    """Return the PEP 508 marker environment of CPython ``python`` ("3.12") on x86_64 Linux.

    ``pip download --python-version`` chooses wheels for the target but evaluates dependency
    markers for the interpreter running pip (papermill needs aiohttp only where
    ``python_version == "3.12"``), so the closure is checked again with these values.
    """
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "implementation_version": f"{python}.0", "platform_python_implementation": "CPython",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}


def wheel_requirements(wheel: Path) -> list[str]:
    """Return the ``Requires-Dist`` lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]  # the headers end at the first blank line; the description follows
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def unmet_requirements(folder: Path, requirements: list[str], environment: dict, leave_out=()) -> list[str]:
    """Return the requirements of the closure of ``requirements`` (markers evaluated in
    ``environment``, extras followed) that no wheel in ``folder`` provides, ``leave_out`` and
    :data:`NEVER` aside. Versions are not checked: pip resolved them; only presence is.
    """
    wheels = {wheel_name(w.name): w for w in folder.glob("*.whl")}
    ignored = {normalize(n) for n in leave_out}
    queue, seen, unmet = [Requirement(r) for r in requirements], set(), []

    def applies(req, extras) -> bool:
        return req.marker is None or any(req.marker.evaluate({**environment, "extra": e}) for e in ("", *extras))

    while queue:
        req = queue.pop()
        name = normalize(req.name)
        if name in ignored or NEVER.match(name) or (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in wheels:
            unmet.append(f"{req.name}{req.specifier}")
            continue
        for line in wheel_requirements(wheels[name]):
            dep = Requirement(line)
            if applies(dep, req.extras):
                queue.append(dep)
    return sorted(set(unmet))


def prune(folder: Path, skip) -> list[str]:
    """Delete from ``folder`` the wheels of ``skip`` and of :data:`NEVER`; return the deleted file names."""
    skipped = {normalize(s) for s in skip}
    removed = []
    for wheel in sorted(folder.glob("*.whl")):
        name = wheel_name(wheel.name)
        if name in skipped or NEVER.match(name):
            wheel.unlink()
            removed.append(wheel.name)
    return removed


def copy_data(dest: Path) -> list[Path]:
    """Copy the four Fashion-MNIST IDX files found on this machine into ``dest``, gzip-compressed."""
    sys.path.insert(0, str(ROOT))
    try:
        from fmnist_utils import data
    except ImportError as exc:  # this Python lacks the kit's dependencies (numpy, torch)
        raise SystemExit(f"error: finding Fashion-MNIST needs the kit's environment ({exc}): run `make venv` "
                         "first, or leave the data out with --no-data") from None
    files = data.locate()
    if files is None:
        raise data.DataError("Fashion-MNIST is not on this machine: run `make data` first, then `make wheelhouse` again")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files.values():
        target = dest / (path.name if path.suffix == ".gz" else path.name + ".gz")
        if path.suffix == ".gz":
            shutil.copyfile(path, target)
        else:
            with open(path, "rb") as raw, gzip.open(target, "wb") as packed:
                shutil.copyfileobj(raw, packed)
        out.append(target)
    return out


def folder_bytes(folder: Path) -> int:
    """Return the total size in bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="the GPU machine's Python, 3.N (this workplace's: 3.12)")
    parser.add_argument("--glibc", default="2.35", help="the GPU machine's glibc, 2.N (`ldd --version`; Ubuntu 22.04: 2.35)")
    parser.add_argument("--skip", nargs="*", default=list(DEFAULT_SKIP),
                        help="packages left out because the machine has them (default: the scientific stack; "
                             "give --skip with no names for a complete wheelhouse)")
    parser.add_argument("--dest", default=str(ROOT / "wheelhouse"), help="folder to fill (emptied of wheels first)")
    parser.add_argument("--no-data", action="store_true", help="do not copy Fashion-MNIST into the folder")
    args = parser.parse_args(argv)

    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):  # two versions of one package would stop the install there
        old.unlink()
    requirements = runtime_requirements()
    cmd = download_command(requirements, dest, args.python, args.glibc)
    print(f"downloading wheels for CPython {args.python}, manylinux x86_64 (glibc <= {args.glibc}), into {dest}", flush=True)
    environment = target_environment(args.python)
    for _ in range(5):  # each round fetches what markers for the target add; one or two suffice
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-3000:] + done.stderr[-3000:], file=sys.stderr)
            print(f"error: pip download failed (exit {done.returncode}); the command was:\n  {' '.join(cmd)}", file=sys.stderr)
            return 1
        unmet = unmet_requirements(dest, requirements, environment, leave_out=args.skip)
        if not unmet:
            break
        print(f"  also needed by CPython {args.python}: {', '.join(unmet)}", flush=True)
        cmd = download_command(unmet, dest, args.python, args.glibc)
    else:
        print(f"error: still missing after five rounds: {', '.join(unmet)}", file=sys.stderr)
        return 1
    removed = prune(dest, args.skip)
    data_files = [] if args.no_data else copy_data(dest / DATA_DIR)
    (dest / "requirements.txt").write_text(
        "# what benchmarks/verify_gpu.py installs from this folder when missing (written by benchmarks/wheelhouse.py)\n"
        + "\n".join(requirements) + "\n")
    wheels = sorted(dest.glob("*.whl"))
    manifest = {
        "python": args.python, "glibc": args.glibc, "platforms": platform_tags(args.glibc),
        "requirements": requirements, "excluded": list(EXCLUDED), "skipped": sorted(args.skip),
        "wheels": {w.name: w.stat().st_size for w in wheels},
        "data": {p.name: p.stat().st_size for p in data_files},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = folder_bytes(dest)
    wheel_bytes = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels ({wheel_bytes / 2**20:.1f} MiB), data {sum(manifest['data'].values()) / 2**20:.1f} MiB: "
          f"{total / 2**20:.1f} MiB in {dest}; left out: {', '.join(sorted(args.skip)) or 'nothing'}"
          + (f" (removed {len(removed)} wheels)" if removed else ""))
    if total > CARRY_LIMIT_BYTES * 0.95:
        print(f"warning: {total / 2**20:.1f} MiB is at or over the device tool's 64 MiB carry (the checkout counts too); "
              "leave out more with --skip, or the data with --no-data", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
