"""The command line: the package is usable before any notebook exists."""

import json
import subprocess
import sys

from fmnist_utils.__main__ import main


def test_train_prints_test_accuracy(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["train", "--epochs", "1", "--subset", "300", "--batch-size", "50", "--no-progress", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert f"test accuracy {result['test']['accuracy']:.4f}" in printed
    assert result["config"]["batch_size"] == 50 and result["subset"] == 300
    assert result["environment"]["packages"]["torch"]


def test_bad_value_is_one_clear_line(capsys):
    assert main(["train", "--lr", "-1"]) == 2
    assert "TrainConfig.lr=-1.0" in capsys.readouterr().err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "fmnist_utils", "data", "--no-download"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "60000 train / 10000 test" in done.stdout


def test_a_budget_and_a_profile_together_are_refused_before_anything_runs(tmp_path, capsys):
    rc = main(["report", "--budget", "20m", "--profile", "smoke", "--run-dir", str(tmp_path / "run"),
               "--report-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert rc == 2 and "--budget 20m sizes the whole report itself; drop --profile smoke" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (tmp_path / "report").exists()


def test_a_setting_is_set_by_its_dotted_path_and_a_misspelt_one_is_refused_before_anything_runs(tmp_path, capsys):
    rc = main(["report", "--profile", "smoke", "--set", "train.epoch=3", "--run-dir", str(tmp_path / "run"),
               "--report-dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown setting 'train.epoch'; did you mean train.epochs" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "report").exists()
