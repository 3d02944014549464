"""The results schema as the report reads it: typed records, their fields by name, and the files they come from.

``records.read`` returns a :class:`fmnist_utils.records.Record` (envelope + the notebook's body
dataclass); the report and its templates read its fields as attributes, and a name no field
declares stops them with an error naming the notebook and its fields.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import shutil

import jinja2
import pytest
from jinja2 import nodes

import report_fixtures as F
from fmnist_utils import provenance, records, report

FIXTURES = {"01_sweep": F.sweep_results, "02_train": F.train_results,
            "03_resnet_compare": lambda: F.compare_results(pretrained=True), "04_improvements": F.improvements_results}
# The envelope fields the kit's runs wrote before the schema was numbered lacked (runs/quick of 2026-12).
PRE_SCHEMA_MISSING = ("schema", "code_hash", "data_fingerprint")


def _write(run, stem: str, content: dict):
    path = run / stem / "results.json"
    provenance.write_json(path, content)
    return path


@pytest.mark.parametrize("stem", sorted(records.BODIES))
def test_read_returns_the_typed_record_of_each_notebook(tmp_path, stem):
    path = _write(tmp_path, stem, FIXTURES[stem]())
    content = provenance.read_json(path)  # as JSON holds it: lists, not tuples
    record = records.read(path)
    assert isinstance(record, records.Record) and isinstance(record.body, records.BODIES[stem])
    assert isinstance(record.envelope, records.Envelope) and record.notebook == stem
    # The flat view: every key of the file is a field, envelope and body alike, with the file's value.
    assert record.fields() == tuple(content)
    assert {k: getattr(record, k) for k in record.fields()} == content
    assert all(k in record for k in content) and "histroy" not in record
    assert record.to_dict() == content  # and back to the file's object, in its order
    assert records.find_results(tmp_path, stem[3:]) == record


def test_a_notebook_without_a_schema_reads_its_dict_by_name(tmp_path):
    content = F.untemplated_results()
    record = records.read(_write(tmp_path, "05_extra", content))
    assert record.body == {k: v for k, v in content.items() if k not in records.ENVELOPE_FIELDS}
    assert record.modern == {"accuracy_mean": 0.9125} and record.seconds == content["seconds"]
    assert records.verdicts(record) == content["verdicts"]
    bare = records.parse("05_extra", {k: v for k, v in content.items() if k != "verdicts"})
    assert "verdicts" not in bare and records.verdicts(bare) == {}  # it wrote none: no verdict is made up
    with pytest.raises(records.UnknownField, match=r"05_extra \(no schema\) have no field 'verdicts'"):
        bare.verdicts
    # A field the record's own names would hide is refused when the notebook writes it.
    with pytest.raises(ValueError, match=r"must not set \['fields'\]: the envelope, or the record itself"):
        records.Record(record.envelope, {"fields": [1]}).to_dict()


def test_a_misspelt_field_names_the_notebook_and_its_fields():
    record = F.typed({"02_train": F.train_results()})["02_train"]
    with pytest.raises(records.UnknownField) as caught:
        record.histroy
    message = str(caught.value)
    assert "the results of 02_train (fmnist_utils.records.TrainResults) have no field 'histroy'" in message
    assert "did you mean 'history'?" in message and "its fields: notebook, profile," in message
    assert "declare the field in fmnist_utils/records.py" in message
    assert isinstance(caught.value, AttributeError) and not hasattr(record, "histroy")
    # The record is a plain frozen value: copied, pickled and compared whole.
    assert copy.deepcopy(record) == record and pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.body = {}


def test_a_template_that_misspells_a_field_stops_with_a_clear_error(tmp_path, monkeypatch):
    record = F.typed({"02_train": F.train_results()})["02_train"]
    env = report._jinja()
    assert env.from_string("{{ r.history | length }} {{ r['test'].accuracy }} {{ 'verdicts' in r }}").render(r=record) \
        == "3 0.8 True"
    # Jinja's own lookup would turn these into an undefined value that `is defined` and `default`
    # read as a blank: on a record each is an error naming the notebook and the field.
    for typo in ("{{ r.histroy }}", "{{ 'x' if r.histroy is defined }}", "{{ r.histroy | default('') }}",
                 "{{ r['histroy'] }}", "{{ [r] | map(attribute='histroy') | list }}", "{{ r.get('history') }}"):
        with pytest.raises(jinja2.UndefinedError, match=r"results of 02_train .* have no field"):
            env.from_string(typo).render(r=record)
    # In the report: the section that misspells it is named, with the notebook and the field.
    templates = tmp_path / "templates"
    shutil.copytree(report.TEMPLATES, templates)
    section = templates / "sections" / "02_train.html.j2"
    section.write_text(section.read_text().replace("r.history[-1]", "r.histroy[-1]", 1))
    monkeypatch.setattr(report, "TEMPLATES", templates)
    with pytest.raises(report.ReportError, match=r"templates/sections/02_train.html.j2: UndefinedError: the results "
                                                 r"of 02_train .* no field 'histroy' \(did you mean 'history'\?\)"):
        F.render(tmp_path, {"02_train": F.train_results()})


def _record_reads(template: str, names: dict[str, str]) -> list[tuple[str, str, int]]:
    """Return (notebook, field, line) for every ``name.field`` or ``name["field"]`` the Jinja
    ``template`` reads of the records ``names`` maps to their notebook ({"r": "02_train"})."""
    reads = []
    for node in jinja2.Environment().parse(template).find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name in names:
            field = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
            if isinstance(field, str):
                reads.append((names[node.node.name], field, node.lineno))
    return reads


def test_every_field_a_template_reads_is_declared():
    # Read from the templates' source, so a branch the fixtures never render is checked too.
    stems = {"sweep": "01_sweep", "train": "02_train", "compare": "03_resnet_compare", "improve": "04_improvements"}
    pages = {"report.html.j2": stems, "findings.html.j2": {f"f_{k}": v for k, v in stems.items()}}
    pages.update({f"sections/{stem}.html.j2": {"r": stem, **({"train": "02_train"} if stem == "03_resnet_compare" else {})}
                  for stem in records.BODIES})
    checked = 0
    for name, names in pages.items():
        for stem, field, line in _record_reads((report.TEMPLATES / name).read_text(), names):
            declared = set(records.ENVELOPE_FIELDS) | {f.name for f in dataclasses.fields(records.BODIES[stem])}
            assert field in declared, f"templates/{name}, line {line}: {stem} has no field {field!r}"
            checked += 1
    assert checked > 100  # the sections read their records throughout


def test_an_old_file_reads_with_the_fields_it_lacks_as_none(tmp_path):
    old = {"notebook": "02_train", "checkpoint": "checkpoint.pt", "history": [], "a_key_since_dropped": 1}
    record = records.read(_write(tmp_path, "02_train", old))
    assert isinstance(record.body, records.TrainResults) and record.checkpoint == "checkpoint.pt"
    assert record.test is None and record.study_recipe is None and record.code_hash is None
    assert record.profile is None and record.schema == records.SCHEMA
    assert "a_key_since_dropped" not in record  # nothing of the report could read it
    # The folder names the notebook of a file that does not.
    assert records.read(_write(tmp_path, "01_sweep", {"best_config": {"lr": 0.1}})).notebook == "01_sweep"


def test_the_runs_written_before_the_schema_give_the_same_report(tmp_path):
    # As the kit's runs wrote them before the schema was numbered (runs/quick, runs/budget-20m).
    results = {stem: make() for stem, make in FIXTURES.items()}
    old = {stem: {k: v for k, v in r.items() if k not in PRE_SCHEMA_MISSING} for stem, r in results.items()}
    assert F.render(tmp_path / "old", old) == F.render(tmp_path / "new", results)


def test_a_newer_or_mismatched_file_is_refused_naming_the_fix(tmp_path):
    content = F.train_results()
    path = _write(tmp_path, "02_train", {**content, "schema": records.SCHEMA + 1})
    with pytest.raises(records.OldResults, match=r"newer version of the kit \(results schema 3; this kit reads 2\): "
                                                 r"run 02_train again .*--force"):
        records.read(path)
    with pytest.raises(records.OldResults, match="an older version of the kit"):
        records.read(_write(tmp_path, "02_train", {**content, "schema": 1}))
    with pytest.raises(records.OldResults, match=r"does not match fmnist_utils.records.TrainResults: "
                                                 r"it holds \['histroy'\], unknown to it\. .*--force"):
        records.read(_write(tmp_path, "02_train", {**content, "histroy": []}))
    without = {k: v for k, v in content.items() if k not in ("code_hash", "test")}
    with pytest.raises(records.OldResults, match=r"it lacks \['test', 'code_hash'\]"):
        records.read(_write(tmp_path, "02_train", without))
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(records.OldResults, match="holds a list, not a results record"):
        records.read(path)


def test_the_repeatability_sentence_claims_only_what_the_cpu_test_checks(tmp_path):
    # tests/test_reproducible.py runs on a CPU: a run on a GPU is described, not called repeatable.
    results = {"02_train": F.train_results()}
    cpu = F.text_of(F.render(tmp_path / "cpu", results))
    assert "so a run is repeatable: the same command on the same machine gives the same numbers" in cpu
    gpu = json.loads(json.dumps(results))
    gpu["02_train"]["environment"]["device"] = "cuda:0"
    text = F.text_of(F.render(tmp_path / "gpu", gpu))
    assert "so a run is repeatable" not in text and "the kit tests that a run is repeatable on a CPU only" in text
    assert report.devices_used(F.typed(gpu)) == ["cuda"] and report.devices_used(F.typed(results)) == ["cpu"]
