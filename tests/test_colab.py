"""The Colab launcher (notebooks/colab.ipynb): one address for its badges, an install that leaves
Colab's kernel packages alone, and the launcher run end to end in a venv pinned to Colab's versions."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fmnist_utils import colab

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / colab.LAUNCHER
COLAB_PINS = ROOT / "constraints" / "colab.txt"

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries it
    from pip._vendor.packaging.requirements import Requirement


def _pins() -> dict[str, str]:
    """Return ``{normalised name: version}`` of constraints/colab.txt."""
    pins = {}
    for line in COLAB_PINS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _launcher_cells() -> list:
    return nbformat.read(LAUNCHER, as_version=4).cells


# --------------------------------------------------------------------------------------------
# One address


def test_badges_and_the_clone_address_come_from_pyprojects_repository_url():
    url = colab.repository_url(ROOT)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert url == project["urls"]["Repository"] and url.startswith("https://github.com/")
    assert colab.colab_url(url) == ("https://colab.research.google.com/github/"
                                    + url.removeprefix("https://github.com/") + "/blob/main/notebooks/colab.ipynb")
    assert colab.badge(url) in (ROOT / "README.md").read_text()
    cells = _launcher_cells()
    assert cells[0].cell_type == "markdown" and colab.badge(url) in cells[0].source
    parameters = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    assert f'repo_url = "{url}"' in parameters.source
    text = LAUNCHER.read_text() + (ROOT / "README.md").read_text()
    assert "<this repository" not in text and "<the kit's repository" not in text


def test_colab_url_refuses_an_address_colab_cannot_open():
    assert colab.colab_url("https://github.com/a/b.git").endswith("/github/a/b/blob/main/notebooks/colab.ipynb")
    with pytest.raises(ValueError, match="not a GitHub repository address"):
        colab.colab_url("https://gitlab.com/a/b")


def test_write_badges_rewrites_every_copy_from_the_one_setting(tmp_path):
    (tmp_path / "notebooks").mkdir()
    shutil.copy(LAUNCHER, tmp_path / colab.LAUNCHER)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    old = colab.repository_url(ROOT)
    pyproject = (ROOT / "pyproject.toml").read_text().replace(old, "https://github.com/someone/fork")
    (tmp_path / "pyproject.toml").write_text(pyproject)
    assert set(colab.write_badges(tmp_path)) == {tmp_path / "README.md", tmp_path / colab.LAUNCHER}
    new = colab.badge("https://github.com/someone/fork")
    assert new in (tmp_path / "README.md").read_text() and old not in (tmp_path / "README.md").read_text()
    nb = nbformat.read(tmp_path / colab.LAUNCHER, as_version=4)
    nbformat.validate(nb)
    assert new in nb.cells[0].source and 'repo_url = "https://github.com/someone/fork"' in nb.cells[1].source
    assert colab.write_badges(tmp_path) == []  # already in agreement: nothing rewritten


# --------------------------------------------------------------------------------------------
# The install leaves the kernel alone


def test_core_dependencies_hold_no_kernel_package_and_the_pipeline_extra_accepts_colabs_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_normal(Requirement(r).name) for r in project["dependencies"]}
    kernel = {"ipykernel", "jupyter-client", "tornado", "ipywidgets", "papermill", "nbconvert", "notebook", "ipython"}
    assert not core & kernel
    pins = _pins()
    pipeline = [Requirement(r) for r in project["optional-dependencies"]["pipeline"]]
    assert {"papermill", "nbconvert", "ipykernel", "ipywidgets"} <= {_normal(r.name) for r in pipeline}
    for requirement in [Requirement(r) for r in project["dependencies"]] + pipeline:
        pinned = pins.get(_normal(requirement.name))
        if pinned is not None:  # Colab ships it: its version must do, so pip keeps it
            assert requirement.specifier.contains(pinned.split("+")[0], prereleases=True), (requirement, pinned)
    for name in ("ipykernel", "jupyter-client", "tornado", "ipywidgets", "notebook", "traitlets", "pyzmq"):
        assert name in pins, f"constraints/colab.txt lacks Colab's {name}"


def test_install_holds_every_kept_package_at_its_version(tmp_path):
    versions = colab.installed_versions()
    assert versions["torch"] and versions["ipykernel"]  # this environment has both
    text = colab.constraints({"tornado": "6.5.7", "ipykernel": "6.17.1"})
    assert text == "ipykernel==6.17.1\ntornado==6.5.7\n"
    command = colab.install_command(tmp_path / "kit", tmp_path / "c.txt", python="/py")
    assert command[:4] == ["/py", "-m", "pip", "install"]
    assert command[command.index("--constraint") + 1] == str(tmp_path / "c.txt")
    assert command[-2:] == ["--editable", f"{tmp_path / 'kit'}[pipeline]"]


def test_report_command_runs_a_budget_or_else_a_profile():
    assert colab.report_command("smoke", None, python="/py") == ["/py", "-m", "fmnist_utils", "report", "--profile", "smoke"]
    assert colab.report_command("quick", None, pdf=False, python="/py")[-1] == "--no-pdf"
    # A budget sizes the whole run: no profile beside it (the CLI refuses the two together).
    assert colab.report_command("auto", "60m", python="/py") == ["/py", "-m", "fmnist_utils", "report", "--budget", "60m"]


def test_output_folders_are_in_the_clone_or_a_resumable_folder(tmp_path, monkeypatch):
    assert colab.output_folders(None, tmp_path) == {"runs": tmp_path / "runs", "report": tmp_path / "report"}
    monkeypatch.chdir(tmp_path)
    assert colab.output_folders("drive/kit", tmp_path / "clone")["runs"] == tmp_path / "drive" / "kit" / "runs"


def test_report_frame_keeps_the_pages_styles_inside_an_iframe():
    from html.parser import HTMLParser

    page = '<html><style>body {color: red}</style><p class="a">x & y "quoted"</p></html>'
    found = []

    class Frames(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Frames().feed(colab.report_frame(page, height_px=500))
    assert [tag for tag, _ in found] == ["iframe"]  # nothing of the page outside the frame
    assert found[0][1]["srcdoc"] == page and "height: 500px" in found[0][1]["style"]


def test_launcher_declares_its_parameters_and_never_defaults_to_an_empty_string():
    import papermill

    defaults = {n: p["default"] for n, p in papermill.inspect_notebook(str(LAUNCHER)).items()}
    assert set(defaults) == {"repo_url", "branch", "kit_dir", "profile", "budget", "drive_folder", "pdf"}
    assert defaults["drive_folder"] == "None" and defaults["budget"] == '"60m"'
    assert not [n for n, v in defaults.items() if v in ('""', "''")]


# --------------------------------------------------------------------------------------------
# End to end, in a kernel pinned to Colab's versions


def _copy_kit(dest: Path) -> Path:
    """Copy the working tree (what a clone would hold, uncommitted changes included) to ``dest``."""
    ignored = shutil.ignore_patterns(".git", ".venv", "runs", "report", "data", "wheelhouse", "__pycache__",
                                     "*.egg-info", ".pytest_cache")
    shutil.copytree(ROOT, dest, ignore=ignored)
    return dest


def _pip_versions(python: Path) -> dict[str, str]:
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True).stdout
    return {_normal(p["name"]): p["version"] for p in json.loads(listed)}


def _link_stand_in(names: tuple[str, ...], leave: set[str], into: Path) -> set[str]:
    """Link the distributions ``names`` of this environment, and every distribution they require
    here (markers and extras evaluated) but those named in ``leave``, into the folder ``into``
    (put on the venv's path by a .pth file); return their normalised names.

    Colab's torch is preinstalled with its CUDA libraries, which pip then counts as installed.
    Linked, this environment's build is the same to pip and to Python, without copying the
    several GB of CUDA libraries its requirements name (two thirds of this test's time when
    pip installed them) that a CPU never loads.
    """
    from importlib import metadata

    linked, todo = set(), [(n, frozenset()) for n in names]
    while todo:
        name, extras = todo.pop()
        if _normal(name) in leave:
            continue
        dist = metadata.distribution(name)  # PackageNotFoundError: this environment lacks a requirement
        for requirement in dist.requires or []:
            r = Requirement(requirement)
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append((r.name, frozenset(r.extras)))
        if _normal(name) in linked:
            continue
        linked.add(_normal(name))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:  # ..: scripts in bin/
            if not (into / top).exists():
                (into / top).symlink_to(dist.locate_file(top))
    return linked


def _cell_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") if out.output_type == "stream" else json.dumps(out.get("data", {})))
            if out.output_type == "error":
                parts.append("\n".join(out.traceback))
    return "\n".join(parts)


@pytest.mark.slow
def test_launcher_runs_end_to_end_in_a_fresh_venv_pinned_to_colab(tmp_path, monkeypatch):
    import papermill
    import torch
    import torchvision

    # A Colab-like Python: its kernel and scientific packages at Colab's versions. Colab's torch
    # is a build that is not on PyPI: this environment's stands in for it, linked with what it
    # requires (_link_stand_in), as Colab's comes preinstalled.
    venv = tmp_path / "colab-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    stand_in = tmp_path / "stand-in"
    stand_in.mkdir()
    colab_pinned = set(_pins()) - {"torch", "torchvision"}  # what pip installs at Colab's versions
    assert {"torch", "torchvision"} <= _link_stand_in(
        ("torch", "torchvision"), colab_pinned | set(_pip_versions(python)), stand_in)
    (Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         capture_output=True, text=True, check=True).stdout.strip()) / "stand-in.pth").write_text(f"{stand_in}\n")
    pins = tmp_path / "pins.txt"
    pins.write_text("".join(f"{n}=={v}\n" for n, v in _pins().items() if n not in ("torch", "torchvision")))
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(pins),
                    f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"],
                   check=True)
    before = _pip_versions(python)
    # Its kernel, started by papermill from here, as Colab starts its own.
    spec = tmp_path / "jupyter" / "kernels" / "colab-pinned"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Colab-pinned", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in ("PYTHONPATH", "FMNIST_RUNS", "FMNIST_REPORT", "FMNIST_ROOT", "FMNIST_PROGRESS"):
        monkeypatch.delenv(name, raising=False)  # the clone is the kit there, not this checkout

    kit = _copy_kit(tmp_path / "work" / "fmnist-kit")
    drive = tmp_path / "drive"
    parameters = {"kit_dir": str(kit), "profile": "smoke", "budget": None,
                  "drive_folder": str(drive)}
    out = tmp_path / "launcher.ipynb"
    papermill.execute_notebook(str(LAUNCHER), str(out), parameters=parameters, kernel_name="colab-pinned",
                               cwd=str(tmp_path / "work"), progress_bar=False)
    text = _cell_text(nbformat.read(out, as_version=4))

    # Installed without a conflict, and without moving any package Colab had.
    assert "dependency resolver" not in text and "restart" not in text.lower(), text
    checked = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout
    after = _pip_versions(python)
    assert {n: after.get(n) for n in before} == before
    assert "papermill" in after and after["fmnist-utils"] == "0.1.0"
    # One process ran every notebook into the Drive folder, printing each epoch, and the report is shown.
    for stem in ("01_sweep", "02_train", "03_resnet_compare", "04_improvements"):
        assert (drive / "runs" / "smoke" / stem / "results.json").is_file(), stem
        assert f"{stem} | epoch" in text or stem == "03_resnet_compare", stem
    assert (drive / "report" / "report.html").is_file()
    assert "without encryption" not in text  # the report's kernels talk over IPC
    assert "Debugger warning" not in text and "$ python -m fmnist_utils report --profile smoke" in text
    for executed in (drive / "runs" / "smoke" / "notebooks").glob("*.ipynb"):
        assert "PosixPath(" not in executed.read_text(), executed.name  # no repr under the figures
    assert "iframe srcdoc" in text
    if shutil.which("chromium"):
        assert (drive / "report" / "report.pdf").read_bytes().startswith(b"%PDF")

    # A disconnected session runs the launcher again: it reuses the clone and every finished notebook.
    again = tmp_path / "again.ipynb"
    papermill.execute_notebook(str(LAUNCHER), str(again), parameters=parameters, kernel_name="colab-pinned",
                               cwd=str(tmp_path / "work"), progress_bar=False)
    text = _cell_text(nbformat.read(again, as_version=4))
    assert "not cloning again" in text and "(0 notebook(s) executed, 4 reused)" in text, text
