"""The networks the study compares.

``SeedCNN`` is the study's custom CNN, layer for layer. Its blocks are named (``block1`` ..
``block5``, ``fc1``, ``fc2``, ``head``) so that a hidden layer can be read by name with
:mod:`fmnist_utils.features`.

``ImageNetResNet18`` is torchvision's ResNet-18 behind the study's preprocessing (28 -> 224
bilinear, grey copied to 3 channels, ImageNet normalisation), with its ImageNet weights loaded by
:func:`imagenet_resnet18` from a given file, torchvision's cache or a download, checked by hash;
where none can be had it is randomly initialised and says so (:data:`RANDOM_INIT_SOURCE`).
``FashionResNet18`` is ResNet-18 for 28x28 images (3x3 stride-1 stem, no max-pool), trained
from scratch by the kit's trainer (``TrainConfig(model="resnet18")``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from . import env

# Parameter count of SeedCNN(kernel_size=3): a test pins the architecture to it.
SEED_CNN_PARAMETERS = 9_636_746


class ConvBlock(nn.Sequential):
    """Conv (same padding) [+ BatchNorm] + ReLU [+ MaxPool 3/2]: (B, c_in, H, W) -> (B, c_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, norm: bool = False, pool: bool = False):
        layers: dict[str, nn.Module] = {
            # BatchNorm has its own shift, so the conv bias would be redundant; the study kept it
            # and the parameter count (9,636,746) includes it.
            "conv": nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
        }
        if norm:
            layers["norm"] = nn.BatchNorm2d(c_out)
        layers["relu"] = nn.ReLU(inplace=True)
        if pool:
            layers["pool"] = nn.MaxPool2d(kernel_size=3, stride=2)
        super().__init__(OrderedDict(layers))


class DenseBlock(nn.Sequential):
    """Linear + ReLU + Dropout: (B, d_in) -> (B, d_out)."""

    def __init__(self, d_in: int, d_out: int, dropout: float):
        super().__init__(
            OrderedDict(linear=nn.Linear(d_in, d_out), relu=nn.ReLU(inplace=True), dropout=nn.Dropout(dropout))
        )


class SeedCNN(nn.Module):
    """The study's CNN: (B, 1, 28, 28) images in [0, 1] -> (B, 10) logits.

    ``kernel_size`` (odd) enlarges every convolution while keeping the spatial sizes, one of the
    study's suggested improvements; 3 is the study's network.
    """

    def __init__(self, dropout: float = 0.5, n_classes: int = 10, kernel_size: int = 3):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        k = kernel_size
        self.block1 = ConvBlock(1, 96, k, norm=True, pool=True)  # (B, 96, 13, 13)
        self.block2 = ConvBlock(96, 256, k, norm=True, pool=True)  # (B, 256, 6, 6)
        self.block3 = ConvBlock(256, 384, k)  # (B, 384, 6, 6)
        self.block4 = ConvBlock(384, 384, k)  # (B, 384, 6, 6)
        self.block5 = ConvBlock(384, 256, k, pool=True)  # (B, 256, 2, 2)
        self.flatten = nn.Flatten()  # (B, 1024)
        self.fc1 = DenseBlock(256 * 2 * 2, 2048, dropout)  # (B, 2048)
        self.fc2 = DenseBlock(2048, 2048, dropout)  # (B, 2048)
        self.head = nn.Linear(2048, n_classes)  # (B, 10)

    def forward(self, x):
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        x = self.block4(x)
        x = self.block5(x)
        x = self.flatten(x)
        x = self.fc1(x)
        x = self.fc2(x)
        return self.head(x)


# Builders by name, for TrainConfig.model. Each takes the config's model settings as keywords.
MODELS = {
    "seedcnn": lambda dropout=0.5, kernel_size=3: SeedCNN(dropout=dropout, kernel_size=kernel_size),
    # FashionResNet18 is defined below; the lambda looks it up when called.
    "resnet18": lambda dropout=0.0, kernel_size=3: FashionResNet18(dropout=dropout, kernel_size=kernel_size),
}


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------
# ResNet-18

# torchvision's normalisation for its ImageNet weights (per RGB channel, on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224

RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
# The official file's name carries the first 8 hex digits of its SHA-256. torchvision checks it
# only while downloading, never for a file placed in its cache by hand, so the kit checks it.
RESNET18_SHA256_PREFIX = "f37072fd"
# The whole SHA-256 of torchvision's resnet18-f37072fd.pth (46,830,571 bytes): only this file is
# called ImageNet. A prefix passed by the caller says "load this file", not "it was trained on ImageNet".
RESNET18_SHA256 = "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"
RESNET18_WEIGHTS_ENV = "FMNIST_RESNET18_WEIGHTS"

# weights_source labels, written into results and figure titles.
CACHE_SOURCE = "imagenet (torchvision cache)"
DOWNLOAD_SOURCE = "imagenet (downloaded into torchvision cache)"
LOCAL_SOURCE = "imagenet (local file {path})"
RANDOM_INIT_SOURCE = "RANDOM INIT (offline fallback: no ImageNet weights)"
USER_SUPPLIED_SOURCE = "user-supplied weights (not verified as ImageNet)"


class ImageNetInput(nn.Module):
    """The study's ResNet input: (B, 1, H, W) grey in [0, 1] -> (B, 3, size, size) ImageNet-normalised.

    Bilinear resize (upsampling 28 -> 224, where antialiasing has no effect), the grey channel
    copied to R, G and B, then (x - mean) / std per channel. Runs on the input's device, batched.
    """

    def __init__(self, size: int = IMAGENET_SIZE):
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size = size
        # Not persistent: the state dict stays exactly torchvision's, so official files load strictly.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
            raise ValueError(
                f"ImageNetInput expects grey float images (B, 1, H, W) in [0, 1], got "
                f"{tuple(x.shape)} {x.dtype}; scale uint8 images with fmnist_utils.data.scale first"
            )
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)  # (B, 1, 224, 224)
        x = x.expand(-1, 3, -1, -1)  # (B, 3, 224, 224)
        return (x - self.mean) / self.std  # (B, 3, 224, 224)


class ImageNetResNet18(ResNet):
    """torchvision's ResNet-18 behind :class:`ImageNetInput`: (B, 1, 28, 28) in [0, 1] -> (B, 1000) logits.

    Module names are torchvision's (``conv1``, ``layer1`` .. ``layer4``, ``avgpool``, ``fc``)
    plus ``preprocess``, and the state dict is exactly torchvision's. ``avgpool`` gives the
    512-d penultimate features; at 224x224 input, ``layer1`` .. ``layer4`` output
    (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7).
    """

    def __init__(self, size: int = IMAGENET_SIZE):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=1000)
        self.preprocess = ImageNetInput(size)

    def forward(self, x):
        return super().forward(self.preprocess(x))


class FashionResNet18(ResNet):
    """ResNet-18 for Fashion-MNIST: (B, 1, 28, 28) in [0, 1] -> (B, n_classes) logits.

    The ImageNet stem (7x7 stride-2 conv and max-pool, 28 -> 7 pixels) would leave nothing for
    the later stages, so the stem is a ``kernel_size`` stride-1 conv on the grey channel and no
    max-pool: ``layer1`` .. ``layer4`` output (64, 28, 28), (128, 14, 14), (256, 7, 7),
    (512, 4, 4). ``dropout`` is applied to the pooled 512-d features before ``fc`` (0 gives
    torchvision's network; the residual blocks have no dropout).
    """

    def __init__(self, dropout: float = 0.0, n_classes: int = 10, kernel_size: int = 3):
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size (the stem conv) must be a positive odd number, got {kernel_size}")
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=n_classes)
        self.conv1 = nn.Conv2d(1, 64, kernel_size, stride=1, padding=kernel_size // 2, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as ResNet's own init
        self.maxpool = nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, 28, 28)
        x = self.maxpool(x)  # identity
        x = self.layer1(x)  # (B, 64, 28, 28)
        x = self.layer2(x)  # (B, 128, 14, 14)
        x = self.layer3(x)  # (B, 256, 7, 7)
        x = self.layer4(x)  # (B, 512, 4, 4)
        x = self.avgpool(x)  # (B, 512, 1, 1)
        x = torch.flatten(x, 1)  # (B, 512)
        x = self.dropout(x)
        return self.fc(x)  # (B, n_classes)


class WeightsError(ValueError):
    """A ResNet-18 weights file is missing, corrupt, or holds weights of another architecture."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a ResNet-18's weights came from.

    source: one of :data:`CACHE_SOURCE`, :data:`DOWNLOAD_SOURCE`, ``LOCAL_SOURCE`` with the
    path (each only for torchvision's file, :data:`RESNET18_SHA256`), :data:`USER_SUPPLIED_SOURCE`
    (any other file the caller trusted through ``sha256_prefix``) or :data:`RANDOM_INIT_SOURCE`.
    pretrained: whether weights were loaded from a file (False: the random init). verified: whether
    that file is torchvision's ImageNet file. path / sha256: the file loaded (None for the
    fallback). note: what was tried, and for the fallback how to provide the weights.
    """

    source: str
    pretrained: bool
    path: str | None = None
    sha256: str | None = None
    note: str = ""
    verified: bool = False

    @property
    def title(self) -> str:
        """Return the model's name for figure titles, with the fallback spelled out."""
        return model_title(self.source)

    def to_dict(self) -> dict:
        """Return the fields (and ``title``) as a plain dict for results.json."""
        return {**asdict(self), "title": self.title}


def model_tag(weights_source: str) -> str:
    """Return the short name a report uses for the ResNet-18 after :func:`model_title` has named it
    once in full: "random-init ResNet-18" for the offline fallback, "ResNet-18 (ImageNet)" for
    ImageNet weights, "ResNet-18 (user-supplied weights)" for any other source (a file not verified
    as ImageNet's). Never a bare "ResNet-18": the tag alone says whether the network learnt anything."""
    if weights_source == RANDOM_INIT_SOURCE or weights_source.upper().startswith("RANDOM INIT"):
        return "random-init ResNet-18"
    if weights_source.startswith("imagenet"):
        return "ResNet-18 (ImageNet)"
    return "ResNet-18 (user-supplied weights)"


def model_title(weights_source: str) -> str:
    """Return "ResNet-18 (ImageNet)" for pretrained weights, else a title naming the random-init fallback."""
    if weights_source.startswith("imagenet"):
        return "ResNet-18 (ImageNet)"
    return f"ResNet-18: {weights_source}"


def sha256_of(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resnet18_cache_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return where torchvision keeps the ImageNet ResNet-18 file (``<torch hub dir>/checkpoints``)."""
    folder = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    return folder / Path(urlparse(RESNET18_URL).path).name


def load_resnet18_weights(
    path: str | os.PathLike, sha256_prefix: str = RESNET18_SHA256_PREFIX, size: int = IMAGENET_SIZE
) -> tuple[ImageNetResNet18, str]:
    """Return (ImageNetResNet18 with the weights in ``path``, the file's SHA-256).

    Raises :class:`WeightsError` naming the file when it is missing, its SHA-256 does not start
    with ``sha256_prefix`` (the official file's is ``f37072fd``; pass another prefix for a file
    of your own), it cannot be read as a state dict, or its tensors do not fit ResNet-18.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"{path}: ResNet-18 weights file not found. Give the path of resnet18-f37072fd.pth "
            f"({RESNET18_URL}) or unset {RESNET18_WEIGHTS_ENV}."
        )
    digest = sha256_of(path)
    check_weights_digest(path, digest, sha256_prefix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged archive or pickle
        raise WeightsError(f"{path}: cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"{path}: holds a {type(state).__name__}, not a state dict of tensors "
            "(save model.state_dict(), not the model or a training checkpoint)"
        )
    model = ImageNetResNet18(size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).split("\n\t", 1)[-1][:400]
        raise WeightsError(f"{path}: not torchvision ResNet-18 (ImageNet, 1000 classes) weights: {detail}") from None
    return model, digest


def check_weights_digest(path: str | os.PathLike, digest: str, sha256_prefix: str | None = None) -> None:
    """Raise :class:`WeightsError` naming ``path`` unless its SHA-256 ``digest`` starts with
    ``sha256_prefix`` (None: :data:`RESNET18_SHA256_PREFIX`, torchvision's)."""
    sha256_prefix = RESNET18_SHA256_PREFIX if sha256_prefix is None else sha256_prefix
    if not digest.startswith(sha256_prefix.lower()):
        raise WeightsError(
            f"{path}: SHA-256 {digest[:16]}... does not start with {sha256_prefix!r}: the file is "
            f"corrupt, truncated or not {resnet18_cache_file().name}. Delete it and fetch it again "
            f"from {RESNET18_URL} (or pass sha256_prefix for a file you trust)."
        )


def weights_info(source: str, path: str | os.PathLike, digest: str, note: str) -> WeightsInfo:
    """Return the :class:`WeightsInfo` of a loaded file: ``source`` when ``digest`` is torchvision's
    ImageNet file, else :data:`USER_SUPPLIED_SOURCE` (a file trusted by its caller is not vouched for)."""
    if digest == RESNET18_SHA256:
        return WeightsInfo(source, True, str(path), digest, note, verified=True)
    return WeightsInfo(USER_SUPPLIED_SOURCE, True, str(path), digest,
                       f"{note}; its SHA-256 is not torchvision's ImageNet file's ({RESNET18_SHA256[:16]}...)")


def _reachable(url: str, timeout: float) -> str | None:
    """Return None when ``url``'s host accepts a TCP connection within ``timeout`` s, else why not.

    Runs in a daemon thread: a hanging DNS lookup (which socket timeouts do not bound) is abandoned.
    """
    parts = urlparse(url)
    outcome: list[str | None] = []

    def probe():
        try:
            socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{parts.hostname} unreachable ({exc})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{parts.hostname} did not answer within {timeout:g} s"


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    # urllib (used by torch.hub) has no timeout of its own: a stalled transfer would hang forever.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(target: Path, timeout: float) -> str | None:
    """Download the official file to ``target`` (hash-checked by torch.hub); return None or why it failed."""
    why = _reachable(RESNET18_URL, timeout)
    if why is not None:
        return why
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(timeout):
            torch.hub.download_url_to_file(RESNET18_URL, str(target), hash_prefix=RESNET18_SHA256_PREFIX, progress=False)
    except Exception as exc:  # network errors, timeouts, hash mismatch: all mean "no weights"
        return f"download failed ({type(exc).__name__}: {exc})"
    return None


def imagenet_resnet18(
    weights_path: str | os.PathLike | None = None,
    allow_download: bool = True,
    download_timeout: float = 15.0,
    sha256_prefix: str = RESNET18_SHA256_PREFIX,
    cache_dir: str | os.PathLike | None = None,
    size: int = IMAGENET_SIZE,
    seed: int = 0,
) -> tuple[ImageNetResNet18, WeightsInfo]:
    """Return (ImageNetResNet18 in eval mode, :class:`WeightsInfo`) with ImageNet weights when they can be had.

    Tried in order: ``weights_path``; the file named by ``FMNIST_RESNET18_WEIGHTS``; torchvision's
    cache (``cache_dir``, default ``<torch hub dir>/checkpoints``); a download into that cache
    when ``allow_download`` (each network step gives up after ``download_timeout`` seconds, so
    an offline machine never hangs). A file that is given, or found in the cache, must pass
    :func:`load_resnet18_weights` or :class:`WeightsError` is raised: a bad file is never
    skipped silently. Only torchvision's own file (:data:`RESNET18_SHA256`) is labelled ImageNet;
    a file accepted through another ``sha256_prefix`` is :data:`USER_SUPPLIED_SOURCE`. When nothing is available the network is randomly initialised (seeded by
    ``seed``), ``info.source`` is :data:`RANDOM_INIT_SOURCE` and a warning is issued.
    """
    env_path = env.env(RESNET18_WEIGHTS_ENV) or ""
    for given, how in ((weights_path, "weights_path"), (env_path, RESNET18_WEIGHTS_ENV)):
        if given:  # "" means "not given", as in a notebook's parameters cell
            model, digest = load_resnet18_weights(given, sha256_prefix, size)
            source = LOCAL_SOURCE.format(path=Path(given).expanduser())
            return model.eval(), weights_info(source, given, digest, f"loaded from {how}")

    cached = resnet18_cache_file(cache_dir)
    if cached.is_file():
        model, digest = load_resnet18_weights(cached, sha256_prefix, size)
        return model.eval(), weights_info(CACHE_SOURCE, cached, digest, f"found {cached}")

    why = "downloading was not allowed (allow_download=False)"
    if allow_download:
        why = _download(cached, download_timeout)
        if why is None:
            model, digest = load_resnet18_weights(cached, sha256_prefix, size)
            return model.eval(), weights_info(DOWNLOAD_SOURCE, cached, digest, f"downloaded {RESNET18_URL}")

    note = (
        f"No ImageNet weights: no weights_path, {RESNET18_WEIGHTS_ENV} unset, no file at {cached}, "
        f"and {why}. To use them, put resnet18-f37072fd.pth ({RESNET18_URL}) there or set "
        f"{RESNET18_WEIGHTS_ENV}=<path>."
    )
    warnings.warn(f"ResNet-18 is randomly initialised. {note}", stacklevel=2)
    torch.manual_seed(seed)
    return ImageNetResNet18(size).eval(), WeightsInfo(RANDOM_INIT_SOURCE, False, None, None, note)
