"""What a network computes inside: the activations of its named layers, and a linear probe on them.

:func:`extract` runs a model once over many images in large batches, on any device, and
returns the output of every requested layer (a name from ``model.named_modules()``, e.g.
``"block3"`` of :class:`~fmnist_utils.models.SeedCNN` or ``"layer2"`` / ``"avgpool"`` of a
ResNet) flattened to one float32 CPU row per image. :func:`linear_probe` measures how linearly
separable frozen features are: multinomial logistic regression fitted full-batch with L-BFGS.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import device as devices
from .data import scale


def layer_names(model: nn.Module) -> list[str]:
    """Return the names of every submodule of ``model``, in registration order (for :func:`extract`)."""
    return [name for name, _ in model.named_modules() if name]


def _resolve_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    if isinstance(layers, str) or not layers:
        raise ValueError(f"layers must be a non-empty list of layer names, got {layers!r}")
    layers = list(layers)
    modules = dict(model.named_modules())
    found = {}
    for name in layers:
        if name not in modules or not name:
            close = difflib.get_close_matches(str(name), layer_names(model), n=3)
            top = [n for n in layer_names(model) if "." not in n]
            raise ValueError(
                f"{type(model).__name__} has no layer {name!r}"
                + (f"; did you mean {close}?" if close else "")
                + f" Top-level layers: {top} (layer_names(model) lists all)"
            )
        found[name] = modules[name]
    if len(found) != len(layers):
        raise ValueError(f"layers contains a name twice: {list(layers)}")
    return found


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch tensor (N, C, H, W), got {type(images).__name__}")
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch (N, ...), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be uint8 0..255 or float, got {images.dtype}")


# no_grad, not inference_mode: the returned tensors must stay usable with autograd (a probe).
@torch.no_grad()
def extract(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str] = ("avgpool",),
    batch_size: int = 256,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    max_spatial: int | None = None,
) -> dict[str, torch.Tensor]:
    """Return ``{layer: float32 CPU tensor (N, D)}``: each layer's output for every image, flattened.

    images: (N, 1, 28, 28) uint8 (scaled to [0, 1] on the device, as the trainer does) or
    float (fed as is). All layers come from one forward pass per batch, through forward hooks,
    with the model in eval mode (its mode is restored after). ``device``: where to run (the
    model is moved there); None keeps the model's device. ``precision``: fp32 | bf16 | auto.
    ``max_spatial``: convolutional maps (B, C, H, W) wider than this are average-pooled to at
    most max_spatial x max_spatial before flattening (bounds memory for early ResNet layers);
    None keeps every map whole. A module that runs twice in one forward pass (e.g. the ReLU
    shared inside a torchvision BasicBlock) is refused: ask for its parent block.
    """
    _check_images(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_spatial is not None and (not isinstance(max_spatial, int) or max_spatial < 1):
        raise ValueError(f"max_spatial must be None or a positive integer, got {max_spatial!r}")
    targets = _resolve_layers(model, layers)
    if device is None:
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = devices.resolve_device(device)
        model.to(dev)
    precision = devices.resolve_precision(precision, dev)
    n = len(images)
    out: dict[str, torch.Tensor | None] = {name: None for name in targets}
    calls: dict[str, int] = {}
    rows = slice(0, 0)

    def make_hook(name: str):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor):
                raise ValueError(f"layer {name!r} returns a {type(output).__name__}, not a tensor; pick another layer")
            calls[name] = calls.get(name, 0) + 1
            if calls[name] > 1:
                raise ValueError(
                    f"layer {name!r} runs more than once per forward pass (a shared module); "
                    "ask for the block that contains it instead"
                )
            act = output.detach()
            if max_spatial is not None and act.ndim == 4 and max(act.shape[-2:]) > max_spatial:
                size = (min(act.shape[-2], max_spatial), min(act.shape[-1], max_spatial))
                act = F.adaptive_avg_pool2d(act.float(), size)
            flat = act.reshape(act.shape[0], -1)  # (B, D), D in C, H, W order
            if out[name] is None:
                out[name] = torch.empty((n, flat.shape[1]), dtype=torch.float32)
            # Copied now: a later in-place op (ReLU(inplace=True)) would otherwise change it.
            out[name][rows].copy_(flat)

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in targets.items()]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            xb = images[rows].to(dev, non_blocking=True)
            xb = scale(xb) if xb.dtype == torch.uint8 else xb.float()
            calls.clear()
            with devices.autocast(dev, precision):
                model(xb)
            missing = [name for name in targets if name not in calls]
            if missing:
                raise ValueError(f"layers {missing} did not run in the model's forward pass")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return out  # type: ignore[return-value]


def extract_layer(model: nn.Module, images: torch.Tensor, layer: str = "avgpool", **kwargs) -> torch.Tensor:
    """Return one layer's activations, float32 CPU (N, D); keywords as for :func:`extract`."""
    return extract(model, images, [layer], **kwargs)[layer]


# --------------------------------------------------------------------------------------------
# Linear probe


def _probe_inputs(features, labels, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(np.asarray(features))
    y = labels.detach() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what} features must be 2-D (n_images, n_features), got shape {tuple(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what} labels must be (n_images,) = ({len(x)},), got shape {tuple(y.shape)}")
    x = x.to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} features contain NaN or infinite values")
    return x, y.to("cpu", torch.int64)


@contextlib.contextmanager
def _single_thread(dev: torch.device):
    # L-BFGS on a probe is thousands of small ops: on a CPU, synchronising threads for each costs
    # more than the arithmetic (10x slower on 2 busy cores), so the fit runs on one thread.
    if dev.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    l2: float,
    max_iter: int,
    dev: torch.device,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight (D, C), bias (C,)) minimising mean cross-entropy + l2 * ||weight||^2 (L-BFGS).

    ``init``: a starting point (a nearby solution converges in far fewer iterations); zeros if None.
    """
    x, y = x.to(dev), y.to(dev)
    if init is None:
        weight = torch.zeros((x.shape[1], n_classes), device=dev)
        bias = torch.zeros(n_classes, device=dev)
    else:
        weight, bias = (t.detach().clone().to(dev) for t in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _single_thread(dev):
        optimizer.step(closure)  # one step runs up to max_iter L-BFGS iterations
    return weight.detach(), bias.detach()


def _accuracy(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    x, y = x.to(weight.device), y.to(weight.device)
    return ((x @ weight + bias).argmax(1) == y).float().mean().item()


def _standardise(fit_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean = fit_x.mean(0)
    std = fit_x.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # constant features stay 0, not NaN
    return [(t - mean) / std for t in (fit_x, *others)]


def _split(y: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (fit, val) indices with each class split in ``fraction`` (seeded)."""
    rng = np.random.default_rng(seed)
    yn = y.numpy()
    val = []
    for c in np.unique(yn):
        members = rng.permutation(np.flatnonzero(yn == c))
        val.append(members[: max(1, int(round(fraction * len(members))))])
    val_idx = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(yn)), val_idx), val_idx


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    n_classes: int = 10,
    l2: float | Sequence[float] = (1e-4, 1e-3, 1e-2),
    max_iter: int = 200,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict:
    """Return the test accuracy of a linear classifier on frozen features, and how it was fitted.

    Features (N, D) (numpy or torch) are standardised with the training mean and std; a
    multinomial logistic regression (mean cross-entropy + l2 * ||W||^2) is fitted full-batch
    with up to ``max_iter`` L-BFGS iterations. When ``l2`` lists several values, the one with
    the best accuracy on a stratified ``val_fraction`` of the training features is chosen
    (ties: the first listed) and the probe refitted on all of them, starting from its solution.
    Keys: ``test_accuracy``, ``test_predictions`` (int64 (n_test,): the predicted class of each
    test image, for paired comparisons of probes), ``test_accuracy_se`` (its binomial standard error,
    sqrt(a (1 - a) / n_test)), ``train_accuracy``, ``l2``, ``val_accuracy`` ({l2: accuracy},
    empty for a single l2), ``n_train``, ``n_test``, ``n_features``.
    """
    x_train, y_train = _probe_inputs(train_features, train_labels, "training")
    x_test, y_test = _probe_inputs(test_features, test_labels, "test")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"training features have {x_train.shape[1]} dimensions but test features {x_test.shape[1]}")
    for what, y in (("training", y_train), ("test", y_test)):
        if y.min() < 0 or y.max() >= n_classes:
            raise ValueError(f"{what} labels must be in 0..{n_classes - 1}")
    candidates = [float(l2)] if np.isscalar(l2) else [float(v) for v in l2]
    if not candidates or min(candidates) < 0:
        raise ValueError(f"l2 must be a number >= 0 or a non-empty list of them, got {l2!r}")
    dev = devices.resolve_device(device)

    val_accuracy = {}
    start = None
    if len(candidates) > 1:
        fit_idx, val_idx = _split(y_train, val_fraction, seed)
        fit_x, val_x = _standardise(x_train[fit_idx], x_train[val_idx])
        solutions = {}
        # Strongest penalty first, each fit starting from the previous solution: a warm-started
        # regularisation path needs far fewer iterations than fits from zero.
        for value in sorted(candidates, reverse=True):
            start = _fit_logistic(fit_x, y_train[fit_idx], n_classes, value, max_iter, dev, init=start)
            solutions[value] = start
            val_accuracy[value] = _accuracy(val_x, y_train[val_idx], *start)
        chosen = max(candidates, key=lambda v: val_accuracy[v])  # first of equals
        start = solutions[chosen]
    else:
        chosen = candidates[0]
    train_x, test_x = _standardise(x_train, x_test)
    weight, bias = _fit_logistic(train_x, y_train, n_classes, chosen, max_iter, dev, init=start)
    accuracy = _accuracy(test_x, y_test, weight, bias)
    predictions = (test_x.to(weight.device) @ weight + bias).argmax(1).cpu().numpy()
    return {
        "test_accuracy": accuracy,
        "test_predictions": predictions,
        "test_accuracy_se": float(np.sqrt(accuracy * (1 - accuracy) / len(x_test))),
        "train_accuracy": _accuracy(train_x, y_train, weight, bias),
        "l2": chosen,
        "val_accuracy": val_accuracy,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "n_features": x_train.shape[1],
    }
