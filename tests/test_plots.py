"""plot_style and plots: log axes are labelled in plain text (no mathtext), with the values matplotlib's own labels
name, and carry minor ticks only where they are the labels; an image grid writes a row's shared label once."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pytest
import torch

from recipe import plot_style, plots


@pytest.mark.parametrize(
    ("value", "label"),
    [(1e-3, "10\u207b\u00b3"), (1.0, "10\u2070"), (100.0, "10\u00b2"), (0.2, "2\u00d710\u207b\u00b9")],
)
def test_log_labels_are_plain_text_with_superscripts(value, label):
    formatter = plot_style.PlainLogFormatter(10, labelOnlyBase=False)
    assert formatter(value) == label


def test_a_log_axis_figure_draws_without_mathtext(monkeypatch):
    """matplotlib's mathtext parser is rebuilt for every saved figure: a log axis must not need it."""
    from matplotlib import mathtext

    def refuse(*args, **kwargs):
        raise AssertionError("mathtext parsed a tick label")

    monkeypatch.setattr(mathtext.MathTextParser, "parse", refuse)
    fig = plots.lr_range([1e-6, 1e-4, 1e-2, 1.0], [2.3, 2.2, 1.0, 9.0], [2.3, 2.2, 1.0, 9.0], {"lr": 1e-3})
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)
    assert any("\u207b" in text for text in labels)  # the decades are labelled, in superscripts


def test_minor_ticks_only_on_log_axes_narrower_than_two_decades():
    """Across many decades the labelled powers suffice and minor ticks cost a third of the figure; across less than
    two, the minor ticks carry the only labels between the powers."""
    locator = plot_style.NarrowLogMinorLocator()
    assert len(locator.tick_values(0.15, 3.0)) > 0
    assert len(locator.tick_values(1e-7, 10.0)) == 0
    wide = plots.lr_range([1e-7, 1e-4, 1e-2, 10.0], [2.3, 2.2, 1.0, 9.0], [2.3, 2.2, 1.0, 9.0], {"lr": 1e-3})
    narrow, ax = plt.subplots()
    ax.plot([0, 1], [0.2, 3.0])
    plot_style.log_scale(ax, "y")
    for fig in (wide, narrow):
        fig.savefig(io.BytesIO(), format="png")
    assert wide.axes[0].xaxis.get_minorticklocs().size == 0
    assert narrow.axes[0].yaxis.get_minorticklocs().size > 0
    plt.close(wide)
    plt.close(narrow)


def test_an_image_grid_with_one_label_per_row_writes_it_once():
    images = torch.rand(12, 1, 8, 8)
    per_row = plots.image_grid(images, [f"class {i // 4}" for i in range(12)], "rows", columns=4)
    mixed = plots.image_grid(images, [str(i % 3) for i in range(12)], "mixed", columns=4)
    assert [t.get_text() for t in per_row.axes[0].texts] == ["class 0", "class 1", "class 2"]
    assert len(mixed.axes[0].texts) == 12
    plt.close(per_row)
    plt.close(mixed)
