"""The steps of ``03_resnet_compare`` that join training, features and statistics.

Each is a plain function the notebook calls once and a test can call at tiny size:
:func:`representation_layers` (which layers of a network the comparison reads),
:func:`cnn_to_compare` (02_train's network, or one trained here when 02 has not run),
:func:`probe_layers` (linear probes on several networks' frozen features, the same images for
each) and :func:`fmnist_resnet18` (a ResNet-18 trained on Fashion-MNIST, described the way the
notebook describes the other two networks). The statistics themselves live in
:mod:`~fmnist_utils.correlation` and :mod:`~fmnist_utils.stats`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import correlation, data, features, notebook, train

# The layers whose outputs the comparison reads, input to output, by TrainConfig.model (and
# "imagenet_resnet18"): every block's output and the dense layers before the classifier.
REPRESENTATION_LAYERS = {
    "seedcnn": ("block1", "block2", "block3", "block4", "block5", "fc1", "fc2"),
    "resnet18": ("layer1", "layer2", "layer3", "layer4", "avgpool"),
    "imagenet_resnet18": ("layer1", "layer2", "layer3", "layer4", "avgpool"),
}


def representation_layers(model_name: str, chosen: str | None = None) -> list[str]:
    """Return the layers of ``model_name`` the comparison reads, input to output.

    ``chosen`` (the layer of the study's matrix), when given, must be one of them; a ValueError
    names the allowed ones otherwise.
    """
    if model_name not in REPRESENTATION_LAYERS:
        raise ValueError(f"no representation layers known for model {model_name!r}; known: {sorted(REPRESENTATION_LAYERS)}")
    layers = list(REPRESENTATION_LAYERS[model_name])
    if chosen is not None and chosen not in layers:
        raise ValueError(f"layer {chosen!r} is not one the comparison reads from {model_name}; choose one of {layers}")
    return layers


def cnn_to_compare(run: str | Path, out: str | Path, x_train: torch.Tensor, y_train: torch.Tensor, *,
                   epochs: int, subset: int | None, seed: int = 0, device: str = "auto"
                   ) -> tuple[nn.Module, train.TrainConfig, Path, str]:
    """Return (model on the CPU in eval mode, its config, its checkpoint, where it came from).

    The network is the one ``02_train`` wrote into the run folder ``run``. When that notebook
    has not run there, the study's recipe is trained here for ``epochs`` on a stratified
    ``subset`` (None: all) of ``x_train`` (N, 1, 28, 28) uint8 and checkpointed in ``out``, so
    03 still runs on its own; the source string says which happened.
    """
    try:
        trained = notebook.find_results(run, "train")
        checkpoint = Path(run) / trained.notebook / trained.checkpoint
        source = f"{trained.notebook} checkpoint"
    except FileNotFoundError:
        checkpoint, source = Path(out) / "cnn_checkpoint.pt", "trained here (no results of the training notebook)"
        config = train.preset("study", epochs=epochs, seed=seed, device=device)
        idx = torch.from_numpy(data.subset_indices(y_train, subset, seed=seed))
        print(f"NOTE: no results of the training notebook in {run}; training the CNN here on {len(idx)} images for "
              f"{config.epochs} epoch(s) with the study's recipe. Run 02_train first to compare its network.")
        train.fit(train.build_model(config), x_train[idx], y_train[idx], config, checkpoint=checkpoint)
    model, config, _ = train.load_checkpoint(checkpoint, map_location="cpu")
    return model.eval(), config, checkpoint, source


def probe_layers(networks: dict, x_fit: torch.Tensor, y_fit: torch.Tensor, x_score: torch.Tensor,
                 y_score: torch.Tensor, *, n_classes: int = 10, seed: int = 0, **extract_kw) -> tuple[dict, dict]:
    """Return (probes, correct): a linear probe per network and, per network, which scoring
    images its probe classified correctly (bool (n_score,), for paired tests).

    ``networks`` maps a name to ``(model, layer)``, or to None for the raw pixels. Every probe is
    fitted on the frozen features of ``x_fit`` (N, 1, 28, 28) and scored on those of
    ``x_score``; ``extract_kw`` (batch_size, device, precision, max_spatial) goes to
    :func:`~fmnist_utils.features.extract_layer`, and its device also fits the probes. Each probe
    is :func:`~fmnist_utils.features.linear_probe`'s record without its predictions.
    """
    device = extract_kw.get("device") or "cpu"
    probes, correct = {}, {}
    for name, network in networks.items():
        if network is None:
            fit, score = (x.reshape(len(x), -1).float() for x in (x_fit, x_score))
        else:
            model, layer = network
            fit, score = (features.extract_layer(model, x, layer, **extract_kw) for x in (x_fit, x_score))
        probe = features.linear_probe(fit, y_fit, score, y_score, n_classes=n_classes, seed=seed, device=device)
        correct[name] = probe.pop("test_predictions") == np.asarray(y_score)
        probes[name] = probe
    return probes, correct


def fmnist_resnet18(config: train.TrainConfig, x_train: torch.Tensor, y_train: torch.Tensor, *,
                    x_sample: torch.Tensor, labels: np.ndarray, probe_data: tuple, references: dict,
                    checkpoint: str | Path, n_classes: int = 10, seed: int = 0, **extract_kw) -> dict:
    """Train a Fashion-MNIST ResNet-18 with ``config`` and return its record for the report.

    Trained on ``x_train``/``y_train`` (checkpointed at ``checkpoint``), then read at
    ``avgpool`` on the comparison's sample ``x_sample`` with class ``labels`` (n,). Keys:
    ``config``, ``train_images``, ``history``, ``test_accuracy`` (on the probe's scoring images),
    ``matrix`` (the study's matrix), ``within``/``between``/``difference``, ``probe`` (a linear
    probe on ``probe_data`` = (x_fit, y_fit, x_score, y_score)), and for each ``references``
    entry ``name: (matrix, features)`` the Spearman agreement of the matrices
    (``spearman_vs_<name>``) and linear CKA of the features (``cka_vs_<name>``). ``seed`` seeds
    the probe's validation split; ``extract_kw`` as for :func:`probe_layers`.
    """
    model = train.build_model(config)
    history = train.fit(model, x_train, y_train, config, checkpoint=checkpoint)
    model = model.to(extract_kw.get("device") or "cpu", memory_format=torch.channels_last).eval()
    own = features.extract_layer(model, x_sample, "avgpool", **extract_kw)
    matrix = correlation.class_correlation_matrix(own, labels, n_classes)
    x_fit, y_fit, x_score, y_score = probe_data
    probes, _ = probe_layers({"own": (model, "avgpool")}, x_fit, y_fit, x_score, y_score, n_classes=n_classes,
                             seed=seed, **extract_kw)
    record = {
        "config": config.to_dict(), "train_images": len(x_train), "history": history,
        "test_accuracy": train.evaluate(model, x_score, y_score, batch_size=extract_kw.get("batch_size", 2048),
                                        precision=extract_kw.get("precision", "auto"))["accuracy"],
        "matrix": matrix, **correlation.within_between(matrix), "probe": probes["own"],
    }
    for name, (ref_matrix, ref_features) in references.items():
        record[f"spearman_vs_{name}"] = correlation.compare_matrices(matrix, ref_matrix)
        record[f"cka_vs_{name}"] = correlation.linear_cka(own, ref_features)
    return record


def representations(networks: dict, images: torch.Tensor, **extract_kw) -> tuple[dict, dict]:
    """Return (reps, seconds): every named layer's activations on ``images`` (N, 1, 28, 28) and
    the time each network took.

    ``networks`` maps a name to ``(model, layers)``, or to None for the raw pixels (one
    representation, layer ``"pixels"``). ``reps`` maps ``(name, layer)`` to float32 CPU (N, D), in
    the order given; ``seconds`` maps each name to the wall time of its forward passes.
    ``extract_kw`` goes to :func:`~fmnist_utils.features.extract`.
    """
    reps, seconds = {}, {}
    for name, network in networks.items():
        start = time.perf_counter()
        if network is None:
            reps[(name, "pixels")] = images.reshape(len(images), -1).float()
        else:
            model, layers = network
            reps.update({(name, layer): v for layer, v in features.extract(model, images, layers, **extract_kw).items()})
        seconds[name] = time.perf_counter() - start
    return reps, seconds
