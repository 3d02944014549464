"""Results files shaped as the notebooks write them, for rendering the report without running them.

Each ``*_results`` function returns one notebook's ``results.json`` content with its figures named,
built as the notebook builds it: a :class:`fmnist_utils.records.Record` (the envelope every notebook
writes, and the notebook's typed body), so a field the schema adds or drops is added or dropped here
too. :func:`render` writes them into a run folder (any bytes stand in for the PNGs: the page only
base64-encodes them) and returns the page, which the report builds from the files as a real run's
(:func:`fmnist_utils.records.read`); :func:`typed` reads them the same way without the files, for
the report's functions that take the records. The verdict records follow the schema of
``fmnist_utils.stats`` (see :func:`verdict`).
"""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path

from fmnist_utils import halving, models, records, report

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = {"device": "cpu", "device_name": "a test CPU", "precision_auto": "fp32", "git_revision": "abc",
               "packages": {"torch": "2"}, "python": "3", "platform": "x", "cpu_threads": 2}
PROFILE = {"name": "quick"}


def record(stem: str, body: dict, figures: dict, seconds: float, profile: dict | None = None) -> dict:
    """Return the results.json content of ``stem``: ``body`` (its findings, checked against its
    :data:`fmnist_utils.records.BODIES` schema) in the envelope every notebook writes."""
    envelope = records.Envelope(
        notebook=stem, profile=profile or PROFILE, parameters={"profile": "quick", "run_dir": "runs/quick"},
        environment=ENVIRONMENT, data_verified=True, data_fingerprint="0f" * 32, code_hash="c0" * 32,
        figures=figures, seconds=seconds)
    return records.Record(envelope, records.body(stem, body)).to_dict()


def typed(results: dict[str, dict]) -> dict[str, records.Record]:
    """Return each notebook's results.json content as the report reads it: its typed record, through
    JSON and :func:`fmnist_utils.records.parse`, the read path of :func:`fmnist_utils.report.render`."""
    return {stem: records.parse(stem, json.loads(json.dumps(r)), f"{stem}/results.json") for stem, r in results.items()}


def verdict(key: str, word: str, statistic: str = "difference in accuracy", value: float | None = 0.0123,
            low: float | None = 0.004, high: float | None = 0.0207, p: float | None = 0.0031,
            test: str = "McNemar's exact test", claim: str | None = None, reason: str | None = None) -> dict:
    """A verdict record as fmnist_utils.stats writes it; ``word="n/a"`` gives one without numbers."""
    if word == "n/a":
        value = low = high = p = None
    return {"key": key, "claim": claim or f"the claim tested by {key}", "statistic": statistic, "value": value,
            "low": low, "high": high, "level": 0.95, "p": p, "test": test, "n": 1000, "verdict": word, "reason": reason}


def text_of(html: str) -> str:
    """The page as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", html.replace("<wbr>", ""))))


def row(epoch, val_loss, train_acc, val_acc):
    return {"epoch": epoch, "train_loss": 1 / epoch, "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc}


def train_results(history=None, test_accuracy=0.8, config_source="sweep", verdicts=None) -> dict:
    """02_train: the CV-chosen configuration (the headline) and the study's recipe beside it."""
    history = history or [row(1, 0.6, 0.7, 0.72), row(2, 0.5, 0.8, 0.85), row(3, 0.55, 0.9, 0.79)]
    classes = [f"class {i}" for i in range(3)]
    cm = [[8, 2, 0], [1, 9, 0], [0, 3, 7]]
    config = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1, "batch_size": 128, "dropout": 0.5,
              "weight_decay": 0.001, "epochs": len(history), "seed": 0, "precision": "auto"}
    study_config = {**config, "lr": 0.05}
    recipe = None if config_source == "study" else {
        "config": study_config, "test": {"accuracy": 0.7, "loss": 0.7125}, "history": history, "training_seconds": 9.75}
    verdicts = verdicts or {
        "overfitting": verdict("overfitting", "overfits", "drop in validation accuracy", 0.06, 0.031, 0.089, 0.0002,
                               "one-sided binomial test on the validation images"),
        "above_chance": verdict("above_chance", "above_chance", "test accuracy", test_accuracy, 0.62, 0.91, 1e-6,
                                "exact binomial test against one in ten"),
        "chosen_vs_study_recipe": verdict("chosen_vs_study_recipe", "higher") if recipe else
        verdict("chosen_vs_study_recipe", "n/a", reason="the headline CNN is the study's recipe"),
    }
    return record("02_train", {
        "config_source": config_source,
        "config": study_config if config_source == "study" else config, "n_parameters": 1234567,
        "data": {"source": "/data", "train_images": 900, "val_images": 100, "test_images": 30,
                 "train_split_size": 60000, "test_split_size": 10000},
        "history": history, "best_val_epoch": min(history, key=lambda r: r["val_loss"]),
        "training_seconds": 10.25, "test": {"accuracy": test_accuracy, "loss": 0.6125},
        "classes": classes, "per_class_accuracy": {c: cm[i][i] / sum(cm[i]) for i, c in enumerate(classes)},
        "confusion_matrix": cm,
        "top_confusions": [{"true": "class 2", "predicted": "class 1", "count": 3, "fraction_of_true": 0.3}],
        "study_recipe": recipe, "checkpoint": "checkpoint.pt",
        "verdicts": verdicts,
    }, {k: f"{k}.png" for k in ("learning_curves", "confusion_matrix", "per_class_accuracy", "misclassified")}, 12.5)


def _cv(lr, batch_size, dropout, acc, rank):
    return {"lr": lr, "batch_size": batch_size, "dropout": dropout, "accuracy_mean": acc, "accuracy_std": 0.0123,
            "loss_mean": 0.5125, "loss_std": 0.0375, "n_folds": 3, "rank": rank}


def sweep_results(verdicts=None) -> dict:
    """01_sweep: a one-factor-at-a-time sweep of the learning rate by 3-fold CV."""
    base = {"lr": 0.05, "batch_size": 128, "dropout": 0.5}
    rows = [_cv(0.1, 128, 0.5, 0.825, 1), _cv(0.05, 128, 0.5, 0.8125, 2), _cv(0.003, 128, 0.5, 0.5, 3)]
    summary = [{**r, "seconds": 30.5} for r in rows]
    verdicts = verdicts or {
        "chosen_vs_runner_up": verdict("chosen_vs_runner_up", "no_significant_difference", "mean paired difference in accuracy", 0.0125,
                                       -0.02, 0.045, 0.31, "corrected resampled t-test (Nadeau and Bengio), 3 folds"),
        "chosen_vs_study": verdict("chosen_vs_study", "no_significant_difference", "mean paired difference in accuracy", 0.0125,
                                   -0.02, 0.045, 0.31, "corrected resampled t-test (Nadeau and Bengio), 3 folds"),
        "above_chance": verdict("above_chance", "above_chance", "accuracy", 0.79, 0.77, 0.81, 1e-6,
                                "exact one-sided binomial test against 0.1 on 30 images; Clopper-Pearson interval",
                                claim="the test accuracy of the chosen configuration, retrained and tested once, is above chance"),
    }
    return record("01_sweep", {
        "protocol": {"space": {"kind": "oat", "values": {"lr": [0.1, 0.05, 0.003]}, "base": base}, "n_configs": 3, "k": 3,
                     "subset": 4800, "train_split_size": 60000, "fold_train_images": 3200, "fold_val_images": 1600,
                     "epochs": 5, "selection": "highest cross-validated mean validation accuracy",
                     "storage": "runs/quick/01_sweep/sweep.sqlite3", "study_name": "sweep", "workers": 1},
        "run": {"n_units": 9, "trained": 9, "reused": 0, "pending": 0, "diverged": 0, "pruned": 1,
                "halving": halving.describe(halving.schedule(10, min_epochs=3, reduction_factor=4), 3)},
        "summary": summary, "folds": [], "factor_tables": {"lr": [{**r, "is_base": r["lr"] == 0.05} for r in summary]},
        "best_hyperparameters": {"lr": 0.1, "batch_size": 128, "dropout": 0.5},
        "best_cv": rows[0], "runner_up_cv": rows[1], "study_base": base, "study_base_cv": rows[1],
        "best_config": {"lr": 0.1, "batch_size": 128, "dropout": 0.5}, "final": None, "final_history": [],
        "training_seconds_total": 90.25,
        "verdicts": verdicts,
    }, {"factors": "factors.png", "fold_spread": "fold_spread.png"}, 100.5)


def _summary(within, between, low, high):
    return {"level": 0.95, "n_boot": 1000, "within": {"value": within}, "between": {"value": between},
            "difference": {"value": within - between, "low": low, "high": high}}


def compare_results(pretrained: bool, fmnist_resnet: bool = True) -> dict:
    """03_resnet_compare, with ImageNet weights or with the random-init fallback. The verdict
    records name the network "ResNet-18" plainly, as code that knows no label would."""
    source = models.CACHE_SOURCE if pretrained else models.RANDOM_INIT_SOURCE
    curves = []
    for model, layers in (("CNN", ("conv5", "fc2")), ("ResNet-18", ("layer4", "avgpool"))):
        curves += [{"model": model, "layer": layer, "features": 512, "within": 0.5 + i / 10, "between": 0.25,
                    "difference": 0.25 + i / 10, "class_mean_between": 0.125} for i, layer in enumerate(layers)]
    probe = {"n_train": 2000, "n_test": 1000, "l2": 0.01}
    figures = ["fig2_matrices", "matrix_definitions", "layer_curves", "cka", "probes"] + (["fmnist_resnet_matrix"] if fmnist_resnet else [])
    diff = "difference in within-minus-between correlation, CNN minus ResNet-18"
    return record("03_resnet_compare", {
        "weights_source": source, "pretrained": pretrained, "resnet_title": models.model_title(source),
        "weights": {"source": source, "pretrained": pretrained, "verified": pretrained, "sha256": "ab" * 32 if pretrained else None,
                    "note": "found the file" if pretrained else "No ImageNet weights: no file in the cache, and downloading was "
                    "not allowed. To use them, put resnet18-f37072fd.pth there."},
        "cnn": {"source": "02_train checkpoint", "n_parameters": 1234567, "layer": "fc2", "config": {"epochs": 3}},
        "resnet": {"layer": "avgpool", "input_size": 224},
        "sample": {"images": 1000, "per_class": 100, "seed": 0}, "max_spatial": 8, "precision": "fp32",
        "classes": [f"class {i}" for i in range(10)], "matrices": {}, "class_mean_matrices": {},
        "summary": {"cnn": _summary(0.625, 0.25, 0.35, 0.4), "resnet": _summary(0.75, 0.5, 0.2, 0.3),
                    "pixels": _summary(0.5, 0.25, 0.2, 0.3)},
        "top_pairs": {"cnn": [{"a": "shirt", "b": "T-shirt", "r": 0.5}], "resnet": [{"a": "coat", "b": "pullover", "r": 0.75}]},
        "spearman": {"cnn_vs_resnet": {"value": 0.625, "low": 0.4, "high": 0.8}, "cnn_vs_pixels": {"value": 0.5},
                     "resnet_vs_pixels": {"value": 0.75}},
        "layer_curves": curves,
        "cka": {"main": {"biased": 0.5, "debiased": 0.375}, "best_debiased": {"row": "CNN fc2", "col": "ResNet-18 layer4", "value": 0.4}},
        "probe": {"pixels": {**probe, "n_features": 784, "test_accuracy": 0.8},
                  "cnn": {**probe, "n_features": 512, "test_accuracy": 0.875},
                  "resnet": {**probe, "n_features": 512, "test_accuracy": 0.8125}},
        "cnn_own_accuracy": 0.88,
        "fmnist_resnet": {"train_images": 900, "config": {"epochs": 2}, "test_accuracy": 0.85, "difference": 0.3,
                          "spearman_vs_cnn": 0.5, "spearman_vs_imagenet_resnet": 0.25, "cka_vs_cnn": 0.375,
                          "probe": {"n_features": 512, "test_accuracy": 0.86, "l2": 0.01}} if fmnist_resnet else None,
        "timing": {"resnet_features_seconds": 12.5},
        "verdicts": {
            "separation": verdict("separation", "higher", diff, 0.0024, 0.002, 0.0029, None,
                                  "paired bootstrap over the images, 1,000 resamples",
                                  claim="The CNN's classes stand apart more clearly than ResNet-18's"),
            "matrix_agreement": verdict("matrix_agreement", "agree", "Spearman correlation of the matrices' upper triangles",
                                        0.625, None, None, 0.003, "Mantel permutation test, 10,000 permutations",
                                        claim="The CNN and ResNet-18 rank the class pairs alike"),
            "cka_vs_pixels": verdict("cka_vs_pixels", "no_significant_difference", "difference in debiased CKA with the pixels, CNN minus ResNet-18",
                                     0.01, -0.02, 0.04, None, "paired bootstrap over the images, 1,000 resamples"),
            "probe_cnn_vs_pixels": verdict("probe_cnn_vs_pixels", "higher", "difference in probe accuracy, CNN minus pixels",
                                           0.075, 0.05, 0.1, 1e-5),
            "probe_cnn_vs_resnet": verdict("probe_cnn_vs_resnet", "higher", "difference in probe accuracy, CNN minus ResNet-18",
                                           0.0625, 0.04, 0.085, 1e-4),
            "probe_resnet_vs_pixels": verdict("probe_resnet_vs_pixels", "no_significant_difference", "difference in probe accuracy, ResNet-18 minus pixels",
                                              0.0125, -0.01, 0.035, 0.27),
        },
    }, {name: f"{name}.png" for name in figures}, 60.25)


def untemplated_results() -> dict:
    """A notebook without a section template (05_extra), as it would leave its results: numbers and verdicts."""
    return record("05_extra", {
        "modern": {"accuracy_mean": 0.9125},
        "verdicts": {"row:modern": verdict("row:modern", "higher", "mean difference in accuracy over seeds", 0.0225, 0.01,
                                           0.035, 0.004, "paired t-test over 3 seeds", claim="The modern recipe beats the study's")},
    }, {"accuracy_vs_time": "accuracy_vs_time.png"}, 30.5)


def improvements_results(rows=("study", "modern", "modern-nesterov", "resnet18", "ensemble")) -> dict:
    """04_improvements: made by the package's own functions from seeded per-seed accuracies, so the
    table, rows and verdict records have exactly the notebook's shape."""
    import numpy as np

    from fmnist_utils import improve

    chosen = improve.select_rows(rows)
    rng = np.random.default_rng(0)
    seeds, n_val, n_test = [0, 1, 2], 20, 30
    outcomes = {}
    for i, r in enumerate(chosen):
        val, test = rng.dirichlet(np.ones(10), (3, n_val)), rng.dirichlet(np.ones(10), (3, n_test))
        outcomes[r.name] = improve.Outcome(r.name, seeds, rng.uniform(0.7, 0.9, 3), 0.8 + 0.01 * i + rng.normal(0, 0.002, 3),
                                           30.0 + i, val, test, [False] * 3, 100)
    if "ensemble" in outcomes:
        outcomes["ensemble"].extra = {"weight_modern": [0.4, 0.5, 0.45]}
    records = improve.verdicts(chosen, outcomes)
    trained = [r for r in chosen if r.settings is not None]
    return record("04_improvements", {
        "config": improve.shared_settings([r.config(epochs=4) for r in trained]),
        "configs": {r.name: r.config(epochs=4).to_dict() for r in trained},
        "protocol": {"rows": [r.name for r in chosen], "all_rows": list(improve.ablation_rows()), "seeds": seeds,
                     "n_seeds": 3, "epochs": 4, "train_images": 2_250, "val_images": 250, "test_images": 1_000,
                     "train_split_size": 60_000, "test_split_size": 10_000, "level": improve.LEVEL,
                     "test": improve.TEST_NAME, "data_source": "test", "families": improve.families(chosen),
                     "power": improve.power_note(3, len(improve.families(chosen)["primary"]))},
        "rows": [{**r.to_dict(), "seconds": outcomes[r.name].seconds, "steps": outcomes[r.name].steps,
                  "seeds": outcomes[r.name].per_seed()} for r in chosen],
        "table": improve.summary_table(chosen, outcomes, records),
        "verdicts": records,
        "training_seconds": 150.25,
    }, {"accuracy_vs_time": "accuracy_vs_time.png"}, 200.5)


def render(tmp_path: Path, results: dict[str, dict], links: dict | None = None, title: report.TitleBlock | None = None) -> str:
    """Write each notebook's results and figures into a run folder; return the report page
    (``title``: its title block, :class:`fmnist_utils.report.TitleBlock`)."""
    run = tmp_path / "run"
    png = (ROOT / "tests" / "test_plots.py").read_bytes()  # any bytes do for embedding
    stamps = []
    for stem, r in results.items():
        out = run / stem
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(r))
        for name in r.get("figures", {}).values():
            (out / name).write_bytes(png)
        stamps.append({"notebook": stem, "source": str(tmp_path / f"{stem}.ipynb"), "executed_notebook": f"{stem}.ipynb",
                       "seconds": 20.5, "finished_utc": "2026-01-01T00:00:00+00:00", "executed": True})
    return report.render(run, stamps, links, generated_utc="2026-01-01 00:00 UTC", title=title)
