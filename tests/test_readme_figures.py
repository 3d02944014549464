"""The README's measured figures are the rendering of a recorded run's results, not typed by hand."""

import json
import sys
from pathlib import Path

import pytest

import report_fixtures as F
from fmnist_utils import provenance, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_figures  # noqa: E402


def _run(tmp_path):
    run = tmp_path / "run"
    for r in (F.sweep_results(), F.train_results(), F.compare_results(pretrained=False), F.improvements_results()):
        (run / r["notebook"]).mkdir(parents=True)
        (run / r["notebook"] / "results.json").write_text(json.dumps(r))
        provenance.write_json(run / "notebooks" / f"{r['notebook']}.stamp.json",
                              {"notebook": r["notebook"], "seconds": r["seconds"] + 3, "finished_utc": "2026-11-27T18:00:00+00:00"})
    return run


def test_collect_reads_times_and_headlines_from_the_run(tmp_path):
    fig = readme_figures.collect(_run(tmp_path), wall_seconds=812.0)
    assert fig["profile"] == "quick" and fig["date"] == "2026-11-27" and fig["wall_seconds"] == 812.0
    assert [n["notebook"] for n in fig["notebooks"]] == ["01_sweep", "02_train", "03_resnet_compare", "04_improvements"]
    assert fig["notebooks"][0]["seconds"] == F.sweep_results()["seconds"] + 3  # the stamp's, kernel start included
    assert fig["train"]["test_accuracy"] == F.train_results()["test"]["accuracy"]
    assert [r["row"] for r in fig["improve"]["rows"]] == ["study", "modern", "modern-nesterov", "resnet18", "ensemble"]


def test_render_words_every_figure_with_the_reports_helpers(tmp_path):
    fig = readme_figures.collect(_run(tmp_path), wall_seconds=812.0)
    text = readme_figures.render(fig, "benchmarks/results/x.json")
    assert text.startswith(readme_figures.BEGIN.format(source="benchmarks/results/x.json"))
    assert text.endswith(readme_figures.END)
    assert f"| `01_sweep` | {report.secs(103.5)} |" in text and report.secs(812.0) in text
    assert report.pct(F.train_results()["test"]["accuracy"]) in text
    assert "RANDOM INIT" in text  # the fallback is named here too
    for r in fig["improve"]["rows"]:
        assert f"| {r['label']} | {report.pct(r['accuracy_mean'])}" in text
    # Rendering what was saved gives the same block: the README can be rebuilt from the file alone.
    saved = provenance.write_json(tmp_path / "fig.json", fig)
    assert readme_figures.render(provenance.read_json(saved), "benchmarks/results/x.json") == text


def test_update_replaces_only_the_block_and_refuses_a_readme_without_one(tmp_path):
    readme = tmp_path / "README.md"
    old = readme_figures.render(readme_figures.collect(_run(tmp_path)), "a.json")
    readme.write_text(f"# Title\n\nbefore\n\n{old}\n\nafter\n")
    readme_figures.update_readme(readme, readme_figures.BEGIN.format(source="b.json") + "\nnew\n" + readme_figures.END)
    assert readme.read_text() == f"# Title\n\nbefore\n\n{readme_figures.BEGIN.format(source='b.json')}\nnew\n{readme_figures.END}\n\nafter\n"
    readme.write_text("# no block\n")
    with pytest.raises(SystemExit, match="no block"):
        readme_figures.update_readme(readme, "x")


def test_the_readme_block_is_the_rendering_of_the_file_it_names():
    found = readme_figures.readme_block((ROOT / "README.md").read_text())
    assert found, "README.md lacks the measured-figures block of benchmarks/readme_figures.py"
    source, block = found
    fig = provenance.read_json(ROOT / source)
    assert block == readme_figures.render(fig, source), (
        f"README.md's measured figures differ from {source}: run `python benchmarks/readme_figures.py --from {source}`")


def test_the_readme_block_claims_no_equality_from_a_non_significant_test(tmp_path):
    _, block = readme_figures.readme_block((ROOT / "README.md").read_text())
    assert not report.equality_claims(block), report.equality_claims(block)
    fresh = readme_figures.render(readme_figures.collect(_run(tmp_path)), "x.json")
    assert not report.equality_claims(fresh), report.equality_claims(fresh)
    assert "95% interval" not in fresh.split("03_resnet_compare")[1].split("\n")[0]  # the Mantel test has none
