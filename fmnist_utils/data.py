"""Read, validate and split Fashion-MNIST.

The four IDX files are found (in this order) under the ``root`` argument, the ``FMNIST_DATA``
environment variable, ``<root>/data`` (see :mod:`fmnist_utils.paths`), Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or downloaded by torchvision
into ``<root>/data``. Whatever the source, what the files *decompress to* is validated (structure,
class counts, and SHA-256 against :data:`OFFICIAL_SHA256`): Debian recompresses the archives, so
their ``.gz`` bytes differ from upstream's while the IDX data is identical.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import env, paths

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
N_CLASSES = len(CLASSES)
IMAGE_SHAPE = (28, 28)

# IDX magic numbers: two zero bytes, type code 0x08 (uint8), number of dimensions.
MAGIC_IMAGES = 2051
MAGIC_LABELS = 2049

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
EXPECTED_PER_CLASS = {"train": 6_000, "test": 1_000}
# SHA-256 of each file's decompressed content, as upstream (zalandoresearch/fashion-mnist) and
# Debian's dataset-fashion-mnist ship it (Debian recompresses, so only the .gz bytes differ).
# Headers and class counts cannot see shuffled labels or blanked images; these sums can.
OFFICIAL_SHA256 = {
    "train_images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train_labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test_images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test_labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Set to 1 to load a deliberately modified copy (relabelled, augmented...) without the SHA-256 check.
UNVERIFIED_ENV = "FMNIST_DATA_UNVERIFIED"

HOW_TO_PROVIDE = (
    "Provide Fashion-MNIST in one of these ways:\n"
    "  1. pass root=<folder> (CLI: --data <folder>) holding the four IDX files (.gz or raw);\n"
    "  2. set FMNIST_DATA=<folder>;\n"
    "  3. put the files in {data_dir};\n"
    "  4. on Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
    "(files land in {debian});\n"
    "  5. connect to the internet: torchvision downloads them into {data_dir} (run `make data`)."
)


class DataError(ValueError):
    """A data file is missing, corrupt or not what Fashion-MNIST should be."""


@dataclass(frozen=True)
class FashionMNIST:
    """The whole data set as CPU tensors.

    ``x_*``: uint8 (N, 1, 28, 28), pixel values 0..255. ``y_*``: int64 (N,), values 0..9.
    ``source``: the folder the files were read from. ``verified``: False when the SHA-256 check
    against :data:`OFFICIAL_SHA256` was skipped (``verify=False`` or :data:`UNVERIFIED_ENV`).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    source: str
    verified: bool = True


# --------------------------------------------------------------------------------------------
# Reading IDX files


def _read_bytes(path: Path) -> bytes:
    """Return the decompressed content of ``path`` (gzip when it starts with gzip's magic)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not raw:
        raise DataError(f"{path}: file is empty (0 bytes); delete it and fetch the data again")
    is_gzip = raw[:2] == b"\x1f\x8b"
    if path.suffix == ".gz" and not is_gzip:
        raise DataError(
            f"{path}: named .gz but is not a gzip file (starts with {raw[:4].hex()}); "
            "delete it and fetch the data again"
        )
    if not is_gzip:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(
            f"{path}: gzip data is corrupt or truncated ({exc}); delete it and fetch the data again"
        ) from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the uint8 array stored in an IDX file (``.gz`` or raw).

    Images come back as (N, 28, 28), labels as (N,). Raises :class:`DataError` naming the file
    when it is empty, not gzip although named ``.gz``, has a wrong magic number, is truncated
    or too long for its header, or (for a label file) holds a label outside 0..9.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _parse_idx(buf: bytes, path: Path) -> np.ndarray:
    """Return the array in ``buf``, the decompressed content of IDX file ``path`` (see :func:`read_idx`)."""
    if len(buf) < 4:
        raise DataError(f"{path}: truncated: {len(buf)} bytes, shorter than the 4-byte IDX magic")
    magic = int.from_bytes(buf[:4], "big")
    if magic not in (MAGIC_IMAGES, MAGIC_LABELS):
        raise DataError(
            f"{path}: wrong magic number {magic} (0x{magic:08x}); an IDX file of uint8 images "
            f"starts with {MAGIC_IMAGES}, of labels with {MAGIC_LABELS}. Is this the right file?"
        )
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated inside the header ({len(buf)} of {header} bytes)")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(buf) < expected:
        raise DataError(
            f"{path}: truncated: header promises {dims} ({expected} bytes) but the data has "
            f"{len(buf)} bytes; delete it and fetch the data again"
        )
    if len(buf) > expected:
        raise DataError(
            f"{path}: {len(buf) - expected} unexpected bytes after the {dims} array; "
            "the file is corrupt"
        )
    if magic == MAGIC_IMAGES and dims[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {dims[1:]}, expected {IMAGE_SHAPE}")
    array = np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)
    if magic == MAGIC_LABELS and array.size and int(array.max()) >= N_CLASSES:
        bad = int(np.argmax(array >= N_CLASSES))
        raise DataError(
            f"{path}: label {int(array[bad])} at index {bad} is outside 0..{N_CLASSES - 1}"
        )
    return array


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 array as an IDX file (gzip-compressed when ``path`` ends in .gz); return the path.

    The inverse of :func:`read_idx`, used to lay out torchvision's raw folder and to craft test files.
    """
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)
    return path


def read_split(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Return (images (N, 28, 28), labels (N,)) read from a pair of IDX files that must agree."""
    return _check_pair(read_idx(images_path), read_idx(labels_path), images_path, labels_path)


def _check_pair(images: np.ndarray, labels: np.ndarray, images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds labels, not images (shape {images.shape})")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds images, not labels (shape {labels.shape})")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels


def content_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 (hex) of the decompressed content of ``path`` (raw or gzip).

    What :data:`OFFICIAL_SHA256` holds, so a recompressed copy gives the same sum. About 0.25 s
    for all four files (decompression dominates).
    """
    return hashlib.sha256(_read_bytes(Path(path))).hexdigest()


def fingerprint(files: dict[str, Path], known: dict | None = None) -> dict:
    """Return ``{key: {"path", "size", "mtime_ns", "sha256"}}`` for the files of :func:`find_files`
    (:func:`fmnist_utils.provenance.file_record` with :func:`content_sha256`).

    ``known``, an earlier return value, supplies the sums of files whose path, size and
    modification time are unchanged, so a repeated fingerprint costs a ``stat`` per file.
    """
    from . import provenance

    known = known or {}
    return {key: provenance.file_record(path, known.get(key), content_sha256) for key, path in files.items()}


def verification_skipped() -> bool:
    """Return True when :data:`UNVERIFIED_ENV` asks to load data without the SHA-256 check."""
    return env.flag(UNVERIFIED_ENV) is True


def check_official_sha256(key: str, path: str | os.PathLike, digest: str) -> None:
    """Raise DataError naming ``path`` unless ``digest`` (its decompressed content's SHA-256) is
    Fashion-MNIST's for ``key`` (a key of :data:`FILES`)."""
    if digest != OFFICIAL_SHA256[key]:
        raise DataError(
            f"{path}: its content differs from Fashion-MNIST's {FILES[key]} (SHA-256 {digest[:16]}..., "
            f"expected {OFFICIAL_SHA256[key][:16]}...): the file was modified (shuffled labels, blanked or "
            f"edited images) or comes from another data set. Delete it and fetch the data again; if you "
            f"changed it on purpose, set {UNVERIFIED_ENV}=1 (or pass verify=False) to load it unchecked."
        )


def _check_official(key: str, path: Path, content: bytes) -> None:
    check_official_sha256(key, path, hashlib.sha256(content).hexdigest())


def _read_without_twin(path: Path) -> bytes:
    """Return the decompressed content of ``path``; raise DataError when a raw file and its .gz
    twin both exist and hold different data (which one is meant cannot be guessed).
    """
    content = _read_bytes(path)
    twin = path.with_name(path.name[:-3]) if path.suffix == ".gz" else path.with_name(path.name + ".gz")
    if twin.is_file() and _read_bytes(twin) != content:
        raise DataError(
            f"{path} and {twin} both exist but hold different data; the kit would read {path.name}. "
            "Delete the one you do not mean to use."
        )
    return content


# --------------------------------------------------------------------------------------------
# Finding the files


def _find_file(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem`` or ``folder/stem.gz`` (also torchvision's ``FashionMNIST/raw``)."""
    for sub in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def find_files(folder: str | os.PathLike) -> dict[str, Path] | None:
    """Return the four IDX files in ``folder`` keyed as :data:`FILES`, or None if any is missing."""
    folder = Path(folder).expanduser()
    found = {key: _find_file(folder, stem) for key, stem in FILES.items()}
    return None if any(p is None for p in found.values()) else found  # type: ignore[return-value]


def candidate_dirs(root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Return the folders searched, in order, as (how it was chosen, folder)."""
    out: list[tuple[str, Path]] = []
    if root is not None:
        out.append(("root argument", Path(root).expanduser()))
    if env.env("FMNIST_DATA"):
        out.append(("FMNIST_DATA", Path(env.env("FMNIST_DATA")).expanduser()))
    out.append(("kit data folder", paths.data_dir()))
    out.append(("Debian dataset-fashion-mnist", paths.DEBIAN_DATA_DIR))
    return out


def locate(root: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """Return the files from the first folder that has all four, or None.

    An explicit ``root`` or ``FMNIST_DATA`` that lacks the files is an error rather than
    silently skipped: the user asked for that folder.
    """
    for how, folder in candidate_dirs(root):
        files = find_files(folder)
        if files:
            return files
        if how in ("root argument", "FMNIST_DATA"):
            missing = [FILES[k] for k in FILES if _find_file(folder, FILES[k]) is None]
            raise DataError(
                f"{folder} ({how}) lacks {', '.join(missing)} (.gz or raw). "
                "Point it at the folder holding all four IDX files."
            )
    return None


def download(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Download the four files with torchvision into ``folder`` and check upstream's MD5 sums."""
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    folder = Path(folder) if folder is not None else paths.data_dir()
    try:
        TVFashionMNIST(root=str(folder), train=True, download=True)
        TVFashionMNIST(root=str(folder), train=False, download=True)
    except Exception as exc:  # network errors come in many types; all mean the same here
        raise DataError(
            f"Fashion-MNIST is not on this machine and the download failed ({exc}).\n"
            + HOW_TO_PROVIDE.format(data_dir=paths.data_dir(), debian=paths.DEBIAN_DATA_DIR)
        ) from None
    raw = folder / "FashionMNIST" / "raw"
    for url, md5 in TVFashionMNIST.resources:
        gz = raw / url.rsplit("/", 1)[-1]
        if gz.is_file() and hashlib.md5(gz.read_bytes()).hexdigest() != md5:
            raise DataError(f"{gz}: MD5 differs from upstream's {md5}; delete it and download again")
    files = find_files(folder)
    if files is None:
        raise DataError(f"torchvision's download into {folder} did not leave the four IDX files")
    return files


def _check_class_counts(labels: np.ndarray, split: str, where: Path) -> None:
    counts = np.bincount(labels, minlength=N_CLASSES)
    want = EXPECTED_PER_CLASS[split]
    if len(labels) != want * N_CLASSES or not np.all(counts == want):
        raise DataError(
            f"{where}: the {split} split has {len(labels)} images with class counts "
            f"{counts.tolist()}; Fashion-MNIST has {want} per class. Wrong or partial files?"
        )


def load_fashion_mnist(
    root: str | os.PathLike | None = None, download_ok: bool = True, verify: bool | None = None
) -> FashionMNIST:
    """Return the validated data set (see the module docstring for where it is looked for).

    ``download_ok=False`` never touches the network and raises :class:`DataError` when the
    files are not on disk. Every file is checked for structure, class counts and then against
    :data:`OFFICIAL_SHA256`, so shuffled labels or blanked images are an error naming the file;
    ``verify=False`` (or ``FMNIST_DATA_UNVERIFIED=1`` when ``verify`` is None) skips the
    SHA-256 check for a copy modified on purpose. (:func:`read_idx` and :func:`read_split`
    never check sums: they read any IDX file.) A raw file beside a ``.gz`` twin with other
    content is an error.
    """
    if verify is None:
        verify = not verification_skipped()
    files = locate(root)
    if files is None:
        if not download_ok:
            raise DataError(
                "Fashion-MNIST was not found on this machine.\n"
                + HOW_TO_PROVIDE.format(data_dir=paths.data_dir(), debian=paths.DEBIAN_DATA_DIR)
            )
        files = download()
    arrays = {}
    for split in ("train", "test"):
        keys = (f"{split}_images", f"{split}_labels")
        contents = {key: _read_without_twin(files[key]) for key in keys}
        images, labels = _check_pair(*(_parse_idx(contents[key], files[key]) for key in keys), *(files[key] for key in keys))
        _check_class_counts(labels, split, files[f"{split}_labels"])
        if verify:  # after the structural checks, whose messages say more about a broken file
            for key in keys:
                _check_official(key, files[key], contents[key])
        arrays[split] = (
            torch.from_numpy(images.copy()).unsqueeze(1),  # (N, 1, 28, 28) uint8
            torch.from_numpy(labels.astype(np.int64)),  # (N,)
        )
    return FashionMNIST(
        x_train=arrays["train"][0],
        y_train=arrays["train"][1],
        x_test=arrays["test"][0],
        y_test=arrays["test"][1],
        classes=CLASSES,
        source=str(files["train_images"].parent),
        verified=bool(verify),
    )


# --------------------------------------------------------------------------------------------
# On-device tensors, subsets and folds


def scale(x: torch.Tensor) -> torch.Tensor:
    """Return uint8 images (N, 1, 28, 28) as float32 in [0, 1] on the same device."""
    return x.float().div_(255.0)


def _as_numpy_labels(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    y = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    return y.astype(np.int64)


def stratified_subset(labels: torch.Tensor | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Return ``n`` sorted indices into ``labels`` with each class in proportion (seeded).

    Each class gets ``n * count_c / N`` rounded, the rounding error given to the largest
    remainders, so the total is exactly ``n``.
    """
    y = _as_numpy_labels(labels)
    if not 1 <= n <= len(y):
        raise ValueError(f"subset size n={n} must be between 1 and the {len(y)} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = counts * n / len(y)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    chosen = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def subset_indices(labels: torch.Tensor | np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Return sorted indices into ``labels``: a stratified subset of ``n`` (as
    :func:`stratified_subset`), or all of them when ``n`` is None.

    ``n`` must otherwise be between 1 and ``len(labels)``: 0 is refused, not read as "all".
    """
    y = _as_numpy_labels(labels)
    return np.arange(len(y)) if n is None else stratified_subset(y, n, seed)


def train_val_split(
    labels: torch.Tensor | np.ndarray, val_fraction: float, seed: int = 0, subset: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_indices, val_indices) into ``labels``, disjoint and sorted.

    A stratified subset of ``subset`` images is drawn first (None: all of them, see
    :func:`subset_indices`), then a stratified ``val_fraction`` of it, rounded to whole images,
    is held out for validation; the rest is for training. Seeded by ``seed``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 1): the part of the images held out")
    y = _as_numpy_labels(labels)
    pool = subset_indices(y, subset, seed)
    n_val = round(val_fraction * len(pool))
    if not 1 <= n_val < len(pool):
        raise ValueError(
            f"val_fraction={val_fraction} of {len(pool)} images leaves {n_val} for validation and "
            f"{len(pool) - n_val} for training; both need at least one: use more images or another fraction"
        )
    held_out = pool[stratified_subset(y[pool], n_val, seed)]
    return np.setdiff1d(pool, held_out), held_out


def stratified_kfold(
    labels: torch.Tensor | np.ndarray, k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return k (train_indices, val_indices) pairs: disjoint validation folds covering all of
    ``labels``, each class split as evenly as possible across folds (seeded).
    """
    y = _as_numpy_labels(labels)
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got k={k}")
    smallest = int(np.unique(y, return_counts=True)[1].min()) if len(y) else 0
    if k > smallest:
        raise ValueError(
            f"k={k} is larger than the smallest class ({smallest} examples): every fold needs "
            "each class. Use a smaller k or more data."
        )
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        # Rotating the start keeps fold sizes balanced when classes do not divide by k.
        fold_of[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)
    everything = np.arange(len(y))
    return [(everything[fold_of != f], everything[fold_of == f]) for f in range(k)]


def iterate_batches(
    n: int, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering ``range(n)`` in batches; shuffled when a generator is given.

    The last batch may be smaller. Indices are made on ``device`` so that slicing an on-device
    data tensor needs no host round trip.
    """
    order = (
        torch.randperm(n, generator=generator).to(device)
        if generator is not None
        else torch.arange(n, device=device)
    )
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
