"""The library's one figure style: the Agg backend, rc settings and colours, and log axes labelled in plain text
(no mathtext) with minor ticks only where they are the labels. `recipe.plots` and `recipe.error_plots` draw in it."""

from __future__ import annotations

import re
from typing import Any

import matplotlib
from cycler import cycler

matplotlib.use("Agg")
import numpy as np
from matplotlib import ticker
from matplotlib.axes import Axes

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#7f7f7f"]
STYLE: Any = {
    "figure.figsize": (6.4, 3.8),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.prop_cycle": cycler(color=COLORS),
    "figure.dpi": 110,
    "savefig.bbox": "tight",
}


_SUPERSCRIPT = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")


class PlainLogFormatter(ticker.LogFormatterSciNotation):
    """matplotlib's log-axis tick labels (10^-3, 2x10^-1) in plain text with Unicode superscripts (10⁻³): its own
    are mathtext, whose parser is rebuilt for every saved figure, a quarter of a log-axis figure's cost."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)
        inner = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", label)
        if inner is None:
            return label
        text = re.sub(r"\^\{(-?\d+)\}", lambda m: m.group(1).translate(_SUPERSCRIPT), inner.group(1))
        return text.replace("\\times", "\u00d7").replace("-", "\u2212")


class NarrowLogMinorLocator(ticker.LogLocator):
    """Minor ticks (2, 3, ... 9 times a power) only on a log axis narrower than two decades, where they carry the
    labels; across more, the labelled decades suffice, and the minor ticks a wide axis would get are a third of a
    log-axis figure's drawing time (each tick is five artists, laid out twice for the tight bounding box)."""

    def __init__(self, base: float = 10):
        super().__init__(base, subs="auto")
        self.decade = float(base)

    def tick_values(self, vmin: float, vmax: float) -> Any:
        low, high = sorted((vmin, vmax))
        if low > 0 and high / low >= self.decade**2:
            return np.array([])
        return super().tick_values(vmin, vmax)


def log_scale(ax: Axes, which: str, base: float = 10) -> None:
    """Put `ax`'s "x" or "y" axis on a log scale labelled by `PlainLogFormatter`, with minor ticks only where
    the axis spans less than two decades (`NarrowLogMinorLocator`)."""
    getattr(ax, f"set_{which}scale")("log", base=base)
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(PlainLogFormatter(base))
    axis.set_minor_locator(NarrowLogMinorLocator(base))
    axis.set_minor_formatter(PlainLogFormatter(base, labelOnlyBase=False))
