"""One function per figure, each returning a matplotlib Figure drawn in the library's one style (Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from cycler import cycler

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

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


def _figure(**kwargs: Any) -> tuple[Figure, Any]:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(**kwargs)
    return fig, ax


def loss_curves(
    series: Mapping[str, Sequence[float]],
    title: str,
    ylabel: str = "training loss",
    xlabel: str = "optimizer step",
    logy: bool = False,
    hlines: dict[str, float] | None = None,
) -> Figure:
    """Loss per step for one or more runs; optional horizontal reference lines (baselines)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        for name, values in series.items():
            ax.plot(np.arange(len(values)), values, label=name, linewidth=1.2)
        for i, (name, y) in enumerate((hlines or {}).items()):
            if y is not None and math.isfinite(y):
                ax.axhline(y, linestyle="--", linewidth=1, color=COLORS[(i + 3) % len(COLORS)], label=name)
        if logy and all(v > 0 for vs in series.values() for v in vs if math.isfinite(v)):
            ax.set_yscale("log")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.legend(frameon=False)
    return fig


def lr_range(
    lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], suggestion: dict[str, Any]
) -> Figure:
    """Loss against learning rate (log x): raw and smoothed curves, burn-in and divergence shaded, the suggestion."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        n = len(smoothed)
        ax.plot(lrs[: len(losses)], losses, color=COLORS[6], alpha=0.4, linewidth=0.8, label="loss")
        ax.plot(lrs[:n], smoothed, color=COLORS[0], linewidth=1.6, label="smoothed")
        burn, used = suggestion.get("burn_in_steps", 0), suggestion.get("used_steps", n)
        if burn:
            ax.axvspan(lrs[0], lrs[min(burn, len(lrs) - 1)], color=COLORS[6], alpha=0.08, label="burn-in (ignored)")
        if used < len(lrs) - 1:
            ax.axvspan(lrs[used], lrs[-1], color=COLORS[1], alpha=0.08, label="diverged (ignored)")
        if suggestion.get("lr"):
            ax.axvline(suggestion["lr"], color=COLORS[2], linewidth=1.5, label=f"suggested {suggestion['lr']:.2g}")
        finite = [v for v in smoothed[burn:used] if math.isfinite(v)]
        if finite:
            top = max(smoothed[burn] if burn < n else finite[0], min(finite)) * 1.5
            ax.set_ylim(min(finite) - 0.05 * abs(top - min(finite)), top)
        ax.set_xscale("log")
        ax.set(title="Learning-rate range test", xlabel="learning rate", ylabel="training loss")
        ax.legend(frameon=False, fontsize=8)
    return fig


def image_grid(images: Any, labels: Sequence[str], title: str, columns: int = 8) -> Figure:
    """A grid of images (N, C, H, W) or (N, H, W), each titled with its label; per-image min-max scaling."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    n = len(x)
    rows = math.ceil(n / columns)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25 + 0.4), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i >= n:
                continue
            img = x[i]
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
            if img.shape[0] == 3:
                ax.imshow(np.transpose(img, (1, 2, 0)))
            else:
                ax.imshow(img[0], cmap="gray")
            ax.set_title(labels[i] if i < len(labels) else "", fontsize=7, fontweight="normal")
        fig.suptitle(title, fontsize=10, fontweight="bold")
    return fig


def prediction_dynamics(steps: Sequence[int], values: Any, title: str, ylabel: str) -> Figure:
    """Heat map of a per-sample quantity (rows: fixed validation samples) across training steps."""
    v = np.asarray(values, dtype=np.float32).T  # (samples, checkpoints)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        im = ax.imshow(
            v,
            aspect="auto",
            cmap="viridis",
            interpolation="nearest",
            extent=(steps[0] - 0.5, steps[-1] + 0.5, v.shape[0] - 0.5, -0.5),
        )
        fig.colorbar(im, ax=ax, label=ylabel)
        ax.grid(False)
        ax.set(title=title, xlabel="optimizer step", ylabel="validation sample")
    return fig


def baselines(entries: dict[str, tuple[float, float | None]], title: str, xlabel: str) -> Figure:
    """Horizontal bars with standard-error whiskers: the model beside its baselines."""
    names = list(entries)
    values = [entries[k][0] for k in names]
    errors = [entries[k][1] or 0.0 for k in names]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(names) + 1.2))
        ax.barh(
            names,
            values,
            xerr=errors,
            color=[COLORS[i % len(COLORS)] for i in range(len(names))],
            alpha=0.85,
            capsize=3,
        )
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:.4g}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set(title=title, xlabel=xlabel)
    return fig


def activations(stats_init: list[dict[str, Any]], stats_trained: list[dict[str, Any]] | None) -> Figure:
    """Activation std per layer (at init and after training) and the share of dead or saturated units."""
    with plt.rc_context(STYLE):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
        for label, stats, color in (("at init", stats_init, COLORS[0]), ("after training", stats_trained, COLORS[1])):
            if not stats:
                continue
            x = np.arange(len(stats))
            top.plot(x, [max(r["std"], 1e-12) for r in stats], marker="o", markersize=3, label=label, color=color)
            bad = [max(r.get("dead", 0.0), r.get("dead_inputs", 0.0), r.get("saturated", 0.0)) for r in stats]
            bottom.bar(x + (0.2 if label == "after training" else -0.2), bad, width=0.4, label=label, color=color)
        top.set_yscale("log")
        top.set(title="Activations by layer", ylabel="output std")
        top.legend(frameon=False)
        bottom.set(ylabel="dead / saturated units", ylim=(0, 1))
        bottom.set_xticks(np.arange(len(stats_init)))
        bottom.set_xticklabels([f"{r['layer']}\n{r['type']}" for r in stats_init], rotation=60, fontsize=7, ha="right")
    return fig
