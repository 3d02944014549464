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


# --------------------------------------------------------------------------------------------
# The GPU block, from a results file of `make verify-gpu`

# What `make verify-gpu PROFILE=smoke` wrote on the 2-core CPU (benchmarks/verify_gpu.py, every stage ok).
GPU_SMOKE = ROOT / "tests" / "fixtures" / "verify-gpu-cpu-smoke.json"


def test_the_gpu_block_is_written_from_a_verify_gpu_file(tmp_path):
    doc = provenance.read_json(GPU_SMOKE)
    original = (ROOT / "README.md").read_text()
    readme = tmp_path / "README.md"
    readme.write_text(original)
    with pytest.raises(SystemExit, match="not a GPU measurement"):  # a CPU smoke file is no GPU figure
        readme_figures.main(["--gpu", str(GPU_SMOKE), "--readme", str(readme)])
    assert readme.read_text() == original
    assert readme_figures.main(["--gpu", str(GPU_SMOKE), "--readme", str(readme), "--allow-cpu"]) == 0
    text = readme.read_text()
    source, block = readme_figures.gpu_block(text)
    assert source == "tests/fixtures/verify-gpu-cpu-smoke.json" and block == readme_figures.render_gpu(doc, source)
    assert text.replace(block, "") == original.replace(readme_figures.gpu_block(original)[1], "")  # only the block
    assert readme_figures.readme_block(text) == readme_figures.readme_block(original)  # the quick block untouched
    # Every figure is the file's.
    stages = doc["stages"]
    assert doc["device"]["device_name"] in block and f"Python {doc['device']['python']}" in block
    assert f"The whole command took {report.secs(doc['runs'][-1]['seconds'])}" in block
    for kind, seconds in stages["estimate"]["figures"]["seconds_per_image"].items():
        assert f"| pace, {readme_figures.PACE_WORDS[kind]} | {report.num(seconds * 1e3)} ms per image-pass |" in block
    assert stages["stack_check"]["figures"]["verdict"] in block
    for r in stages["bench_gpu"]["figures"]["loops"]:
        assert f"{r['loop']} loop" in block and f"{report.secs(r['seconds_per_epoch'])} per epoch" in block
    for r in stages["bench_sweep"]["figures"]["rows"]:
        assert f"| sweep units, {r['way']} | {report.num(round(r['units_per_hour']))} units/h" in block
    assert f"`make report PROFILE=smoke` | {report.secs(stages['report']['seconds'])}" in block
    for stem, nb in stages["report"]["figures"]["notebooks"].items():
        assert f"{stem} {report.secs(nb['seconds'])}" in block
    est = stages["estimate"]["figures"]
    assert (f"{report.num(est['full_cnn_train_passes'] / 1e6, 1)} million SeedCNN training image-passes, "
            f"about {report.secs(est['full_seconds'])}") in block
    assert not report.equality_claims(block), report.equality_claims(block)


def test_the_gpu_block_says_which_stage_measured_nothing():
    doc = provenance.read_json(GPU_SMOKE)
    doc["stages"]["estimate"] = {"status": "timeout", "error": "stopped at its budget of 45 s", "figures": None}
    del doc["stages"]["bench_sweep"]
    doc["stages"]["report"].update(status="timeout", error="stopped at its budget of 120 s")
    block = readme_figures.render_gpu(doc, "x.json")
    assert "| pace of each kind of image-pass (`estimate`) | not measured (timeout: stopped at its budget of 45 s) |" in block
    assert "| sweep throughput (`bench_sweep`) | not measured (not run) |" in block
    assert "stopped at its budget" in block.split("`make report")[1]
    assert "needs the measured pace, which this run does not have" in block and "million" not in block


def test_the_readme_gpu_block_is_the_rendering_of_the_file_it_names():
    found = readme_figures.gpu_block((ROOT / "README.md").read_text())
    assert found, "README.md lacks the GPU block of benchmarks/readme_figures.py"
    source, block = found
    developers = (ROOT / "docs" / "DEVELOPERS.md").read_text()
    if source == readme_figures.NO_GPU:
        # No invented numbers: the block says none is committed and how to make one.
        assert block == readme_figures.render_gpu(None, source), "run `python benchmarks/readme_figures.py --gpu none`"
        assert "No GPU measurement is committed yet" in block and "`make verify-gpu`" in block
        assert not report.numbers_in_text(block.split("\n", 1)[1].replace("<!-- end of GPU figures -->", ""))
        anchor = readme_figures.GPU_RECIPE.split("#")[1]
        heading = next(line for line in developers.splitlines() if line.startswith("### A GPU check"))
        assert anchor == heading.lstrip("# ").lower().replace(" ", "-")
    else:
        doc = provenance.read_json(ROOT / source)
        assert readme_figures.is_gpu_measurement(doc), f"{source} is not verify-gpu's full profile on a CUDA GPU"
        assert block == readme_figures.render_gpu(doc, source), (
            f"README.md's GPU block differs from {source}: run `python benchmarks/readme_figures.py --gpu {source}`")
    # The recipe the block points to.
    assert "make wheelhouse PY=3.12" in developers and "carrying `wheelhouse`, with a timeout of 600 s" in developers
    assert ("set -o pipefail; export PYTHONUNBUFFERED=1; python3 benchmarks/verify_gpu.py --profile full 2>&1 | tee "
            "$OUT/verify.log; rc=$?; cp benchmarks/results/*.json $OUT/; exit $rc") in developers


def test_the_gpu_block_names_each_call_of_a_run_finished_in_two():
    doc = provenance.read_json(GPU_SMOKE)
    first = doc["runs"][0]
    doc["runs"] = [first, {"started_utc": first["started_utc"], "stages": ["report"], "seconds": 200.0}]
    block = readme_figures.render_gpu(doc, "x.json")
    assert f"It ran in 2 calls: {report.secs(first['seconds'])} (" in block and f"{report.secs(200.0)} (report)." in block
    assert "The whole command took" not in block
