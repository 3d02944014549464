"""The results schema: what each notebook writes into ``<run folder>/<stem>/results.json``.

One typed record per notebook, written by the notebook (:meth:`fmnist_utils.notebook.Notebook.write_results`),
read by the report (:func:`read`) and built by the test fixtures (``tests/report_fixtures.py``):

    Record                          every notebook's results.json: envelope + body, one flat JSON object
    ├── envelope: Envelope          notebook, schema, profile (the settings tree), parameters (the
    │                               overrides), environment, data_verified, data_fingerprint,
    │                               code_hash, figures, seconds
    └── body: SweepResults          01_sweep   protocol, run, summary, folds, ..., best_config, final, verdicts
              TrainResults          02_train   config_source, config, data, history, test, ..., verdicts
              CompareResults        03         weights, cnn, resnet, matrices, summary, cka, probe, ..., verdicts
              ImproveResults        04         config, configs, protocol, rows, table, verdicts

A body's fields hold plain JSON values (numbers, lists, dicts: the sections' templates read them as
they are); only the top level is typed. :func:`read` returns the :class:`Record`, whose fields read
flat, envelope and body alike (``r.figures``, ``r.history``); a name neither declares raises
:class:`UnknownField`, naming the notebook and its fields, so a misspelt field in a template or in
the report's code fails loudly instead of reading as nothing.

:data:`SCHEMA` numbers the format: a file of an older kit (without ``schema``) is read with the
fields it lacks set to None (and the keys the schema no longer has left out); a file of a newer
one, or one that lacks a field of the schema or holds one it does not know, is refused with
:class:`OldResults`, which names the fix (run the notebook again: ``--force``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 2


class OldResults(ValueError):
    """A results file this kit cannot read as a record: another schema, or a field missing."""


class UnknownField(AttributeError):
    """A name that is no field of a results record (its envelope's or its body's): a misspelling,
    or a field the schema does not declare."""


@dataclass(frozen=True)
class Envelope:
    """What every notebook's results carry besides its own findings."""

    notebook: str  # its stem, 02_train
    profile: dict  # the run's settings tree (settings.Settings.to_dict()), printed in Appendix A
    parameters: dict  # what this notebook set besides the tree: {dotted setting: value}, plus profile and run_dir
    environment: dict  # provenance.environment(): device, precision, versions, git revision
    data_verified: bool  # False when the data was loaded without its SHA-256 check (FMNIST_DATA_UNVERIFIED)
    data_fingerprint: str | None  # provenance.fingerprint of the training and test splits it read; None: none read
    code_hash: str  # provenance.code_hash(): the package code that produced the results
    figures: dict  # {name: file in the notebook's output folder}
    seconds: float  # from set-up to the results written
    schema: int = SCHEMA


@dataclass(frozen=True)
class SweepResults:
    """01_sweep: the cross-validated choice and its one retraining on the test set."""

    protocol: dict
    run: dict
    summary: list
    folds: list
    factor_tables: dict
    best_hyperparameters: dict
    best_cv: dict
    runner_up_cv: dict | None
    study_base: dict
    study_base_cv: dict | None
    best_config: dict
    final: dict | None
    final_history: list
    training_seconds_total: float
    verdicts: dict


@dataclass(frozen=True)
class TrainResults:
    """02_train: the chosen configuration trained, tested, and compared with the study's recipe."""

    config_source: str
    config: dict
    n_parameters: int
    data: dict
    history: list
    best_val_epoch: dict
    training_seconds: float
    test: dict
    classes: list
    per_class_accuracy: dict
    confusion_matrix: list
    top_confusions: list
    study_recipe: dict | None
    checkpoint: str
    verdicts: dict


@dataclass(frozen=True)
class CompareResults:
    """03_resnet_compare: the CNN against ResNet-18 through class-by-class matrices, CKA and probes."""

    weights_source: str
    pretrained: bool
    weights: dict
    resnet_title: str
    cnn: dict
    resnet: dict
    sample: dict
    max_spatial: int | None
    precision: str
    classes: list
    matrices: dict
    class_mean_matrices: dict
    summary: dict
    top_pairs: dict
    layer_curves: list
    spearman: dict
    cka: dict
    probe: dict
    cnn_own_accuracy: float
    fmnist_resnet: dict | None
    verdicts: dict
    timing: dict


@dataclass(frozen=True)
class ImproveResults:
    """04_improvements: the ablation's rows over seeds, their table and verdicts."""

    config: dict
    configs: dict
    protocol: dict
    rows: list
    table: list
    verdicts: dict
    training_seconds: float


BODIES: dict[str, type] = {"01_sweep": SweepResults, "02_train": TrainResults, "03_resnet_compare": CompareResults,
                           "04_improvements": ImproveResults}
ENVELOPE_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope))
# Where the envelope's fields stand in the flat JSON object: these two after the body (the last
# things a notebook knows), the others before it.
_TAIL = ("figures", "seconds")


@dataclass(frozen=True)
class Record:
    """One notebook's results: its :class:`Envelope` and its body (a dataclass of :data:`BODIES`, or a
    plain dict for a notebook the kit has no schema for, such as a user's ``05_extra``).

    Its fields read flat, as the JSON object holds them: ``record.seconds`` is the envelope's,
    ``record.history`` the body's; a name that is neither raises :class:`UnknownField` naming the
    notebook and its fields. ``name in record`` says whether it has the field (a notebook without a
    schema writes what it likes); :meth:`fields` lists them in the file's order.
    """

    envelope: Envelope
    body: Any = field(default_factory=dict)

    def body_fields(self) -> tuple[str, ...]:
        """Return the names of the body's fields, in the order the file holds them."""
        if isinstance(self.body, dict):
            return tuple(self.body)
        return tuple(f.name for f in dataclasses.fields(self.body))

    def fields(self) -> tuple[str, ...]:
        """Return every field's name, envelope and body, in the order of the flat JSON object."""
        return (*(k for k in ENVELOPE_FIELDS if k not in _TAIL), *self.body_fields(), *_TAIL)

    def __contains__(self, name) -> bool:
        return name in self.fields()

    def __getattr__(self, name: str):
        # Called only for names the dataclass itself lacks: the flat view over envelope, then body.
        if name.startswith("__") or name in ("envelope", "body"):  # copy and pickle probe before the fields exist
            raise AttributeError(name)
        if name in ENVELOPE_FIELDS:
            return getattr(self.envelope, name)
        if name in self.body_fields():
            return self.body[name] if isinstance(self.body, dict) else getattr(self.body, name)
        schema = f"fmnist_utils.records.{type(self.body).__name__}" if dataclasses.is_dataclass(self.body) else "no schema"
        close = difflib.get_close_matches(name, self.fields(), n=1)
        raise UnknownField(f"the results of {self.envelope.notebook} ({schema}) have no field {name!r}"
                           f"{f' (did you mean {close[0]!r}?)' if close else ''}; its fields: {', '.join(self.fields())}. "
                           "Fix the name, or declare the field in fmnist_utils/records.py and write it from the notebook")

    def to_dict(self) -> dict:
        """Return the record as the one flat JSON object results.json holds (envelope first)."""
        body = dataclasses.asdict(self.body) if dataclasses.is_dataclass(self.body) else dict(self.body)
        # A body field named as the envelope's or as the record's own attributes would be hidden behind them.
        taken = sorted(set(body) & {*ENVELOPE_FIELDS, *(n for n in dir(Record) if not n.startswith("_")), "envelope", "body"})
        if taken:
            raise ValueError(f"the results of {self.envelope.notebook} must not set {taken}: the envelope, or the record "
                             "itself, holds them (fmnist_utils.records.Record)")
        head = dataclasses.asdict(self.envelope)
        return {**{k: head[k] for k in ENVELOPE_FIELDS if k not in _TAIL}, **body, **{k: head[k] for k in _TAIL}}


def verdicts(record: Record) -> dict:
    """Return a record's verdict records, ``{key: record}`` as :mod:`fmnist_utils.stats` wrote them: its
    ``verdicts`` field, or {} where it has none (None in an old file; a notebook without a schema
    that wrote none)."""
    return (record.verdicts if "verdicts" in record else None) or {}


def body(stem: str, results: dict):
    """Return ``results`` (the notebook's findings, a dict) as the body dataclass of ``stem``; a
    stem without a schema keeps its dict. Raises ValueError naming a missing or unknown key."""
    cls = BODIES.get(stem)
    if cls is None:
        return dict(results)
    names = [f.name for f in dataclasses.fields(cls)]
    missing, unknown = [n for n in names if n not in results], sorted(set(results) - set(names))
    if missing or unknown:
        raise ValueError(f"the results of {stem} do not match fmnist_utils.records.{cls.__name__}: "
                         f"missing {missing}, unknown {unknown}")
    return cls(**results)


def check(stem: str, record: dict, where: str | Path = "results.json") -> dict:
    """Return a results file's content as the current schema's flat record, or raise :class:`OldResults`.

    A file written before the schema was numbered (no ``schema`` key) is read as it is, with the
    fields it lacks set to None (``notebook``: ``stem``, the folder that holds it) and the keys the
    schema no longer has left out (the report could not read them); a file of another schema number,
    or one that lacks a field of the envelope or of its notebook's body, or holds a key neither
    declares, is refused with the fix: run the notebook again (``make report`` reruns it when its
    code changed; ``--force`` reruns it whatever).
    """
    if not isinstance(record, dict):
        raise OldResults(f"{where} holds a {type(record).__name__}, not a results record: run {stem} again "
                         "(make report, or python -m fmnist_utils report --force)")
    cls = BODIES.get(stem)
    names = [f.name for f in dataclasses.fields(cls)] if cls is not None else None
    version = record.get("schema")
    if version is None:  # before the schema was numbered: the same keys, fewer of them
        known = record if names is None else {k: v for k, v in record.items() if k in ENVELOPE_FIELDS or k in names}
        return {**{k: None for k in ENVELOPE_FIELDS if k != "schema"}, "notebook": stem,
                **{k: None for k in names or ()}, **known, "schema": SCHEMA}
    if version != SCHEMA:
        raise OldResults(f"{where} was written by {'a newer' if version > SCHEMA else 'an older'} version of the kit "
                         f"(results schema {version}; this kit reads {SCHEMA}): run {stem} again with this version "
                         "(python -m fmnist_utils report --force, or make report after deleting the run folder)")
    missing = [n for n in (names or []) + list(ENVELOPE_FIELDS) if n not in record]
    unknown = sorted(set(record) - set(ENVELOPE_FIELDS) - set(names)) if names is not None else []
    schema = f"fmnist_utils.records.{cls.__name__}" if cls is not None else "fmnist_utils.records.Envelope"
    if missing or unknown:
        wrong = "; ".join(([f"it lacks {missing}"] if missing else []) + ([f"it holds {unknown}, unknown to it"] if unknown else []))
        raise OldResults(f"{where} does not match {schema}: {wrong}. It was written by another version of {stem}; "
                         "run it again (python -m fmnist_utils report --force)")
    return record


def parse(stem: str, content, where: str | Path = "results.json") -> Record:
    """Return the typed :class:`Record` of a results file's ``content`` (its JSON, read), checked by
    :func:`check`: the envelope and the body of ``stem`` (:data:`BODIES`; a plain dict for a
    notebook without a schema). ``where`` names the file in the errors."""
    flat = check(stem, content, where)
    envelope = Envelope(**{k: flat[k] for k in ENVELOPE_FIELDS})
    rest = {k: v for k, v in flat.items() if k not in ENVELOPE_FIELDS}
    cls = BODIES.get(stem)
    return Record(envelope, cls(**rest) if cls is not None else rest)


def read(path: str | Path, stem: str | None = None) -> Record:
    """Return the typed :class:`Record` in the results file ``path`` (:func:`parse`); ``stem``: its
    notebook (default: the name of the file's folder)."""
    from . import provenance

    path = Path(path)
    return parse(stem or path.parent.name, provenance.read_json(path), path)


# --------------------------------------------------------------------------------------------
# Reading another notebook's results from a run folder


def find_results(run: str | Path, name: str) -> Record:
    """Return the results record (:func:`read`) of the notebook ``NN_<name>`` in the run folder ``run`` (for example the
    sweep's, ``name="sweep"``), whatever its number. Raises FileNotFoundError naming the notebook
    to run first when it has not written them.
    """
    found = sorted(Path(run).glob(f"[0-9][0-9]_{name}/results.json"))
    if len(found) > 1:
        raise ValueError(f"{run} holds results of several '{name}' notebooks: {[str(p) for p in found]}")
    if not found:
        raise FileNotFoundError(
            f"no results of the '{name}' notebook in {run}: run {_notebook_file(name)} with the same "
            "profile and run_dir first"
        )
    return read(found[0])


def _notebook_file(name: str) -> str:
    """Return the notebook that writes the results called ``name`` (``notebooks/01_sweep.ipynb``),
    or ``notebooks/NN_<name>.ipynb`` when no notebook of that name is in the kit's notebooks folder.
    """
    from . import paths

    found = sorted((paths.project_root() / "notebooks").glob(f"[0-9][0-9]_{name}.ipynb"))
    return f"notebooks/{found[0].name}" if len(found) == 1 else f"notebooks/NN_{name}.ipynb"


def base_config(source: str, run: str | Path):
    """Return the :class:`~fmnist_utils.train.TrainConfig` a notebook starts from: a recipe of
    ``train.PRESETS`` (``study``: the study's) or ``sweep``, the configuration the sweep notebook
    chose, read from its results in the run folder ``run``.
    """
    from . import train

    if source == "sweep":
        try:
            chosen = find_results(run, "sweep")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc}; or start from the study's recipe instead (overrides={{'train.source': 'study'}})") from None
        return train.TrainConfig(**chosen.best_config)
    if source not in train.PRESETS:
        raise ValueError(f"unknown configuration source {source!r}; choose 'sweep' or one of {sorted(train.PRESETS)}")
    return train.preset(source)
