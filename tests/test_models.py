"""The study's CNN, layer for layer."""

import pytest
import torch

from fmnist_utils.models import MODELS, SEED_CNN_PARAMETERS, SeedCNN, count_parameters


def test_output_shape_and_parameter_count():
    model = SeedCNN()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert count_parameters(model) == SEED_CNN_PARAMETERS == 9_636_746


def test_named_blocks_and_shapes():
    model = SeedCNN().eval()
    shapes = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name in ("block1", "block2", "block3", "block4", "block5", "flatten", "fc1", "fc2", "head")
    ]
    model(torch.zeros(2, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert shapes == {
        "block1": (2, 96, 13, 13), "block2": (2, 256, 6, 6), "block3": (2, 384, 6, 6),
        "block4": (2, 384, 6, 6), "block5": (2, 256, 2, 2), "flatten": (2, 1024),
        "fc1": (2, 2048), "fc2": (2, 2048), "head": (2, 10),
    }
    # BatchNorm only in the first two blocks, as in the study.
    assert hasattr(model.block1, "norm") and hasattr(model.block2, "norm")
    assert not hasattr(model.block3, "norm")


def test_dropout_is_applied_in_training_only():
    torch.manual_seed(0)
    model = SeedCNN(dropout=0.5)
    assert model.fc1.dropout.p == 0.5 and model.fc2.dropout.p == 0.5
    without = SeedCNN(dropout=0.0)
    without.load_state_dict(model.state_dict())  # the same weights, no dropout
    x = torch.rand(8, 1, 28, 28)
    # Training mode: two passes drop different units, while without dropout they agree (the
    # BatchNorm batch statistics are the same for the same batch).
    model.train()
    without.train()
    assert not torch.allclose(model(x), model(x))
    torch.testing.assert_close(without(x), without(x))
    # In fc1, about half of the active units are zeroed and the rest scaled by 1 / (1 - p) = 2.
    h = torch.randn(16, 1024)
    active = torch.relu(model.fc1.linear(h))
    dropped = model.fc1(h)
    on = active > 0
    kept = dropped[on] != 0
    assert 0.45 < 1 - kept.float().mean().item() < 0.55
    torch.testing.assert_close(dropped[on][kept], 2 * active[on][kept])
    # Evaluation mode: deterministic and exactly the network without dropout.
    model.eval()
    without.eval()
    torch.testing.assert_close(model(x), model(x))
    torch.testing.assert_close(model(x), without(x))


def test_larger_kernels_keep_the_geometry():
    model = SeedCNN(kernel_size=5)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert model.block3.conv.kernel_size == (5, 5)


@pytest.mark.parametrize("kwargs, field", [({"dropout": 1.0}, "dropout"), ({"kernel_size": 4}, "kernel_size")])
def test_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SeedCNN(**kwargs)


def test_registry_builds_seedcnn():
    assert isinstance(MODELS["seedcnn"](dropout=0.3, kernel_size=3), SeedCNN)
