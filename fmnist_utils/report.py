"""Assemble the report: the run folder's results + Jinja templates -> one HTML page -> PDF.

The page is ``templates/report.html.j2``; each notebook's part of it is the fragment
``templates/sections/<stem>.html.j2``, rendered with ``r`` (that notebook's ``results.json``),
``results`` (every notebook's results by stem) and the helpers :func:`pct`, :func:`num`,
:func:`secs`, ``figure(filename, caption)`` and ``table(rows, columns, caption)``. A notebook
without a fragment still gets a section: its scalar results as a table and its figures. Every
number on the page comes from the results files; the templates hold prose and structure only.

Figures are embedded as base64 PNG, the CSS is inline, so ``report.html`` is one self-contained
file; the executed notebooks are rendered beside it (``notebooks/<stem>.html``) by nbconvert.
The PDF is the page printed by headless Chromium.
"""

from __future__ import annotations

import base64
import datetime as _dt
import inspect
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from markupsafe import Markup, escape

from . import profiles, provenance

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "report.html.j2"
CHROMIUM_ENV = "FMNIST_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class ReportError(RuntimeError):
    """The results cannot be turned into a report (a missing figure, a template error)."""


class PdfUnavailable(RuntimeError):
    """The HTML report was written but could not be printed to PDF."""


# --------------------------------------------------------------------------------------------
# Formatting helpers (the only way numbers reach the page)


def pct(x: float | None, digits: int = 2) -> str:
    """Return a fraction as a percentage: ``pct(0.9081)`` -> ``"90.81%"``; None -> ``"n/a"``."""
    if x is None:
        return "n/a"
    return f"{100 * float(x):.{digits}f}%"


def num(x, digits: int = 3) -> str:
    """Return a number for prose: ints with thousands separators, floats with ``digits``
    decimals and trailing zeros dropped (``0.91349`` -> ``"0.913"``, ``0.05`` -> ``"0.05"``),
    values too small for that many decimals in ``digits`` significant figures; None -> ``"n/a"``.
    """
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    x = float(x)
    if x != x:  # NaN
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 10 ** -digits:
        return f"{x:.{digits}g}"
    text = f"{x:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def secs(x: float | None) -> str:
    """Return a duration in seconds for reading: ``"42.3 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    if x is None:
        return "n/a"
    x = float(x)
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        m, s = divmod(round(x), 60)
        return f"{m} min {s:02d} s"
    h, rest = divmod(round(x), 3600)
    return f"{h} h {rest // 60:02d} min"


def _cell(value) -> Markup:
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup("&mdash;")
    if isinstance(value, (bool, int, float)):
        return escape(num(value))
    if isinstance(value, (list, tuple, dict)):
        return escape(json.dumps(value, default=str))
    # A break opportunity after each underscore lets long setting names wrap on a phone screen.
    return Markup(str(escape(str(value))).replace("_", "_<wbr>"))


# Already formatted numbers (pct, num, secs output) are right-aligned like numbers.
_NUMERIC_TEXT = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:%| s| min \d+ s| h \d+ min)?")


# Settings tables longer than this are set in two column pairs.
KEY_VALUE_ONE_COLUMN = 12


class _Numbering:
    """Counts figures and tables in the order they appear on the page."""

    def __init__(self):
        self.figures = 0
        self.tables = 0


def make_table(numbering: _Numbering) -> Callable[..., Markup]:
    """Return the ``table(rows, columns=None, caption=None)`` helper, numbering captioned tables."""

    def table(rows, columns: Sequence[str] | dict | None = None, caption: str | None = None) -> Markup:
        """Return an HTML table: ``rows`` a list of dicts, or one dict for a settings table
        (setting/value columns; ``columns`` may rename them: {"setting": ..., "value": ...});
        ``columns`` the keys to show, in order, or {key: header}; numbers right-aligned.
        """
        key_value = isinstance(rows, dict)
        if key_value:  # a settings table: its values mix text and numbers, so all align left
            items = list(rows.items())
            names = dict(columns) if isinstance(columns, dict) else {"setting": "setting", "value": "value"}
            # A long settings list is set in two column pairs (read down, then across) to halve its height.
            half = (len(items) + 1) // 2 if len(items) > KEY_VALUE_ONE_COLUMN else len(items)
            rows = [{"k0": k, "v0": v} for k, v in items[:half]]
            for row, (k, v) in zip(rows, items[half:]):
                row.update(k1=k, v1=v)
            columns = {"k0": names["setting"], "v0": names["value"]}
            if half < len(items):
                columns.update(k1=names["setting"], v1=names["value"])
        rows = list(rows)
        if columns is None:
            columns = list(dict.fromkeys(k for row in rows for k in row))
        headers = dict(columns) if isinstance(columns, dict) else {c: c.replace("_", " ") for c in columns}
        parts = ['<div class="table-wrap"><table>']
        if caption:
            numbering.tables += 1
            parts.append(f"<caption>Table {numbering.tables}. {escape(caption)}</caption>")
        parts.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers.values()) + "</tr></thead><tbody>")
        for row in rows:
            cells = []
            for key in headers:
                if key not in row:  # no such entry (e.g. the empty end of a two-pair settings table)
                    cells.append("<td></td>")
                    continue
                value = row[key]
                numeric = not key_value and (
                    (isinstance(value, (int, float)) and not isinstance(value, bool))
                    or (isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value) is not None)
                )
                cells.append(f'<td class="num">{_cell(value)}</td>' if numeric else f"<td>{_cell(value)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table></div>")
        return Markup("".join(parts))

    return table


def data_uri(path: str | Path) -> str:
    """Return a PNG/JPEG/SVG file as a ``data:`` URI (so the page needs no other file)."""
    path = Path(path)
    kinds = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    if path.suffix.lower() not in kinds:
        raise ReportError(f"{path}: cannot embed a {path.suffix!r} file; save figures as .png")
    return f"data:{kinds[path.suffix.lower()]};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def make_figure(folder: Path, stem: str, numbering: _Numbering) -> Callable[[str, str], Markup]:
    """Return the ``figure(filename, caption)`` helper embedding images from ``folder``."""

    def figure(filename: str, caption: str = "") -> Markup:
        path = folder / filename
        if not path.is_file():
            raise ReportError(
                f"the {stem} section shows the figure {filename!r}, but {path} does not exist; "
                f"the notebook must save it (fig.savefig(out / {filename!r}))"
            )
        numbering.figures += 1
        label = f"Figure {numbering.figures}." + (f" {caption}" if caption else "")
        return Markup(
            f'<figure><img src="{data_uri(path)}" alt="{escape(caption or filename)}">'
            f"<figcaption>{escape(label)}</figcaption></figure>"
        )

    return figure


# --------------------------------------------------------------------------------------------
# What the page is made of


def notebook_title(notebook: str | Path) -> str:
    """Return the first Markdown heading of a notebook (without ``#``), else its file stem."""
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.lstrip().startswith("#"):
                    return line.lstrip().lstrip("#").strip()
    return Path(notebook).stem


def profile_notes() -> dict[str, str]:
    """Return {Profile field: the comment beside it in profiles.py} (what each setting means)."""
    notes = {}
    for line in inspect.getsource(profiles.Profile).splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#=]+#\s*(.+)$", line)
        if match:
            notes[match.group(1)] = match.group(2).strip()
    return notes


def scalar_metrics(results: dict) -> list[dict]:
    """Return the results' numbers worth a table row: top-level numbers and numbers one level
    down (``test.accuracy``), as ``[{"result", "value"}]``; the profile and environment are left out.
    """
    rows = []
    for key, value in results.items():
        if key in ("profile", "environment"):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"result": key, "value": value})
        elif isinstance(value, dict):
            rows += [
                {"result": f"{key}.{k}", "value": v}
                for k, v in value.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
    return rows


# What a result looks like when typed by hand: a decimal, a percentage or a duration.
RESULT_LITERALS = (
    ("decimal", re.compile(r"\d*\.\d+")),
    ("percentage", re.compile(r"\d\s*(?:%|&#37;|&percnt;|percent\b)")),
    ("duration", re.compile(r"\b\d+\s*(?:ms|s|sec|secs|seconds?|min|mins|minutes?|h|hours?)\b")),
)
_NOT_PROSE = re.compile(
    r"<style\b.*?</style>|<script\b.*?</script>|<!--.*?-->|\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|<[^>]*>",
    re.DOTALL | re.IGNORECASE,
)


def prose_literals(template_text: str) -> list[tuple[str, str]]:
    """Return the result-like numbers typed into a template's prose, as (kind, text) pairs.

    Jinja expressions, tags and comments, HTML tags with their attributes, and ``<style>`` /
    ``<script>`` blocks are removed first: what is left is the text a reader sees, where every
    accuracy, loss or time must come from ``{{ ... }}``.
    """
    prose = _NOT_PROSE.sub(" ", template_text)
    return [(kind, m.group(0)) for kind, pattern in RESULT_LITERALS for m in pattern.finditer(prose)]


def profile_rows(profile: dict) -> list[dict]:
    """Return the profile as table rows ``{"setting", "value", "meaning"}`` (meaning from profiles.py)."""
    notes = profile_notes()
    # None is spelt out: the meanings say what None stands for ("None = all 60,000").
    return [{"setting": k, "value": "None" if v is None else v, "meaning": notes.get(k, "")} for k, v in profile.items()]


def figure_files(folder: Path) -> list[str]:
    """Return the PNG files in a notebook's output folder, sorted by name."""
    return sorted(p.name for p in Path(folder).glob("*.png"))


def _environment(results: dict) -> dict:
    for r in results.values():
        if isinstance(r.get("environment"), dict):
            return r["environment"]
    return {}


def _jinja():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt result is an error, never a blank in the prose
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(run: str | Path, stamps: list[dict], notebook_links: dict[str, str] | None = None,
           generated_utc: str | None = None) -> str:
    """Return the report page for the notebooks in ``stamps`` (from :func:`pipeline.run_notebooks`)
    whose results are in the run folder ``run``. ``notebook_links``: {stem: relative link to the
    rendered notebook}.
    """
    import jinja2

    run = Path(run)
    env = _jinja()
    numbering = _Numbering()
    helpers = {"pct": pct, "num": num, "secs": secs, "table": make_table(numbering)}
    results = {}
    for stamp in stamps:
        path = run / stamp["notebook"] / "results.json"
        if not path.is_file():
            raise ReportError(f"{path} is missing: run the notebook {stamp['notebook']} first")
        results[stamp["notebook"]] = provenance.read_json(path)

    sections = []
    for stamp in stamps:
        stem = stamp["notebook"]
        figure = make_figure(run / stem, stem, numbering)
        name = f"sections/{stem}.html.j2"
        has_template = (TEMPLATES / name).is_file()

        def render_section(stem=stem, figure=figure, name=name) -> Markup:
            # Rendered when the page reaches it, so figures and tables are numbered in page order.
            try:
                html = env.get_template(name).render(r=results[stem], results=results, figure=figure, stem=stem, **helpers)
            except jinja2.TemplateError as exc:
                raise ReportError(f"templates/{name}: {type(exc).__name__}: {exc}") from exc
            return Markup(html)

        sections.append({
            "stem": stem,
            "title": notebook_title(stamp["source"]) if Path(stamp["source"]).is_file() else stem,
            "render": render_section if has_template else None,
            "figure": figure,
            "figures": figure_files(run / stem),
            "metrics": scalar_metrics(results[stem]),
            "r": results[stem],
        })

    first = results[stamps[0]["notebook"]] if stamps else {}
    context = {
        "results": results,
        "sections": sections,
        "stamps": stamps,
        "links": notebook_links or {},
        "profile": first.get("profile", {}),
        "profile_rows": profile_rows(first.get("profile", {})),
        "environment": _environment(results),
        "generated_utc": generated_utc or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "notebook_seconds": sum(s.get("seconds", 0.0) for s in stamps),
        "run_folder": str(run),
        **helpers,
    }
    try:
        return env.get_template(PAGE_TEMPLATE).render(**context)
    except jinja2.TemplateError as exc:
        raise ReportError(f"templates/{PAGE_TEMPLATE}: {type(exc).__name__}: {exc}") from exc


def render_notebooks(stamps: list[dict], folder: Path) -> dict[str, str]:
    """Render each executed notebook to ``folder/<stem>.html`` with nbconvert; return
    {stem: link relative to the report folder}.
    """
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for stamp in stamps:
        body, _ = exporter.from_filename(stamp["executed_notebook"])
        provenance.write_text(folder / f"{stamp['notebook']}.html", body)
        links[stamp["notebook"]] = f"{folder.name}/{stamp['notebook']}.html"
    return links


def write_report(run: str | Path, stamps: list[dict], report_dir: str | Path, log: Callable[[str], None] = print) -> Path:
    """Render the executed notebooks and the report page into ``report_dir``; return ``report.html``.

    The page is written to a temporary file and renamed, so ``report.html`` is never half a page.
    """
    report_dir = Path(report_dir)
    links = render_notebooks(stamps, report_dir / "notebooks")
    html = render(run, stamps, links)
    path = provenance.write_text(report_dir / "report.html", html)
    log(f"wrote {path} ({len(html) / 1e6:.1f} MB) and {len(links)} rendered notebook(s) in {report_dir / 'notebooks'}")
    return path


# --------------------------------------------------------------------------------------------
# PDF


def find_chromium() -> str | None:
    """Return the Chromium/Chrome executable to print with (``FMNIST_CHROMIUM`` first), or None."""
    explicit = os.environ.get(CHROMIUM_ENV)
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
    tried = f"${CHROMIUM_ENV} ({os.environ[CHROMIUM_ENV]})" if os.environ.get(CHROMIUM_ENV) else ", ".join(CHROMIUM_NAMES)
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
              log: Callable[[str], None] = print) -> Path:
    """Print ``html`` to ``pdf`` with headless Chromium (installed with apt-get when missing,
    root and ``install`` allowing); return the PDF path. Raises :class:`PdfUnavailable`.
    """
    html, pdf = Path(html).resolve(), Path(pdf)
    chromium = find_chromium()
    if chromium is None and install and not os.environ.get(CHROMIUM_ENV):
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
        tmp.replace(pdf)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"wrote {pdf} ({pdf.stat().st_size / 1e6:.1f} MB)")
    return pdf
