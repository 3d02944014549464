"""The report pipeline: what is up to date, failures, the page's numbers, the templates' prose, the PDF.

Most tests run tiny notebooks (a second each) through the real runner and papermill; one slow
test runs the kit's own notebooks with the smoke profile, HTML and PDF included.
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

import report_fixtures as F
from fmnist_utils import models, pipeline, report, report_format, study
from fmnist_utils.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
PARAMETERS = 'profile = "auto"  # auto | smoke | quick | full\nrun_dir = None  # run folder; None: runs/<profile>/'


def write_notebook(path: Path, *code: str, title: str | None = None, parameters: str = PARAMETERS) -> Path:
    cells = [new_markdown_cell(f"# {title or path.stem}"), new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(c) for c in code]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def results_cell(stem: str, score: float, extra: str = "") -> str:
    """A cell writing results.json and one figure, as the contract asks, in well under a second."""
    return f"""
import json
import os
from matplotlib.figure import Figure
from fmnist_utils import paths, profiles
out = paths.run_folder(profiles.resolve_name(profile), run_dir) / {stem!r}
out.mkdir(parents=True, exist_ok=True)
fig = Figure(figsize=(2, 2)); fig.subplots().plot([0, 1], [0, {score}])
fig.savefig(out / "curve.png", dpi=40)
{extra}
(out / "results.json").write_text(json.dumps({{
    "notebook": {stem!r}, "profile": profiles.get(profile).to_dict(), "seconds": 0.25,
    "score": {score}, "test": {{"accuracy": {score} / 2, "name": "not a number"}}, "flag": True,
}}))
"""


text_of = F.text_of


def build(tmp_path, notebooks, **kw):
    return pipeline.build("smoke", tmp_path / "run", tmp_path / "report", notebooks, pdf=False, progress=False, log=lambda m: None, **kw)


# --------------------------------------------------------------------------------------------
# Formatting helpers and tables


def test_number_formatting_matches_plain_format_strings():
    rng = np.random.default_rng(0)
    for x in np.concatenate([rng.random(20), rng.random(20) / 1000]):
        assert report.pct(x) == f"{100 * x:.2f}%"
        assert report.pct(x, 1) == f"{100 * x:.1f}%"
        assert float(report.num(x)) == pytest.approx(float(f"{x:.3g}"), rel=1e-12)  # three significant figures
        assert "e" not in report.num(x)
    for x in 1 + 100 * rng.random(10):
        assert float(report.num(x).replace(",", "")) == pytest.approx(round(x, 3), abs=1e-12)
    assert report.num(0.00237) == "0.00237" and report.num(0.0024) == "0.0024" and report.num(2.37e-5) == "0.0000237"
    assert report.num(9_636_746) == "9,636,746" and report.num(1234.5) == "1,234.5"
    assert report.num(0.05) == "0.05" and report.num(0.9135) in ("0.913", "0.914") and report.num(1e-4) == "0.0001"
    assert report.num(-0.00237) == "-0.00237" and report.points(0.0123) == "1.23"
    assert report.points_phrase(0.0123) == "1.23 percentage points" and report.points_phrase(0.01) == "1 percentage point"
    assert report.points_phrase(-0.01) == "-1 percentage point" and report.points_phrase(0.1) == "10 percentage points"
    assert report.points_phrase(None, reason="one seed") == "n/a (one seed)"
    assert report.num(None) == report.pct(None) == report.num(float("nan")) == report.pct(np.float32("nan")) == "n/a"
    assert report.pct(float("nan"), reason="only one fold finished") == "n/a (only one fold finished)"
    assert report.num(None, reason="only one fold finished") == "n/a (only one fold finished)"
    assert report.p_value(0.00312) == "p = 0.0031" and report.p_value(0.5) == "p = 0.5" and report.p_value(1e-9) == "p < 0.0001"
    assert report.num(True) == "yes"
    assert report.secs(12.34) == "12.3 s" and report.secs(185) == "3 min 05 s" and report.secs(3725) == "1 h 02 min"


def test_verdict_numbers_phrase_every_part_of_the_record():
    record = F.verdict("separation", "higher", "difference in within-minus-between correlation", 0.0024, 0.002, 0.0029,
                       0.003, "Mantel permutation test")
    assert report.verdict_numbers(record) == "0.0024 (95% interval 0.002 to 0.0029; p = 0.003, Mantel permutation test)"
    accuracy = F.verdict("x", "higher", "difference in accuracy", 0.0123, 0.004, 0.0207, None, "paired bootstrap")
    assert report.verdict_numbers(accuracy) == "1.23 percentage points (95% interval 0.4 to 2.07; paired bootstrap)"
    assert report.verdict_numbers(accuracy, unit="plain").startswith("0.0123 (95% interval 0.004 to 0.0207")
    level = F.verdict("x", "above_chance", "test accuracy", 0.8, 0.75, 0.85, 1e-7, "exact binomial test")
    assert report.verdict_numbers({**level, "level": 0.9}) == "80.00% (90% interval 75.00% to 85.00%; p < 0.0001, exact binomial test)"
    assert report.verdict_numbers(F.verdict("x", "tie", "Spearman rho", 0.5, None, None, None, "")) == "0.5"
    missing = F.verdict("x", "n/a", reason="only one fold finished")
    assert report.verdict_numbers(missing) == "n/a (only one fold finished)"
    assert report.verdict_numbers({**missing, "reason": None}) == "n/a"
    with pytest.raises(report.ReportError, match="lacks verdict"):
        report.verdict_numbers({"claim": "c", "statistic": "s"})
    with pytest.raises(report.ReportError, match="p is '0.01'"):
        report.verdict_numbers({**record, "p": "0.01"})


def test_table_escapes_text_numbers_captions_and_aligns_numbers():
    table = report.make_table(report._Numbering())
    html = str(table([{"name": "<b>x</b>", "value": 0.25, "n": 1200}], caption="Scores & more"))
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>" not in html
    assert '<td class="num">0.25</td>' in html and '<td class="num">1,200</td>' in html
    assert "<caption>Table 1. Scores &amp; more</caption>" in html
    assert "Table 2." in str(table({"lr": 0.05}, caption="second"))
    settings = str(table({"python": "3.11.7", "threads": 2}, {"setting": "item", "value": "what"}))
    assert 'class="num"' not in settings  # a key/value table mixes text and numbers: all left
    assert "<th>item</th><th>what</th></tr>" in settings
    long = {f"s{i}": i for i in range(report.KEY_VALUE_ONE_COLUMN + 3)}
    long_html = str(table(long))
    assert long_html.count("<th>setting</th>") == 2  # set in two column pairs
    assert all(f"<td>s{i}</td><td>{i}</td>" in long_html for i in long.values())
    assert long_html.count("<tr>") == 1 + (len(long) + 1) // 2
    # On paper a short table stays whole with its caption; a long one may break across pages.
    rows = [{"i": i} for i in range(report_format.SHORT_TABLE_ROWS + 1)]
    assert str(table(rows[:-1])).startswith('<div class="table-wrap short">')
    assert str(table(rows)).startswith('<div class="table-wrap">')


# --------------------------------------------------------------------------------------------
# No result typed into a template


@pytest.mark.parametrize("template, kind, number", [
    ("<p>{{ pct(0.908) }} of the images</p>", "expression", "0.908"),
    ('{{ figure("curves.png", "Accuracy after 10 epochs") }}', "string", "10"),
    ('{{ table(rows, caption="The top 20 of " ~ n) }}', "string", "20"),
    ("{% set x = 3 %}{{ x }}", "expression", "3"),
    ("{% macro f(digits=4) %}{{ num(y, digits) }}{% endmacro %}", "expression", "4"),
    ("{{ rows[:20] }}", "expression", "20"),
    ("{% if r.loss > 0.5 %}high{% endif %}", "expression", "0.5"),
    ("<p>trained for\n  12 epochs</p>", "prose", "12"),
    ("<p>It reached 90.8% in 12.3 s</p>", "prose", "90.8"),
    ("<p>It took 3 min on 1,000 images</p>", "prose", "1,000"),
    ("<p>{{ a }} 45 seconds</p>", "prose", "45"),
])
def test_typed_number_check_flags_each_literal_form(template, kind, number):
    found = report.typed_numbers(template)
    assert (kind, number) in [(t.kind, t.text) for t in found], found


def test_typed_number_check_allows_names_references_markup_and_the_whitelist():
    good = (
        "<style>img { max-width: 100%; margin: 0.5rem }</style><h2 id='s2'>ResNet-18, SHA-256, 28x28, fc2, L2</h2>\n"
        "<p class=\"c\" style=\"width: 40rem\">It reached {{ pct(r.test.accuracy, 1) }} in {{ secs(r.seconds) }} "
        "(the study's Fig. 2 and Tables 2–4, notebook 01_sweep){% if r.loss > r.best %} (high){% endif %}"
        "{# 90.8% is the study's #}<!-- 0.913 --> 0, 1, 2, 100%, 95% and 0.95 &#37;</p>"
        "{{ num(100 * x, 2) }}{{ rows[-1] }}{{ figure(r.figures.a, 'the 3x3 stem of ResNet-18') }}"
    )
    assert report.typed_numbers(good) == []
    lines = report.typed_numbers("<p>one</p>\n<p>two\n{{ x }} 7 images</p>\n{% set y = 8 %}")
    assert [(t.kind, t.text, t.line) for t in lines] == [("prose", "7", 3), ("expression", "8", 4)]


def test_no_template_types_a_number():
    templates = sorted((ROOT / "fmnist_utils" / "templates").rglob("*.j2"))
    assert len(templates) >= 5, templates
    offenders = {str(t.relative_to(ROOT)): report.typed_numbers(t.read_text(), t.name) for t in templates}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"numbers typed into templates (take them from results or fmnist_utils.study): {offenders}"


# Attributes that hold statistics: a template that orders them (<, >, <=, >=) is making a decision.
STATISTICS = {"low", "high", "value", "p", "se", "accuracy", "accuracy_mean", "accuracy_std", "test_accuracy",
              "val_accuracy", "train_accuracy", "difference", "loss", "val_loss", "range", "gap", "drop"}


def test_no_template_decides_by_comparing_statistics():
    import jinja2
    from jinja2 import nodes

    decisions = []
    for path in sorted((ROOT / "fmnist_utils" / "templates").rglob("*.j2")):
        for compare in jinja2.Environment().parse(path.read_text()).find_all(nodes.Compare):
            if not any(op.op in ("lt", "gt", "lteq", "gteq") for op in compare.ops):
                continue
            # A variable named p is the sweep's protocol; as an attribute (v.p) it is a p-value.
            names = {n.attr for n in compare.find_all(nodes.Getattr)} | {n.name for n in compare.find_all(nodes.Name)} - {"p"}
            if names & STATISTICS:
                decisions.append(f"{path.name}:{compare.lineno} compares {sorted(names & STATISTICS)}")
    assert not decisions, f"templates word verdict records, they do not decide: {decisions}"
    # The check sees a decision rule of the kind the templates used to hold.
    rule = jinja2.Environment().parse("{% if drop > 2 * se %}overfits{% endif %}")
    assert any(set(n.name for n in c.find_all(nodes.Name)) & STATISTICS for c in rule.find_all(nodes.Compare))


# --------------------------------------------------------------------------------------------
# What is up to date


def test_source_digest_ignores_outputs_but_not_code(tmp_path):
    nb_path = write_notebook(tmp_path / "01_a.ipynb", "x = 1")
    before = pipeline.source_digest(nb_path)
    nb = nbformat.read(nb_path, as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells[2].execution_count = 7
    nb.metadata["papermill"] = {"duration": 1.0}
    nbformat.write(nb, nb_path)
    assert pipeline.source_digest(nb_path) == before
    nb.cells[2].source = "x = 2"
    nbformat.write(nb, nb_path)
    assert pipeline.source_digest(nb_path) != before


def test_package_digest_follows_code_the_notebooks_run(tmp_path):
    pkg = tmp_path / "fmnist_utils"
    shutil.copytree(ROOT / "fmnist_utils", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = pipeline.package_digest(pkg)
    (pkg / "report.py").write_text("# only the report changed\n")
    assert pipeline.package_digest(pkg) == before
    (pkg / "train.py").write_text((pkg / "train.py").read_text() + "\n# changed\n")
    assert pipeline.package_digest(pkg) != before


def test_parameters_cell_must_declare_profile_and_run_dir(tmp_path):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_a.ipynb", "pass", parameters='profile = "auto"  # profile')
    with pytest.raises(ValueError, match=r"01_a.ipynb: its cell tagged 'parameters' does not declare run_dir"):
        build(tmp_path, nbs)
    assert not (tmp_path / "run" / "notebooks" / "01_a.ipynb").exists()  # nothing ran


def test_pipeline_reuses_what_is_up_to_date_and_reruns_from_the_first_change(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_alpha.ipynb", results_cell("01_alpha", 0.8125), title="01 · Alpha step")
    write_notebook(nbs / "02_beta.ipynb", results_cell("02_beta", 0.5))
    (nbs / "notes.ipynb").write_text("not a notebook of the pipeline")  # not NN_name: ignored

    first = build(tmp_path, nbs)
    assert [s["notebook"] for s in first["stamps"]] == ["01_alpha", "02_beta"]
    assert all(s["executed"] for s in first["stamps"])
    run = tmp_path / "run"
    executed = {s: pipeline.executed_path(run, s).stat().st_mtime_ns for s in ("01_alpha", "02_beta")}

    # A notebook without a section template still gets a section: its numbers and its figures.
    page = first["html"].read_text()
    text = text_of(page)
    for stem, score in (("01_alpha", 0.8125), ("02_beta", 0.5)):
        section = page[page.index(f'<section id="{stem}"'):]
        section = section[: section.index("</section>")]
        assert report.num(score) in text_of(section) and report.num(score / 2) in text_of(section)
        assert "test.accuracy" in section and "not a number" not in section and "flag" not in section
        assert section.count('<img src="data:image/png;base64,') == 1
    assert "01 · Alpha step" in text
    assert (tmp_path / "report" / "notebooks" / "01_alpha.html").is_file()
    assert 'href="notebooks/01_alpha.html"' in page

    # Unchanged: nothing is executed again, the page is rebuilt from the same results.
    again = build(tmp_path, nbs)
    assert [s["executed"] for s in again["stamps"]] == [False, False]
    assert {s: pipeline.executed_path(run, s).stat().st_mtime_ns for s in executed} == executed
    assert again["html"].is_file()

    # A change in the second notebook reruns only it; one in the first reruns both.
    write_notebook(nbs / "02_beta.ipynb", results_cell("02_beta", 0.25))
    assert [s["executed"] for s in build(tmp_path, nbs)["stamps"]] == [False, True]
    write_notebook(nbs / "01_alpha.ipynb", results_cell("01_alpha", 0.75), title="01 · Alpha step")
    assert [s["executed"] for s in build(tmp_path, nbs)["stamps"]] == [True, True]
    # A lost results.json makes its notebook (and the later ones) run again.
    (run / "02_beta" / "results.json").unlink()
    assert [s["executed"] for s in build(tmp_path, nbs)["stamps"]] == [False, True]
    assert json.loads((run / "02_beta" / "results.json").read_text())["score"] == 0.25

    # Without Chromium the HTML is kept, the PDF is not pretended, and the exit status says so.
    monkeypatch.setenv(report.CHROMIUM_ENV, str(tmp_path / "no-such-chromium"))
    rc = main(["report", "--profile", "smoke", "--run-dir", str(run), "--report-dir", str(tmp_path / "report"),
               "--notebooks", str(nbs)])
    assert rc == pipeline.EXIT_NO_PDF
    assert (tmp_path / "report" / "report.html").is_file() and not (tmp_path / "report" / "report.pdf").exists()


def _declare_reads(path: Path, reads) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata["fmnist"] = {"inputs": [], "reads": reads}
    nbformat.write(nb, path)


def test_a_change_reruns_what_reads_it_and_nothing_else(tmp_path):
    # The run is a graph: 02 reads 01, 03 reads 02, 04 reads nothing (as the kit's 04_improvements).
    nbs = tmp_path / "nbs"
    reads = {"01_a": [], "02_b": ["01_a"], "03_c": ["02_b"], "04_d": []}
    for stem, r in reads.items():
        _declare_reads(write_notebook(nbs / f"{stem}.ipynb", results_cell(stem, 0.5)), r)
    assert pipeline.read_graph(pipeline.discover(nbs)) == {k: tuple(v) for k, v in reads.items()}
    assert all(s["executed"] for s in build(tmp_path, nbs)["stamps"])
    lines = []
    _declare_reads(write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.75)), [])
    stamps = pipeline.build("smoke", tmp_path / "run", tmp_path / "report", nbs, pdf=False, progress=False,
                            log=lines.append)["stamps"]
    assert [s["executed"] for s in stamps] == [True, True, True, False]
    assert any("02_b: running (a notebook it reads ran again (01_a))" in line for line in lines)
    _declare_reads(write_notebook(nbs / "04_d.ipynb", results_cell("04_d", 0.25)), [])
    assert [s["executed"] for s in build(tmp_path, nbs)["stamps"]] == [False, False, False, True]


def test_a_notebook_reads_only_earlier_ones_and_says_so_before_anything_runs(tmp_path):
    nbs = tmp_path / "nbs"
    _declare_reads(write_notebook(nbs / "01_a.ipynb", results_cell("01_a", 0.5)), ["02_b"])
    _declare_reads(write_notebook(nbs / "02_b.ipynb", results_cell("02_b", 0.5)), [])
    with pytest.raises(ValueError, match=r"01_a.ipynb: metadata fmnist.reads names \['02_b'\], which do not run before it"):
        build(tmp_path, nbs)
    assert not (tmp_path / "run" / "01_a").exists()  # nothing ran
    assert pipeline.declared_reads(nbs / "02_b.ipynb", ["01_a"]) == ()


def test_the_kits_notebooks_declare_what_they_read():
    # 04 stands alone: editing 01 reruns 01, 02 (its choice) and 03 (02's network), never 04.
    graph = pipeline.read_graph(pipeline.discover(ROOT / "notebooks"))
    assert graph["02_train"] == ("01_sweep",) and graph["03_resnet_compare"] == ("02_train",)
    assert graph["01_sweep"] == () and graph["04_improvements"] == ()
    # A budget that leaves 01 out: 02 runs without it (the study's recipe), and 01 adds nothing to its key.
    found = pipeline.discover(ROOT / "notebooks")
    without = pipeline.read_graph(found, [nb for nb in found if nb.stem != "01_sweep"])
    assert "01_sweep" not in without and without["02_train"] == () and without["03_resnet_compare"] == ("02_train",)


def test_missing_chromium_says_what_to_install(tmp_path, monkeypatch):
    page = tmp_path / "report.html"
    page.write_text("<p>x</p>")
    monkeypatch.setenv(report.CHROMIUM_ENV, str(tmp_path / "nowhere" / "chromium"))
    with pytest.raises(report.PdfUnavailable) as err:
        report.write_pdf(page, tmp_path / "report.pdf", install=True, log=lambda m: None)
    message = str(err.value)
    assert "report.pdf was NOT written" in message and "apt-get install chromium" in message
    assert str(page.resolve()) in message
    assert not (tmp_path / "report.pdf").exists()


# --------------------------------------------------------------------------------------------
# Failures


def test_runner_streams_the_lines_a_notebook_prints_as_it_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("FMNIST_PROGRESS", raising=False)
    nbs = tmp_path / "nbs"
    talk = """
import os
from fmnist_utils import progress
print("mode", progress.mode(), os.environ.get("FMNIST_PROGRESS"))
bar = progress.bar(4, desc="step", unit="step")
for i in range(4):
    bar.update()
    if i % 2:
        bar.set_postfix({"i": i})  # a line only when the caller refreshes, not on every update
bar.close()
print("half a", end="")
print(" line")
"""
    write_notebook(nbs / "01_talk.ipynb", talk, results_cell("01_talk", 0.5))
    lines = []
    pipeline.run_notebooks("smoke", tmp_path / "run", nbs, log=lines.append)
    said = [line.removeprefix("01_talk | ") for line in lines if line.startswith("01_talk | ")]
    assert said[0] == "mode lines lines"  # the kernel was told to print lines
    assert re.fullmatch(r"step: +50% 2/4 \[\d\d:\d\d<\d\d:\d\d, .*, i=1\]", said[1]), said
    assert re.fullmatch(r"step: +100% 4/4 \[\d\d:\d\d<00:00, .*, i=3\]", said[2]), said
    assert said[3] == "half a line"
    assert "FMNIST_PROGRESS" not in os.environ  # only the kernel's environment had it
    quiet = []
    pipeline.run_notebooks("smoke", tmp_path / "run", nbs, force=True, progress=False, log=quiet.append)
    assert not [line for line in quiet if line.startswith("01_talk | ")]


def test_failing_notebook_stops_the_pipeline_names_notebook_and_cell(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    write_notebook(nbs / "01_ok.ipynb", results_cell("01_ok", 0.5))
    write_notebook(nbs / "02_fail.ipynb", 'print("before the failure")', 'x = 41\nraise ValueError(f"boom on purpose {x + 1}")')
    write_notebook(nbs / "03_after.ipynb", results_cell("03_after", 0.5))
    out = tmp_path / "report"
    out.mkdir()
    for stale in ("report.html", "report.pdf"):  # a previous run's report is replaced only by a finished one
        (out / stale).write_text("stale")
    args = ["report", "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--report-dir", str(out),
            "--notebooks", str(nbs), "--no-pdf"]

    rc = main(args)
    err = capsys.readouterr().err
    assert rc == pipeline.EXIT_NOTEBOOK_FAILED
    assert "notebook 02_fail failed: ValueError: boom on purpose 42" in err
    assert f"in cell 4 of {nbs / '02_fail.ipynb'}" in err  # title, parameters, print, then the failing cell
    assert 'raise ValueError(f"boom on purpose {x + 1}")' in err
    assert "no new report was written" in err
    assert (out / "report.html").read_text() == (out / "report.pdf").read_text() == "stale"  # the earlier run's, kept
    partial = tmp_path / "run" / "notebooks" / "02_fail.ipynb"
    assert partial.is_file() and "before the failure" in partial.read_text()
    assert not (tmp_path / "run" / "notebooks" / "03_after.ipynb").exists()
    assert json.loads((tmp_path / "run" / "notebooks" / "02_fail.stamp.json").read_text())["status"] == "failed"

    # Fixed: the notebook before it is reused, the failed one and the ones after it run.
    write_notebook(nbs / "02_fail.ipynb", results_cell("02_fail", 0.5))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "01_ok: up to date, reused" in printed and "02_fail: running" in printed and "03_after: running" in printed
    assert (out / "report.html").read_text() != "stale" and not (out / "report.pdf").exists()  # the old PDF went with its page


def test_failure_recorded_only_in_metadata_is_a_failure(tmp_path, monkeypatch):
    """papermill may finish without raising while the executed notebook records an exception."""
    source = write_notebook(tmp_path / "nbs" / "01_meta.ipynb", "a = 1", "b = 2")

    def fake_execute_notebook(input_path, output_path, **kw):
        nb = nbformat.read(input_path, as_version=4)
        nb.metadata["papermill"] = {"exception": True}
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                cell.metadata["papermill"] = {"exception": i == 3, "status": "failed" if i == 3 else "completed"}
        nbformat.write(nb, output_path)
        return nb

    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute_notebook)
    with pytest.raises(pipeline.NotebookFailed) as err:
        pipeline.execute(source, tmp_path / "out.ipynb", {"profile": "smoke", "run_dir": str(tmp_path)})
    assert err.value.stem == "01_meta" and err.value.cell_number == 4 and err.value.cell_source == "b = 2"
    assert "papermill marked this cell as failed" in str(err.value)


def test_notebook_that_writes_no_results_is_a_failure(tmp_path, monkeypatch):
    write_notebook(tmp_path / "nbs" / "01_silent.ipynb", "pass")
    monkeypatch.setattr(pipeline, "execute", lambda *a, **k: None)  # "succeeds" without writing anything
    with pytest.raises(pipeline.NotebookFailed, match="finished without writing"):
        build(tmp_path, tmp_path / "nbs")
    assert json.loads(pipeline.stamp_path(tmp_path / "run", "01_silent").read_text())["status"] == "failed"


# --------------------------------------------------------------------------------------------
# The sections word the verdict records; they decide nothing


def _train_text(tmp_path, **kw):
    return text_of(F.render(tmp_path, {"02_train": F.train_results(**kw)}))


@pytest.mark.parametrize("word, expected", [
    ("overfits", "Validation accuracy fell significantly from its best, after epoch 2, to the last epoch: the network "
                 "fits the training images better without generalising better, the usual sign of overfitting: the drop "
                 "in validation accuracy is 6 percentage points (95% interval 3.1 to 8.9; p = 0.0002, one-sided binomial test)."),
    ("no_significant_drop", "The test finds no significant drop in validation accuracy from the best epoch (epoch 2) to "
                            "the last; this is not evidence that there is none: the drop in validation accuracy is 6 "
                            "percentage points (95% interval 3.1 to 8.9; p = 0.0002, one-sided binomial test)."),
    # A results.json saved with the old word is worded with the new one: never "no overfitting".
    ("no_overfitting", "The test finds no significant drop in validation accuracy from the best epoch (epoch 2)"),
    ("n/a", "Whether validation accuracy fell from its best epoch: n/a (only one epoch)."),
    ("wobbles", "the claim tested by overfitting: wobbles; the drop in validation accuracy is 6 percentage points"),
])
def test_train_section_words_the_overfitting_verdict(tmp_path, word, expected):
    verdicts = F.train_results()["verdicts"]
    verdicts["overfitting"] = F.verdict("overfitting", word, "drop in validation accuracy", 0.06, 0.031, 0.089, 0.0002,
                                        "one-sided binomial test", reason="only one epoch")
    text = _train_text(tmp_path, verdicts=verdicts)
    assert expected in text
    # The curves are described as they are, whatever the verdict.
    assert "Validation loss was lowest after epoch 2 (0.5, accuracy 85.00%) and was 0.55 after the last epoch, 3." in text
    assert "At the last epoch training accuracy was 90.00% and validation accuracy 79.00%" in text
    assert ("usual sign of overfitting" in text) == (word == "overfits")
    assert not report.equality_claims(text)


def test_train_section_leads_with_the_chosen_configuration_beside_the_study_recipe(tmp_path):
    text = _train_text(tmp_path)
    assert "Training the CNN with the configuration chosen by cross-validation" in text
    assert "with the configuration that cross-validation on the training split chose in 01_sweep : SGD, learning rate 0.1" in text
    assert "the study's recipe (SGD, learning rate 0.05, batch size 128, dropout 0.5 and weight decay 0.001) was trained" in text
    assert "test, the study's recipe (reference) 30 70.00% 0.713" in text
    assert ("The network trained with the chosen configuration classifies more of these test images correctly than the "
            "one trained with the study's recipe: the difference in accuracy is 1.23 percentage points (95% interval 0.4 "
            "to 2.07; p = 0.0031, McNemar's exact test).") in text
    assert "these two trained networks, one training run each, on these test images" in text  # what was resampled
    assert "test, as the study reported" in text and report.pct(study.TEST_ACCURACY, 1) in text  # its figure beside ours
    assert (f"it chose its configuration by the accuracy on that same test set, so its {report.pct(study.TEST_ACCURACY, 1)} "
            "is an optimistic estimate") in text
    assert ("Its test accuracy is above chance, the accuracy of guessing one of the ten classes: the test accuracy is "
            "80.00% (95% interval 62.00% to 91.00%; p < 0.0001") in text
    assert "The most frequent mistake is class 2 taken for class 1: 3 images, 30.0% of the class 2 test images" in text
    assert "class 1 is recognised best (90.00%) and class 2 worst (70.00%)" in text
    assert "80.00%" in text and report.num(0.6125) in text and "12.5 s" in text and "1,234,567" in text

    # With the study's recipe as the headline there is no reference: 02's section says why (and the
    # Discussion lists the claim as not measured); the Findings and the abstract, which give
    # results, leave the question out.
    page = F.render(tmp_path / "study", {"02_train": F.train_results(config_source="study")})
    text = text_of(page)
    assert "Training the study's CNN" in text and "(reference)" not in text and "McNemar's test below" not in text
    assert ("Whether the network trained with the chosen configuration classifies more test images correctly than the "
            "one trained with the study's recipe: n/a (the headline CNN is the study's recipe).") in text
    top = text_of(page[:page.index('<section id="method"')])  # the title block, the Findings and the abstract
    assert "Training the study's CNN" in text and "headline CNN is the study's recipe" not in top
    assert "the network trained with the study's recipe" not in top.lower() and "Findings" in top


def test_abstract_leads_with_the_cv_choice_and_says_the_study_tuned_on_its_test_set(tmp_path):
    page = F.render(tmp_path, {"01_sweep": F.sweep_results(), "02_train": F.train_results()})
    abstract = text_of(page[page.index('<section id="abstract"'):page.index('<section id="method"')])
    choice = abstract.index("cross-validated sweep over 3 configurations varying learning rate")
    assert choice < abstract.index("classifies 80.00% of 30 test images correctly")
    assert "chose learning rate 0.1, batch size 128 and dropout 0.5 (mean validation accuracy 82.50% over the folds)" in abstract
    assert ("Between it and the study's configuration the folds show no significant difference: the mean paired "
            "difference in accuracy is 1.25 percentage points (95% interval -2 to 4.5; p = 0.31, corrected resampled "
            "t-test") in abstract
    assert ("The study reports 90.8% after 10 epochs on all 60,000 training images, but it chose its configuration by "
            "its accuracy on its test set, so its 90.8% is optimistic.") == (
        f"The study reports {report.pct(study.TEST_ACCURACY, 1)} after {study.TEST_EPOCHS} epochs on all "
        f"{report.num(study.TRAIN_IMAGES)} training images, but it chose its configuration by its accuracy on its test "
        f"set, so its {report.pct(study.TEST_ACCURACY, 1)} is optimistic.")
    assert ("The study reports 90.8% after 10 epochs on all 60,000 training images, but it chose its configuration by "
            "its accuracy on its test set, so its 90.8% is optimistic.") in abstract
    sweep = text_of(page[page.index('<section id="01_sweep"'):])
    assert "Between the chosen configuration and the runner-up the folds show no significant difference" in sweep
    assert "corrected resampled t-test (Nadeau and Bengio)" in sweep
    assert "it is the headline CNN that 02_train trains" in sweep


def test_abstract_words_the_ablation_from_its_verdict_and_table(tmp_path):
    improvements = F.improvements_results()
    page = F.render(tmp_path, {"04_improvements": improvements})
    abstract = text_of(page[page.index('<section id="abstract"'):page.index('<section id="method"')])
    rows = {t["row"]: t for t in improvements["table"]}
    assert f"The modern recipe classifies {report.pct(rows['modern']['accuracy_mean'])} of the test images" in abstract
    word = improvements["verdicts"]["row:modern"]["verdict"]
    opening = {"higher": "Across seeds the modern recipe is more accurate than the study's",
               "lower": "Across seeds the modern recipe is less accurate than the study's on this budget",
               "no_significant_difference": "Across seeds, on these test images, the two recipes show no significant "
                                            "difference"}[word]
    assert f"{opening}: the " in abstract
    assert "The most accurate row" not in abstract  # an untested argmax over the rows is no finding
    assert "The report also covers" not in abstract  # worded above, not merely listed


def test_settings_appendix_lists_the_parameters_each_notebook_ran_with(tmp_path):
    sweep = {**F.sweep_results(), "parameters": {"profile": "quick", "run_dir": "/r", "n_folds": 3, "space": "oat",
                                                   "factors": ["lr"], "storage": None}}
    page = F.render(tmp_path, {"01_sweep": sweep, "02_train": F.train_results()})
    # The settings tables sit in Appendix A, after the results; the method is one paragraph without tables.
    summary = page[page.index('<section id="method"'):page.index('<section id="01_sweep"')]
    assert "<table" not in summary and summary.count("<p>") == 1
    assert page.index('<section id="references"') < page.index('<section id="settings"') < page.index('<section id="environment"')
    method = text_of(page[page.index('<section id="settings"'):page.index('<section id="environment"')])
    assert "The parameters each notebook ran with" in method
    assert 'n_folds = 3; space = "oat"; factors = [\'lr\']; storage = None' in method
    assert "run_dir = " not in method and "02_train" not in method.split("The parameters each notebook ran with")[1]


def test_a_missing_verdict_is_an_error_that_names_it(tmp_path):
    results = F.train_results()
    del results["verdicts"]["overfitting"]
    with pytest.raises(report.ReportError, match=r"02_train/results.json verdicts\['overfitting'\] is missing"):
        F.render(tmp_path, {"02_train": results})


def test_a_notebook_without_a_template_gets_its_verdicts_worded(tmp_path):
    page = F.render(tmp_path, {"05_extra": F.untemplated_results()})
    section = text_of(page[page.index('<section id="05_extra"'):])
    assert ("The modern recipe beats the study's higher mean difference in accuracy over seeds: 2.25 percentage points "
            "(95% interval 1 to 3.5; p = 0.004, paired t-test over 3 seeds)") in section
    assert "modern.accuracy_mean" in section and section.count("Figure ") == 1


# --------------------------------------------------------------------------------------------
# The random-init fallback is named wherever the network is


WHOLE_REPORT = ("01_sweep", "02_train", "03_resnet_compare", "04_improvements")


def _whole_report(tmp_path, pretrained):
    results = {"01_sweep": F.sweep_results(), "02_train": F.train_results(),
               "03_resnet_compare": F.compare_results(pretrained), "04_improvements": F.improvements_results()}
    return F.render(tmp_path, results)


def bare_mentions(text: str, title: str, tag: str | None = None) -> list[str]:
    """Each "ResNet-18" in ``text`` that is neither part of ``title`` (or its short ``tag``) nor the
    ResNet-18 trained on Fashion-MNIST (another network), with its surroundings."""
    names = [re.escape(title)] + ([re.escape(tag)] if tag else [])
    rest = re.sub("|".join(names) + r"|ResNet-18 (?:trained )?on Fashion-MNIST", " ", text)
    return [rest[max(0, m.start() - 60):m.end() + 60] for m in re.finditer("ResNet-18", rest)]


def _places(page: str) -> dict[str, list[str]]:
    """The places that name the network: title, contents, headings, table cells, captions, abstract, section."""
    between = lambda a, b: page[page.index(a):page.index(b, page.index(a))]  # noqa: E731
    return {
        "title": re.findall(r"<title>(.*?)</title>", page, re.S),
        "contents": [between('<nav class="toc"', "</nav>")],
        "headings": re.findall(r"<h[123]>(.*?)</h[123]>", page, re.S),
        "table cells": re.findall(r"<td>(.*?)</td>", page, re.S),
        "captions": re.findall(r"<figcaption>(.*?)</figcaption>", page, re.S) + re.findall(r' alt="(.*?)"', page),
        "abstract": [between('<section id="abstract"', "</section>")],
        "comparison": [between('<section id="03_resnet_compare"', "</section>")],
    }


def test_fallback_is_named_in_every_place_that_names_the_network(tmp_path):
    # Named in full where it matters (title, contents, heading, the boxed notice, figure captions) and
    # by its short tag everywhere else; never a bare "ResNet-18".
    title = models.model_title(models.RANDOM_INIT_SOURCE)
    tag = models.model_tag(models.RANDOM_INIT_SOURCE)
    assert bare_mentions("By this measure ResNet-18's classes stand apart", title, tag)  # the check can fail
    page = _whole_report(tmp_path, pretrained=False)
    assert not bare_mentions(text_of(page), title, tag)
    places = _places(page)
    for place, pieces in places.items():
        found = [text_of(p) for p in pieces if "ResNet" in p]
        assert found, f"the {place} should name the network"
        for piece in found:
            assert not bare_mentions(piece, title, tag), (place, bare_mentions(piece, title, tag))
    for place in ("title", "contents", "headings", "captions"):
        assert any(title in text_of(p) for p in places[place]), place
    assert tag in text_of(places["abstract"][0])
    assert sum(text_of(cell) == tag for cell in places["table cells"]) == 2  # the layer table's network column
    assert any(text_of(cell).startswith(tag + ",") for cell in places["table cells"])  # the probe table
    section = places["comparison"][0]
    prose = re.sub(r"<h2>.*?</h2>|<figcaption>.*?</figcaption>|<p class=\"warning\">.*?</p>| alt=\".*?\"", " ", section,
                   flags=re.S)
    assert title not in text_of(prose)  # the long name only in the heading, the notice and the captions
    comparison = text_of(section)
    for sentence in (f"By this measure the CNN's classes stand apart more clearly than those of {tag}:",
                     f"The CNN and {tag} rank the pairs of classes alike, more than chance would:",
                     f"The CNN's features give a linear classifier more correct test images than those of {tag}:",
                     f"The paired bootstrap finds no significant difference between the CNN and {tag} in how close they "
                     "stay to the raw pixels:",
                     f"On these test images, linear probes on raw pixels and on the frozen features of {tag} show no "
                     "significant difference"):
        assert sentence in comparison
    assert f"difference in within-minus-between correlation, CNN minus {tag} is 0.0024" in comparison  # relabelled
    assert '<p class="warning"><strong>RANDOM INIT (offline fallback: no ImageNet weights).</strong>' in page
    assert not report.equality_claims(text_of(page))


def test_pretrained_network_is_named_as_such_and_no_fallback_is_mentioned(tmp_path):
    title = models.model_title(models.CACHE_SOURCE)
    page = _whole_report(tmp_path, pretrained=True)
    assert "RANDOM INIT" not in page and "randomly initialised" not in page and 'class="warning"' not in page
    assert not bare_mentions(text_of(page), title)
    places = _places(page)
    for place in ("title", "contents", "headings", "abstract"):
        assert any(title in text_of(p) for p in places[place]), place
    assert sum(text_of(cell) == title for cell in places["table cells"]) == 2
    comparison = text_of(places["comparison"][0])
    assert f"The CNN and {title} rank the pairs of classes alike" in comparison
    assert f"Weights of {title}: {models.CACHE_SOURCE}, SHA-256 {'ab' * 32}" in comparison


def test_sentences_read_as_sentences_whatever_the_verdict_and_the_ties(tmp_path):
    compare = F.compare_results(pretrained=True)
    compare["verdicts"]["matrix_agreement"]["verdict"] = "no_evidence"
    title = compare["resnet_title"]
    train = F.train_results()
    train["per_class_accuracy"] = {name: 0.5 for name in train["classes"]}
    train["per_class_accuracy"]["class 0"] = 0.875
    page = F.render(tmp_path, {"02_train": train, "03_resnet_compare": compare})
    abstract = text_of(page[page.index('<section id="abstract"'):page.index('<section id="method"')])
    comparison = text_of(page[page.index('<section id="03_resnet_compare"'):])
    for text in (abstract, comparison):
        assert f"This does not show that the CNN and {title} rank the pairs of classes alike:" in text
    assert "trained in 02_train with the configuration chosen by cross-validation, for 3 epochs" in comparison
    section = text_of(page[page.index('<section id="02_train"'):page.index('<section id="03_resnet_compare"')])
    assert "class 0 is recognised best (87.50%) and class 1, class 2 worst (50.00%). 2 of the 3 classes fall below" in section
    assert ("Accuracy and mean cross-entropy loss of the network trained with the chosen configuration, and of the "
            "study's recipe on the same test images") in section
    assert "in fp32 precision on a test CPU; the whole notebook took 12.5 s" in section


# --------------------------------------------------------------------------------------------
# The kit's own notebooks, end to end


def pdf_text(pdf: Path) -> tuple[int, str]:
    pages = int(re.search(r"Pages:\s+(\d+)", subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout).group(1))
    return pages, subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(report.find_chromium() is None or shutil.which("pdftotext") is None,
                    reason="needs Chromium (apt-get install chromium) and pdftotext (poppler-utils)")
def test_smoke_report_end_to_end(smoke_build):
    built, run, out = smoke_build, smoke_build["run"], smoke_build["report"]
    before = [p.stem for p in pipeline.discover()]
    assert all(s["executed"] for s in built["stamps"])
    stems = [s["notebook"] for s in built["stamps"]]
    assert stems == sorted(stems) and set(before) <= set(stems)  # every notebook, in order
    page = built["html"].read_text()
    text = text_of(page)
    assert not report.equality_claims(text), report.equality_claims(text)  # no "tie", "no overfitting", "at chance"
    assert 'id="findings"' in page

    # Every notebook has its section; sections come in notebook order.
    positions = [page.index(f'<section id="{stem}"') for stem in stems]
    assert positions == sorted(positions)
    for section_id in ("abstract", "method", "environment", "reproduce"):
        assert f'<section id="{section_id}"' in page
    assert page.count("<table") >= 4 and "<script" not in page

    # The numbers on the page are those in the results files.
    r = json.loads((run / "02_train" / "results.json").read_text())
    assert f"classifies {report.pct(r['test']['accuracy'])} of {report.num(r['data']['test_images'])} test images" in text
    assert report.num(r["test"]["loss"]) in text and report.num(r["n_parameters"]) in text
    for name, acc in r["per_class_accuracy"].items():
        assert f"{name} {sum(r['confusion_matrix'][r['classes'].index(name)])} " in text and report.pct(acc) in text
    last = r["history"][-1]
    assert report.pct(last["val_accuracy"]) in text and report.num(last["train_loss"]) in text
    for stamp in built["stamps"]:
        assert report.secs(stamp["seconds"]) in text
    for name in r["figures"].values():
        assert (run / "02_train" / name).is_file()
    assert page.count('<img src="data:image/png;base64,') >= len(r["figures"])
    for key, value in r["profile"].items():
        assert key in text

    # The PDF has pages with the report's text.
    pages, pdf = pdf_text(built["pdf"])
    pdf = re.sub(r"\s+", " ", pdf)
    assert pages >= 2
    assert "Training the CNN with the configuration chosen by cross-validation" in pdf and report.pct(r["test"]["accuracy"]) in pdf
    # Ready to hand in: no machine path or file: link, bookmarks, page numbers (tests/test_report_pdf.py).
    from test_report_pdf import check_hand_in

    check_hand_in(built["html"], built["pdf"], run)

    # Built again: every notebook is reused, nothing executed, the report is complete again.
    mtimes = {stem: pipeline.executed_path(run, stem).stat().st_mtime_ns for stem in stems}
    again = pipeline.build("smoke", run, out, pdf=True, progress=False, log=lambda m: None)
    assert not any(s["executed"] for s in again["stamps"])
    assert {stem: pipeline.executed_path(run, stem).stat().st_mtime_ns for stem in stems} == mtimes
    assert again["pdf"].is_file() and again["html"].read_text().count("<section") == page.count("<section")


def test_the_sweep_section_states_its_successive_halving(tmp_path):
    """01's protocol says what the rung schedule did, in the words the sweep printed before it started."""
    text = F.text_of(F.render(tmp_path, {"01_sweep": F.sweep_results()}))
    assert "Successive halving (Optuna's SuccessiveHalvingPruner, min_epochs 3, reduction factor 4)" in text
    assert "1 configuration was pruned." in text
