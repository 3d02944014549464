"""The report pipeline: what is up to date, failures, the page's numbers, the templates' prose, the PDF.

Most tests run tiny notebooks (a second each) through the real runner and papermill; one slow
test runs the kit's own notebooks with the smoke profile, HTML and PDF included.
"""

import html as htmllib
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

from fmnist_utils import pipeline, report
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


def text_of(html: str) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", html.replace("<wbr>", ""))))


def build(tmp_path, notebooks, **kw):
    return pipeline.build("smoke", tmp_path / "run", tmp_path / "report", notebooks, pdf=False, progress=False, log=lambda m: None, **kw)


# --------------------------------------------------------------------------------------------
# Formatting helpers and tables


def test_number_formatting_matches_plain_format_strings():
    rng = np.random.default_rng(0)
    for x in rng.random(20):
        assert report.pct(x) == f"{100 * x:.2f}%"
        assert report.pct(x, 1) == f"{100 * x:.1f}%"
        assert float(report.num(x)) == pytest.approx(round(x, 3), abs=1e-12)
    assert report.num(9_636_746) == "9,636,746"
    assert report.num(0.05) == "0.05" and report.num(0.9135) in ("0.913", "0.914") and report.num(1e-4) == "0.0001"
    assert report.num(None) == report.pct(None) == "n/a"
    assert report.num(True) == "yes"
    assert report.secs(12.34) == "12.3 s" and report.secs(185) == "3 min 05 s" and report.secs(3725) == "1 h 02 min"


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


# --------------------------------------------------------------------------------------------
# No result typed into a template


def test_prose_literal_detector_finds_typed_results_and_ignores_expressions():
    bad = "<p>It reached 90.8% after 12.3 s, loss 0.913, in 3 min and 45 seconds.</p>"
    kinds = [k for k, _ in report.prose_literals(bad)]
    assert kinds.count("decimal") == 3 and "percentage" in kinds and kinds.count("duration") >= 2
    good = (
        "<style>img { max-width: 100%; margin: 0.5rem }</style><h2 id='s2'>ResNet-18, five folds</h2>"
        "<p>It reached {{ pct(r.test.accuracy) }} in {{ secs(r.seconds) }}{% if r.loss > 0.5 %} (high){% endif %}"
        "{# 90.8% is the study's #}<!-- 0.913 --></p>"
    )
    assert report.prose_literals(good) == []


def test_no_template_types_a_result_into_its_prose():
    templates = sorted((ROOT / "fmnist_utils" / "templates").rglob("*.j2"))
    assert templates, "no templates found"
    offenders = {str(t.relative_to(ROOT)): report.prose_literals(t.read_text()) for t in templates}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"result-like numbers typed into templates (take them from results): {offenders}"


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
    for stale in ("report.html", "report.pdf"):  # a previous run's report must not survive
        (out / stale).write_text("stale")
    args = ["report", "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--report-dir", str(out),
            "--notebooks", str(nbs), "--no-pdf"]

    rc = main(args)
    err = capsys.readouterr().err
    assert rc == pipeline.EXIT_NOTEBOOK_FAILED
    assert "notebook 02_fail failed: ValueError: boom on purpose 42" in err
    assert f"in cell 4 of {nbs / '02_fail.ipynb'}" in err  # title, parameters, print, then the failing cell
    assert 'raise ValueError(f"boom on purpose {x + 1}")' in err
    assert "no report was written" in err
    assert not (out / "report.html").exists() and not (out / "report.pdf").exists()
    partial = tmp_path / "run" / "notebooks" / "02_fail.ipynb"
    assert partial.is_file() and "before the failure" in partial.read_text()
    assert not (tmp_path / "run" / "notebooks" / "03_after.ipynb").exists()
    assert json.loads((tmp_path / "run" / "notebooks" / "02_fail.stamp.json").read_text())["status"] == "failed"

    # Fixed: the notebook before it is reused, the failed one and the ones after it run.
    write_notebook(nbs / "02_fail.ipynb", results_cell("02_fail", 0.5))
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "01_ok: up to date, reused" in printed and "02_fail: running" in printed and "03_after: running" in printed
    assert (out / "report.html").is_file()


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
# The 01_train section says what its numbers say


def _fake_train_results(history, test_accuracy=0.8, se=0.01):
    classes = [f"class {i}" for i in range(3)]
    cm = [[8, 2, 0], [1, 9, 0], [0, 3, 7]]
    per_class = {c: cm[i][i] / sum(cm[i]) for i, c in enumerate(classes)}
    config = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.05, "batch_size": 128, "dropout": 0.5,
              "weight_decay": 0.001, "epochs": len(history), "seed": 0, "precision": "auto"}
    return {
        "notebook": "01_train", "profile": {"name": "quick"}, "seconds": 12.5, "config_source": "study",
        "config": config, "n_parameters": 1234567,
        "environment": {"device_name": "a test CPU", "precision_auto": "fp32", "git_revision": "abc",
                        "packages": {"torch": "2"}, "python": "3", "platform": "x", "cpu_threads": 2},
        "data": {"source": "/data", "train_images": 900, "val_images": 100, "test_images": 30,
                 "train_split_size": 60000, "test_split_size": 10000},
        "history": history, "best_val_epoch": min(history, key=lambda r: r["val_loss"]),
        "val_accuracy_standard_error": se,
        "training_seconds": 10.25, "test": {"accuracy": test_accuracy, "loss": 0.6125},
        "classes": classes, "per_class_accuracy": per_class, "confusion_matrix": cm,
        "top_confusions": [{"true": "class 2", "predicted": "class 1", "count": 3, "fraction_of_true": 0.3}],
        "reference": {"test_accuracy": 0.908, "epochs": 10}, "checkpoint": "checkpoint.pt",
        "figures": {k: f"{k}.png" for k in ("learning_curves", "confusion_matrix", "per_class_accuracy", "misclassified")},
    }


def _render_train(tmp_path, results):
    out = tmp_path / "run" / "01_train"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results))
    png = (ROOT / "tests" / "test_plots.py")  # any bytes do for embedding; the page only base64-encodes them
    for name in results["figures"].values():
        (out / name).write_bytes(png.read_bytes())
    stamps = [{"notebook": "01_train", "source": str(tmp_path / "none.ipynb"), "executed_notebook": "x.ipynb",
               "seconds": 20.5, "finished_utc": "2026-01-01T00:00:00+00:00", "executed": True}]
    return text_of(report.render(tmp_path / "run", stamps))


def test_train_section_wording_follows_the_curves(tmp_path):
    def row(epoch, val_loss, train_acc, val_acc):
        return {"epoch": epoch, "train_loss": 1 / epoch, "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc}

    # Validation accuracy falls by far more than its standard error: overfitting.
    overfit = [row(1, 0.6, 0.7, 0.72), row(2, 0.5, 0.8, 0.85), row(3, 0.55, 0.9, 0.79)]
    text = _render_train(tmp_path, _fake_train_results(overfit, se=0.01))
    assert "Validation loss was lowest after epoch 2 (0.5, accuracy 85.00%) and was 0.55 after the last epoch, 3." in text
    assert "fell by 6 percentage points over those epochs, more than twice its standard error on 100 images (1 points)" in text
    assert "the usual sign of overfitting" in text
    assert "exceeds validation accuracy (79.00%) by 11 percentage points" in text
    assert "The most frequent mistake is class 2 taken for class 1: 3 images, 30.0% of the class 2 test images" in text
    assert "class 1 is recognised best (90.00%) and class 2 worst (70.00%)" in text
    assert "80.00%" in text and report.num(0.6125) in text and "12.5 s" in text and "1,234,567" in text
    assert "a smaller budget than the study's, and reaches 80.00%: 10.8 percentage points below it" in text

    # The same curves with a noisy validation estimate: no claim of overfitting.
    text = _render_train(tmp_path, _fake_train_results(overfit, se=0.05))
    assert "within twice its standard error on 100 images (5 points)" in text and "overfitting from noise" in text
    assert "the usual sign of overfitting" not in text

    improving = [row(1, 0.6, 0.7, 0.72), row(2, 0.5, 0.75, 0.78)]
    text = _render_train(tmp_path, _fake_train_results(improving, test_accuracy=0.95))
    assert "Validation loss was still falling at the last epoch (0.5 after epoch 2)" in text
    assert "validation accuracy (78.00%) is not below training accuracy (75.00%)" in text
    assert "reaches 95.00%: as much as the study even so" in text


# --------------------------------------------------------------------------------------------
# The kit's own notebooks, end to end


def pdf_text(pdf: Path) -> tuple[int, str]:
    pages = int(re.search(r"Pages:\s+(\d+)", subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout).group(1))
    return pages, subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(report.find_chromium() is None or shutil.which("pdftotext") is None,
                    reason="needs Chromium (apt-get install chromium) and pdftotext (poppler-utils)")
def test_smoke_report_end_to_end(tmp_path):
    run, out = tmp_path / "run", tmp_path / "report"
    before = [p.stem for p in pipeline.discover()]
    built = pipeline.build("smoke", run, out, pdf=True, progress=False, log=lambda m: None)
    stems = [s["notebook"] for s in built["stamps"]]
    assert stems == sorted(stems) and set(before) <= set(stems)  # every notebook, in order
    page = built["html"].read_text()
    text = text_of(page)

    # Every notebook has its section; sections come in notebook order.
    positions = [page.index(f'<section id="{stem}"') for stem in stems]
    assert positions == sorted(positions)
    for section_id in ("abstract", "method", "environment", "reproduce"):
        assert f'<section id="{section_id}"' in page
    assert page.count("<table") >= 4 and "<script" not in page

    # The numbers on the page are those in the results files.
    r = json.loads((run / "01_train" / "results.json").read_text())
    assert f"classifies {report.pct(r['test']['accuracy'])} of {report.num(r['data']['test_images'])} test images" in text
    assert report.num(r["test"]["loss"]) in text and report.num(r["n_parameters"]) in text
    for name, acc in r["per_class_accuracy"].items():
        assert f"{name} {sum(r['confusion_matrix'][r['classes'].index(name)])} " in text and report.pct(acc) in text
    last = r["history"][-1]
    assert report.pct(last["val_accuracy"]) in text and report.num(last["train_loss"]) in text
    for stamp in built["stamps"]:
        assert report.secs(stamp["seconds"]) in text
    for name in r["figures"].values():
        assert (run / "01_train" / name).is_file()
    assert page.count('<img src="data:image/png;base64,') >= len(r["figures"])
    for key, value in r["profile"].items():
        assert key in text

    # The PDF has pages with the report's text.
    pages, pdf = pdf_text(built["pdf"])
    pdf = re.sub(r"\s+", " ", pdf)
    assert pages >= 2
    assert "Training the study's CNN" in pdf and report.pct(r["test"]["accuracy"]) in pdf

    # Built again: every notebook is reused, nothing executed, the report is complete again.
    mtimes = {stem: pipeline.executed_path(run, stem).stat().st_mtime_ns for stem in stems}
    again = pipeline.build("smoke", run, out, pdf=True, progress=False, log=lambda m: None)
    assert not any(s["executed"] for s in again["stamps"])
    assert {stem: pipeline.executed_path(run, stem).stat().st_mtime_ns for stem in stems} == mtimes
    assert again["pdf"].is_file() and again["html"].read_text().count("<section") == page.count("<section")
