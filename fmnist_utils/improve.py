"""The ablation of ``04_improvements``: what each option beyond the study buys, over seeds.

The rows are built from :data:`fmnist_utils.train.PRESETS`, never from values typed twice:

- ``study`` (the study's recipe) and ``modern`` (``preset("modern")``), on the same data and budget;
- ``modern-<option>``: the modern recipe with one :data:`OPTIONS` entry set back to the study's
  value, and ``study+<option>``: the study's recipe with that one entry set to the modern value;
- ``study+adam``, ``study+rmsprop``, ``study+l1``, ``study+kernel5``: the study's own suggestions;
- ``resnet18``: the Fashion-MNIST ResNet-18 with the modern recipe;
- ``ensemble``: the modern CNN and ResNet-18 averaged, the weight chosen on validation images.

Every row trains the same seeds on the same images for the same number of epochs (the budget);
validation images come from the training split; the test set is read once per final model. Each
row is compared with its reference row by a paired t-test across seeds (seed ``s`` of both rows
shares its initialisation seed and data). What is resampled is the seed, on one fixed set of test
images: a verdict is about the mean over seeds on these test images, not about new images.

The comparisons form two families, declared here before any row runs (:func:`families`):
the primary one (:data:`PRIMARY_ROWS`: the modern recipe against the study's, and the study's own
suggestions against its recipe), whose family-wise error rate Holm's procedure holds at 5%, and the
exploratory rest, whose false discovery rate Benjamini-Hochberg holds at 5%. A difference the test
does not detect is "no significant difference", never equality.

One import for the notebook (``from fmnist_utils import improve``); the code lives in three modules,
and every name below is importable from here:

* :mod:`~fmnist_utils.improve_rows`: the rows and the options they switch (:data:`OPTIONS`,
  :data:`SUGGESTIONS`, :class:`Row`, :func:`ablation_rows`, :func:`select_rows`) and what they cost;
* :mod:`~fmnist_utils.improve_runs`: the data split, each row's seeds trained and scored
  (:class:`Outcome`), the ensemble, and the cache of finished rows (:func:`run_rows`);
* :mod:`~fmnist_utils.improve_verdicts`: the paired test across seeds, the families and their
  corrections (:func:`verdicts`), the summary table and the power note.
"""

from __future__ import annotations

from .improve_rows import (  # noqa: F401
    ADAPTIVE_LR, BUDGET_FIELDS, KINDS, L1, LARGER_KERNEL, OPTIONS, PASS_KINDS, PRIMARY_ROWS, SUGGESTIONS, Option, Row,
    ablation_rows, image_passes, select_rows, shared_settings,
)
from .improve_runs import (  # noqa: F401
    N_CLASSES, Outcome, Split, accuracy, ensemble_row, make_split, probabilities, run_rows, train_row, train_seeds,
    training_seconds,
)
from .improve_verdicts import (  # noqa: F401
    LEVEL, TEST_NAME, families, paired_difference, power_note, row_verdict, summary_table, verdicts,
)
