"""The networks the study compares.

``SeedCNN`` is the study's custom CNN, layer for layer. Its blocks are named (``block1`` ..
``block5``, ``fc1``, ``fc2``, ``head``) so that a hidden layer can be read by name with
:mod:`fmnist_utils.features`.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

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
}


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
