"""Class targets per position (B, T) beside float inputs with a T axis (a 1-D segmenter: (B, C, T) in, (B, C, T)
logits out): target_leak scans each (sample, position) as a row of the input's channels there. It raised before
(its scan assumed one class per sample)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe import Task
from recipe.diagnostics.target_leak import target_leak

T, CLASSES = 64, 3


def segments(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Signals of T steps cut into runs of a class each; the class sets the noisy signal's level."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n, T // 8), generator=g).repeat_interleave(8, dim=1)
    x = labels.float() + 0.8 * torch.randn(n, T, generator=g)
    return x.unsqueeze(1), labels  # (n, 1, T), (n, T)


def segmenter(channels: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv1d(channels, 16, 5, padding=2), nn.ReLU(), nn.Conv1d(16, CLASSES, 5, padding=2))


def task(layout: str = "channels_first", leak: bool = False, ignored: bool = False) -> Task:
    (x, y), (xv, yv) = segments(400, 0), segments(100, 1)
    if leak:  # a second channel holding the label at each position
        x, xv = torch.cat([x, y[:, None].float()], 1), torch.cat([xv, yv[:, None].float()], 1)
    if ignored:  # the last eight positions are padding, their targets ignored
        y, yv = y.clone(), yv.clone()
        y[:, -8:], yv[:, -8:] = -100, -100
    if layout == "channels_last":
        x, xv = x.transpose(1, 2), xv.transpose(1, 2)
    return Task((x, y), (xv, yv), lambda: segmenter(x.shape[1]), loss="cross_entropy", kind="classification")


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_a_label_channel_fails_and_its_twin_passes(layout):
    leaked = target_leak(task(layout, leak=True))
    assert leaked.status == "fail" and "input channel 1 at each position is the target itself" in leaked.message
    clean = target_leak(task(layout))
    assert clean.status == "pass" and clean.value["best_single_feature_accuracy"] < 0.9


def test_ignored_positions_are_left_out():
    assert target_leak(task(ignored=True)).status == "pass"
    assert target_leak(task(ignored=True, leak=True)).status == "fail"


def test_inputs_without_one_axis_of_t_positions_skip():
    (x, y), (xv, yv) = segments(200, 0), segments(50, 1)
    square = Task(
        (x.expand(-1, T, -1).contiguous(), y), (xv.expand(-1, T, -1).contiguous(), yv),
        lambda: segmenter(T), loss="cross_entropy", kind="classification",
    )  # fmt: skip
    check = target_leak(square)
    assert check.status == "skip" and "cannot be told" in check.message
