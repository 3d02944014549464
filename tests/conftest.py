"""Shared fixtures: the real data set, loaded once per test session."""

import pytest

from fmnist_utils import data


@pytest.fixture(scope="session")
def fmnist():
    """The real Fashion-MNIST (from data/, FMNIST_DATA or Debian's package; never downloaded)."""
    return data.load_fashion_mnist(download_ok=False)
