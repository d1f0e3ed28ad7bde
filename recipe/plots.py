"""One function per figure, each returning a matplotlib Figure drawn in the library's one style (Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from recipe.plot_style import COLORS, STYLE, log_scale  # recipe.plot_style selects the Agg backend


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
            log_scale(ax, "y")
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
        log_scale(ax, "x")
        ax.set(title="Learning-rate range test", xlabel="learning rate", ylabel="training loss")
        ax.legend(frameon=False, fontsize=8)
    return fig


def _tile(x: np.ndarray, columns: int, band: int) -> np.ndarray:
    """Images (N, C, H, W), each min-max scaled, tiled into one picture, with a blank band above each row for
    the labels and a 1-px gap between columns."""
    n, c, h, w = x.shape
    rows = math.ceil(n / columns)
    low = x.reshape(n, -1).min(1)[:, None, None, None]
    high = x.reshape(n, -1).max(1)[:, None, None, None]
    x = (x - low) / (high - low + 1e-12)
    canvas = np.ones((rows * (h + band), columns * (w + 1) + 1, c), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, columns)
        top, left = r * (h + band) + band, 1 + k * (w + 1)
        canvas[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    return canvas


def image_grid(images: Any, labels: Sequence[str], title: str, columns: int = 8) -> Figure:
    """A grid of images (N, C, H, W) or (N, H, W), each labelled; per-image min-max scaling. When every row's
    images share one label (a row per class), it is written once, left of the row.

    Drawn as one picture on one axes: a subplot per image takes seconds to lay out for a few dozen images.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1]
    n, _, h, w = x.shape
    columns = max(1, min(columns, n))
    band = max(2, round(0.3 * h))
    canvas = _tile(x, columns, band)
    width = columns * 1.15 + 0.3
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(width, width * canvas.shape[0] / canvas.shape[1] + 0.5))
        ax.imshow(canvas if canvas.shape[2] == 3 else canvas[:, :, 0], cmap="gray", interpolation="nearest")
        ax.axis("off")
        rows = [list(labels[i : min(i + columns, n)]) for i in range(0, min(len(labels), n), columns)]
        if len(rows) > 1 and all(len(set(row)) == 1 for row in rows):
            for r, row in enumerate(rows):
                ax.text(-1, r * (h + band) + band + h / 2, row[0], ha="right", va="center", fontsize=8)
        else:
            for i, label in enumerate(labels[:n]):
                r, k = divmod(i, columns)
                x_mid, y_top = 1 + k * (w + 1) + w / 2, r * (h + band) + band - 0.4
                ax.text(x_mid, y_top, label, ha="center", va="bottom", fontsize=6.5)
        ax.set_title(title)
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
        colors = [COLORS[i % len(COLORS)] for i in range(len(names))]
        ax.barh(names, values, xerr=errors, color=colors, alpha=0.85, capsize=3)
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
        log_scale(top, "y")
        top.set(title="Activations by layer", ylabel="output std")
        top.legend(frameon=False)
        bottom.set(ylabel="dead / saturated units", ylim=(0, 1))
        bottom.set_xticks(np.arange(len(stats_init)))
        bottom.set_xticklabels([f"{r['layer']}\n{r['type']}" for r in stats_init], rotation=60, fontsize=7, ha="right")
    return fig


def class_histogram(counts: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Share of each class per split, side by side (a split cut from sorted data shows at a glance)."""
    names = list(counts)
    classes = len(next(iter(counts.values())))
    width = 0.8 / len(names)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * classes + 2), 3.6))
        for i, name in enumerate(names):
            c = np.asarray(counts[name], dtype=np.float64)
            share = c / max(c.sum(), 1)
            ax.bar(
                np.arange(classes) + (i - (len(names) - 1) / 2) * width,
                share,
                width,
                label=f"{name} (n={int(c.sum())})",
            )
        ax.set(title=title, xlabel="class", ylabel="share of the split")
        if classes <= 40:
            ax.set_xticks(np.arange(classes))
        ax.legend(frameon=False)
    return fig


def feature_ranges(stats: Mapping[str, Sequence[float]], title: str, unit: str = "feature") -> Figure:
    """Per-feature mean ± std with min and max: the scale the network will see, feature by feature."""
    mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
    x = np.arange(len(mean))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(6.4, min(0.08 * len(mean) + 3, 14)), 3.6))
        ax.fill_between(x, stats["min"], stats["max"], step="mid", alpha=0.15, color=COLORS[0], label="min..max")
        ax.errorbar(x, mean, yerr=std, fmt="o", markersize=2.5, linewidth=0.8, color=COLORS[0], label="mean ± std")
        for y in (-1, 1):
            ax.axhline(y, linestyle=":", linewidth=0.8, color=COLORS[6])
        ax.set(title=title, xlabel=unit, ylabel="value as the model sees it")
        ax.legend(frameon=False, loc="upper right")
    return fig


def feature_histograms(
    train: Any, val: Any, features: Sequence[int], title: str, target: tuple[Any, Any] | None = None
) -> Figure:
    """Small multiples: each feature's distribution in training and validation (and the target's, if given)."""
    panels = [(f"feature {i}", np.asarray(train[:, i]), np.asarray(val[:, i])) for i in features]
    if target is not None:
        panels.append(("target", np.asarray(target[0]).reshape(-1), np.asarray(target[1]).reshape(-1)))
    columns = min(4, len(panels))
    rows = math.ceil(len(panels) / columns)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns + 0.6, 1.8 * rows + 0.6), squeeze=False)
        for ax, (name, a, b) in zip(axes.flat, panels, strict=False):
            bins = np.histogram_bin_edges(np.concatenate([a, b]), bins=30)
            ax.hist(a, bins=bins, density=True, alpha=0.55, label="train", histtype="stepfilled")
            ax.hist(b, bins=bins, density=True, alpha=0.55, label="val", histtype="stepfilled")
            ax.set_title(name, fontsize=8, fontweight="normal")
            ax.tick_params(labelsize=6)
            ax.set_yticks([])  # a density's scale says nothing here: the two shapes are what to compare
            ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        axes.flat[0].legend(frameon=False, fontsize=7)
        fig.suptitle(title, fontsize=10, fontweight="bold")
        # fixed spacing for the fixed fonts above: a layout engine would lay every tick label out once more
        fig.subplots_adjust(
            left=0.03,
            right=0.97,
            bottom=0.6 / fig.get_figheight(),
            top=1 - 0.55 / fig.get_figheight(),
            wspace=0.08,
            hspace=0.6,
        )
    return fig


def histogram(values: Any, title: str, xlabel: str, marks: Mapping[str, float] | None = None) -> Figure:
    """A histogram of one per-sample statistic, with labelled vertical marks (thresholds, medians)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.hist(np.asarray(values, dtype=np.float64), bins=60, color=COLORS[0], alpha=0.8, histtype="stepfilled")
        for i, (name, x) in enumerate((marks or {}).items()):
            ax.axvline(x, linestyle="--", linewidth=1, color=COLORS[(i + 1) % len(COLORS)], label=name)
        ax.set(title=title, xlabel=xlabel, ylabel="samples")
        log_scale(ax, "y")
        if marks:
            ax.legend(frameon=False)
    return fig


def train_val_gap(rows: Sequence[tuple[str, float, float, bool]], title: str) -> Figure:
    """Per run (label, train loss, validation loss, kept): the two losses joined by a line, the gap; kept runs bold."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(rows) + 1.4))
        y = np.arange(len(rows))
        for i, (_, train, val, kept) in enumerate(rows):
            ax.plot([train, val], [i, i], color=COLORS[2] if kept else COLORS[6], linewidth=2.5 if kept else 1.2)
        ax.scatter([r[1] for r in rows], y, color=COLORS[0], zorder=3, s=18, label="train (eval mode)")
        ax.scatter([r[2] for r in rows], y, color=COLORS[1], zorder=3, s=18, label="validation")
        ax.set_yticks(y)
        ax.set_yticklabels([f"{r[0]}{'  (kept)' if r[3] else ''}" for r in rows], fontsize=7.5)
        ax.invert_yaxis()
        ax.set(title=title, xlabel="loss (the line is the train/validation gap)")
        ax.legend(frameon=False, fontsize=8)
    return fig


def learning_curve(
    sizes: Sequence[int], train: Sequence[float], val: Sequence[float], val_se: Sequence[float], title: str
) -> Figure:
    """Training and validation loss against the number of training samples (log x), validation with ± 1 SE."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.plot(sizes, train, marker="o", markersize=4, label="train (eval mode)")
        ax.errorbar(sizes, val, yerr=val_se, marker="o", markersize=4, capsize=3, label="validation ± SE")
        log_scale(ax, "x")
        ax.minorticks_off()
        ax.set_xticks(list(sizes), [str(n) for n in sizes])
        ax.set(title=title, xlabel="training samples", ylabel="loss")
        ax.legend(frameon=False)
    return fig


def search_axes(axes: Mapping[str, tuple[Sequence[float], bool]], values: Sequence[float]) -> Figure:
    """The playbook's axis plots: validation loss against each searched hyperparameter, one point per trial,
    the best trial marked."""
    names = list(axes)
    columns = min(3, max(1, len(names)))
    rows = math.ceil(max(1, len(names)) / columns)
    best = int(np.argmin(values)) if len(values) else 0
    with plt.rc_context(STYLE):
        fig, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
        for ax, name in zip(grid.flat, names, strict=False):
            xs, log = axes[name]
            ax.scatter(xs, values, s=14, alpha=0.8, color=COLORS[0])
            ax.scatter([xs[best]], [values[best]], s=40, marker="*", color=COLORS[1], label="best")
            if log:
                log_scale(ax, "x")
            ax.set(xlabel=name, ylabel="validation loss")
        for ax in list(grid.flat)[len(names) :]:
            ax.axis("off")
        fig.suptitle("Validation loss by hyperparameter (one point per trial)", fontsize=10, fontweight="bold")
        fig.tight_layout()
    return fig


def best_so_far(values: Sequence[float]) -> Figure:
    """Each trial's validation loss in the order the trials were created, and the best so far."""
    running = np.minimum.accumulate(np.asarray(values, dtype=np.float64))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.scatter(np.arange(len(values)), values, s=12, alpha=0.7, label="trial")
        ax.step(np.arange(len(values)), running, where="post", color=COLORS[1], label="best so far")
        ax.set(title="Search progress", xlabel="trial", ylabel="validation loss")
        ax.legend(frameon=False)
    return fig


def isolation(panels: Mapping[str, Mapping[str, Any]]) -> Figure:
    """The playbook's isolation plots, one panel per hyperparameter: at each value (a choice, a studied level or a
    bin of the range) the best validation loss any trial there reached (the other hyperparameters optimised away),
    with that trial's standard error as an error bar. A panel holds `values`, `best`, `se`, `log` (numeric on a log
    axis) and `categorical`."""
    names = list(panels)
    columns = min(3, max(1, len(names)))
    rows = math.ceil(max(1, len(names)) / columns)
    with plt.rc_context(STYLE):
        fig, grid = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
        for ax, name in zip(grid.flat, names, strict=False):
            panel = panels[name]
            xs = [str(v) for v in panel["values"]] if panel["categorical"] else list(panel["values"])
            ax.errorbar(xs, panel["best"], yerr=panel["se"], marker="o", markersize=4, capsize=3, color=COLORS[0],
                        linestyle="none" if panel["categorical"] else "-")  # fmt: skip
            if panel["categorical"]:
                ax.margins(x=0.25)
            if panel.get("log"):
                log_scale(ax, "x")
                ax.xaxis.set_minor_formatter(plt.NullFormatter())  # a short range would label its minor ticks
            ax.set(xlabel=name + (" (under study)" if panel.get("studied") else ""), ylabel="best validation loss")
        for ax in list(grid.flat)[len(names) :]:
            ax.axis("off")
        fig.suptitle("Isolation: best validation loss per value (± standard error)", fontsize=10, fontweight="bold")
        fig.tight_layout()
    return fig


def batch_size_throughput(curve: Mapping[int, float], chosen: int, out_of_memory: Sequence[int] = ()) -> Figure:
    """Training examples/s per batch size (log2 x), against perfect scaling from the smallest size; the size chosen
    and the sizes that ran out of memory marked."""
    sizes = sorted(curve)
    values = [curve[b] for b in sizes]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        ax.plot(sizes, values, marker="o", markersize=4, linewidth=1.4, label="measured")
        ax.plot(
            sizes, [values[0] * b / sizes[0] for b in sizes], linestyle="--", color=COLORS[6], linewidth=1,
            label="perfect scaling",
        )  # fmt: skip
        ax.axvline(chosen, color=COLORS[2], linewidth=1.5, label=f"chosen {chosen}")
        for i, b in enumerate(sorted(set(out_of_memory))):
            ax.axvline(b, color=COLORS[1], linestyle=":", linewidth=1.2, label="out of memory" if i == 0 else None)
        log_scale(ax, "x", base=2)
        log_scale(ax, "y")
        ax.set_ylim(min(values) / 1.5, max(values) * 1.5)
        ax.set(title="Throughput per batch size", xlabel="batch size", ylabel="training examples / s")
        ax.legend(frameon=False, fontsize=8)
    return fig
