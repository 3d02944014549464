"""Assemble the report: the run folder's results + Jinja templates -> one HTML page -> PDF.

The page is ``templates/report.html.j2``; each notebook's part of it is the fragment
``templates/sections/<stem>.html.j2`` (found by the notebook's stem: ``01_sweep``, ``02_train``,
...), rendered with ``r`` (that notebook's ``results.json``, read as its typed
:class:`fmnist_utils.records.Record`: ``r.history``, ``r.figures``; a name it does not declare
stops the page with an error naming the notebook and its fields), ``results`` (every notebook's
record by stem), ``stem`` and the helpers :func:`pct`, :func:`num`, :func:`points`, :func:`points_phrase`,
:func:`p_value`, :func:`secs`, ``na`` (:func:`not_available`), ``verdict(stem, key)``,
:func:`verdict_numbers`, :func:`verdict_word` (a verdict word as a reader sees it), ``family_word``,
:func:`relabel`, ``tag`` (:func:`network_tag`: the ResNet-18's short name after its full one) and
:func:`retag`, ``study`` (the study's reported figures, from :mod:`fmnist_utils.study`),
``figure(filename, caption)``, ``table(rows, columns, caption)`` and ``cite(key, ...)`` (a numbered
reference to :data:`fmnist_utils.references.REFERENCES`).
A section's ``{% block title %}`` is its heading and its entry in the contents. A notebook
without a fragment still gets a section: its verdicts, its scalar results and its figures.

Every number on the page comes from the results files (:func:`typed_numbers` checks the
templates), and every conclusion is a verdict record: a tested function decided it and wrote it
into its results' ``verdicts[key]``; ``templates/verdicts.html.j2`` only words it.

Figures are embedded as base64 PNG, the CSS is inline, so ``report.html`` is one self-contained
file; the executed notebooks are rendered beside it (``notebooks/<stem>.html``) by nbconvert and
linked relatively, so the report folder can be zipped. The page opens with a title block
(:class:`TitleBlock`: author, course, date), cites the source of every method the run used
(``cite(key)``; :mod:`fmnist_utils.references`), ends its results with a discussion made of the
verdict records (:func:`discussion_records`) and keeps the settings in an appendix. No folder of
this machine reaches the text (:func:`hide_machine_paths`). The PDF is the page printed by
headless Chromium, with bookmarks from the headings and page numbers (:func:`write_pdf`).

The parts, each a module: :mod:`fmnist_utils.report_format` (numbers, verdict words, tables and
figures), :mod:`fmnist_utils.report_pdf` (the PDF); this one builds the page's context from the
results records (:mod:`fmnist_utils.records`) and renders it. Their names are importable from here
too (``report.pct``, ``report.write_pdf``).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from markupsafe import Markup, escape

from . import provenance, records, settings, study  # noqa: F401  (report.study: the study's figures, as before the split)
from .report_format import (  # noqa: F401  (the helpers' names, importable from here)
    ReportError, _missing, not_available, pct, num, points, points_phrase, p_value, VERDICT_FIELDS, VERDICT_WORDS,
    FAMILY_WORDS, REQUIRED_VERDICT_FIELDS, NOT_AVAILABLE, DEFAULT_LEVEL, P_FLOOR, check_verdict, EQUALITY_CLAIMS,
    equality_claims, verdict_word, network_tag, retag, value_unit, verdict_numbers, make_verdict, verdict_rows,
    relabel, study_figures, secs, _cell, _NUMERIC_TEXT, TOP_ROWS, KEY_VALUE_ONE_COLUMN, _Numbering, make_table,
    data_uri, make_figure, TypedNumber, ALLOWED_NUMBERS, _NUMBER, _NOT_TEXT, _blank, numbers_in_text, typed_numbers,
)
from .report_pdf import (  # noqa: F401
    CHROMIUM_ENV, CHROMIUM_NAMES, PdfUnavailable, find_chromium, install_chromium, _missing_message, write_pdf,
    heading_texts, _fix_outline, relative_links,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_TEMPLATE = "report.html.j2"


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
    """Return {dotted setting: what it means}, from the settings tree's metadata (:func:`fmnist_utils.settings.meanings`)."""
    return settings.meanings()


def scalar_metrics(record: records.Record) -> list[dict]:
    """Return a results record's numbers worth a table row: top-level numbers and numbers one level
    down (``test.accuracy``), as ``[{"result", "value"}]``, in the file's order; the profile,
    parameters and environment are left out.
    """
    rows = []
    for key in record.fields():
        if key in ("profile", "environment", "parameters"):
            continue
        value = getattr(record, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append({"result": key, "value": value})
        elif isinstance(value, dict):
            rows += [
                {"result": f"{key}.{k}", "value": v}
                for k, v in value.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
    return rows




def profile_rows(profile: dict) -> list[dict]:
    """Return the settings tree (nested dicts, as ``Settings.to_dict()`` or ``Profile.to_dict()``) as
    table rows ``{"setting", "value", "meaning"}``, one per leaf setting (``train.epochs``); None is
    spelt out (the meanings say what it stands for, "None: all 60,000")."""
    return settings.rows(profile)


def figure_files(folder: Path) -> list[str]:
    """Return the PNG files in a notebook's output folder, sorted by name."""
    return sorted(p.name for p in Path(folder).glob("*.png"))


# --------------------------------------------------------------------------------------------
# The title block, the references, the discussion and the paths a reader may see


@dataclass(frozen=True)
class TitleBlock:
    """Who hands the report in: ``author`` and ``course`` as typed (None: not given), ``date``
    as ``YYYY-MM-DD`` (None: the run's date, :func:`run_date`)."""

    author: str | None = None
    course: str | None = None
    date: str | None = None

    def __post_init__(self):
        if self.date is not None:
            try:
                _dt.date.fromisoformat(self.date)
            except ValueError:
                raise ValueError(f"the date {self.date!r} (--date, DATE=) is not YYYY-MM-DD: give it as e.g. "
                                 "2026-03-14, or leave it out for the date of the run") from None
        for name in ("author", "course"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name} is empty: give a name, or leave it out")


def run_date(stamps: Sequence[dict]) -> str:
    """Return the run's date, ``YYYY-MM-DD``: the day its last notebook finished (UTC), else today."""
    finished = sorted(s["finished_utc"][:10] for s in stamps if s.get("finished_utc"))
    return finished[-1] if finished else _dt.datetime.now(_dt.timezone.utc).date().isoformat()


class Citations:
    """Numbers references in the order the page first cites them: ``cite("mantel")`` -> ``[3]``
    linking to the entry; :meth:`entries` lists what was cited, for the References section."""

    def __init__(self):
        self.order: list[str] = []

    def cite(self, *keys: str) -> Markup:
        """Return the bracketed, linked numbers of ``keys`` (:data:`references.REFERENCES` keys)."""
        from . import references

        unknown = [k for k in keys if k not in references.REFERENCES]
        if unknown:
            raise ReportError(f"cite({', '.join(map(repr, unknown))}): no such reference; "
                              f"add it to fmnist_utils/references.py (known: {', '.join(sorted(references.REFERENCES))})")
        links = []
        for key in keys:
            if key not in self.order:
                self.order.append(key)
            links.append(f'<a href="#ref-{key}">{self.order.index(key) + 1}</a>')
        return Markup(f'<span class="cite">[{", ".join(links)}]</span>')

    def entries(self) -> list[dict]:
        """Return ``[{"key", "number", "text"}]`` for every cited reference, in citation order."""
        from . import references

        return [{"key": k, "number": i + 1, "text": references.REFERENCES[k]} for i, k in enumerate(self.order)]


# Verdict words that settle their claim (stats.py's vocabularies): a difference, an agreement,
# accuracy above chance, overfitting. Every other word (a tie, no evidence, at chance, n/a, or a
# word this list does not know) leaves its claim open, and the discussion says so.
SETTLED_VERDICTS = frozenset({"higher", "lower", "agree", "disagree", "above_chance", "overfits"})


def discussion_records(results: dict[str, records.Record]) -> dict[str, list[dict]]:
    """Return every notebook's verdict records split into ``"settled"`` (the run decided the claim)
    and ``"open"`` (it could not, at its budget, or could not measure it), each record with its
    notebook as ``"stem"``, in notebook then record order.
    """
    groups = {"settled": [], "open": []}
    for stem, r in results.items():
        for key, record in records.verdicts(r).items():
            record = {**check_verdict(record, f"{stem}/results.json verdicts[{key!r}]"), "stem": stem}
            groups["settled" if record["verdict"] in SETTLED_VERDICTS else "open"].append(record)
    return groups


def interval_numbers(record: dict) -> str:
    """Return a verdict record's value and interval only, for the discussion's plain words:
    ``"1.23 percentage points (95% interval 0.4 to 2.07)"``; the test and p-value are its
    section's (:func:`verdict_numbers` prints them). A record with neither value nor interval keeps
    its p-value and test: they are all it has."""
    if record.get("value") is None and (record.get("low") is None or record.get("high") is None):
        return verdict_numbers(record)
    return verdict_numbers({**record, "p": None, "test": None})


def path_labels(run: Path) -> list[tuple[str, str]]:
    """Return (absolute folder, what the page says instead), longest first: the run folder
    (``runs/quick`` inside the checkout, else ``…/<its name>``), the checkout (``checkout``), the
    temporary folder (``$TMPDIR``) and the home folder (``~``), none of which mean anything once
    the report leaves this machine; each resolved and as given, where the two differ.
    """
    from . import paths

    run, root = Path(run), paths.project_root()
    inside = run.resolve().is_relative_to(root.resolve())
    labels = {}
    for folder, label in ((Path.home(), "~"), (Path(tempfile.gettempdir()), "$TMPDIR"), (root, "checkout"),
                          (run, run.resolve().relative_to(root.resolve()).as_posix() if inside else f"…/{run.name}")):
        for form in {str(folder), str(folder.resolve())}:
            if form not in ("", "/", "."):
                labels[form] = label
    return sorted(labels.items(), key=lambda kv: -len(kv[0]))


def _folder_pattern(labels: Sequence[tuple[str, str]]) -> re.Pattern | None:
    # A folder counts where its name ends: /tmp/x matches in "/tmp/x/y" and "/tmp/x.", not in "/tmp/xy".
    return re.compile("|".join(re.escape(folder) + r"(?![\w-])" for folder, _ in labels)) if labels else None


def public_path(text: str, labels: Sequence[tuple[str, str]]) -> str:
    """Return plain ``text`` with each folder of ``labels`` (:func:`path_labels`) replaced by its label:
    ``/tmp/x/run/01_sweep`` -> ``…/run/01_sweep`` where ``/tmp/x/run`` is the run folder."""
    pattern, lookup = _folder_pattern(labels), dict(labels)
    return text if pattern is None else pattern.sub(lambda m: lookup[m.group(0)], text)


def hide_machine_paths(html: str, labels: Sequence[tuple[str, str]]) -> str:
    """Return ``html`` with each folder of ``labels`` (:func:`path_labels`) replaced by its label in
    the text, and ``file:`` URLs dropped from links (a link to a file on this machine breaks as soon
    as the report moves; its text stays). Other attributes and embedded images are left as they are
    (a ``data:`` image could hold any characters).
    """
    pattern, lookup = _folder_pattern(labels), dict(labels)
    parts = re.split(r"(<[^>]*>)", html)
    for i, part in enumerate(parts):
        if part.startswith("<"):
            parts[i] = re.sub(r"""\s+href\s*=\s*(["'])file:[^"']*\1""", "", part, flags=re.IGNORECASE)
        elif pattern is not None:
            parts[i] = pattern.sub(lambda m: str(escape(lookup[m.group(0)])), part)
    return "".join(parts)


def _environment(results: dict[str, records.Record]) -> dict:
    for r in results.values():
        if isinstance(r.environment, dict):
            return r.environment
    return {}


def devices_used(results: dict[str, records.Record]) -> list[str]:
    """Return the kinds of device ("cpu", "cuda", "mps") the notebooks ran on, sorted: the report's
    repeatability sentence claims only what tests/test_reproducible.py checks, which is the CPU."""
    return sorted({str(r.environment.get("device", "")).split(":")[0] for r in results.values()
                   if isinstance(r.environment, dict) and r.environment.get("device")})


def _ended_at_chance(record: records.Record) -> bool:
    """Return True when the record's training history (02's ``history``, 01's ``final_history``)
    ends with an epoch flagged not distinguishable from chance (train.fit's flag)."""
    for name in ("history", "final_history"):
        history = getattr(record, name) if name in record else None
        if isinstance(history, list) and history and isinstance(history[-1], dict) and history[-1].get("not_above_chance"):
            return True
    return False


def budget_record(run: str | Path) -> dict | None:
    """Return what templates/budget.html.j2 shows of a budgeted run (``<run>/budget.json``, written by
    :func:`fmnist_utils.budget.plan`), or None for a run of a fixed profile."""
    from . import budget

    path = Path(run) / "budget.json"
    if not path.is_file():
        return None
    record = provenance.read_json(path)
    return {
        **record,
        "pace_ms": {kind: s * 1e3 for kind, s in record["pace"].items()},
        "priority": [budget.PRIORITY[p] for p in budget.PARTS] + [budget.PRIORITY["else"]],
        "floor_reason": budget.FLOOR_REASON,
        "model_rows": [{"notebook": m["notebook"], "model": m["model"], "models": m["count"],
                        "optimizer steps each": m["steps"], "the study's steps": m["study_steps"]}
                       for m in record["models"]],
    }


def _jinja():
    import jinja2

    class Environment(jinja2.Environment):
        """Jinja's environment, strict with results records: ``r.name`` (or ``r["name"]``) on a
        :class:`~fmnist_utils.records.Record` reads its field or stops the page naming the notebook
        and its fields, under ``is defined`` too; Jinja's own lookup would fall back to an undefined
        value that ``is defined`` and ``default`` turn into a silent blank."""

        def getattr(self, obj, attribute):
            return _field(obj, attribute) if isinstance(obj, records.Record) else super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            if isinstance(obj, records.Record) and isinstance(argument, str):
                return _field(obj, argument)
            return super().getitem(obj, argument)

    def _field(record: records.Record, name: str):
        try:
            return getattr(record, name)
        except records.UnknownField as exc:
            raise jinja2.UndefinedError(str(exc)) from None

    return Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt result is an error, never a blank in the prose
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def section_title(env, name: str, context: dict) -> Markup:
    """Return the ``title`` block of a section template, rendered alone: the heading the section
    gives itself, so the contents list names what the section names (the fallback label included).
    """
    import jinja2

    template = env.get_template(name)
    if "title" not in template.blocks:
        raise ReportError(f"templates/{name} has no {{% block title %}}: wrap its <h2> text in one, "
                          "so the contents list can show it")
    try:
        return Markup("".join(template.blocks["title"](template.new_context(context))).strip())
    except jinja2.TemplateError as exc:
        raise ReportError(f"templates/{name}, block title: {type(exc).__name__}: {exc}") from exc


def css_string(text: str) -> Markup:
    """Return ``text`` as a quoted CSS string (for ``content:`` in the page style): backslashes and
    quotes escaped, and ``<`` and line breaks as CSS escapes, so no text can end the style block."""
    escaped = "".join(f"\\{ord(c):x} " if c in '<>&\n\r' else "\\" + c if c in '"\\' else c for c in text)
    return Markup(f'"{escaped}"')


def long_date(iso: str) -> str:
    """Return ``"2026-03-14"`` as ``"14 March 2026"``."""
    day = _dt.date.fromisoformat(iso)
    return f"{day.day} {day:%B %Y}"


def render(run: str | Path, stamps: list[dict], notebook_links: dict[str, str] | None = None,
           generated_utc: str | None = None, title: TitleBlock | None = None) -> str:
    """Return the report page for the notebooks in ``stamps`` (from :func:`pipeline.run_notebooks`)
    whose results are in the run folder ``run``. ``notebook_links``: {stem: relative link to the
    rendered notebook}. ``title``: author, course and date of the title block (None: none given,
    the run's date). Folders of this machine are replaced in the text (:func:`hide_machine_paths`).
    """
    import jinja2

    from . import references

    run = Path(run)
    env = _jinja()
    numbering = _Numbering()
    citations = Citations()
    cover = title or TitleBlock()  # before the loop below, which names each section's title
    results: dict[str, records.Record] = {}
    for stamp in stamps:
        path = run / stamp["notebook"] / "results.json"
        if not path.is_file():
            raise ReportError(f"{path} is missing: run the notebook {stamp['notebook']} first")
        results[stamp["notebook"]] = records.read(path, stamp["notebook"])  # refuses another schema, naming the fix
    helpers = {
        "pct": pct, "num": num, "secs": secs, "points": points, "points_phrase": points_phrase, "p_value": p_value, "na": not_available,
        "table": make_table(numbering), "verdict": make_verdict(results), "verdict_numbers": verdict_numbers,
        "relabel": relabel, "study": study_figures(), "top_rows": TOP_ROWS, "cite": citations.cite,
        "verdict_word": verdict_word, "family_word": FAMILY_WORDS.get, "tag": network_tag, "retag": retag,
    }

    sections = []
    for stamp in stamps:
        stem = stamp["notebook"]
        figure = make_figure(run / stem, stem, numbering)
        name = f"sections/{stem}.html.j2"
        has_template = (TEMPLATES / name).is_file()
        section_context = {"r": results[stem], "results": results, "figure": figure, "stem": stem, **helpers}

        def render_section(name=name, section_context=section_context) -> Markup:
            # Rendered when the page reaches it, so figures and tables are numbered in page order.
            try:
                html = env.get_template(name).render(**section_context)
            except jinja2.TemplateError as exc:
                raise ReportError(f"templates/{name}: {type(exc).__name__}: {exc}") from exc
            return Markup(html)

        if has_template:
            title = section_title(env, name, section_context)
        else:
            title = notebook_title(stamp["source"]) if Path(stamp["source"]).is_file() else stem
        sections.append({
            "stem": stem,
            "title": title,
            "render": render_section if has_template else None,
            "figure": figure,
            "figures": figure_files(run / stem),
            "metrics": scalar_metrics(results[stem]),
            "verdicts": verdict_rows(results[stem]),
            "r": results[stem],
        })

    profile = (results[stamps[0]["notebook"]].profile if stamps else None) or {}
    date = cover.date or run_date(stamps)
    labels = path_labels(run)
    context = {
        "title_block": {"author": cover.author, "course": cover.course, "date": date, "date_text": long_date(date)},
        "footer_text": css_string(" · ".join(t for t in (cover.author, cover.course) if t)),
        "citations": citations,
        "methods_used": references.methods_used(results),
        "record_methods": references.record_methods,
        "interval_numbers": interval_numbers,
        "discussion": discussion_records(results),
        "results": results,
        "sections": sections,
        "stamps": stamps,
        "links": notebook_links or {},
        "profile": profile,
        "profile_rows": profile_rows(profile),
        "environment": _environment(results),
        "trained_on": devices_used(results),
        "generated_utc": generated_utc or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "notebook_seconds": sum(s.get("seconds", 0.0) for s in stamps),
        "run_folder": public_path(str(run), labels),
        # Notebooks whose data skipped the SHA-256 check (FMNIST_DATA_UNVERIFIED): named on the page.
        "unverified_data": sorted(stem for stem, r in results.items() if r.data_verified is False),
        # Notebooks whose training ended not distinguishable from chance (train.fit's flag on its last epoch).
        "not_above_chance": sorted(stem for stem, r in results.items() if _ended_at_chance(r)),
        "budget": budget_record(run),
        **helpers,
    }
    try:
        page = env.get_template(PAGE_TEMPLATE).render(**context)
    except jinja2.TemplateError as exc:
        raise ReportError(f"templates/{PAGE_TEMPLATE}: {type(exc).__name__}: {exc}") from exc
    return hide_machine_paths(page, labels)


def render_notebooks(stamps: list[dict], folder: Path, labels: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    """Render each executed notebook to ``folder/<stem>.html`` with nbconvert; return
    {stem: link relative to the report folder}. ``labels`` (:func:`path_labels`): folders of this
    machine replaced in the notebooks' text (their parameters and printed lines name the run folder).
    """
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for stamp in stamps:
        body, _ = exporter.from_filename(stamp["executed_notebook"])
        body = hide_machine_paths(body, labels)
        provenance.write_text(folder / f"{stamp['notebook']}.html", body)
        links[stamp["notebook"]] = f"{folder.name}/{stamp['notebook']}.html"
    return links


def write_report(run: str | Path, stamps: list[dict], report_dir: str | Path, log: Callable[[str], None] = print,
                 title: TitleBlock | None = None) -> Path:
    """Render the executed notebooks and the report page into ``report_dir``; return ``report.html``.

    ``title``: the title block's author, course and date (:class:`TitleBlock`). The page is
    written to a temporary file and renamed, so ``report.html`` is never half a page.
    """
    report_dir = Path(report_dir)
    links = render_notebooks(stamps, report_dir / "notebooks", path_labels(Path(run)))
    html = render(run, stamps, links, title=title)
    path = provenance.write_text(report_dir / "report.html", html)
    log(f"wrote {path} ({len(html) / 1e6:.1f} MB) and {len(links)} rendered notebook(s) in {report_dir / 'notebooks'}")
    return path
