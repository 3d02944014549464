"""Estimate a report's wall time before spending it: count image-passes, time a few real steps.

Each notebook's work is counted in *image-passes* of a few kinds (one image through the CNN's
training step, one through its evaluation, one through ResNet-18 ...) from the profile's sizes:
:func:`image_passes`. A few real steps of each kind are timed on the actual device, warm-up
excluded: :func:`measure_seconds_per_image`. Their product is the estimate: :func:`estimate`.

Only the ``full`` profile is meant for a GPU; ``smoke`` and ``quick`` are sized for a laptop
CPU. :func:`check_budget`, called by ``make report`` before any notebook runs, stops a ``full``
report on a machine without CUDA when the estimate exceeds :data:`LIMIT_HOURS`, saying how long it
would take and how to run it anyway: ``--ignore-estimate``
(``python -m fmnist_utils report --profile full --ignore-estimate``) or the environment variable
``FMNIST_IGNORE_ESTIMATE=1`` (``FMNIST_IGNORE_ESTIMATE=1 make report PROFILE=full``).

Not counted: work that is not image-passes (bootstrap resamples of correlation matrices, linear
probes, figures), kernel start-up (:data:`NOTEBOOK_OVERHEAD_S` per notebook stands for it), and
the effect of batch size (timed at the study's batch 128; the sweep's other batch sizes run at
about the same pace per image on a CPU and faster on a GPU, so the estimate errs long there).
"""

from __future__ import annotations

import math
import time

import torch

from . import device as devices
from . import env, profiles

IGNORE_ENV = "FMNIST_IGNORE_ESTIMATE"
# A report estimated to take longer than this on a machine without CUDA is refused (hours).
LIMIT_HOURS = 2.0
# Kernel start, imports and data loading of one notebook (seconds), measured on a laptop CPU.
NOTEBOOK_OVERHEAD_S = 10.0
# Images in the training and test splits (None in a profile means all of them).
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000
CLASSES = 10
# What one image-pass of each kind is.
KINDS = {
    "cnn_train": "SeedCNN training step (forward, backward, SGD update) at batch 128",
    "cnn_eval": "SeedCNN evaluation (forward only)",
    "resnet_train": "ResNet-18 for 28x28 (FashionResNet18) training step",
    "resnet_eval": "ResNet-18 for 28x28 evaluation",
    "imagenet_eval": "ImageNet ResNet-18 forward at 224x224 (features)",
}


class TooSlow(RuntimeError):
    """The report would take longer than the limit on this machine: the estimate and what to do."""

    def __init__(self, message: str, estimate: dict):
        self.estimate = estimate
        super().__init__(message)


def profile_sizes(profile: profiles.Profile) -> dict[str, dict]:
    """Return the sizes the image-passes depend on, by notebook: ``{"train", "sweep", "compare", "improve"}``.

    The one function that reads the profile's field names.
    """
    t, s, c, i = profile.train, profile.sweep, profile.compare, profile.improve
    return {
        "train": {"subset": t.subset, "val_fraction": t.val_fraction, "epochs": t.epochs, "test_subset": t.test_subset},
        "sweep": {"space": s.space, "n_configs": s.n_configs, "factors": tuple(s.factors), "k": s.k,
                  "subset": s.subset, "epochs": s.epochs, "min_epochs": s.min_epochs,
                  "reduction_factor": s.reduction_factor, "final_subset": s.final_subset,
                  "final_epochs": s.final_epochs, "test_subset": s.test_subset},
        "compare": {"per_class": c.per_class, "probe_train": c.probe_train, "probe_test": c.probe_test,
                    "fmnist_resnet": c.fmnist_resnet, "fmnist_resnet_subset": c.fmnist_resnet_subset,
                    "fmnist_resnet_epochs": c.fmnist_resnet_epochs},
        "improve": {"rows": i.rows, "seeds": i.seeds, "subset": i.subset, "val_fraction": i.val_fraction,
                    "epochs": i.epochs, "test_subset": i.test_subset},
        "skip": tuple(profile.skip),
    }


def count_configs(space: str, n_configs: int | None, factors: tuple[str, ...]) -> int:
    """Return how many configurations a sweep of the study's values tries.

    ``oat``: the study's recipe plus each factor's other values, one at a time (every factor's
    values include the recipe's); ``grid``: every combination; ``random`` / ``tpe``: ``n_configs``.
    """
    from .study import VALUES

    unknown = [f for f in factors if f not in VALUES]
    if unknown:
        raise ValueError(f"unknown sweep factors {unknown}; the study's are {list(VALUES)}")
    if space == "oat":
        return 1 + sum(len(VALUES[f]) - 1 for f in factors)
    if space == "grid":
        return math.prod(len(VALUES[f]) for f in factors)
    if space in ("random", "tpe"):
        if n_configs is None or n_configs < 1:
            raise ValueError(f"a {space} sweep needs n_configs >= 1, got {n_configs}")
        return n_configs
    raise ValueError(f"unknown sweep space {space!r}; choose oat, grid, random or tpe")


def sweep_schedule(sweep_sizes: dict):
    """Return the rung schedule (:class:`fmnist_utils.halving.Schedule`) of the sweep sizes of :func:`profile_sizes`."""
    from . import halving

    return halving.schedule(sweep_sizes["epochs"], sweep_sizes.get("min_epochs"), sweep_sizes.get("reduction_factor", 4),
                            sweep_sizes["space"])


def sweep_config_epochs(sweep_sizes: dict) -> int:
    """Return the most configuration-epochs (per fold) the sweep of ``sweep_sizes`` trains:
    its configurations times its epochs, or with successive halving each rung's most survivors
    times the rung's epochs (:func:`fmnist_utils.halving.units_epochs`)."""
    from . import halving

    s = sweep_sizes
    return halving.units_epochs(count_configs(s["space"], s["n_configs"], s["factors"]), sweep_schedule(s))


def image_passes(sizes: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Return ``{notebook: {kind: image-passes}}`` for the sizes of :func:`profile_sizes`.

    train: two CNNs (the CV-chosen configuration and the study's recipe beside it) trained on the
    training part of the subset for ``epochs``, validated every epoch, tested once. sweep: every
    configuration on k folds, each fold's model trained on the other k-1 folds and validated every
    epoch, for the most configuration-epochs its rung schedule can train (successive halving with
    ``min_epochs``: each rung's survivors retrained from scratch, :func:`fmnist_utils.halving.units_epochs`,
    a bound, not an expectation; without it every configuration for ``epochs``), then the final model
    and its test.
    compare: the CNN comes from the train notebook's checkpoint; features of the per-class sample
    and the probe images from the CNN and the ImageNet ResNet-18, the CNN's own test accuracy on
    the probe's test images, and optionally a ResNet-18 trained on Fashion-MNIST, used likewise.
    improve: every seed of every trained ablation row (:func:`fmnist_utils.improve.image_passes`).
    A notebook in ``sizes["skip"]`` (a budgeted run dropped it) counts nothing; without the sweep,
    train has one CNN (the study's recipe).
    """
    from . import improve

    t, s, c, i = sizes["train"], sizes["sweep"], sizes["compare"], sizes["improve"]
    n = t["subset"] or TRAIN_IMAGES
    n_val = round(t["val_fraction"] * n)
    skip = sizes.get("skip", ())
    # the chosen configuration and the study's recipe (one when they coincide: an upper bound); without a sweep, one
    models = 1 if "01_sweep" in skip else 2
    train = {"cnn_train": models * (n - n_val) * t["epochs"],
             "cnn_eval": models * (n_val * t["epochs"] + (t["test_subset"] or TEST_IMAGES))}

    pool = s["subset"] or TRAIN_IMAGES
    config_epochs = sweep_config_epochs(s)
    sweep = {
        # Over k folds each image is trained on k-1 times and validated once, every epoch.
        "cnn_train": config_epochs * (s["k"] - 1) * pool + (s["final_subset"] or TRAIN_IMAGES) * s["final_epochs"],
        "cnn_eval": config_epochs * pool + (s["test_subset"] or TEST_IMAGES),
    }

    features = c["per_class"] * CLASSES + c["probe_train"] + (c["probe_test"] or TEST_IMAGES)
    scored = c["probe_test"] or TEST_IMAGES
    compare = {"cnn_eval": features + scored, "imagenet_eval": features}
    if c["fmnist_resnet"]:
        compare["resnet_train"] = (c["fmnist_resnet_subset"] or TRAIN_IMAGES) * c["fmnist_resnet_epochs"]
        compare["resnet_eval"] = features + scored
    rows = improve.select_rows(i["rows"])
    ablation = improve.image_passes(rows, i["seeds"], i["subset"], i["val_fraction"], i["epochs"], i["test_subset"],
                                    TRAIN_IMAGES, TEST_IMAGES)
    out = {"train": train, "sweep": sweep, "compare": compare, "improve": ablation}
    stems = {"sweep": "01_sweep", "train": "02_train", "compare": "03_resnet_compare", "improve": "04_improvements"}
    return {name: ({} if stems[name] in skip else counts) for name, counts in out.items()}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device) -> float:
    _sync(dev)
    start = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - start


def measure_seconds_per_image(kinds=tuple(KINDS), device: str | torch.device = "auto", precision: str = "auto",
                              steps: int | None = None) -> dict[str, float]:
    """Return measured seconds per image-pass of each kind on ``device`` (see :data:`KINDS`).

    Each kind runs one warm-up batch (kernel selection, allocation), then ``steps`` timed
    batches of random images (default 2 on a CPU, 10 on a GPU); ResNet batches are smaller on a
    CPU so that timing stays within seconds.
    """
    from . import train
    from .models import ImageNetResNet18

    dev = devices.resolve_device(device)
    precision = devices.resolve_precision(precision, dev)
    gpu = dev.type == "cuda"
    steps = steps or (10 if gpu else 2)
    generator = torch.Generator().manual_seed(0)
    out = {}
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose among {list(KINDS)}")
        resnet = kind.startswith("resnet")
        batch = 128 if gpu or not resnet else 32
        if kind == "imagenet_eval":
            batch = 64 if gpu else 4
        config = train.TrainConfig(model="resnet18" if resnet else "seedcnn", dropout=0.0 if resnet else 0.5,
                                   batch_size=batch, epochs=1, precision=precision, device=str(dev))
        x = torch.randint(0, 256, (batch * (steps + 1), 1, 28, 28), generator=generator, dtype=torch.uint8).to(dev)
        y = torch.randint(0, 10, (len(x),), generator=generator).to(dev)
        if kind.endswith("_train"):
            model = train.prepare_model(train.build_model(config), dev)
            optimizer = train.build_optimizer(model, config)

            def epoch(a, b):
                return train.train_one_epoch(model, optimizer, x[a:b], y[a:b], config, generator, precision)

            epoch(0, batch)  # warm-up
            seconds = _timed(lambda: epoch(batch, len(x)), dev)
        else:
            model = ImageNetResNet18() if kind == "imagenet_eval" else train.build_model(config)
            model = train.prepare_model(model, dev)
            train.predict_logits(model, x[:batch], batch, precision)  # warm-up
            seconds = _timed(lambda: train.predict_logits(model, x[batch:], batch, precision), dev)
        out[kind] = seconds / (batch * steps)
    return out


def estimate(profile: str | profiles.Profile, seconds_per_image: dict[str, float] | None = None,
             device: str | torch.device = "auto", sweep_speedup: float = 1.0,
             notebooks: tuple[str, ...] | None = None) -> dict:
    """Return the expected wall time of each notebook of ``profile`` on ``device``.

    ``seconds_per_image``: {kind: seconds}, measured with :func:`measure_seconds_per_image` when
    None (only the kinds needed). ``sweep_speedup``: how much faster the sweep's training runs per
    unit than one unit alone (stacked training, see :func:`fmnist_utils.stacked.plan_stack_size`).
    ``notebooks``: only these of ``train``, ``sweep``, ``compare``, ``improve`` (a notebook printing its own
    estimate before it trains). Returns ``{"profile", "device", "notebooks": {name: seconds},
    "total_seconds", "passes", "seconds_per_image"}``.
    """
    prof = profile if isinstance(profile, profiles.Profile) else profiles.get(profile)
    dev = devices.resolve_device(device)
    passes = image_passes(profile_sizes(prof))
    if notebooks is not None:
        unknown = [n for n in notebooks if n not in passes]
        if unknown:
            raise ValueError(f"unknown notebooks {unknown}; choose among {list(passes)}")
        passes = {n: passes[n] for n in notebooks}
    needed = sorted({kind for counts in passes.values() for kind, n in counts.items() if n})
    if seconds_per_image is None:
        seconds_per_image = measure_seconds_per_image(needed, dev)
    missing = [k for k in needed if k not in seconds_per_image]
    if missing:
        raise ValueError(f"seconds_per_image lacks {missing}; measure them with measure_seconds_per_image")
    notebooks = {}
    for name, counts in passes.items():
        if not counts:  # dropped by a budgeted run: its notebook does not run
            continue
        seconds = sum(n * seconds_per_image[kind] for kind, n in counts.items())
        if name == "sweep":
            seconds -= counts.get("cnn_train", 0) * seconds_per_image["cnn_train"] * (1 - 1 / sweep_speedup)
        notebooks[name] = NOTEBOOK_OVERHEAD_S + seconds
    return {"profile": prof.name, "device": devices.describe(dev), "notebooks": notebooks,
            "total_seconds": sum(notebooks.values()), "passes": passes, "seconds_per_image": dict(seconds_per_image)}


def describe(result: dict) -> str:
    """Return a one-line summary of an :func:`estimate`: total and per notebook, in hours or minutes."""
    parts = ", ".join(f"{name} {_duration(s)}" for name, s in result["notebooks"].items())
    return f"profile {result['profile']!r} on {result['device']}: about {_duration(result['total_seconds'])} ({parts})"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def ignored_by_environment() -> bool:
    """Return True when ``FMNIST_IGNORE_ESTIMATE`` is set to 1 (or yes/true)."""
    return env.flag(IGNORE_ENV) is True


def check_budget(profile: str, device: str | torch.device = "auto", *, ignore: bool = False,
                 seconds_per_image: dict[str, float] | None = None, log=print) -> dict | None:
    """Refuse a ``full`` report on a machine without CUDA when it would take over :data:`LIMIT_HOURS`.

    Returns None without measuring for other profiles and on CUDA; otherwise the
    :func:`estimate` (logged). Raises :class:`TooSlow` with the estimate and how to force it,
    unless ``ignore`` or ``FMNIST_IGNORE_ESTIMATE=1``.
    """
    name = profiles.resolve_name(profile)
    dev = devices.resolve_device(device)
    if name != "full" or dev.type == "cuda":
        return None
    result = estimate(name, seconds_per_image, dev)
    log(f"estimate: {describe(result)}")
    if result["total_seconds"] <= LIMIT_HOURS * 3600 or ignore or ignored_by_environment():
        return result
    raise TooSlow(
        f"the full profile would take {describe(result)}: it is sized for a CUDA GPU and this machine has none. "
        f"Use PROFILE=quick (about 15 minutes on a laptop CPU), run it on a GPU, or run it anyway with "
        f"`python -m fmnist_utils report --profile full --ignore-estimate` or `{IGNORE_ENV}=1 make report PROFILE=full`.",
        result,
    )
