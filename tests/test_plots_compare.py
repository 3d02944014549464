"""plots, the figures of 03_resnet_compare: each draws the numbers it is given, with the titles it is given."""

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from fmnist_utils import plots

CLASSES = ("a", "b", "c", "d")
FALLBACK = "ResNet-18: RANDOM INIT (offline fallback: no ImageNet weights)"


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def sym(seed: int, scale: float = 1.0) -> np.ndarray:
    m = np.random.default_rng(seed).uniform(-scale, scale, (4, 4))
    return (m + m.T) / 2


def test_class_matrices_share_one_scale_and_label_every_cell():
    a, b = sym(0), sym(1)
    fig = plots.plot_class_matrices([a, b], ["CNN (fc2)", f"{FALLBACK} (avgpool)"], CLASSES, suptitle=f"CNN vs {FALLBACK}")
    heat_a, heat_b = fig.axes[0], fig.axes[1]
    assert cell_texts(heat_a) == [f"{v:.2f}" for v in a.ravel()]
    assert cell_texts(heat_b) == [f"{v:.2f}" for v in b.ravel()]
    assert heat_a.collections[0].get_clim() == heat_b.collections[0].get_clim() == (min(a.min(), b.min()), max(a.max(), b.max()))
    assert heat_b.get_title() == f"{FALLBACK} (avgpool)" and fig._suptitle.get_text() == f"CNN vs {FALLBACK}"
    assert len(fig.axes) == 3  # two matrices, one colour bar
    narrow = plots.plot_class_matrices([0.5 + 0.01 * a], ["x"], CLASSES, vmin=0.49, vmax=0.51)
    assert narrow.axes[0].collections[0].get_clim() == (0.49, 0.51)
    assert cell_texts(narrow.axes[0])[0] == f"{0.5 + 0.01 * a[0, 0]:.3f}"  # a narrow scale gets a third decimal
    assert png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one title per matrix"):
        plots.plot_class_matrices([a, b], ["x"], CLASSES)


def test_matrix_definitions_grid():
    study, means = [sym(2, 0.3), sym(3, 0.3)], [sym(4), sym(5)]
    fig = plots.plot_matrix_definitions(study, means, ["CNN (fc2)", FALLBACK], CLASSES, suptitle="two kinds")
    heat = [ax for ax in fig.axes if ax.get_title()]
    assert len(heat) == 4 and all(ax.collections[0].get_clim() == (-1, 1) for ax in heat)
    assert cell_texts(heat[0]) == [f"{v:.2f}" for v in study[0].ravel()]
    assert cell_texts(heat[2]) == [f"{v:.2f}" for v in means[0].ravel()]  # row-major: study's on top, class means below
    assert sum(FALLBACK in ax.get_title() for ax in heat) == 2
    assert png(fig).startswith(b"\x89PNG")


def test_layer_curves_draw_pixels_then_the_network():
    rows = [{"model": "pixels", "layer": "pixels", "within": 0.3, "between": 0.1, "difference": 0.2}]
    rows += [{"model": "CNN", "layer": f"l{i}", "within": 0.4 + i / 10, "between": 0.2, "difference": 0.2 + i / 10} for i in range(3)]
    rows += [{"model": "R", "layer": f"r{i}", "within": 0.5, "between": 0.4 - i / 10, "difference": 0.1 + i / 10} for i in range(2)]
    fig = plots.plot_layer_curves(rows, {"CNN": "CNN", "R": FALLBACK}, suptitle=f"by layer: CNN and {FALLBACK}")
    cnn, res = fig.axes
    within, between, difference = cnn.get_lines()[:3]
    np.testing.assert_allclose(within.get_ydata(), [0.3, 0.4, 0.5, 0.6])
    np.testing.assert_allclose(res.get_lines()[1].get_ydata(), [0.1, 0.4, 0.3])
    assert [t.get_text() for t in res.get_xticklabels()] == ["pixels", "r0", "r1"]
    assert res.get_title() == FALLBACK
    assert png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="no rows for model"):
        plots.plot_layer_curves(rows, {"ResNet-18": "x"})


def test_cka_grids_and_probe_bars():
    grid = np.random.default_rng(6).uniform(0, 1, (3, 2))
    fig = plots.plot_cka_grids({"linear CKA": grid, "debiased": grid / 2}, ["pixels", "c1", "c2"], ["pixels", "r1"],
                               xlabel=f"{FALLBACK} layer", ylabel="CNN layer", suptitle=f"CKA: CNN and {FALLBACK}")
    left, right = [ax for ax in fig.axes if ax.get_title()]
    assert cell_texts(left) == [f"{v:.2f}" for v in grid.ravel()] and cell_texts(right) == [f"{v:.2f}" for v in (grid / 2).ravel()]
    assert left.get_xlabel() == f"{FALLBACK} layer" and left.collections[0].get_clim() == (0, 1)
    assert [t.get_text() for t in left.get_yticklabels()] == ["pixels", "c1", "c2"]
    bars = plots.plot_probe_accuracies({"raw pixels": 0.8, f"{FALLBACK} avgpool": 0.7, "CNN fc2": 0.9},
                                       reference=0.91, reference_label="the CNN's own classifier", suptitle="probes")
    ax = bars.axes[0]
    np.testing.assert_allclose([p.get_width() for p in ax.patches], [0.8, 0.7, 0.9])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["raw pixels", f"{FALLBACK} avgpool", "CNN fc2"]
    assert [t.get_text() for t in ax.texts] == [" 80.0%", " 70.0%", " 90.0%"]
    assert ax.get_lines()[0].get_xdata()[0] == 0.91
    for f in (fig, bars):
        assert png(f).startswith(b"\x89PNG")
