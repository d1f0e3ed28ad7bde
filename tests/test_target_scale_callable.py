"""target_range under a callable loss that compares outputs with targets by their difference alone (unchanged when
both move by one constant: SmoothL1, Huber, a hand-written squared error): the outputs live on the targets' scale,
so an offset is judged as under MSE. Scores of 3..8 under nn.SmoothL1Loss passed unremarked while the linear
reference, its bias at 0, scored 4.88 against 0.13 with the bias at the mean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
from recipe.diagnostics.integrity import read_split
from recipe.diagnostics.targets import target_range


def scores(offset: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(500, 6, generator=g)
    return x, (offset + x[:, :2].sum(1, keepdim=True) * 0.4 + 0.3 * torch.randn(500, 1, generator=g))


def judge(loss, offset: float, width: int = 1) -> str:
    task = Task(scores(offset, 0), scores(offset, 1), lambda: nn.Linear(6, width), loss=loss, kind="regression")
    return target_range(read_split(task, "train", 1000, 0), read_split(task, "val", 1000, 1), task).status


@pytest.mark.parametrize("loss", [nn.SmoothL1Loss(), nn.HuberLoss(), lambda o, t: ((o - t) ** 2).mean()])
def test_an_offset_under_a_difference_loss_warns_and_its_standardised_twin_passes(loss):
    assert judge(loss, 5.6) == "warn"
    assert judge(loss, 0.0) == "pass"


def test_losses_on_another_scale_are_not_judged():
    poisson = nn.PoissonNLLLoss(log_input=True)  # outputs are log rates
    assert judge(poisson, 5.6) == "pass"
    gaussian = lambda o, t: F.gaussian_nll_loss(o[:, :1], t, o[:, 1:].exp())  # a mean and a log-variance
    assert judge(gaussian, 5.6, width=2) == "pass"
