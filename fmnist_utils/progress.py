"""The kit's one progress display: a tqdm bar, drawn where the person running it looks.

- In JupyterLab (an IPython kernel with ipywidgets): tqdm's widget bar, replaced when it closes by
  its last meter as a plain text line (:func:`meter_line`). The saved notebook then holds text where
  the bar was: a widget's output needs its live model, and a notebook reopened later shows
  "Error displaying widget: model not found" in its place. A kernel without ipywidgets gets lines.
- On a terminal: tqdm's text bar, redrawn in place on stderr.
- Anywhere else (a log file, CI, a notebook run by ``make report``): one plain line on stdout each
  time the caller refreshes the bar (``set_postfix`` and ``refresh`` do; ``update`` does not),
  which is once per epoch in :func:`fmnist_utils.train.fit`. The line is tqdm's meter, so it
  carries the elapsed time and the ETA. ``make report`` streams these lines from the notebook.

The mode is chosen once per bar by :func:`mode`: ``FMNIST_PROGRESS`` (``lines`` | ``bar`` |
``off``) wins, else a notebook kernel gets the widget, a terminal the text bar, and the rest lines.
The report's runner sets ``FMNIST_PROGRESS=lines`` for the kernels it starts.
"""

from __future__ import annotations

import math
import sys

from . import env

ENV = "FMNIST_PROGRESS"
MODES = ("lines", "bar", "off")
# A line: "epoch 2/4: 50% 212/424 [00:20<00:20, 10.5step/s, loss=0.612, acc=0.781]" (elapsed<ETA).
LINE_FORMAT = "{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def _in_notebook_kernel() -> bool:
    return "ipykernel" in sys.modules and "IPython" in sys.modules


def _widgets_available() -> bool:
    # tqdm's widget bar needs ipywidgets: without it tqdm.notebook raises at the bar's creation.
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def mode(enabled: bool | None = None) -> str:
    """Return how a bar is shown: ``off``, ``bar`` (widget or terminal bar) or ``lines``.

    ``enabled=False`` is always ``off``; otherwise :data:`ENV` decides when set, then the place:
    a notebook kernel with ipywidgets or a terminal get ``bar``, anything else ``lines``.
    """
    if enabled is False:
        return "off"
    chosen = env.env(ENV)
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"{ENV}={chosen!r}; set it to one of {MODES} or unset it")
        return chosen
    if _in_notebook_kernel():
        return "bar" if _widgets_available() else "lines"
    if sys.stderr.isatty():
        return "bar"
    return "lines"


def meter_line(bar) -> str:
    """Return ``bar``'s meter as one plain line in :data:`LINE_FORMAT` (what ``lines`` mode prints)."""
    return bar.format_meter(**{**bar.format_dict, "bar_format": LINE_FORMAT}).strip()


_WIDGET_BAR = None


def _widget_bar_class():
    """Return (built once, on first use: importing this module imports no widget code) tqdm's
    notebook bar, made to leave its last meter as text in its output when it closes."""
    global _WIDGET_BAR
    if _WIDGET_BAR is None:
        from IPython.display import display
        from tqdm.notebook import tqdm as notebook_tqdm

        class TextLeavingBar(notebook_tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, display=False, **kwargs)
                # Shown under a display id, so that close() can replace this very output.
                self._handle = None if self.disable else display(self.container, display_id=True)
                self.displayed = True

            def close(self):
                if self.disable:  # closed already (tqdm closes again when collected)
                    return
                super().close()
                if self._handle is not None:
                    self._handle.update({"text/plain": meter_line(self)}, raw=True)

        _WIDGET_BAR = TextLeavingBar
    return _WIDGET_BAR


class _LineWriter:
    """A file for tqdm that turns each redraw (``\\r<meter>``) into one line on stdout."""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            print(line, file=sys.stdout, flush=True)

    def flush(self) -> None:
        pass


def bar(total: int | None, *, desc: str | None = None, unit: str = "it", enabled: bool | None = None,
        initial: int = 0):
    """Return a tqdm bar over ``total`` ``unit``\\ s, shown as :func:`mode` decides.

    ``enabled``: True/None show it (None: as :func:`mode` finds best), False hides it.
    ``initial``: work already done before this call (counted, but not in the rate or the ETA).
    Use it as tqdm: ``update(n)`` as work is done, ``set_postfix(...)`` when a line is worth
    printing (end of an epoch, a finished unit), ``close()`` at the end.
    """
    how = mode(enabled)
    if how == "bar" and _in_notebook_kernel() and _widgets_available():
        return _widget_bar_class()(total=total, desc=desc, unit=unit, leave=False, initial=initial)
    if how == "bar":
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, initial=initial)
    from tqdm.std import tqdm

    if how == "off":
        return tqdm(total=total, desc=desc, unit=unit, disable=True, initial=initial)
    # Never redrawn by time (mininterval) and not shown at 0 (delay): only on the caller's refresh.
    # set_description appends ": " to a description; one given here gets the same, so lines agree.
    return tqdm(total=total, desc=None if desc is None else f"{desc}: ", unit=unit, file=_LineWriter(), initial=initial,
                mininterval=math.inf, delay=math.inf, leave=False, bar_format=LINE_FORMAT)
