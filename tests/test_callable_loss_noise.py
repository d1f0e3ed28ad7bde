"""A callable loss has no per-sample form, so its evaluation carried no standard error and every comparison of two
runs was decided on a noise of zero ("kept cosine, gain 0.0555 ± 0"; a capacity or regularisation verdict on any
difference at all). Its noise is now read from the loss on runs of 32 samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
from recipe.diagnostics.curves import paired_difference
from recipe.evaluation import evaluate


def regression(loss) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 8, generator=g)
    y = x[:, :1] + 0.5 * torch.randn(1200, 1, generator=g)
    return Task((x[:800], y[:800]), (x[800:], y[800:]), lambda: nn.Linear(8, 1), loss=loss, kind="regression")


def test_a_callable_loss_has_about_the_standard_error_of_its_per_sample_twin():
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    named = evaluate(regression("mse"), model, regression("mse").val, torch.device("cpu"))
    called = evaluate(regression(F.mse_loss), model, regression(F.mse_loss).val, torch.device("cpu"))
    assert abs(named.loss - called.loss) < 1e-5
    assert named.loss_se is not None and called.loss_se is not None
    assert 0.5 < called.loss_se / named.loss_se < 2.0


def test_two_runs_under_a_callable_loss_differ_with_a_noise_that_is_not_zero():
    task = regression(F.mse_loss)
    torch.manual_seed(0)
    a, b = (evaluate(task, nn.Linear(8, 1), task.val, torch.device("cpu")) for _ in range(2))
    _, se = paired_difference(a, b)
    assert se > 0


def test_a_loss_on_a_target_that_cannot_be_sliced_keeps_no_standard_error():
    task = regression(lambda output, target: F.mse_loss(output, target) if len(output) > 100 else 1 / 0)
    torch.manual_seed(0)
    assert evaluate(task, nn.Linear(8, 1), task.val, torch.device("cpu")).loss_se is None
