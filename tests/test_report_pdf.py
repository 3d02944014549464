"""A report a student can hand in: title block, references, discussion, appendix, no machine paths,
and a PDF with bookmarks, page numbers and links that survive zipping the report folder.

The page tests render the fixture results (tests/report_fixtures.py); the PDF test prints a
fixture report with the real Chromium. :func:`check_hand_in` is also run on the smoke report
by tests/test_pipeline.py's end-to-end test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import report_fixtures as F
from fmnist_utils import paths, references, report

text_of = F.text_of


def whole(tmp_path, title=None, pretrained=True, links=None):
    results = {"01_sweep": F.sweep_results(), "02_train": F.train_results(),
               "03_resnet_compare": F.compare_results(pretrained), "04_improvements": F.improvements_results()}
    return F.render(tmp_path, results, links=links, title=title)


def section(page: str, name: str) -> str:
    """The HTML of ``<section id="name">`` up to its end."""
    start = page.index(f'<section id="{name}"')
    return page[start:page.index("</section>", start)]


def machine_paths(text: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Each place in ``text`` that names a folder of this machine (the temporary folder, the home
    folder, the checkout, ``extra``) or a ``file:`` URL, with its surroundings."""
    folders = {str(Path(tempfile.gettempdir())), str(Path.home()), str(paths.project_root()), *extra}
    folders |= {str(Path(f).resolve()) for f in folders}
    found = []
    for needle in [f for f in folders if f not in ("/", "")] + ["file:"]:
        pattern = re.escape(needle) + r"(?![\w-])" if needle != "file:" else r"(?<![\w-])file:"  # not "profile:"
        found += [text[max(0, m.start() - 50):m.end() + 50] for m in re.finditer(pattern, text, re.IGNORECASE)]
    return found


def pdf_pages_text(pdf: Path) -> list[str]:
    """The text of each page (pdftotext), in order."""
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return out.split("\f")[:-1] if out.endswith("\f") else out.split("\f")


def outline_titles(pdf: Path) -> list[tuple[int, str]]:
    """The PDF's bookmarks as (depth, title), in order (pypdf)."""
    from pypdf import PdfReader

    def walk(items, depth):
        for item in items:
            if isinstance(item, list):
                yield from walk(item, depth + 1)
            else:
                yield depth, item.title.strip()

    return list(walk(PdfReader(str(pdf)).outline, 0))


def link_uris(pdf: Path) -> list[str]:
    """Every URI a link of the PDF points at (pypdf)."""
    from pypdf import PdfReader

    uris = []
    for page in PdfReader(str(pdf)).pages:
        for ref in page.get("/Annots") or []:
            action = ref.get_object().get("/A")
            if action is not None and "/URI" in action.get_object():
                uris.append(str(action.get_object()["/URI"]))
    return uris


def check_hand_in(html: Path, pdf: Path, run: Path) -> None:
    """Assert what a report to hand in needs: no machine path or ``file:`` link in the HTML or the
    PDF's text or links; bookmarks from the headings; "Page i of n" on every page; the title
    block, the references and the appendix present."""
    page = html.read_text()
    assert re.search(r'<header class="title-block">\s*<h1>.+?<time datetime="\d{4}-\d{2}-\d{2}">', page, re.DOTALL)
    assert not machine_paths(text_of(page), (str(run),)), machine_paths(text_of(page), (str(run),))
    for notebook in sorted((html.parent / "notebooks").glob("*.html")):  # the executed notebooks it links to
        text = text_of(re.sub(r"<(style|script)\b.*?</\1>", " ", notebook.read_text(), flags=re.DOTALL))
        assert not machine_paths(text, (str(run),)), (notebook.name, machine_paths(text, (str(run),)))
    assert not re.findall(r"""href\s*=\s*["']file:""", page, re.IGNORECASE)
    pages = pdf_pages_text(pdf)
    flat = re.sub(r"\s+", " ", " ".join(pages))
    assert not machine_paths(flat, (str(run),)), machine_paths(flat, (str(run),))
    uris = link_uris(pdf)
    assert not [u for u in uris if u.lower().startswith("file:")], uris
    assert all(not u.startswith("/") for u in uris), uris
    for i, text in enumerate(pages, 1):
        assert re.search(rf"Page {i} of {len(pages)}\s*$", text.rstrip()), (i, text[-200:])
    titles = [t for _, t in outline_titles(pdf)]
    assert set(titles) <= set(report.heading_texts(page)), set(titles) - set(report.heading_texts(page))
    for heading in ("Abstract", "Method", "Discussion", "References", "Appendix A. Settings",
                    "Appendix B. Environment, provenance and wall times"):
        assert heading in titles, titles
    for label in ("References", "Appendix A. Settings", "Discussion"):
        assert label in flat


# --------------------------------------------------------------------------------------------
# The title block


def test_title_block_shows_author_course_and_date(tmp_path):
    page = whole(tmp_path, report.TitleBlock("Ada Lovelace", "Deep Learning 101", "2026-03-14"))
    header = page[page.index('<header class="title-block">'):page.index("</header>")]
    assert "Ada Lovelace" in header and "Deep Learning 101" in header
    assert '<time datetime="2026-03-14">14 March 2026</time>' in header
    assert "No author" not in header and "No course" not in header
    # Both go into the page's margin beside the page number (a CSS string, so quotes cannot end it).
    assert 'content: "Ada Lovelace · Deep Learning 101"' in page
    # The command that rebuilds it keeps them.
    assert 'AUTHOR="Ada Lovelace" COURSE="Deep Learning 101"' in text_of(section(page, "reproduce"))


def test_title_block_defaults_to_the_run_date_and_says_how_to_add_a_name(tmp_path):
    page = whole(tmp_path)  # the fixture's notebooks finished on 2026-01-01
    header = text_of(page[page.index('<header class="title-block">'):page.index("</header>")])
    assert "1 January 2026" in header
    assert "No author or course given" in header and 'make report AUTHOR="Your Name" COURSE="Course name"' in header
    assert "No course given" in text_of(whole(tmp_path, report.TitleBlock(author="Ada")))
    # The reminder is for the screen: a report marked anonymously prints without a name and without it.
    page = whole(tmp_path)
    assert '<p class="note screen-only">No author or course given' in page
    assert page.index("@media print") < page.index(".screen-only { display: none; }") < page.index("</style>")
    assert report.run_date([{"finished_utc": "2026-02-03T10:00:00+00:00"}, {"finished_utc": "2026-02-04T01:00:00+00:00"}]) == "2026-02-04"


def test_title_block_text_is_escaped_in_the_page_and_in_the_style():
    assert report.css_string('A "quoted" </style> name\\') == '"A \\"quoted\\" \\3c /style\\3e  name\\\\"'
    assert str(report.make_table(report._Numbering())([{"x": "<b>"}])).count("&lt;b&gt;") == 1


def test_title_block_rejects_a_date_it_cannot_read_and_an_empty_name():
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        report.TitleBlock(date="14/03/2026")
    with pytest.raises(ValueError, match="author is empty"):
        report.TitleBlock(author="  ")


def test_cli_passes_author_course_and_date(report_cli):
    status, seen = report_cli(["--profile", "smoke", "--author", "Ada Lovelace", "--course", "DL", "--date", "2026-03-14"])
    assert status == 0
    assert seen["title"] == report.TitleBlock("Ada Lovelace", "DL", "2026-03-14")
    make = (F.ROOT / "Makefile").read_text()
    assert '--author "$(AUTHOR)"' in make and '--course "$(COURSE)"' in make


# --------------------------------------------------------------------------------------------
# References, method, discussion, appendix


def test_references_list_every_method_the_run_used_each_cited_in_order(tmp_path):
    page = whole(tmp_path, pretrained=True)
    refs = section(page, "references")
    keys = re.findall(r'<li id="ref-(\w+)">', refs)
    results = {"01_sweep": F.sweep_results(), "02_train": F.train_results(),
               "03_resnet_compare": F.compare_results(True), "04_improvements": F.improvements_results()}
    assert set(keys) == references.methods_used(F.typed(results))
    assert {"fashion_mnist", "nadeau_bengio", "mantel", "bootstrap", "cka", "resnet", "imagenet", "optuna",
            "mcnemar", "nesterov", "onecycle", "label_smoothing", "random_erasing"} <= set(keys)
    # Numbered in the order of first citation, each citation linking to its entry, and each entry cited.
    body = page[:page.index('<section id="references"')]
    cited = list(dict.fromkeys(re.findall(r'<a href="#ref-(\w+)">', body)))
    assert cited == keys
    for number, key in enumerate(keys, 1):
        assert f'<a href="#ref-{key}">{number}</a>' in body
    assert "Xiao, H., Rasul, K. &amp; Vollgraf, R. (2017)" in refs and "arXiv:1708.07747" in refs
    assert "course study this kit reproduces" in text_of(refs)


def test_references_follow_what_the_run_did(tmp_path):
    fallback = whole(tmp_path / "a", pretrained=False)
    assert 'id="ref-imagenet"' not in fallback and 'id="ref-resnet"' in fallback  # no ImageNet weights were used
    alone = F.render(tmp_path / "b", {"02_train": F.train_results()})
    keys = re.findall(r'<li id="ref-(\w+)">', section(alone, "references"))
    assert "optuna" not in keys and "mantel" not in keys and "cka" not in keys and "fashion_mnist" in keys
    assert references.methods_used({}) == {"fashion_mnist"}
    # Every method used is cited, whichever notebooks ran (here the ablation's ResNet-18 without 03).
    ablation = {"02_train": F.train_results(), "04_improvements": F.improvements_results()}
    page = F.render(tmp_path / "c", ablation)
    assert set(re.findall(r'<li id="ref-(\w+)">', section(page, "references"))) == references.methods_used(F.typed(ablation))
    assert "resnet" in references.methods_used(F.typed(ablation))
    citations = report.Citations()
    with pytest.raises(report.ReportError, match="no such reference"):
        citations.cite("nobody2099")
    assert str(citations.cite("mantel", "cka")) == ('<span class="cite">[<a href="#ref-mantel">1</a>, '
                                                   '<a href="#ref-cka">2</a>]</span>')
    assert str(citations.cite("cka")) == '<span class="cite">[<a href="#ref-cka">2</a>]</span>'


def test_method_is_one_paragraph_and_the_settings_an_appendix(tmp_path):
    page = whole(tmp_path)
    method = section(page, "method")
    assert method.count("<p>") == 1 and "<table" not in method
    assert page.index('id="method"') < page.index('id="01_sweep"') < page.index('id="discussion"') \
        < page.index('id="references"') < page.index('id="settings"') < page.index('id="environment"')
    settings = section(page, "settings")
    assert "Run profile" in settings and "Exact training configuration of 02_train" in settings
    contents = text_of(page[page.index('<nav class="toc"'):page.index("</nav>")])
    assert "Appendices Settings Environment, provenance and wall times How to reproduce" in contents


def test_method_states_the_budget_pace_floor_and_every_models_steps(tmp_path):
    # Issue 16: the Method section itself (not only Appendix A) states the budget, the measured pace,
    # what was left out, the floor with its source, and every model's steps beside the study's.
    from fmnist_utils import budget

    plan = budget.plan("20m", run_dir=tmp_path / "run", pace=dict(budget.REFERENCE_PACE), log=lambda m: None)
    page = whole(tmp_path)
    method = section(page, "method")
    assert method.count("<p") == 2 and "<table" not in method  # the method, then the budget: no table
    text = text_of(method)
    assert "time budget of 20m" in text and "measured on" in text
    for kind, seconds in plan.record["pace"].items():
        assert report.num(seconds * 1e3) in text, kind
    assert f"fewer than {report.num(budget.FLOOR_STEPS)} optimizer steps" in text and budget.FLOOR_SOURCE in text
    assert f"beside the study's {report.num(budget.STUDY_STEPS)}" in text
    for stem in plan.profile.skip:
        assert stem in text
    for m in plan.record["models"]:
        assert f"{m['model']}" in text and report.num(m["steps"]) in text
    assert 'href="#budget"' in method and 'id="budget"' in section(page, "settings")  # the detail stays in Appendix A


def test_discussion_words_every_verdict_as_settled_or_open(tmp_path):
    results = {"01_sweep": F.sweep_results(), "02_train": F.train_results()}
    groups = report.discussion_records(F.typed(results))
    words = {(v["stem"], v["key"]): v["verdict"] for g in groups.values() for v in g}
    assert words == {(stem, k): v["verdict"] for stem, r in results.items() for k, v in r["verdicts"].items()}
    assert all(v["verdict"] in report.SETTLED_VERDICTS for v in groups["settled"])
    assert not any(v["verdict"] in report.SETTLED_VERDICTS for v in groups["open"])
    text = text_of(section(F.render(tmp_path, results), "discussion"))
    shows, cannot = text.split("What it cannot show at this budget")
    for v in groups["settled"]:
        assert v["claim"][1:] in shows and report.interval_numbers(v) in shows
    for v in groups["open"]:
        assert v["claim"][1:] in cannot and ("this run cannot tell" in cannot or "not measured" in cannot)
    assert f"of the {len(words)} claims this run tested, it settles {len(groups['settled'])}" in text
    record = F.verdict("x", "higher", "difference in accuracy", 0.0123, 0.004, 0.0207, 0.0031, "McNemar's exact test")
    assert report.interval_numbers(record) == "1.23 percentage points (95% interval 0.4 to 2.07)"
    only_p = {**record, "value": None, "low": None, "high": None}
    assert report.interval_numbers(only_p) == report.verdict_numbers(only_p) == "p = 0.0031, McNemar's exact test"
    # Each line cites the method its test names, beside its numbers.
    mcnemar = F.verdict("x", "higher", test="McNemar's exact test on 30 images; Bonett-Price interval")
    assert references.record_methods(mcnemar) == ["mcnemar", "bonett_price"]
    assert references.record_methods(F.verdict("x", "n/a")) == ["mcnemar"]  # the fixture's default test
    assert references.record_methods({"test": "exact one-sided binomial test; Clopper-Pearson interval"}) == ["clopper_pearson"]
    page = F.render(tmp_path, results)
    for item in re.findall(r"<li>(.*?)</li>", section(page, "discussion"), re.DOTALL):
        if "Nadeau" in item or "McNemar" in item:
            assert 'href="#ref-' in item, item
    # The budget is the run's, beside the study's: numbers from the results, none typed.
    train = results["02_train"]
    assert f"{report.num(train['data']['train_images'])} training images" in cannot
    assert report.num(report.study.TRAIN_IMAGES) in cannot


# --------------------------------------------------------------------------------------------
# No machine paths


def test_machine_paths_become_labels_in_the_text_but_not_in_images():
    labels = [("/home/ada/kit/runs/quick", "runs/quick"), ("/home/ada/kit", "checkout"), ("/home/ada", "~"),
              ("/tmp", "$TMPDIR")]
    html = ('<p>read from /home/ada/.cache/fmnist and /home/ada/kit/runs/quick/01_sweep; /tmp/x.</p>'
            '<img src="data:image/png;base64,/tmp/AAAA"><a href="file:///home/ada/a.html">a</a> /tmpfoo')
    out = report.hide_machine_paths(html, labels)
    assert "read from ~/.cache/fmnist and runs/quick/01_sweep; $TMPDIR/x." in out
    assert 'src="data:image/png;base64,/tmp/AAAA"' in out and "<a>a</a>" in out and "/tmpfoo" in out
    assert report.public_path("/home/ada/kit/runs/quick", labels) == "runs/quick"


def test_rendered_page_names_no_folder_of_this_machine(tmp_path, monkeypatch):
    train = F.train_results()
    train["data"]["source"] = str(Path.home() / ".cache" / "fmnist")  # a download into the home folder
    page = F.render(tmp_path, {"01_sweep": F.sweep_results(), "02_train": train},
                    links={"02_train": "notebooks/02_train.html"})
    text = text_of(page)
    assert not machine_paths(text, (str(tmp_path),)), machine_paths(text, (str(tmp_path),))
    assert "~/.cache/fmnist" in text and f"…/{(tmp_path / 'run').name}" in text
    assert '<a href="notebooks/02_train.html">' in page


# --------------------------------------------------------------------------------------------
# The PDF


@pytest.mark.skipif(report.find_chromium() is None or shutil.which("pdftotext") is None,
                    reason="needs Chromium (apt-get install chromium) and pdftotext (poppler-utils)")
def test_pdf_has_bookmarks_page_numbers_and_relative_links(tmp_path):
    out = tmp_path / "report"
    (out / "notebooks").mkdir(parents=True)
    (out / "notebooks" / "02_train.html").write_text("<p>the executed notebook</p>")
    page = whole(tmp_path, report.TitleBlock("Ada Lovelace", "Deep Learning 101"),
                 links={"02_train": "notebooks/02_train.html"})
    html = out / "report.html"
    html.write_text(page)
    pdf = report.write_pdf(html, out / "report.pdf", install=False, log=lambda m: None, author="Ada Lovelace")
    check_hand_in(html, pdf, tmp_path / "run")
    assert "notebooks/02_train.html" in link_uris(pdf)
    from pypdf import PdfReader

    assert PdfReader(str(pdf)).metadata.author == "Ada Lovelace"
    depth = dict((t, d) for d, t in outline_titles(pdf))
    assert depth["Abstract"] == depth["References"] == depth["Appendix A. Settings"] == depth["Method"]
    assert "Ada Lovelace · Deep Learning 101" in pdf_pages_text(pdf)[-1]
