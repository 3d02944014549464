"""How the report words what the results hold: numbers, verdict records, tables and figures.

Every number reaches the page through :func:`pct`, :func:`num`, :func:`points`, :func:`points_phrase`,
:func:`p_value` or :func:`secs`; every conclusion is a verdict record (made by a tested function of
:mod:`fmnist_utils.stats`) checked by :func:`check_verdict` and worded by :func:`verdict_word` and
:func:`verdict_numbers`; ``table(...)`` and ``figure(...)`` (:func:`make_table`, :func:`make_figure`)
number what they show in page order. :mod:`fmnist_utils.report` hands these helpers to the templates.
"""

from __future__ import annotations

import base64
import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from markupsafe import Markup, escape

from . import models, records, stats, study

class ReportError(RuntimeError):
    """The results cannot be turned into a report (a missing figure, a template error)."""


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


def make_verdict(results: dict[str, records.Record]) -> Callable[[str, str], dict]:
    """Return the ``verdict(stem, key)`` helper: the checked verdict record ``results[stem].verdicts[key]``."""

    def verdict(stem: str, key: str) -> dict:
        where = f"{stem}/results.json verdicts[{key!r}]"
        if stem not in results:
            raise ReportError(f"a template words {where}, but {stem} is not part of this run")
        found = records.verdicts(results[stem])
        if not isinstance(found, dict) or key not in found:
            raise ReportError(f"{where} is missing: the notebook {stem} must write results['verdicts'][{key!r}], "
                              f"the record of the fmnist_utils.stats function that tests it")
        return check_verdict(found[key], where)

    return verdict


def verdict_rows(results: records.Record) -> list[dict]:
    """Return a notebook's verdict records (of its results record) as table rows ``{"claim", "verdict", "estimate"}``."""
    rows = []
    for key, record in records.verdicts(results).items():
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
# Tables of at most this many rows are kept whole on a printed page (with their caption): they
# fit on one with room to spare, while a longer one kept whole would leave most of a page blank.
SHORT_TABLE_ROWS = 16


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
        parts = [f'<div class="table-wrap{" short" if len(rows) <= SHORT_TABLE_ROWS else ""}"><table>']
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
