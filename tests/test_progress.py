"""The one progress display: which mode where, and the lines fit prints outside a terminal."""

import re
import sys

import pytest
import torch

from fmnist_utils import progress
from fmnist_utils.train import TrainConfig, build_model, fit


def test_mode_follows_the_switch_then_the_place(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.mode(False) == "off"
    for chosen in progress.MODES:
        monkeypatch.setenv(progress.ENV, chosen)
        assert progress.mode() == chosen and progress.mode(True) == chosen
        assert progress.mode(False) == "off"  # an explicit False always wins
    monkeypatch.setenv(progress.ENV, "widgets")
    with pytest.raises(ValueError, match="FMNIST_PROGRESS='widgets'; set it to one of"):
        progress.mode()
    monkeypatch.delenv(progress.ENV)
    monkeypatch.setattr(progress, "_in_notebook_kernel", lambda: False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.mode() == "bar"  # a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress.mode() == "lines"  # a log file
    monkeypatch.setattr(progress, "_in_notebook_kernel", lambda: True)
    assert progress.mode() == "bar"  # JupyterLab: the widget


def test_fit_prints_one_line_per_epoch_with_elapsed_time_and_eta(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (96,), generator=g)
    config = TrainConfig(epochs=2, batch_size=48, precision="fp32")
    history = fit(build_model(config), x, y, config, val=(x[:32], y[:32]))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for epoch, (line, row) in enumerate(zip(lines, history), start=1):
        pattern = (rf"epoch {epoch}/2: +{50 * epoch}% {2 * epoch}/4 \[\d\d:\d\d<\d\d:\d\d, [^,]*step[^,]*, "
                   rf"loss={row['train_loss']:.3f}, acc={row['train_accuracy']:.3f}, val_acc={row['val_accuracy']:.3f}\]")
        assert re.fullmatch(pattern, line), line
    fit(build_model(config), x, y, config, progress=False)
    assert capsys.readouterr().out == ""


def test_kernel_without_ipywidgets_gets_lines(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(progress, "_in_notebook_kernel", lambda: True)
    monkeypatch.setattr(progress, "_widgets_available", lambda: False)
    assert progress.mode() == "lines"  # tqdm's widget bar would raise without ipywidgets


def _run_cells(sources: list[str], tmp_path):
    """Execute ``sources`` as a notebook's cells in a fresh kernel (nbclient, as JupyterLab would
    save it: a display that is updated keeps only its last content); return the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    from fmnist_utils import notebook

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    with notebook.kernel_config() as config:
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}},
                       config=config).execute()
    return nb


def test_widget_bar_leaves_its_last_meter_as_text_in_the_saved_notebook(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)  # the kernel decides, as in JupyterLab
    nb = _run_cells([
        "from fmnist_utils import progress\n"
        "assert progress.mode() == 'bar'\n"
        "b = progress.bar(4, unit='step')\n"
        "b.set_description('epoch 1/1')\n"
        "b.update(4)\n"
        "b.set_postfix(loss=0.5)\n"
        "b.close()\n"
        "b.close()  # a second close changes nothing",
    ], tmp_path)
    outputs = nb.cells[0].outputs
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    texts = [o["data"]["text/plain"] for o in outputs if o.output_type == "display_data"]
    assert len(texts) == 1, outputs
    assert re.fullmatch(r"epoch 1/1: 100% 4/4 \[\d\d:\d\d<\d\d:\d\d, [^,]*step[^,]*, loss=0\.5\]", texts[0]), texts
