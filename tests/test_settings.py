"""The settings tree (one frozen object, overridden by dotted path) and the results schema."""

import dataclasses
import json

import pytest

from fmnist_utils import profiles, provenance, records, settings


def test_the_tree_holds_every_profile_size_and_every_notebook_setting_once():
    for name, profile in profiles.PROFILES.items():
        tree = settings.resolve(name)
        assert tree.name == name and tree.skip == profile.skip
        for branch in ("sweep", "train", "compare", "improve"):
            sizes = getattr(profile, branch)
            mine = getattr(tree, branch)
            assert {f.name: getattr(mine, f.name) for f in dataclasses.fields(sizes)} == dataclasses.asdict(sizes)
    meanings = settings.meanings()
    assert set(profiles.meanings()) <= set(meanings)
    assert {"train.source", "sweep.storage", "compare.n_perm", "improve.split_seed", "device"} <= set(meanings)
    assert all(text for text in meanings.values())
    # One name per level: each leaf's last word appears once in its branch.
    for branch in ("sweep", "train", "compare", "improve"):
        leaves = [k.split(".")[1] for k in meanings if k.startswith(branch + ".")]
        assert len(leaves) == len(set(leaves))
    with pytest.raises(dataclasses.FrozenInstanceError):
        tree.train.epochs = 3


def test_overrides_set_settings_by_dotted_path_and_are_checked():
    base = settings.resolve("smoke")
    tree = settings.override(base, {"train.epochs": 3, "sweep.factors": ["lr"], "improve.rows": None, "device": "cpu"})
    assert (tree.train.epochs, tree.sweep.factors, tree.improve.rows, tree.device) == (3, ("lr",), None, "cpu")
    assert settings.changed(tree, base) == {"train.epochs": 3, "sweep.factors": ("lr",), "improve.rows": None,
                                            "device": "cpu"}
    assert base.train.epochs == profiles.get("smoke").train.epochs  # frozen: the base is unchanged
    assert settings.resolve("smoke", overrides={"train.epochs": 3}) == settings.override(base, {"train.epochs": 3})
    with pytest.raises(ValueError, match=r"unknown setting 'sweep.folds'"):
        settings.override(base, {"sweep.folds": 3})
    with pytest.raises(ValueError, match=r"did you mean train.epochs"):
        settings.override(base, {"train.epoch": 3})
    with pytest.raises(ValueError, match=r"TrainSettings.epochs=0"):  # zero is a value, checked, never "not set"
        settings.override(base, {"train.epochs": 0})
    with pytest.raises(ValueError, match=r"TrainSettings.source='fancy'"):
        settings.override(base, {"train.source": "fancy"})
    with pytest.raises(ValueError, match="must be a dict"):
        settings.override(base, ["train.epochs=3"])


def test_the_tree_travels_as_json_and_comes_back_equal():
    tree = settings.resolve("quick", overrides={"sweep.factors": ["lr", "dropout"], "train.lr": 0.01})
    back = settings.from_dict(json.loads(json.dumps(tree.to_dict())))
    assert back == tree and isinstance(back.sweep.factors, tuple) and isinstance(back.skip, tuple)
    with pytest.raises(ValueError, match=r"settings.train: unknown settings \['epoch'\]"):
        settings.from_dict({**tree.to_dict(), "train": {**tree.to_dict()["train"], "epoch": 3}})


def test_command_line_assignments_read_python_literals():
    assert settings.parse_assignments(["train.epochs=3", "sweep.space=grid", "improve.rows=None",
                                       "sweep.factors=['lr']", "compare.allow_download=False"]) == {
        "train.epochs": 3, "sweep.space": "grid", "improve.rows": None, "sweep.factors": ["lr"],
        "compare.allow_download": False}
    with pytest.raises(ValueError, match="path=value"):
        settings.parse_assignments(["train.epochs"])


def test_describe_prints_a_branch_with_each_meaning():
    text = settings.describe(settings.resolve("smoke"), "train")
    lines = text.splitlines()
    assert any(line.startswith("train.epochs") and "= 1  # training epochs" in line for line in lines)
    assert not any(line.startswith("sweep.") for line in lines) and any(line.startswith("device") for line in lines)


@pytest.mark.parametrize("value,expected", [("1", True), ("YES", True), (" on ", True), ("true", True),
                                            ("0", False), ("no", False), ("Off", False), ("", None)])
def test_one_parser_reads_every_yes_no_variable(monkeypatch, value, expected):
    monkeypatch.setenv("FMNIST_DATA_UNVERIFIED", value)
    assert settings.flag("FMNIST_DATA_UNVERIFIED") is expected


def test_an_unreadable_yes_no_variable_is_an_error_that_names_it(monkeypatch):
    monkeypatch.setenv("FMNIST_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match=r"\$FMNIST_CPU_BF16='maybe' is not a yes/no value"):
        settings.flag("FMNIST_CPU_BF16")
    monkeypatch.delenv("FMNIST_CPU_BF16")
    assert settings.flag("FMNIST_CPU_BF16") is None
    with pytest.raises(KeyError, match="not one of the kit's environment variables"):
        settings.env("FMNIST_TYPO")


# --------------------------------------------------------------------------------------------
# The results schema


def _envelope(stem="02_train"):
    return records.Envelope(notebook=stem, profile={"name": "smoke"}, parameters={}, environment={},
                            data_verified=True, data_fingerprint=None, code_hash="c", figures={}, seconds=1.0)


def test_a_record_is_one_flat_object_and_its_body_is_checked():
    import report_fixtures as F

    body = {k: v for k, v in F.train_results().items() if k not in records.ENVELOPE_FIELDS}
    record = records.Record(_envelope(), records.body("02_train", body)).to_dict()
    assert list(record)[0] == "notebook" and record["schema"] == records.SCHEMA and record["config"] == body["config"]
    with pytest.raises(ValueError, match=r"missing \['verdicts'\], unknown \['verdict'\]"):
        records.body("02_train", {**{k: v for k, v in body.items() if k != "verdicts"}, "verdict": {}})
    with pytest.raises(ValueError, match=r"must not set \['seconds'\]"):
        records.Record(_envelope("05_extra"), {"seconds": 3}).to_dict()


def test_old_results_are_read_and_other_schemas_refused_naming_the_fix(tmp_path):
    path = tmp_path / "02_train" / "results.json"
    provenance.write_json(path, {"notebook": "02_train", "checkpoint": "checkpoint.pt"})  # before the schema
    old = records.read(path)
    assert old.checkpoint == "checkpoint.pt" and old.code_hash is None and old.schema == records.SCHEMA
    provenance.write_json(path, {"notebook": "02_train", "schema": records.SCHEMA + 1})
    with pytest.raises(records.OldResults, match=r"newer version of the kit .* run 02_train again .*--force"):
        records.read(path)
    provenance.write_json(path, {"notebook": "02_train", "schema": records.SCHEMA, "checkpoint": "c"})
    with pytest.raises(records.OldResults, match=r"lacks \['config_source'.*--force"):
        records.read(path)


def test_one_fingerprint_for_tensors_and_arrays_and_one_code_hash():
    import numpy as np
    import torch

    x = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert provenance.fingerprint(x) == provenance.fingerprint(torch.from_numpy(x))
    assert provenance.fingerprint(x) != provenance.fingerprint(x.reshape(4, 3))  # the shape counts
    assert provenance.fingerprint(x, x[:1]) != provenance.fingerprint(x)
    assert len(provenance.code_hash()) == 64
