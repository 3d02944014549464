"""Fashion-MNIST report kit: data, the study's CNN, training, sweeps and representation analysis.

Importing this package does nothing but define names: no download, no device probe, no file
written. Submodules are imported by whoever needs them (``from fmnist_utils import data``).
"""

__version__ = "0.1.0"
