"""Activations of named layers against a manual forward pass, and the linear probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fmnist_utils import features
from fmnist_utils.data import scale
from fmnist_utils.models import FashionResNet18, SeedCNN


@pytest.fixture(scope="module")
def net() -> SeedCNN:
    torch.manual_seed(0)
    model = SeedCNN()
    # Non-trivial BatchNorm statistics, so eval mode matters.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (23, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def manual(net: SeedCNN, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every block's output, by calling the blocks one after another."""
    net.eval()
    outs = {}
    with torch.no_grad():
        x = scale(images)
        for name in ("block1", "block2", "block3", "block4", "block5", "flatten", "fc1", "fc2", "head"):
            x = getattr(net, name)(x)
            outs[name] = x.flatten(1).clone()
    return outs


def test_named_layers_match_a_manual_forward(net, images):
    expected = manual(net, images)
    got = features.extract(net, images, ["block2", "block5", "fc1", "head"], batch_size=5)
    for name, value in got.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        assert value.shape == (len(images), expected[name].shape[1])
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-5)


def test_batch_size_does_not_change_the_result(net, images):
    small = features.extract(net, images, ["block3", "fc2"], batch_size=4)
    whole = features.extract(net, images, ["block3", "fc2"], batch_size=len(images))
    for name in small:
        torch.testing.assert_close(small[name], whole[name], rtol=1e-5, atol=1e-5)


def test_all_layers_come_from_one_pass_per_batch(net, images):
    calls = []
    handle = net.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        features.extract(net, images, ["block1", "block4", "head"], batch_size=10)
    finally:
        handle.remove()
    assert len(calls) == 3  # ceil(23 / 10) batches, each a single forward


def test_output_before_an_inplace_relu_is_kept(net, images):
    # block3 has no norm: its ReLU(inplace=True) overwrites the conv output after the hook ran.
    got = features.extract_layer(net, images, "block3.conv", batch_size=8)
    with torch.no_grad():
        x = scale(images)
        x = net.block2(net.block1(x))
        expected = net.block3.conv(x).flatten(1)
    assert (got < 0).any()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_float_images_are_used_as_given(net, images):
    torch.testing.assert_close(
        features.extract_layer(net, scale(images), "fc2"), features.extract_layer(net, images, "fc2")
    )


def test_max_spatial_average_pools_large_maps(net, images):
    got = features.extract(net, images, ["block1", "block2"], max_spatial=4)
    with torch.no_grad():
        net.eval()
        b1 = net.block1(scale(images))  # (N, 96, 13, 13): pooled to 4x4
        b2 = net.block2(b1)  # (N, 256, 6, 6): pooled to 4x4
    torch.testing.assert_close(got["block1"], F.adaptive_avg_pool2d(b1, 4).flatten(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["block2"], F.adaptive_avg_pool2d(b2, 4).flatten(1), rtol=1e-5, atol=1e-5)
    small = features.extract_layer(net, images, "block5", max_spatial=4)  # (256, 2, 2): untouched
    assert small.shape[1] == 256 * 2 * 2


def test_mode_and_hooks_are_restored(net, images):
    net.train()
    features.extract(net, images[:4], ["fc1", "block1"])
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError):
        features.extract(net, images[:4], ["fc1", "no_such_layer"])
    assert net.training and all(not m._forward_hooks for m in net.modules())
    net.eval()


def test_bad_layer_names_are_explained(net, images):
    with pytest.raises(ValueError, match=r"no layer 'blok3'.*did you mean.*'block3'"):
        features.extract(net, images, ["blok3"])
    with pytest.raises(ValueError, match="list of layer names"):
        features.extract(net, images, "fc1")
    with pytest.raises(ValueError, match="twice"):
        features.extract(net, images, ["fc1", "fc1"])


def test_a_shared_module_is_refused():
    model = FashionResNet18()
    with pytest.raises(ValueError, match="more than once"):
        features.extract(model, torch.zeros(2, 1, 28, 28, dtype=torch.uint8), ["layer1.0.relu"])


def test_layer_names_lists_submodules(net):
    names = features.layer_names(net)
    assert names[:2] == ["block1", "block1.conv"] and "head" in names and "" not in names


# --------------------------------------------------------------------------------------------
# Linear probe


def blobs(n_per_class: int, d: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 3
    y = np.repeat(np.arange(3), n_per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), d))).astype(np.float32), y


def test_probe_separates_separable_classes():
    x, y = blobs(40, 5, 0.3, seed=0)
    xt, yt = blobs(20, 5, 0.3, seed=0)
    result = features.linear_probe(x, y, xt, yt, n_classes=3)
    assert result["test_accuracy"] == 1.0 and result["train_accuracy"] == 1.0
    assert result["l2"] in (1e-4, 1e-3, 1e-2) and set(result["val_accuracy"]) == {1e-4, 1e-3, 1e-2}
    assert (result["n_train"], result["n_test"], result["n_features"]) == (120, 60, 5)


def test_probe_accuracy_is_the_fraction_of_correct_argmax():
    x, y = blobs(50, 8, 4.0, seed=1)  # overlapping classes: accuracy well below 1
    xt, yt = blobs(50, 8, 4.0, seed=2)
    result = features.linear_probe(torch.from_numpy(x), torch.from_numpy(y), xt, yt, n_classes=3, l2=1e-3)
    xs, xts = features._standardise(torch.from_numpy(x), torch.from_numpy(xt))
    w, b = features._fit_logistic(xs, torch.from_numpy(y), 3, 1e-3, 200, torch.device("cpu"))
    expected = ((xts @ w + b).argmax(1).numpy() == yt).mean()
    assert result["test_accuracy"] == pytest.approx(expected)
    np.testing.assert_array_equal(result["test_predictions"], (xts @ w + b).argmax(1).numpy())
    assert result["test_accuracy"] == pytest.approx((result["test_predictions"] == yt).mean())
    assert 0.4 < result["test_accuracy"] < 1.0 and result["val_accuracy"] == {}


def test_probe_reaches_the_optimum():
    x, y = blobs(30, 6, 2.0, seed=3)
    xs = torch.from_numpy(x)
    w, b = features._fit_logistic(xs, torch.from_numpy(y), 3, 1e-2, 300, torch.device("cpu"))
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = F.cross_entropy(xs @ w + b, torch.from_numpy(y)) + 1e-2 * w.pow(2).sum()
    grads = torch.autograd.grad(loss, [w, b])
    assert max(g.abs().max().item() for g in grads) < 1e-4


def test_probe_bad_input():
    x, y = blobs(10, 4, 1.0, seed=4)
    with pytest.raises(ValueError, match="dimensions"):
        features.linear_probe(x, y, x[:, :3], y, n_classes=3)
    with pytest.raises(ValueError, match="labels must be"):
        features.linear_probe(x, y[:-1], x, y, n_classes=3)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        features.linear_probe(bad, y, x, y, n_classes=3)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        features.linear_probe(x, y, x, y, n_classes=2)


def test_probe_works_on_extracted_features(net, images):
    # extract runs without autograd; its tensors must still be usable for fitting.
    feats = features.extract_layer(net, images, "fc2")
    assert not feats.requires_grad
    labels = torch.arange(len(images)) % 3
    result = features.linear_probe(feats, labels, feats, labels, n_classes=3, l2=1e-4, max_iter=100)
    # 23 images in 2,048 dimensions: any labelling is linearly separable, so a working fit
    # classifies its own training images perfectly.
    assert result["train_accuracy"] == 1.0 == result["test_accuracy"]
    assert (result["n_train"], result["n_features"]) == (23, 2048)
    # The same fit on a plain numpy copy of the features gives the same answer.
    plain = features.linear_probe(feats.clone().numpy(), labels.numpy(), feats.clone().numpy(), labels.numpy(),
                                  n_classes=3, l2=1e-4, max_iter=100)
    assert plain["test_accuracy"] == result["test_accuracy"]
