"""JupyterLab in a real browser: 02_train at smoke size shows a live bar, and text where it was once reopened.

Needs Playwright (``pip install -e ".[ui]"``) and a Chromium (Debian's ``/usr/bin/chromium``:
``apt-get install -y chromium``; Playwright's own build is not downloaded). Not part of the test
suite, which has no browser. Run it from the checkout::

    python benchmarks/lab_ui.py            # writes docs/lab_live_bar.png and docs/lab_reopened.png

It copies ``notebooks/02_train.ipynb`` into a temporary folder with its parameters set to the
smoke profile, the study's recipe (no sweep needed) and 2 epochs, starts ``jupyter lab`` there on
127.0.0.1 only (this checkout's package on ``PYTHONPATH``), runs every cell from the Run menu,
takes a screenshot while the widget bar is live, saves the notebook, stops the server, starts a
new one, reopens the notebook and takes a screenshot of the output where the bar was. It exits
non-zero when no live bar was seen, when the saved notebook holds a widget output, when the
reopened notebook shows "model not found" or a ``PosixPath(...)`` repr, or when the bar's text
line is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = {"profile": '"smoke"', "overrides": '{"train.source": "study", "train.epochs": 2}'}


def smoke_copy(folder: Path) -> Path:
    """Write ``02_train.ipynb`` into ``folder`` with :data:`PARAMETERS` set in its parameters cell
    (and ``run_dir`` inside ``folder``), outputs cleared; return its path."""
    nb = json.loads((ROOT / "notebooks" / "02_train.ipynb").read_text())
    values = {**PARAMETERS, "run_dir": json.dumps(str(folder / "run"))}
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            lines = "".join(cell["source"]).splitlines()
            for i, line in enumerate(lines):
                name = line.split("=", 1)[0].strip()
                if name in values:
                    lines[i] = f"{name} = {values[name]}" + ("  #" + line.split("#", 1)[1] if "#" in line else "")
            cell["source"] = "\n".join(lines)
    path = folder / "02_train.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    return path


def start_lab(folder: Path, port: int, log) -> subprocess.Popen:
    """Start ``jupyter lab`` on 127.0.0.1:``port`` serving ``folder``, without a token; return it
    once it answers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(folder / ".jupyter-config"),
           "JUPYTERLAB_WORKSPACES_DIR": str(folder / ".workspaces")}
    env.pop("FMNIST_PROGRESS", None)  # the kernel decides: the widget bar, as for anyone in JupyterLab
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", f"--port={port}",
         "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={folder}"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5):
                return server
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    server.terminate()
    raise RuntimeError("jupyter lab did not answer within 120 s")


def stop(server: subprocess.Popen) -> None:
    """Stop the server (and with it its kernels)."""
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def kernels_idle(port: int) -> bool:
    """Return whether the server has a kernel and every kernel is idle (its REST API says)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernels", timeout=10) as r:
            kernels = json.load(r)
    except urllib.error.HTTPError:  # a kernel still starting can make the listing fail (500)
        return False
    return bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)


def open_notebook(page, port: int, name: str) -> None:
    """Open ``name`` in JupyterLab and wait until its kernel is idle."""
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    news = page.locator(".jp-toast-button:has-text('No')")  # "get notified about Jupyter news?"
    try:
        news.first.click(timeout=5000)
    except Exception:  # not asked this time (playwright's TimeoutError)
        pass
    deadline = time.monotonic() + 120
    while not kernels_idle(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the kernel of {name} was not idle within 120 s")
        time.sleep(0.5)
    page.wait_for_timeout(1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium to drive")
    parser.add_argument("--port", type=int, default=8899)
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the two screenshots")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    folder = Path(tempfile.mkdtemp(prefix="fmnist-lab-ui-"))
    log = open(folder / "lab.log", "w")
    failures, finished, servers = [], False, []
    try:
        name = smoke_copy(folder).name
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            server = start_lab(folder, args.port, log)
            servers.append(server)
            open_notebook(page, args.port, name)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            bar = page.wait_for_selector(".widget-hprogress", timeout=300_000)
            bar.scroll_into_view_if_needed()
            output = page.locator(".jp-OutputArea-output:has(.widget-hprogress)").first
            deadline = time.monotonic() + 120  # a few steps in, so that the bar has moved
            while time.monotonic() < deadline and not re.search(r"\b[1-9]\d*/\d+", output.inner_text()):
                page.wait_for_timeout(200)
            page.screenshot(path=str(out / "lab_live_bar.png"))
            print(f"live bar: {out / 'lab_live_bar.png'}")
            page.wait_for_selector(".jp-OutputArea-output :text('results.json after')", timeout=600_000)
            page.keyboard.press("Control+s")
            page.wait_for_timeout(3000)
            stop(server)

            saved = json.loads((folder / name).read_text())
            outputs = [o for c in saved["cells"] for o in c.get("outputs", [])]
            widget_outputs = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
            if widget_outputs:
                failures.append(f"the saved notebook still holds {len(widget_outputs)} widget output(s)")

            server = start_lab(folder, args.port, log)
            servers.append(server)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            open_notebook(page, args.port, name)
            line = page.locator(".jp-OutputArea-output", has_text=re.compile(r"epoch 2/2: 100%")).first
            line.wait_for(timeout=60_000)
            line.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "lab_reopened.png"))
            print(f"reopened: {out / 'lab_reopened.png'}")
            body = page.locator("body").inner_text()
            if "model not found" in body:
                failures.append("the reopened notebook shows 'model not found'")
            if "PosixPath(" in body:
                failures.append("a PosixPath repr shows in the reopened notebook")
            stop(server)
            browser.close()
        finished = True
    finally:
        for server in servers:
            if server.poll() is None:
                stop(server)
        log.close()
        if failures or not finished:
            print(f"kept {folder} (lab.log: the server's log)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
