"""Reading, validating, finding and splitting Fashion-MNIST."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fmnist_utils import data, paths
from fmnist_utils.data import DataError, read_idx, write_idx

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
LABELS = (np.arange(12) % 10).astype(np.uint8)


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip_raw_and_gzip(tmp_path, name):
    path = write_idx(tmp_path / name, IMAGES)
    np.testing.assert_array_equal(read_idx(path), IMAGES)


def test_label_file_round_trip(tmp_path):
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l.gz", LABELS)), LABELS)


def _error(path) -> str:
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message, "the error must name the file"
    return message


def test_empty_file(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    assert "empty" in _error(tmp_path / "e")


def test_missing_file(tmp_path):
    assert "not found" in _error(tmp_path / "nope.gz")


def test_truncated_raw_file(tmp_path):
    raw = write_idx(tmp_path / "t", IMAGES).read_bytes()
    (tmp_path / "t").write_bytes(raw[:-100])
    assert "truncated" in _error(tmp_path / "t")


def test_truncated_inside_header(tmp_path):
    raw = write_idx(tmp_path / "t", IMAGES).read_bytes()
    (tmp_path / "t").write_bytes(raw[:6])
    assert "truncated" in _error(tmp_path / "t")


def test_truncated_gzip_file(tmp_path):
    raw = write_idx(tmp_path / "t.gz", IMAGES).read_bytes()
    (tmp_path / "t.gz").write_bytes(raw[: len(raw) // 2])
    assert "corrupt or truncated" in _error(tmp_path / "t.gz")


def test_corrupt_gzip_stream(tmp_path):
    raw = bytearray(write_idx(tmp_path / "c.gz", IMAGES).read_bytes())
    raw[20:40] = bytes(20)  # damage the deflate stream; the CRC or the decoder notices
    (tmp_path / "c.gz").write_bytes(bytes(raw))
    assert "corrupt" in _error(tmp_path / "c.gz")


def test_gz_name_but_not_gzip(tmp_path):
    (tmp_path / "n.gz").write_bytes(b"<html>not found</html>")
    assert "not a gzip file" in _error(tmp_path / "n.gz")


def test_wrong_magic(tmp_path):
    raw = bytearray(write_idx(tmp_path / "m", IMAGES).read_bytes())
    raw[2] = 0x0D  # float32 type code instead of uint8
    (tmp_path / "m").write_bytes(bytes(raw))
    assert "wrong magic number" in _error(tmp_path / "m")


def test_trailing_bytes(tmp_path):
    raw = write_idx(tmp_path / "x", LABELS).read_bytes()
    (tmp_path / "x").write_bytes(raw + b"\0\0\0")
    assert "unexpected bytes" in _error(tmp_path / "x")


def test_label_out_of_range(tmp_path):
    bad = LABELS.copy()
    bad[7] = 11
    message = _error(write_idx(tmp_path / "l", bad))
    assert "label 11 at index 7" in message and "0..9" in message


def test_image_and_label_counts_must_agree(tmp_path):
    images = write_idx(tmp_path / "i", IMAGES)
    labels = write_idx(tmp_path / "l", LABELS[:10])
    with pytest.raises(DataError, match="12 images but .* 10 labels"):
        data.read_split(images, labels)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------------------------
# Search order


def _fake_copy(folder: Path, real_source: str) -> Path:
    """A folder holding links to the real files (cheap: no copy of 30 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in data.FILES.values():
        for name in (stem, stem + ".gz"):
            if (Path(real_source) / name).exists():
                os.symlink(Path(real_source) / name, folder / name)
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch, fmnist):
    """No FMNIST_DATA, kit root in tmp, Debian folder in tmp, and no download allowed."""
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    monkeypatch.setenv("FMNIST_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(paths, "DEBIAN_DATA_DIR", tmp_path / "debian")

    def no_download(*a, **k):
        raise AssertionError("download must not be attempted when a local copy exists")

    monkeypatch.setattr(data, "download", no_download)
    return tmp_path, fmnist.source


def test_search_order(isolated, monkeypatch):
    tmp, real = isolated
    debian = _fake_copy(tmp / "debian", real)
    assert data.load_fashion_mnist().source == str(debian)
    kit = _fake_copy(tmp / "root" / "data", real)
    assert data.load_fashion_mnist().source == str(kit)
    env = _fake_copy(tmp / "env", real)
    monkeypatch.setenv("FMNIST_DATA", str(env))
    assert data.load_fashion_mnist().source == str(env)
    arg = _fake_copy(tmp / "arg", real)
    assert data.load_fashion_mnist(arg).source == str(arg)


def test_torchvision_layout_is_found(isolated):
    tmp, real = isolated
    folder = _fake_copy(tmp / "root" / "data" / "FashionMNIST" / "raw", real)
    assert data.load_fashion_mnist().source == str(folder)


def test_explicit_folder_without_files_is_an_error(isolated):
    tmp, real = isolated
    _fake_copy(tmp / "debian", real)  # would be found, but the user asked for another folder
    (tmp / "empty").mkdir()
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte"):
        data.load_fashion_mnist(tmp / "empty")


def test_nothing_found_lists_every_way(isolated):
    with pytest.raises(DataError) as info:
        data.load_fashion_mnist(download_ok=False)
    message = str(info.value)
    for way in ("root=", "FMNIST_DATA", "apt-get install dataset-fashion-mnist", "make data"):
        assert way in message


def test_download_is_the_last_resort(isolated, monkeypatch):
    tmp, real = isolated
    calls = []

    def fake_download(folder=None):
        calls.append(folder)
        return data.find_files(_fake_copy(tmp / "root" / "data", real))

    monkeypatch.setattr(data, "download", fake_download)
    assert data.load_fashion_mnist().source == str(tmp / "root" / "data")
    assert calls == [None]


def test_wrong_class_counts_are_caught(isolated):
    tmp, real = isolated
    folder = tmp / "swapped"
    folder.mkdir()
    # Test files under the training names: valid IDX, but 10,000 images instead of 60,000.
    for split in ("train", "test"):
        for kind in ("images", "labels"):
            src = Path(real) / (data.FILES[f"test_{kind}"] + ".gz")
            os.symlink(src, folder / (data.FILES[f"{split}_{kind}"] + ".gz"))
    with pytest.raises(DataError, match="train split has 10000 images"):
        data.load_fashion_mnist(folder)


def test_real_data(fmnist):
    assert fmnist.x_train.shape == (60_000, 1, 28, 28) and fmnist.x_train.dtype == torch.uint8
    assert fmnist.x_test.shape == (10_000, 1, 28, 28) and fmnist.x_test.dtype == torch.uint8
    assert fmnist.y_train.dtype == torch.int64 and fmnist.y_test.dtype == torch.int64
    assert torch.bincount(fmnist.y_train).tolist() == [6_000] * 10
    assert torch.bincount(fmnist.y_test).tolist() == [1_000] * 10
    assert fmnist.classes[0] == "T-shirt/top" and fmnist.classes[9] == "Ankle boot"
    # Decompressed sizes as upstream publishes them (16-byte image or 8-byte label header, one
    # byte a value): the content, not the .gz bytes, is checked.
    expected = {"train_images": 16 + 60_000 * 28 * 28, "train_labels": 8 + 60_000,
                "test_images": 16 + 10_000 * 28 * 28, "test_labels": 8 + 10_000}
    files = data.find_files(fmnist.source)
    for key, path in files.items():
        raw = path.read_bytes()
        size = len(gzip.decompress(raw)) if path.suffix == ".gz" else len(raw)
        assert size == expected[key]


# --------------------------------------------------------------------------------------------
# Subsets and folds


def test_scale_maps_uint8_to_unit_interval():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    torch.testing.assert_close(data.scale(x), torch.tensor([0.0, 0.2, 1.0]))
    assert x.dtype == torch.uint8  # input untouched


def test_stratified_subset(fmnist):
    idx = data.stratified_subset(fmnist.y_train, 1_234, seed=3)
    assert len(idx) == 1_234 == len(np.unique(idx))
    counts = np.bincount(fmnist.y_train[idx].numpy(), minlength=10)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(idx, data.stratified_subset(fmnist.y_train, 1_234, seed=3))
    assert not np.array_equal(idx, data.stratified_subset(fmnist.y_train, 1_234, seed=4))


def test_stratified_subset_rejects_bad_size():
    with pytest.raises(ValueError, match="between 1 and the 10 examples"):
        data.stratified_subset(np.arange(10) % 2, 11)


def test_subset_indices_none_is_everything_and_zero_is_refused():
    labels = np.arange(40) % 4
    np.testing.assert_array_equal(data.subset_indices(labels, None), np.arange(40))
    np.testing.assert_array_equal(data.subset_indices(labels, 8, seed=2), data.stratified_subset(labels, 8, seed=2))
    with pytest.raises(ValueError, match="n=0 must be between 1"):
        data.subset_indices(labels, 0)


def test_train_val_split_is_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [53, 61, 47, 50, 58, 49, 66, 52, 50, 54])
    train_idx, val_idx = data.train_val_split(labels, 0.2, seed=1, subset=300)
    assert len(train_idx) + len(val_idx) == 300 and len(val_idx) == 60
    assert not set(train_idx) & set(val_idx)
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
    # The same subset is drawn as on its own, and each class is split in proportion.
    pool = data.subset_indices(labels, 300, seed=1)
    np.testing.assert_array_equal(np.union1d(train_idx, val_idx), pool)
    expected = np.bincount(labels[pool], minlength=10) * 0.2
    assert np.all(np.abs(np.bincount(labels[val_idx], minlength=10) - expected) < 1)
    again = data.train_val_split(labels, 0.2, seed=1, subset=300)
    np.testing.assert_array_equal(again[1], val_idx)
    assert not np.array_equal(data.train_val_split(labels, 0.2, seed=2, subset=300)[1], val_idx)
    whole_train, whole_val = data.train_val_split(labels, 0.1)
    assert len(whole_train) + len(whole_val) == len(labels)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
            data.train_val_split(labels, bad)
    with pytest.raises(ValueError, match="both need at least one"):
        data.train_val_split(labels, 0.01, subset=20)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_disjoint_covering_stratified(k):
    labels = np.repeat(np.arange(10), [53, 61, 47, 50, 58, 49, 66, 52, 50, 54])
    folds = data.stratified_kfold(labels, k, seed=1)
    assert len(folds) == k
    vals = [v for _, v in folds]
    np.testing.assert_array_equal(np.sort(np.concatenate(vals)), np.arange(len(labels)))
    for train_idx, val_idx in folds:
        assert not set(train_idx) & set(val_idx)
        assert len(train_idx) + len(val_idx) == len(labels)
    for c in range(10):
        per_fold = [np.sum(labels[v] == c) for v in vals]
        assert max(per_fold) - min(per_fold) <= 1
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_kfold_is_seeded():
    labels = np.arange(100) % 10
    a, b = data.stratified_kfold(labels, 4, seed=7), data.stratified_kfold(labels, 4, seed=7)
    for (ta, va), (tb, vb) in zip(a, b):
        np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(a[0][1], data.stratified_kfold(labels, 4, seed=8)[0][1])


def test_kfold_rejects_bad_k():
    labels = np.repeat(np.arange(3), [5, 5, 3])
    with pytest.raises(ValueError, match="k >= 2"):
        data.stratified_kfold(labels, 1)
    with pytest.raises(ValueError, match="smallest class"):
        data.stratified_kfold(labels, 4)
