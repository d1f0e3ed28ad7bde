"""loss_decreases, seed, activations, and where a non-finite value first appears."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe.diagnostics.activations import activation_stats, activations
from recipe.diagnostics.training import loss_decreases, seed_reproducible
from recipe.loss_log import first_non_finite_module, first_non_finite_parameter
from tests import tiny


@pytest.mark.parametrize(
    ("losses", "status", "words"),
    [
        ([2.3 - 0.01 * i for i in range(100)], "pass", "fell"),
        ([2.3 + 0.05 * i for i in range(100)], "fail", "rose"),  # lr too high / sign flipped
        ([2.3, 900.0, 40.0] + [2.0] * 97, "fail", "spiked"),  # diverged, then collapsed to a constant
        ([2.3 - 0.0005 * i for i in range(100)], "fail", "barely moved"),  # lr too low / no gradient
        ([2.3, 2.2], "warn", "too few"),
    ],
)
def test_loss_decreases(losses, status, words):
    check = loss_decreases(losses, lr=1e-3)
    assert check.status == status and words in check.message


def test_seed_reproducible():
    assert seed_reproducible([1.0, 0.9, 0.8], [1.0, 0.9, 0.8], seed=0).status == "pass"
    check = seed_reproducible([1.0, 0.9, 0.8], [1.0, 0.91, 0.8], seed=0)
    assert check.status == "warn" and check.value["first_difference_step"] == 1


class Tanh(nn.Module):
    def __init__(self, gain: float):
        super().__init__()
        self.l1, self.act, self.head = nn.Linear(tiny.FEATURES, 32), nn.Tanh(), nn.Linear(32, tiny.CLASSES)
        with torch.no_grad():
            self.l1.weight.mul_(gain)

    def forward(self, x):
        return self.head(self.act(self.l1(x)))


class DeadReLU(tiny.MLP):
    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.l1.bias.fill_(-100.0)  # every unit negative before the (functional) ReLU


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        (tiny.MLP, "pass", "no dead"),
        (lambda: Tanh(1.0), "pass", "no dead"),
        (lambda: Tanh(200.0), "warn", "saturated"),
        (DeadReLU, "warn", "dead"),
    ],
)
def test_activations(model, status, words):
    task = tiny.classification(model)
    torch.manual_seed(0)
    inputs, _ = task.split_batch(task.sample_batch("train", 64, seed=0))
    check = activations(activation_stats(task.make_model(), task, inputs))
    assert check.status == status, check.message
    assert words in check.message


def test_activation_stats_follow_call_order_and_units():
    task = tiny.classification()
    inputs, _ = task.split_batch(task.sample_batch("train", 16, seed=0))
    stats = activation_stats(task.make_model(), task, inputs)
    assert [r["layer"] for r in stats] == ["l1", "l2", "head"]
    assert [r["units"] for r in stats] == [32, 32, tiny.CLASSES]


class LogOfRelu(tiny.MLP):
    def forward(self, x):
        return self.head(torch.log(F.relu(self.l1(x))))  # log(0) = -inf


def test_non_finite_is_located():
    task = tiny.classification(LogOfRelu)
    model = task.make_model()
    batch = task.sample_batch("train", 16, seed=0)
    assert first_non_finite_module(model, task, batch) == "head (Linear)"  # the consumer of the functional log
    assert first_non_finite_parameter(model) is None
    with torch.no_grad():
        model.l2.weight[0, 0] = float("nan")
    assert first_non_finite_parameter(model) == "l2.weight"
