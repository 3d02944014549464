"""Assemble the report: the run folder's results + Jinja templates -> one HTML page -> PDF.

The page is ``templates/report.html.j2``; each notebook's part of it is the fragment
``templates/sections/<stem>.html.j2`` (found by the notebook's stem: ``01_sweep``, ``02_train``,
...), rendered with ``r`` (that notebook's ``results.json``), ``results`` (every notebook's
results by stem), ``stem`` and the helpers :func:`pct`, :func:`num`, :func:`points`, :func:`points_phrase`,
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
into ``results["verdicts"][key]``; ``templates/verdicts.html.j2`` only words it.

Figures are embedded as base64 PNG, the CSS is inline, so ``report.html`` is one self-contained
file; the executed notebooks are rendered beside it (``notebooks/<stem>.html``) by nbconvert and
linked relatively, so the report folder can be zipped. The page opens with a title block
(:class:`TitleBlock`: author, course, date), cites the source of every method the run used
(``cite(key)``; :mod:`fmnist_utils.references`), ends its results with a discussion made of the
verdict records (:func:`discussion_records`) and keeps the settings in an appendix. No folder of
this machine reaches the text (:func:`hide_machine_paths`). The PDF is the page printed by
headless Chromium, with bookmarks from the headings and page numbers (:func:`write_pdf`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from markupsafe import Markup, escape

from . import models, provenance, records, settings, stats, study

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


def _missing(x) -> bool:
    return x is None or x != x  # x != x: NaN, of any float type


def not_available(reason: str | None = None) -> str:
    """Return ``"n/a"``, or ``"n/a (reason)"`` when the reason is known."""
    return f"n/a ({reason})" if reason else "n/a"


def pct(x: float | None, digits: int = 2, reason: str | None = None) -> str:
    """Return a fraction as a percentage: ``pct(0.9081)`` -> ``"90.81%"``; None or NaN ->
    ``"n/a"``, or ``"n/a (reason)"`` with ``reason`` (e.g. ``"only one fold finished"``).
    """
    if _missing(x):
        return not_available(reason)
    return f"{100 * float(x):.{digits}f}%"


def num(x, digits: int = 3, reason: str | None = None) -> str:
    """Return a number for prose: ints with thousands separators; floats below one in ``digits``
    significant figures (``0.00237`` -> ``"0.00237"``, ``0.91349`` -> ``"0.913"``, ``0.05`` ->
    ``"0.05"``), larger ones with ``digits`` decimals, trailing zeros dropped (``1234.5`` ->
    ``"1,234.5"``); None or NaN -> ``"n/a"``, or ``"n/a (reason)"`` with ``reason``.
    """
    if _missing(x):
        return not_available(reason)
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) < 1:
        # Significant figures, written out positionally (Decimal does not switch to 1e-05 notation).
        text = format(Decimal(f"{x:.{digits}g}"), "f")
    else:
        text = f"{x:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def points(x: float | None, reason: str | None = None) -> str:
    """Return a difference of two fractions in percentage points, three significant figures:
    ``points(0.0123)`` -> ``"1.23"``, ``points(-0.30233)`` -> ``"-30.2"``, ``points(0.0006)`` -> ``"0.06"``."""
    if _missing(x):
        return not_available(reason)
    value = 100 * float(x)
    if abs(value) < 1:
        return num(value)
    # Whole points from 100 up; otherwise as many decimals as leave three significant figures.
    decimals = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def points_phrase(x: float | None, reason: str | None = None) -> str:
    """Return :func:`points` with its unit, singular where the number is one:
    ``"1.23 percentage points"``, ``"1 percentage point"``."""
    if _missing(x):
        return not_available(reason)
    text = points(x)
    return text + (" percentage point" if text.lstrip("-") == "1" else " percentage points")


def p_value(p: float | None) -> str:
    """Return a p-value for prose: ``"p = 0.0032"`` (two significant figures), ``"p < 0.0001"``."""
    if _missing(p):
        return "p n/a"
    if p < P_FLOOR:
        return f"p < {num(P_FLOOR)}"
    return f"p = {num(float(p), 2)}"


# --------------------------------------------------------------------------------------------
# Verdict records: every conclusion the page words is one, made by a tested function
# (fmnist_utils.stats) and written into the notebook's results["verdicts"][key]; the templates
# choose a sentence by its verdict word and print its numbers with verdict_numbers.

VERDICT_FIELDS = ("key", "claim", "statistic", "value", "low", "high", "level", "p", "test", "n", "verdict", "reason",
                  "family")
# How each verdict word reads in a table cell or a list. No entry says "tie", "at chance" or "no
# overfitting": a test that does not reject shows no difference, not equality.
VERDICT_WORDS = {
    stats.HIGHER: "higher",
    stats.LOWER: "lower",
    stats.NO_DIFFERENCE: "no significant difference",
    stats.ABOVE_CHANCE: "above chance",
    stats.NOT_ABOVE_CHANCE: "not distinguishable from chance",
    stats.OVERFITS: "significant drop from the best epoch",
    stats.NO_DROP: "no significant drop from the best epoch",
    stats.AGREE: "agree",
    stats.NO_AGREEMENT: "no significant agreement",
    stats.EQUIVALENT: "equivalent within the stated margin",
    stats.NOT_SHOWN_EQUIVALENT: "not shown equivalent",
    stats.NOT_AVAILABLE: "n/a",
}
FAMILY_WORDS = {stats.PRIMARY: "primary (Holm)", stats.EXPLORATORY: "exploratory (Benjamini-Hochberg)"}
REQUIRED_VERDICT_FIELDS = ("claim", "statistic", "verdict")
NOT_AVAILABLE = "n/a"
DEFAULT_LEVEL = 0.95
# Smaller p-values are printed as "p < 0.0001": beyond that the digits say nothing a reader uses.
P_FLOOR = 1e-4


def check_verdict(record, where: str) -> dict:
    """Return a verdict record with every field of the schema (absent optional ones None, the
    level 0.95); raise :class:`ReportError` naming ``where`` when it is not a record.
    """
    if not isinstance(record, dict):
        raise ReportError(f"{where} is a {type(record).__name__}, not a verdict record (a dict from fmnist_utils.stats)")
    missing = [f for f in REQUIRED_VERDICT_FIELDS if not isinstance(record.get(f), str) or not record.get(f)]
    if missing:
        raise ReportError(f"{where} lacks {', '.join(missing)}: a verdict record names its claim, statistic and "
                          f"verdict word (got keys {sorted(record)})")
    for field in ("value", "low", "high", "p"):
        value = record.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ReportError(f"{where}: {field} is {value!r}; it must be a number or None")
    out = {field: None for field in VERDICT_FIELDS}
    out.update(record)
    # A record saved by an earlier version (e.g. the README's recorded run) is read with the new
    # word for what its test decided, so no page prints the old ones.
    out["verdict"] = stats.LEGACY_VERDICTS.get(out["verdict"], out["verdict"])
    if out["level"] is None:
        out["level"] = DEFAULT_LEVEL
    return out


# Words that claim equality from a test that did not reject: no report may print them.
EQUALITY_CLAIMS = re.compile(r"\btie\b|no overfitting|at chance", re.IGNORECASE)


def equality_claims(text: str) -> list[str]:
    """Return each place in ``text`` (a rendered report, the README's block) that words a
    non-significant result as equality ("tie", "no overfitting", "at chance"), with 40 characters
    either side; [] when there is none."""
    return [text[max(0, m.start() - 40):m.end() + 40] for m in EQUALITY_CLAIMS.finditer(text)]


def verdict_word(word: str | None) -> str:
    """Return a verdict word as a reader sees it (:data:`VERDICT_WORDS`): ``"no_significant_difference"``
    -> ``"no significant difference"``; an old word (``"tie"``) reads as its replacement; None -> ``""``.
    """
    if word is None:
        return ""
    word = stats.LEGACY_VERDICTS.get(word, word)
    return VERDICT_WORDS.get(word, word.replace("_", " "))


def network_tag(weights_source: str) -> str:
    """Return the short name of the ResNet-18 of ``weights_source`` (:func:`fmnist_utils.models.model_tag`),
    used everywhere after the long name (:func:`fmnist_utils.models.model_title`) has been given once."""
    return models.model_tag(weights_source)


def retag(value, long: str, tag: str):
    """Return ``value`` (a text, or a verdict record's claim, statistic and test) with the network's
    long name ``long`` replaced by its short ``tag`` and every bare "ResNet-18" by the tag as well
    (:func:`relabel`): ``retag("CNN minus ResNet-18: RANDOM INIT (...)", title, "random-init ResNet-18")``.
    """
    if isinstance(value, dict):
        return {k: retag(v, long, tag) if k in ("claim", "statistic", "test") and isinstance(v, str) else v
                for k, v in value.items()}
    text = value.replace(long, tag) if long and long != tag else value
    return relabel(text, "ResNet-18", tag)


def value_unit(statistic: str) -> str:
    """Return how a statistic's value is printed: ``"points"`` (percentage points) for a difference
    of accuracies, ``"percent"`` for an accuracy, else ``"plain"`` (:func:`num`).
    """
    words = statistic.lower()
    if "accuracy" in words:
        return "points" if any(w in words for w in ("difference", "drop", "gap", "minus", "change")) else "percent"
    return "plain"


def verdict_numbers(record: dict, unit: str | None = None) -> str:
    """Return a verdict record's numbers as a phrase:
    ``"0.0024 (95% interval 0.002 to 0.0029; p = 0.003, Mantel permutation test)"``;
    ``"n/a (only one fold finished)"`` for an n/a verdict.

    unit: ``"points"``, ``"percent"`` or ``"plain"``; None infers it from the statistic's name
    (:func:`value_unit`). Parts that are None (no interval, no p-value) are left out.
    """
    record = check_verdict(record, f"verdict {record.get('key') if isinstance(record, dict) else record!r}")
    if record["verdict"] == NOT_AVAILABLE:
        return not_available(record["reason"])
    unit = unit or value_unit(record["statistic"])
    formats = {"points": points, "percent": pct, "plain": num}
    if unit not in formats:
        raise ValueError(f"unit={unit!r}; choose one of {sorted(formats)}")
    fmt = formats[unit]
    inside = []
    if record["low"] is not None and record["high"] is not None:
        inside.append(f"{stats.level_text(record['level'])} interval {fmt(record['low'])} to {fmt(record['high'])}")
    test = ([p_value(record["p"])] if record["p"] is not None else []) + ([record["test"]] if record["test"] else [])
    if test:
        inside.append(", ".join(test))
    if record["value"] is None:
        return "; ".join(inside) or not_available(record["reason"])
    head = points_phrase(record["value"]) if unit == "points" else fmt(record["value"])
    return head + (f" ({'; '.join(inside)})" if inside else "")


def make_verdict(results: dict[str, dict]) -> Callable[[str, str], dict]:
    """Return the ``verdict(stem, key)`` helper: the checked record ``results[stem]["verdicts"][key]``."""

    def verdict(stem: str, key: str) -> dict:
        where = f"{stem}/results.json verdicts[{key!r}]"
        if stem not in results:
            raise ReportError(f"a template words {where}, but {stem} is not part of this run")
        records = results[stem].get("verdicts")
        if not isinstance(records, dict) or key not in records:
            raise ReportError(f"{where} is missing: the notebook {stem} must write results['verdicts'][{key!r}], "
                              f"the record of the fmnist_utils.stats function that tests it")
        return check_verdict(records[key], where)

    return verdict


def verdict_rows(results: dict) -> list[dict]:
    """Return a notebook's verdict records as table rows ``{"claim", "verdict", "estimate"}``."""
    records = results.get("verdicts") or {}
    rows = []
    for key, record in records.items():
        record = check_verdict(record, f"verdicts[{key!r}]")
        family = f" ({FAMILY_WORDS[record['family']]})" if record.get("family") in FAMILY_WORDS else ""
        rows.append({"claim": record["claim"], "verdict": verdict_word(record["verdict"]) + family,
                     "estimate": f"{record['statistic']}: {verdict_numbers(record)}"})
    return rows


def relabel(value, bare: str, title: str):
    """Return ``value`` (a text, or a verdict record's claim, statistic and test) with every
    ``bare`` name that is not already part of ``title`` replaced by ``title``:
    ``relabel("CNN minus ResNet-18", "ResNet-18", "ResNet-18: RANDOM INIT (...)")``. A record
    written by code that names a network plainly is worded with the label the report gives it.
    """
    if isinstance(value, dict):
        return {k: relabel(v, bare, title) if k in ("claim", "statistic", "test") and isinstance(v, str) else v
                for k, v in value.items()}
    if not bare or bare == title:
        return value
    return title.join(part.replace(bare, title) for part in value.split(title))


def study_figures() -> dict:
    """Return the study's reported figures (:mod:`fmnist_utils.study`) by lower-case name, for the templates."""
    return {name.lower(): value for name, value in vars(study).items() if name.isupper()}


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


# Ranked tables (the sweep's configurations) show this many rows at most.
TOP_ROWS = 20

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
    """Return {dotted setting: what it means}, from the settings tree's metadata (:func:`fmnist_utils.settings.meanings`)."""
    return settings.meanings()


def scalar_metrics(results: dict) -> list[dict]:
    """Return the results' numbers worth a table row: top-level numbers and numbers one level
    down (``test.accuracy``), as ``[{"result", "value"}]``; the profile, parameters and environment are left out.
    """
    rows = []
    for key, value in results.items():
        if key in ("profile", "environment", "parameters"):
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


class TypedNumber(NamedTuple):
    """A number typed into a template: where it is (``expression``: a numeric constant in
    ``{{ }}``/``{% %}``; ``string``: inside a string constant such as a caption; ``prose``: in the
    text), the number as typed, and its line.
    """

    kind: str
    text: str
    line: int


# The numbers a template may type: zero, one, two, a hundred (per cent) and the confidence level.
ALLOWED_NUMBERS = frozenset({0, 1, 2, 100, 0.95, 95})
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|\.\d+")
# Parts of a text that are not read as prose: style and script blocks, HTML comments, tags with
# their attributes, entities; references to the study's figures and tables ("Fig. 2", "Tables 2-4").
_NOT_TEXT = re.compile(
    r"<style\b.*?</style>|<script\b.*?</script>|<!--.*?-->|<[^>]*>|&#?\w+;"
    r"|\b(?:Figs?\.|Figures?|Tables?)\s+\d+(?:\s*[–-]\s*\d+)?",
    re.DOTALL | re.IGNORECASE,
)


def _blank(match: re.Match) -> str:
    return re.sub(r"[^\n]", " ", match.group(0))  # same length, same lines


def numbers_in_text(text: str) -> list[tuple[str, int]]:
    """Return the numbers a reader would see in ``text`` outside :data:`ALLOWED_NUMBERS`, as
    (number, offset). Digits that are part of a name are not numbers: joined to a letter or an
    underscore (``28x28``, ``01_sweep``, ``fc2``) or after a letter and a hyphen (``ResNet-18``).
    """
    text = _NOT_TEXT.sub(_blank, text)
    found = []
    for m in _NUMBER.finditer(text):
        before, after = text[max(0, m.start() - 2):m.start()], text[m.end():m.end() + 1]
        if re.search(r"[\w.]$", before) or re.fullmatch(r"[A-Za-z]-", before) or re.match(r"[A-Za-z_]", after):
            continue
        if float(m.group(0).replace(",", "")) not in ALLOWED_NUMBERS:
            found.append((m.group(0), m.start()))
    return found


def typed_numbers(template_text: str, name: str = "template") -> list[TypedNumber]:
    """Return the numbers typed into a Jinja template, outside :data:`ALLOWED_NUMBERS`: every
    numeric constant in an expression, a ``{% set %}``, a macro's defaults or a call's arguments;
    every number inside a string constant (captions passed as strings); every number in the text.

    The template is parsed by Jinja's own parser, so what counts as an expression, a string or text
    is exactly what Jinja renders. The text is read as one page (tags may span expressions): the
    text pieces are joined with a separator where an expression stood, then tags and styles removed.
    """
    import bisect

    import jinja2
    from jinja2 import nodes

    try:
        tree = jinja2.Environment().parse(template_text, name=name)
    except jinja2.TemplateSyntaxError as exc:
        raise ReportError(f"{name}: cannot be parsed: {exc}") from exc
    found, pieces, starts, lines = [], [], [], []
    offset = 0
    for node in tree.find_all((nodes.Const, nodes.TemplateData)):
        if isinstance(node, nodes.TemplateData):
            starts.append(offset)
            lines.append(node.lineno)
            pieces.append(node.data)
            offset += len(node.data) + 1
        elif isinstance(node.value, str):
            found += [TypedNumber("string", text, node.lineno) for text, _ in numbers_in_text(node.value)]
        elif isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            if node.value not in ALLOWED_NUMBERS:
                found.append(TypedNumber("expression", repr(node.value), node.lineno))
    prose = "\0".join(pieces)  # "\0": where an expression or tag stood; it joins no number
    for text, at in numbers_in_text(prose):
        i = bisect.bisect_right(starts, at) - 1
        found.append(TypedNumber("prose", text, lines[i] + prose.count("\n", starts[i], at)))
    return sorted(found, key=lambda t: t.line)




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


def discussion_records(results: dict[str, dict]) -> dict[str, list[dict]]:
    """Return every notebook's verdict records split into ``"settled"`` (the run decided the claim)
    and ``"open"`` (it could not, at its budget, or could not measure it), each record with its
    notebook as ``"stem"``, in notebook then record order.
    """
    groups = {"settled": [], "open": []}
    for stem, r in results.items():
        for key, record in (r.get("verdicts") or {}).items():
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


def _environment(results: dict) -> dict:
    for r in results.values():
        if isinstance(r.get("environment"), dict):
            return r["environment"]
    return {}


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

    return jinja2.Environment(
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
    results = {}
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

    first = results[stamps[0]["notebook"]] if stamps else {}
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
        "profile": first.get("profile", {}),
        "profile_rows": profile_rows(first.get("profile", {})),
        "environment": _environment(results),
        "generated_utc": generated_utc or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "notebook_seconds": sum(s.get("seconds", 0.0) for s in stamps),
        "run_folder": public_path(str(run), labels),
        # Notebooks whose data skipped the SHA-256 check (FMNIST_DATA_UNVERIFIED): named on the page.
        "unverified_data": sorted(stem for stem, r in results.items() if r.get("data_verified") is False),
        # Notebooks whose training ended not distinguishable from chance (train.fit's flag on its last epoch).
        "not_above_chance": sorted(stem for stem, r in results.items() if any(
            isinstance(r.get(k), list) and r[k] and isinstance(r[k][-1], dict) and r[k][-1].get("not_above_chance")
            for k in ("history", "final_history"))),
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
              log: Callable[[str], None] = print, author: str | None = None) -> Path:
    """Print ``html`` to ``pdf`` with headless Chromium (installed with apt-get when missing,
    root and ``install`` allowing); return the PDF path. Raises :class:`PdfUnavailable`.

    The PDF has bookmarks from the headings (Chromium's document outline), page numbers (the
    page's ``@page`` margin boxes), links relative to its folder (:func:`relative_links`) and
    ``author`` in its document information.
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
