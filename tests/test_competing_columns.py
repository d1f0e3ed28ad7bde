"""target_range under a callable loss: several labels per row under a softmax across the row (nn.CrossEntropyLoss on
multi-hot targets) make independent labels compete; nothing flagged it (every loss-specific check skips a callable
loss). The loss is read by its invariance: unchanged by a constant added to a whole row of outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
from recipe.diagnostics.integrity import read_split
from recipe.diagnostics.targets import target_range


def _labels(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return x, (x[:, :4] > 0.3).float()  # four independent labels: rows hold 0 to 4 ones


def _soft(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, _ = _labels(n, seed)
    return x, torch.softmax(2 * x[:, :4], 1)  # a teacher's probabilities: rows sum to 1


def _judge(data, loss) -> str:
    task = Task(data(400, 0), data(100, 1), lambda: nn.Linear(16, 4), loss=loss, kind="regression")
    check = target_range(read_split(task, "train", 1000, 0), read_split(task, "val", 1000, 1), task)
    return check.status + ": " + check.message


def test_multi_hot_targets_under_a_softmax_warn_and_under_a_sigmoid_pass():
    verdict = _judge(_labels, nn.CrossEntropyLoss())
    assert verdict.startswith("warn") and "bce_with_logits" in verdict and "do not sum to 1" in verdict
    assert _judge(_labels, nn.BCEWithLogitsLoss()).startswith("pass")


@pytest.mark.parametrize(
    "loss",
    [
        nn.CrossEntropyLoss(),
        lambda output, target: F.kl_div(F.log_softmax(output, 1), target, reduction="batchmean"),
    ],
    ids=["soft-cross-entropy", "kl-distillation"],
)
def test_targets_that_are_one_distribution_per_row_pass(loss):
    assert _judge(_soft, loss).startswith("pass")


def test_a_loss_that_ignores_its_outputs_or_wants_another_shape_is_not_judged():
    assert _judge(_labels, lambda output, target: (output * 0).sum() + 1.0).startswith("pass")
    assert _judge(_labels, lambda output, target: F.cross_entropy(output[:, :3], target)).startswith("pass")
