"""plots: the numbers behind the figures against plain loops, and figures that draw what they get."""

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from fmnist_utils import plots

CLASSES = ("a", "b", "c", "d")


def _labels(n=500, c=4, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, c, n)
    p = np.where(rng.random(n) < 0.7, t, rng.integers(0, c, n))
    return t, p


def test_confusion_matrix_equals_a_loop():
    t, p = _labels()
    expected = np.zeros((4, 4), dtype=np.int64)
    for ti, pi in zip(t, p):
        expected[ti, pi] += 1
    got = plots.confusion_matrix(t, p, 4)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == len(t)


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="y_pred has 2"):
        plots.confusion_matrix([0, 1, 2], [0, 1], 3)
    with pytest.raises(ValueError, match="n_classes=3"):
        plots.confusion_matrix([0, 3], [0, 1], 3)


def test_per_class_accuracy_is_recall_per_class():
    t, p = _labels()
    cm = plots.confusion_matrix(t, p, 4)
    got = plots.per_class_accuracy(cm)
    expected = [np.mean(p[t == c] == c) for c in range(4)]
    np.testing.assert_allclose(got, expected)
    # The overall accuracy is the class accuracies weighted by class size.
    np.testing.assert_allclose(np.sum(got * np.bincount(t, minlength=4)) / len(t), np.mean(t == p))


def test_per_class_accuracy_absent_class_is_nan():
    cm = np.array([[3, 1], [0, 0]])
    got = plots.per_class_accuracy(cm)
    assert got[0] == 0.75 and np.isnan(got[1])


def test_top_confusions_are_the_largest_off_diagonal_cells():
    t, p = _labels(seed=1)
    cm = plots.confusion_matrix(t, p, 4)
    top = plots.top_confusions(cm, CLASSES, k=3)
    cells = sorted(((cm[i, j], i, j) for i in range(4) for j in range(4) if i != j), key=lambda c: -c[0])
    assert [row["count"] for row in top] == [c[0] for c in cells[:3]]
    first = top[0]
    i, j = CLASSES.index(first["true"]), CLASSES.index(first["predicted"])
    assert first["fraction_of_true"] == pytest.approx(cm[i, j] / cm[i].sum())
    assert plots.top_confusions(np.eye(4, dtype=int) * 5, CLASSES) == []  # no mistakes, nothing listed


def test_pick_misclassified_picks_only_mistakes_sorted_by_class_and_seeded():
    t, p = _labels()
    idx = plots.pick_misclassified(t, p, 12, seed=3)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12
    assert np.all(t[idx] != p[idx])
    assert np.all(np.diff(t[idx]) >= 0)
    np.testing.assert_array_equal(idx, plots.pick_misclassified(t, p, 12, seed=3))
    assert len(plots.pick_misclassified(t, t, 5)) == 0


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


def test_learning_curves_draw_train_and_validation_per_epoch():
    history = [
        {"epoch": e, "train_accuracy": 0.5 + 0.1 * e, "train_loss": 1.0 / e, "val_accuracy": 0.45 + 0.1 * e, "val_loss": 1.1 / e}
        for e in (1, 2, 3)
    ]
    fig = plots.plot_learning_curves(history)
    ax_acc, ax_loss = fig.axes
    train_line, val_line = ax_acc.get_lines()
    np.testing.assert_allclose(train_line.get_ydata(), [100 * r["train_accuracy"] for r in history])
    np.testing.assert_allclose(val_line.get_ydata(), [100 * r["val_accuracy"] for r in history])
    np.testing.assert_allclose(ax_loss.get_lines()[1].get_ydata(), [r["val_loss"] for r in history])
    assert _png_bytes(fig).startswith(b"\x89PNG")
    # Without validation only the training curve is drawn.
    no_val = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in history]
    assert len(plots.plot_learning_curves(no_val).axes[0].get_lines()) == 1
    with pytest.raises(ValueError, match="history is empty"):
        plots.plot_learning_curves([])


def test_confusion_and_per_class_figures_show_the_counts():
    t, p = _labels()
    cm = plots.confusion_matrix(t, p, 4)
    fig = plots.plot_confusion_matrix(cm, CLASSES)
    texts = {tx.get_text() for tx in fig.axes[0].texts}
    assert {str(v) for v in cm.ravel() if v} <= texts
    bars = plots.plot_per_class_accuracy(plots.per_class_accuracy(cm), CLASSES, overall=float(np.mean(t == p)))
    widths = [patch.get_width() for patch in bars.axes[0].patches]
    np.testing.assert_allclose(widths, 100 * plots.per_class_accuracy(cm))
    for fig in (fig, bars):
        assert _png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="class names"):
        plots.plot_confusion_matrix(cm, CLASSES[:3])


def test_misclassified_grid_titles_name_true_and_predicted_class():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 1, 28, 28), dtype=np.uint8)
    t = np.array([0, 0, 1, 1, 2, 3, 3])
    p = np.array([1, 2, 0, 3, 0, 1, 2])
    fig = plots.plot_misclassified(images, t, p, CLASSES, ncols=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{CLASSES[a]}\n→ {CLASSES[b]}" for a, b in zip(t, p)]
    assert len(fig.axes) == 9  # 3 x 3 grid, two empty cells hidden
    assert _png_bytes(fig).startswith(b"\x89PNG")
    assert _png_bytes(plots.plot_misclassified(images[:0], t[:0], p[:0], CLASSES)).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="7 images but 6"):
        plots.plot_misclassified(images, t[:6], p, CLASSES)


def test_annotated_matrix_labels_every_cell_and_leaves_nan_blank():
    m = np.array([[0.25, np.nan], [0.5, 0.75]])
    fig = Figure()
    ax = plots.annotated_matrix(fig.subplots(), m, ["x1", "x2"], ["y1", "y2"], fmt=".2f", title="t")
    assert sorted(t.get_text() for t in ax.texts) == ["0.25", "0.50", "0.75"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x1", "x2"] and ax.get_title() == "t"
    with pytest.raises(ValueError, match="xlabels has 1 names for 2 cells"):
        plots.annotated_matrix(Figure().subplots(), m, ["x1"], None)
    with pytest.raises(ValueError, match="2-D"):
        plots.annotated_matrix(Figure().subplots(), np.zeros(3))


# --------------------------------------------------------------------------------------------
# The sweep's figures, on a fold table made by hand (no training needed)


def _sweep_tables(seed=0):
    """A 2 x 2 x 2 grid with 3 folds each, as cv_results.fold_results returns it, and its summary."""
    import pandas as pd

    from fmnist_utils import cv_results, search_space

    rng = np.random.default_rng(seed)
    rows = []
    for lr in (0.05, 0.01):
        for batch_size in (32, 64):
            for dropout in (0.1, 0.5):
                params = {"batch_size": batch_size, "dropout": dropout, "lr": lr}
                for fold in range(3):
                    rows.append({**params, "fold": fold, "val_accuracy": rng.uniform(0.6, 0.9),
                                 "val_loss": rng.uniform(0.3, 1.0), "epochs": 1, "seconds": 1.0,
                                 "config": search_space.config_key(params)})
    folds = pd.DataFrame(rows)
    return folds, cv_results.summarize(folds)


def test_sweep_heatmaps_show_each_configurations_cv_mean_in_its_cell():
    folds, summary = _sweep_tables()
    fig = plots.plot_sweep_heatmaps(summary)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["dropout 0.1", "dropout 0.5"]
    rows = [float(t.get_text()) for t in panels[0].get_yticklabels()]
    assert rows == [0.05, 0.01]  # the learning rate falls downwards
    for ax, dropout in zip(panels, (0.1, 0.5)):
        cols = [int(t.get_text()) for t in ax.get_xticklabels()]
        assert cols == [32, 64]
        for text in ax.texts:
            i, j = int(text.get_position()[1]), int(text.get_position()[0])  # seaborn centres at +0.5
            mean = folds[(folds.lr == rows[i]) & (folds.batch_size == cols[j]) & (folds.dropout == dropout)]
            assert float(text.get_text()) == pytest.approx(100 * mean.val_accuracy.mean(), abs=0.05)
        assert len(ax.texts) == 4
    # A configuration the sweep did not train is a blank cell, not a zero.
    partial = summary[~((summary.lr == 0.01) & (summary.batch_size == 64))]
    counts = [len(ax.texts) for ax in plots.plot_sweep_heatmaps(partial).axes if ax.get_title()]
    assert counts == [3, 3]
    assert _png_bytes(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no column 'momentum'"):
        plots.plot_sweep_heatmaps(summary, rows="momentum")


def test_sweep_factor_panels_draw_the_means_and_every_fold():
    from fmnist_utils import cv_results, search_space

    folds, summary = _sweep_tables(seed=1)
    base = {"lr": 0.05, "batch_size": 32, "dropout": 0.5}
    tables = cv_results.factor_tables(summary, base)
    fig = plots.plot_sweep_factors(tables, folds)
    assert len(fig.axes) == len(tables) == 3
    for ax, (factor, table) in zip(fig.axes, tables.items()):
        # The x axis runs in value order (0.0005, 0.003, 0.05, 0.1), whatever the tables' (ranked) order.
        table = table.sort_values(factor)
        assert [float(t.get_text()) for t in ax.get_xticklabels()] == sorted(table[factor].astype(float))
        means, *fold_dots = ax.collections[1:]  # [0] is the error bars
        np.testing.assert_allclose(means.get_offsets()[:, 1], table["accuracy_mean"])
        dots = np.concatenate([d.get_offsets()[:, 1] for d in fold_dots])
        expected = np.concatenate([folds.loc[folds.config == c, "val_accuracy"] for c in table["config"]])
        np.testing.assert_allclose(dots, expected)
        assert ax.get_xlabel() == search_space.LABELS[factor]
    assert _png_bytes(fig).startswith(b"\x89PNG")


def test_value_order_sorts_numbers_and_keeps_names_as_given():
    import pandas as pd

    ranked = pd.DataFrame({"lr": [0.05, 0.1, 0.003, 0.0005], "acc": [4, 3, 2, 1]})
    ordered = plots.in_value_order(ranked, "lr")
    assert list(ordered["lr"]) == [0.0005, 0.003, 0.05, 0.1] and list(ordered["acc"]) == [1, 2, 4, 3]
    assert list(ranked["lr"]) == [0.05, 0.1, 0.003, 0.0005]  # the argument is not modified
    names = pd.DataFrame({"optimizer": ["sgd", "adam", "rmsprop"]})
    assert list(plots.in_value_order(names, "optimizer")["optimizer"]) == ["sgd", "adam", "rmsprop"]


def test_fold_spread_puts_the_best_configuration_on_top_with_all_its_folds():
    from fmnist_utils import cv_results, search_space

    folds, summary = _sweep_tables(seed=2)
    fig = plots.plot_fold_spread(folds, summary)
    ax = fig.axes[0]
    best = summary.sort_values("accuracy_mean").iloc[-1]
    names = cv_results.hyperparameter_names(summary)
    assert ax.get_yticklabels()[-1].get_text() == search_space.describe_config({n: best[n] for n in names})
    top_bar = ax.get_lines()[-1]
    assert top_bar.get_xdata()[0] == pytest.approx(best["accuracy_mean"])
    top_dots = ax.collections[-1].get_offsets()[:, 0]
    np.testing.assert_allclose(sorted(top_dots), sorted(folds.loc[folds.config == best["config"], "val_accuracy"]))
    assert len(ax.collections) == len(summary)
    assert _png_bytes(fig).startswith(b"\x89PNG")
