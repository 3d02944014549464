"""The Colab launcher's steps (``notebooks/colab.ipynb``) and the "Open in Colab" badges.

The launcher clones the kit, installs it without touching the kernel's packages, runs the whole
report in one process and shows it. Its steps live here so that they are tested outside Colab
(``tests/test_colab.py`` runs the launcher in a fresh venv pinned to ``constraints/colab.txt``).
This module imports only the standard library: the launcher imports it from the fresh clone
before the kit's dependencies are installed.

The repository's address is written in one place, ``[project.urls] Repository`` in
``pyproject.toml``. ``python -m fmnist_utils.colab --write`` writes the badges (README.md and the
launcher's first cell) and the launcher's clone address from it; a test checks that they agree.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

LAUNCHER = "notebooks/colab.ipynb"
BRANCH = "main"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
# The packages of the running kernel that an install must leave as they are: Colab pins them and
# warns that upgrading them can crash the runtime. torch and torchvision are Colab's CUDA builds.
KEEP = ("ipykernel", "ipython", "ipywidgets", "jupyter_client", "jupyter_core", "jupyter_server", "tornado",
        "traitlets", "pyzmq", "notebook", "widgetsnbextension", "jupyterlab_widgets", "nbformat", "nbconvert",
        "nbclient", "torch", "torchvision", "numpy")
# Where the launcher's clone address is written in its parameters cell (rewritten by --write).
_REPO_LINE = re.compile(r'^repo_url = "[^"]*"', re.M)
_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")


# --------------------------------------------------------------------------------------------
# The repository's address and the badge


def repository_url(root: str | Path | None = None) -> str:
    """Return the repository's address: ``[project.urls] Repository`` of ``root/pyproject.toml``
    (``root``: the checkout holding this package), else of the installed package's metadata.
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10: pip vendors the same parser
            from pip._vendor import tomli as tomllib
        urls = tomllib.loads(pyproject.read_text()).get("project", {}).get("urls", {})
        if urls.get("Repository"):
            return urls["Repository"]
        raise ValueError(f"{pyproject} has no [project.urls] Repository = \"https://github.com/<owner>/<name>\"")
    from importlib import metadata

    for entry in metadata.metadata("fmnist_utils").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip() == "Repository":
            return url.strip()
    raise ValueError("the installed fmnist_utils has no Repository URL in its metadata; reinstall it from a checkout")


def colab_url(repo_url: str, notebook: str = LAUNCHER, branch: str = BRANCH) -> str:
    """Return the address that opens ``notebook`` of the GitHub repository ``repo_url`` in Colab."""
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url)
    if match is None:
        raise ValueError(f"{repo_url!r} is not a GitHub repository address (https://github.com/<owner>/<name>): "
                         "Colab opens notebooks from GitHub only")
    owner, name = match.groups()
    return f"https://colab.research.google.com/github/{owner}/{name}/blob/{branch}/{notebook}"


def badge(repo_url: str) -> str:
    """Return the Markdown of the "Open in Colab" badge that opens the launcher of ``repo_url``."""
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(repo_url)})"


def write_badges(root: str | Path) -> list[Path]:
    """Rewrite, from :func:`repository_url`, the badge in ``README.md`` and in the launcher's first
    cell and the launcher's ``repo_url``; return the files that changed."""
    root = Path(root)
    url = repository_url(root)
    changed = []
    readme = root / "README.md"
    text = readme.read_text()
    new = _BADGE.sub(badge(url).replace("\\", "\\\\"), text)
    if _BADGE.search(text) is None:
        raise ValueError(f"{readme} has no Open In Colab badge to rewrite; add one: {badge(url)}")
    if new != text:
        readme.write_text(new)
        changed.append(readme)
    launcher = root / LAUNCHER
    nb = json.loads(launcher.read_text())
    before = json.dumps(nb)
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        source = _BADGE.sub(badge(url).replace("\\", "\\\\"), source)
        source = _REPO_LINE.sub(f'repo_url = "{url}"', source)
        cell["source"] = source.splitlines(keepends=True)
    if json.dumps(nb) != before:
        launcher.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n")  # nbformat's layout
        changed.append(launcher)
    return changed


# --------------------------------------------------------------------------------------------
# Step 2: install


def installed_versions(names=KEEP) -> dict[str, str]:
    """Return ``{name: version}`` of those of ``names`` installed in this Python."""
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def constraints(versions: dict[str, str]) -> str:
    """Return a pip constraints file (text) holding each package of ``versions`` at its version."""
    return "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))


def install_command(kit: str | Path, constraints_file: str | Path, python: str = sys.executable) -> list[str]:
    """Return the pip command installing the kit in ``kit`` with its ``pipeline`` extra, editable
    (the report finds the notebooks beside the package), every package of ``constraints_file``
    held at its version."""
    return [python, "-m", "pip", "install", "--quiet", "--constraint", str(constraints_file), "--editable",
            f"{Path(kit)}[pipeline]"]


def install(kit: str | Path, python: str = sys.executable) -> dict[str, str]:
    """Install the kit in ``kit`` without changing any package of :data:`KEEP` that this Python has;
    return those packages' versions. Raises RuntimeError naming any that changed anyway."""
    kit = Path(kit)
    before = installed_versions()
    pinned = kit / ".colab-constraints.txt"
    pinned.write_text(constraints(before))
    try:
        subprocess.run(install_command(kit, pinned, python), check=True)
    finally:
        pinned.unlink(missing_ok=True)
    after = installed_versions()
    changed = {n: (before.get(n), after.get(n)) for n in before if after.get(n) != before[n]}
    if changed:
        raise RuntimeError(f"installing the kit changed the kernel's packages {changed}: restart the runtime")
    print("installed the kit; the kernel's packages are unchanged: "
          + ", ".join(f"{n} {v}" for n, v in sorted(before.items())), flush=True)
    return after


# --------------------------------------------------------------------------------------------
# Step 3: run the report


def output_folders(drive_folder: str | None, kit: str | Path) -> dict[str, Path]:
    """Return ``{"runs": ..., "report": ...}``: inside the clone ``kit``, or under ``drive_folder``
    on Google Drive (mounted at /content/drive; outside Colab, a local folder) so that a session
    that disconnects resumes from what the last one finished."""
    if drive_folder is None:
        base = Path(kit)
        return {"runs": base / "runs", "report": base / "report"}
    folder = Path(drive_folder)
    if not folder.is_absolute():
        try:
            from google.colab import drive  # only on Colab
        except ImportError:
            folder = folder.resolve()
        else:
            drive.mount("/content/drive")
            folder = Path("/content/drive/MyDrive") / folder
    return {"runs": folder / "runs", "report": folder / "report"}


def report_command(profile: str, budget: str | None, pdf: bool = True, python: str = sys.executable) -> list[str]:
    """Return the command that runs every notebook and builds the report in one process: sized to
    ``budget`` (``"60m"``, see :mod:`fmnist_utils.budget`) where given, else the fixed ``profile``."""
    command = [python, "-m", "fmnist_utils", "report"]
    command += ["--budget", budget] if budget is not None else ["--profile", profile]
    return command + ([] if pdf else ["--no-pdf"])


def ensure_chromium() -> str | None:
    """Return a Chromium to print the PDF with: the one the kit finds, else (where pip can fetch
    it, as on Colab, whose Ubuntu has only a snap stub) Playwright's build; None when neither."""
    from . import report

    found = report.find_chromium()
    if found is not None:
        return found
    print("no Chromium here: installing Playwright's Chromium to print the PDF", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "playwright"], check=True)
        subprocess.run([sys.executable, "-m", "playwright", "install", "--with-deps", "chromium"], check=True)
        done = subprocess.run([sys.executable, "-c", "from playwright.sync_api import sync_playwright as p; "
                               "s = p().start(); print(s.chromium.executable_path); s.stop()"],
                              check=True, capture_output=True, text=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"could not install Chromium ({exc}): the report will be HTML only", flush=True)
        return None
    return done.stdout.strip().splitlines()[-1]


def run_report(kit: str | Path, profile: str, budget: str | None, folders: dict[str, Path],
               chromium: str | None = None, pdf: bool = True) -> int:
    """Fetch the data, then run ``python -m fmnist_utils report`` in ``kit``, printing its lines
    as they come (one per training epoch); return its exit status (0 done, 3 HTML but no PDF).
    Raises RuntimeError with the status and its meaning for any other."""
    # PYDEVD_DISABLE_FILE_VALIDATION: the debugger bundled with Colab's ipykernel 6 prints four lines
    # about frozen modules at every kernel start; they concern breakpoints, which a report run sets none of.
    env = {**os.environ, "FMNIST_RUNS": str(folders["runs"]), "FMNIST_REPORT": str(folders["report"]),
           "PYTHONUNBUFFERED": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    if chromium:
        env["FMNIST_CHROMIUM"] = chromium
    steps = [[sys.executable, "-m", "fmnist_utils", "data"], report_command(profile, budget, pdf)]
    for command in steps:
        print("$ python " + " ".join(command[1:]), flush=True)
        with subprocess.Popen(command, cwd=kit, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as process:
            for line in process.stdout:
                print(line, end="", flush=True)
        if process.returncode not in (0, 3):
            raise RuntimeError(f"`{' '.join(command[1:])}` ended with exit status {process.returncode} "
                               "(see README.md, Reliability); run this cell again to resume where it stopped")
    return process.returncode


# --------------------------------------------------------------------------------------------
# Step 4: show it


def report_frame(page: str, height_px: int = 900) -> str:
    """Return HTML showing the report page ``page`` (a whole HTML document) in an iframe, so that
    its styles stay inside the frame and do not restyle the notebook."""
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" '
            f'style="width: 100%; height: {height_px}px; border: 1px solid #ccc"></iframe>')


def show_report(report_folder: str | Path) -> None:
    """Show ``report.html`` of ``report_folder`` in the cell and offer ``report.pdf`` for download."""
    from IPython.display import HTML, FileLink, display

    folder = Path(report_folder)
    display(HTML(report_frame((folder / "report.html").read_text())))
    pdf = folder / "report.pdf"
    if not pdf.is_file():
        print(f"no PDF: the HTML is {folder / 'report.html'}")
        return
    try:
        from google.colab import files  # only on Colab
    except ImportError:
        display(FileLink(str(pdf), result_html_prefix="PDF: "))
    else:
        files.download(str(pdf))


def main(argv: list[str] | None = None) -> int:
    """``python -m fmnist_utils.colab --write``: rewrite the badges and the clone address from pyproject.toml."""
    parser = argparse.ArgumentParser(prog="python -m fmnist_utils.colab", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite README.md's badge and notebooks/colab.ipynb")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    if args.write:
        for path in write_badges(root):
            print(f"rewrote {path}")
    print(badge(repository_url(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
