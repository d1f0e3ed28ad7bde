"""A forecaster of values on channels-first series (B, 1, T) with a target per step (B, T): `causal` probes it as
(B, T, 1) and hands the model its own layout. It never ran on this layout (its test for a forecaster's history read
axis 1 as time), and target_leak warned on the history the inputs rightly hold."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
from recipe.diagnostics.causal import causal_over_time
from recipe.diagnostics.inputs import holds_targets_ahead
from recipe.diagnostics.target_leak import target_leak

T = 48


class Conv(nn.Module):
    """A 1-D convolution padded on the left only (causal) or on both sides (it reads ahead)."""

    def __init__(self, i: int, o: int, causal: bool):
        super().__init__()
        self.pad = (2, 0) if causal else (1, 1)
        self.conv = nn.Conv1d(i, o, 3)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


def forecaster(causal: bool) -> nn.Module:
    class Forecaster(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(Conv(1, 16, causal), nn.ReLU(), Conv(16, 16, causal), nn.ReLU())
            self.out = nn.Conv1d(16, 1, 1)

        def forward(self, x):
            return self.out(self.body(x))[:, 0]  # (B, T)

    return Forecaster()


def task(causal: bool = True) -> Task:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(4000, dtype=torch.float32)
    s = torch.sin(2 * math.pi * t / 50) + 0.3 * torch.randn(len(t), generator=g)
    starts = torch.arange(0, len(s) - T - 1, 4)
    x = torch.stack([s[i : i + T] for i in starts.tolist()])[:, None]  # (B, 1, T)
    y = torch.stack([s[i + 1 : i + T + 1] for i in starts.tolist()])  # (B, T): the next value at each step
    cut = int(0.8 * len(x))
    return Task((x[:cut], y[:cut]), (x[cut + 15 :], y[cut + 15 :]), lambda: forecaster(causal), loss="mse")


def test_channels_first_history_holds_the_targets_ahead():
    x, y = task().train.x[:8], task().train.y[:8]
    assert holds_targets_ahead(x, y) and holds_targets_ahead(x[:, 0], y) and holds_targets_ahead(x.transpose(1, 2), y)


@pytest.mark.parametrize(("causal", "status"), [(True, "pass"), (False, "fail")])
def test_causal_probes_a_channels_first_forecaster(causal, status):
    forecast = task(causal)
    x, y = forecast.train.x[:7], forecast.train.y[:7]
    check = causal_over_time(forecast.make_model(), forecast, x, y)
    assert check.status == status, check.message


def test_target_leak_leaves_a_channels_first_history_to_causal():
    check = target_leak(task())
    assert check.status == "skip" and "causal" in check.message
