"""The report's PDF: the HTML page printed by headless Chromium (:func:`write_pdf`), with bookmarks
from the headings, page numbers and links relative to the report folder (:func:`relative_links`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from . import settings

CHROMIUM_ENV = "FMNIST_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class PdfUnavailable(RuntimeError):
    """The HTML report was written but could not be printed to PDF."""


# --------------------------------------------------------------------------------------------
# PDF


def find_chromium() -> str | None:
    """Return the Chromium/Chrome executable to print with (``FMNIST_CHROMIUM`` first), or None."""
    explicit = settings.env(CHROMIUM_ENV)
    if explicit:
        return explicit if Path(explicit).is_file() and os.access(explicit, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def install_chromium(log: Callable[[str], None] = print) -> bool:
    """Try ``apt-get install chromium`` (only as root with apt-get); return True when it worked."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    log("Chromium is missing; installing Debian's chromium package to print the PDF (apt-get install -y chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            log(f"{' '.join(cmd)} failed: {exc}")
            return False
        if done.returncode != 0:
            log(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
            return False
    return find_chromium() is not None


def _missing_message(html: Path) -> str:
    tried = f"${CHROMIUM_ENV} ({settings.env(CHROMIUM_ENV)})" if settings.env(CHROMIUM_ENV) else ", ".join(CHROMIUM_NAMES)
    return (
        f"report.pdf was NOT written: the PDF is printed by headless Chromium, and none was found "
        f"(looked for {tried}).\n"
        "  Install it, then run the same command again (the notebooks are reused, only the report is rebuilt):\n"
        "    Debian/Ubuntu:  sudo apt-get install chromium      (Ubuntu without snap: any Chrome/Chromium)\n"
        "    macOS:          brew install --cask chromium\n"
        f"    or point {CHROMIUM_ENV}=/path/to/chrome at an installed Chrome or Chromium.\n"
        f"  The HTML report is complete: {html}"
    )


def write_pdf(html: str | Path, pdf: str | Path, install: bool = True, timeout: float = 180,
              log: Callable[[str], None] = print, author: str | None = None) -> Path:
    """Print ``html`` to ``pdf`` with headless Chromium (installed with apt-get when missing,
    root and ``install`` allowing); return the PDF path. Raises :class:`PdfUnavailable`.

    The PDF has bookmarks from the headings (Chromium's document outline), page numbers (the
    page's ``@page`` margin boxes), links relative to its folder (:func:`relative_links`) and
    ``author`` in its document information.
    """
    html, pdf = Path(html).resolve(), Path(pdf)
    chromium = find_chromium()
    if chromium is None and install and not settings.env(CHROMIUM_ENV):
        install_chromium(log)
        chromium = find_chromium()
    if chromium is None:
        raise PdfUnavailable(_missing_message(html))
    tmp = pdf.with_name(pdf.name + ".tmp.pdf")
    try:  # whatever stops the print (a timeout, Ctrl-C, a full disk), no half PDF is left behind
        with tempfile.TemporaryDirectory(prefix="fmnist-chromium-") as profile_dir:
            cmd = [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--no-pdf-header-footer", "--print-to-pdf-no-header",  # the flag's newer and older names
                "--generate-pdf-document-outline",  # bookmarks from the headings (h1-h3)
                f"--user-data-dir={profile_dir}",  # a private profile: no lock clash with a running browser
                f"--print-to-pdf={tmp}", html.as_uri(),
            ]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.SubprocessError) as exc:
                raise PdfUnavailable(f"report.pdf was NOT written: {chromium} could not print it ({exc}).\n"
                                     f"  The HTML report is complete: {html}") from exc
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            raise PdfUnavailable(
                f"report.pdf was NOT written: {chromium} exited with {done.returncode}:\n"
                f"{done.stderr.strip()[-1500:]}\n  The HTML report is complete: {html}"
            )
        relative_links(tmp, html.parent, author=author, headings=heading_texts(html.read_text()))
        tmp.replace(pdf)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"wrote {pdf} ({pdf.stat().st_size / 1e6:.1f} MB)")
    return pdf


def heading_texts(html: str) -> list[str]:
    """Return the text of every ``<h1>``-``<h3>`` of a page, whitespace collapsed, in order."""
    import html as htmllib

    found = re.findall(r"<h[1-3]\b[^>]*>(.*?)</h[1-3]>", html, re.DOTALL | re.IGNORECASE)
    return [re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", "", h))).strip() for h in found]


def _fix_outline(writer, headings: Sequence[str]) -> None:
    # Chromium titles a bookmark with the heading's laid-out lines and drops the space where a line
    # wrapped ("cross-validatedhyperparameter"); the page's own heading text is put back in its place.
    from pypdf.generic import NameObject, TextStringObject

    by_letters = {re.sub(r"\s+", "", h): h for h in headings}
    stack = [writer._root_object.get("/Outlines")]
    while stack:
        node = stack.pop()
        node = node.get_object() if node is not None else None
        if node is None:
            continue
        if "/Title" in node:
            title = by_letters.get(re.sub(r"\s+", "", str(node["/Title"])))
            if title is not None:
                node[NameObject("/Title")] = TextStringObject(title)
        stack += [node.get("/First"), node.get("/Next")]


def relative_links(pdf: str | Path, folder: str | Path, author: str | None = None,
                   headings: Sequence[str] = ()) -> dict[str, str]:
    """Rewrite, in place, the ``pdf``'s links to files inside ``folder`` (Chromium prints the page's
    relative links as absolute ``file:`` URLs) as links relative to the PDF, so that they still
    work when the report folder is zipped or moved; drop links to other files of this machine.
    ``author`` also goes into the document information; ``headings`` (:func:`heading_texts`)
    title the bookmarks. Return {old URL: new URL or "" (dropped)}.
    """
    import logging

    from pypdf import PdfWriter
    from pypdf.generic import ArrayObject, NameObject, TextStringObject

    pdf = Path(pdf)
    base = Path(folder).resolve().as_uri() + "/"
    # pypdf warns that Chromium's trailer undercounts its objects; it reads the file correctly all the same.
    quiet = logging.getLogger("pypdf")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        writer = PdfWriter(clone_from=str(pdf))
    finally:
        quiet.setLevel(level)
    _fix_outline(writer, headings)
    changed = {}
    for page in writer.pages:
        if "/Annots" not in page:
            continue
        kept = ArrayObject()
        for ref in page["/Annots"]:
            action = ref.get_object().get("/A")
            uri = str(action.get_object().get("/URI", "")) if action is not None else ""
            if uri.lower().startswith("file:"):
                if not uri.startswith(base):
                    changed[uri] = ""
                    continue  # a file outside the report folder: no link can reach it elsewhere
                changed[uri] = uri[len(base):]
                action.get_object()[NameObject("/URI")] = TextStringObject(changed[uri])
            kept.append(ref)
        page[NameObject("/Annots")] = kept
    if author:
        writer.add_metadata({"/Author": author})
    with open(pdf, "wb") as out:
        writer.write(out)
    return changed
