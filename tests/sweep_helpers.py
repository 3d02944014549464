"""A tiny model and a sweep runnable as a script, for the sweep tests.

The tiny model trains in milliseconds, so tests spend their time on the sweep's bookkeeping.
Its builder can wait ``FMNIST_TEST_UNIT_DELAY`` seconds, standing in for a long training so that
a test can kill the script while a unit is running.

    python tests/sweep_helpers.py STORAGE   # runs the sweep of sweep_kwargs() into STORAGE
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_utils import data, models, sweep  # noqa: E402
from fmnist_utils.train import TrainConfig  # noqa: E402


class TinyNet(nn.Module):
    """(B, 1, 28, 28) -> (B, 10): one hidden layer of 32 units."""

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.flatten = nn.Flatten()  # (B, 784)
        self.hidden = nn.Linear(28 * 28, 32)  # (B, 32)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(32, 10)  # (B, 10)

    def forward(self, x):
        x = self.flatten(x)
        x = self.relu(self.hidden(x))
        return self.head(self.dropout(x))


def _build_tiny(dropout: float = 0.5, kernel_size: int = 3) -> nn.Module:
    delay = float(os.environ.get("FMNIST_TEST_UNIT_DELAY", "0"))
    if delay:
        time.sleep(delay)
    return TinyNet(dropout)


def register() -> None:
    """Add ``tiny`` to the model registry (idempotent)."""
    models.MODELS["tiny"] = _build_tiny


def sweep_kwargs() -> dict:
    """Return the keyword arguments (besides x, y, storage) of the script's sweep: 6 configs x 2 folds."""
    register()
    return dict(
        space=sweep.grid(lr=[0.1, 0.05, 0.01], dropout=[0.1, 0.5]),
        base=TrainConfig(model="tiny", epochs=1, batch_size=32, precision="fp32", device="cpu"),
        k=2,
        subset=200,
        seed=0,
        verbose=False,
    )


def main(storage: str) -> None:
    ds = data.load_fashion_mnist(download_ok=False)
    sweep.run_sweep(ds.x_train, ds.y_train, storage=storage, **sweep_kwargs())


if __name__ == "__main__":
    main(sys.argv[1])
