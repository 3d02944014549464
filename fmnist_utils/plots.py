"""The kit's figures, for every notebook, and the few numbers they draw, as pure functions.

One import for the notebooks (``from fmnist_utils import plots``); the figures live in one module
per notebook, and every name below is importable from here as before:

* :mod:`~fmnist_utils.plots_common`: the annotated heat map every matrix is drawn with
  (:func:`annotated_matrix`, seaborn, so all heat maps read alike) and the train/validation colours;
* :mod:`~fmnist_utils.plots_training` (02_train): learning curves, confusion matrix, accuracy per
  class, misclassified images, and the numbers they show (:func:`confusion_matrix`,
  :func:`per_class_accuracy`, :func:`top_confusions`, :func:`pick_misclassified`), separate so
  they can be written to results and tested on their own;
* :mod:`~fmnist_utils.plots_sweep` (01_sweep): heat maps, factor panels and fold spread;
* :mod:`~fmnist_utils.plots_compare` (03_resnet_compare): class matrices, layer curves, CKA grids, probes;
* :mod:`~fmnist_utils.plots_improvements` (04_improvements): accuracy against training time.

Every ``plot_*`` function takes arrays or tables and returns a :class:`matplotlib.figure.Figure`
built without pyplot, so nothing is registered globally and nothing is shown or saved as a side
effect: a notebook displays the returned figure and saves it with
``fmnist_utils.notebook.Notebook.save_figure``. The figures sit below the pipeline: they import
neither the sweep, nor the runner, nor the report (``tests/test_layering.py``).
"""

from __future__ import annotations

from .plots_common import TRAIN_COLOR, VAL_COLOR, annotated_matrix
from .plots_compare import (
    plot_cka_grids,
    plot_class_matrices,
    plot_layer_curves,
    plot_matrix_definitions,
    plot_probe_accuracies,
)
from .plots_improvements import KIND_COLORS, KIND_LABELS, plot_accuracy_vs_time
from .plots_sweep import in_value_order, plot_fold_spread, plot_sweep_factors, plot_sweep_heatmaps
from .plots_training import (
    confusion_matrix,
    per_class_accuracy,
    pick_misclassified,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_misclassified,
    plot_per_class_accuracy,
    top_confusions,
)

__all__ = [
    "TRAIN_COLOR", "VAL_COLOR", "annotated_matrix",
    "confusion_matrix", "per_class_accuracy", "top_confusions", "pick_misclassified",
    "plot_learning_curves", "plot_confusion_matrix", "plot_per_class_accuracy", "plot_misclassified",
    "in_value_order", "plot_sweep_heatmaps", "plot_sweep_factors", "plot_fold_spread",
    "plot_class_matrices", "plot_matrix_definitions", "plot_layer_curves", "plot_cka_grids", "plot_probe_accuracies",
    "KIND_COLORS", "KIND_LABELS", "plot_accuracy_vs_time",
]
