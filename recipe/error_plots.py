"""The figures of a model's mistakes (`prediction_errors`): a confusion matrix, residuals against the target. Drawn
in `recipe.plot_style`."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from recipe.plot_style import COLORS, STYLE  # recipe.plot_style selects the Agg backend


def confusion_matrix(counts: Any, title: str) -> Figure:
    """Given class (rows) against predicted class (columns), each row as shares of the class; counts written in."""
    c = np.asarray(counts, dtype=np.float64)
    share = c / np.maximum(c.sum(1, keepdims=True), 1)
    k = len(c)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(min(0.45 * k + 2.2, 12), min(0.4 * k + 1.6, 11)))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, label="share of the given class")
        if k <= 20:
            for i, j in zip(*np.nonzero(c), strict=True):
                color = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(int(c[i, j])), ha="center", va="center", fontsize=7, color=color)
            ax.set_xticks(np.arange(k))
            ax.set_yticks(np.arange(k))
        ax.grid(False)
        ax.set(title=title, xlabel="predicted class", ylabel="given class")
    return fig


def residuals(target: Any, residual: Any, title: str) -> Figure:
    """A regression's residual (prediction - target) against the target, with the zero line."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.scatter(np.asarray(target), np.asarray(residual), s=6, alpha=0.5, color=COLORS[0])
        ax.axhline(0, linestyle="--", linewidth=1, color=COLORS[6])
        ax.set(title=title, xlabel="target", ylabel="prediction - target")
    return fig
