"""A tiny model and a sweep runnable as a script, for the sweep tests.

The tiny model trains in milliseconds, so tests spend their time on the sweep's bookkeeping.
Run as a script, the sweep's ``train.fit_many`` can wait ``FMNIST_TEST_STACK_DELAY`` seconds
before each stack, standing in for a long training so that a test can kill the script mid-stack,
and append each unit it trained to the JSON-lines file ``FMNIST_TEST_UNIT_LOG``.

    python tests/sweep_helpers.py STORAGE   # runs the sweep of sweep_kwargs() into STORAGE
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fmnist_utils import data, models, search_space, sweep, train  # noqa: E402
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
    return TinyNet(dropout)


def register() -> None:
    """Add ``tiny`` to the model registry (idempotent)."""
    models.MODELS["tiny"] = _build_tiny


def sweep_kwargs() -> dict:
    """Return the keyword arguments (besides x, y, storage) of the script's sweep: 6 configs x 2
    folds in stacks of 3 units; a worker silent for 3 s is taken for dead."""
    register()
    return dict(
        space=search_space.grid(lr=[0.1, 0.05, 0.01], dropout=[0.1, 0.5]),
        base=TrainConfig(model="tiny", epochs=1, batch_size=32, precision="fp32", device="cpu"),
        k=2,
        subset=200,
        seed=0,
        stack_size=3,
        heartbeat_interval=1,
        grace_period=3,
        verbose=False,
    )


def unit_id(config: TrainConfig, val_indices, names=("lr", "dropout")) -> tuple[str, int]:
    """Return (config key over ``names``, first validation index): which unit a fit_many call trained."""
    return search_space.config_key({n: getattr(config, n) for n in names}), int(val_indices[0])


def _slow_and_logged(fit_many, delay: float, log: str | None):
    def wrapper(configs, x, y, train_indices, val_indices=None, **kw):
        time.sleep(delay)
        histories = fit_many(configs, x, y, train_indices, val_indices, **kw)
        if log:
            with open(log, "a") as f:
                for c, v in zip(configs, val_indices):
                    f.write(json.dumps(unit_id(c, v)) + "\n")
        return histories

    return wrapper


def main(storage: str) -> None:
    train.fit_many = _slow_and_logged(train.fit_many, float(os.environ.get("FMNIST_TEST_STACK_DELAY", "0")),
                                      os.environ.get("FMNIST_TEST_UNIT_LOG"))
    ds = data.load_fashion_mnist(download_ok=False)
    sweep.run_sweep(ds.x_train, ds.y_train, storage=storage, **sweep_kwargs())


if __name__ == "__main__":
    main(sys.argv[1])
