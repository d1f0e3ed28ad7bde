"""target_leak when validation rows are training rows: a lookup fitted on training finds their targets by memory,
which read as a leaked feature (accuracy 1.0 through the nearest training value, "a label encoded in a feature")
when the validation set was the training set's last batch. The scan now reads the rows no training row equals."""

from __future__ import annotations

import torch
from torch import nn

from recipe import Task
from recipe.diagnostics.target_leak import target_leak


def rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, (x[:, :3].sum(1) > 0).long()


def task(val: tuple[torch.Tensor, torch.Tensor], train=None) -> Task:
    train = train or rows(600, 0)
    return Task(train, val, lambda: nn.Linear(train[0].shape[1], 2), loss="cross_entropy", kind="classification")


def test_a_validation_set_made_of_training_rows_is_not_read_as_a_leak():
    x, y = rows(600, 0)
    check = target_leak(task((x[-100:], y[-100:]), (x, y)))
    assert check.status == "skip" and "100% of the validation rows are training rows" in check.message


def test_a_few_memorised_rows_do_not_make_a_leak_and_the_rest_are_read():
    x, y = rows(600, 0)
    xv, yv = rows(200, 1)
    xv, yv = torch.cat([xv[:150], x[:50]]), torch.cat([yv[:150], y[:50]])
    check = target_leak(task((xv, yv), (x, y)))
    assert check.status == "pass"


def test_a_noisy_label_column_still_warns_beside_memorised_rows():
    (x, y), (xv, yv) = rows(600, 0), rows(200, 1)
    g = torch.Generator().manual_seed(3)
    column = lambda labels: (labels + 0.001 * torch.randn(len(labels), generator=g)).unsqueeze(1)  # noisy copy
    x, xv = torch.cat([x, column(y)], 1), torch.cat([xv, column(yv)], 1)
    xv, yv = torch.cat([xv[:150], x[:50]]), torch.cat([yv[:150], y[:50]])
    check = target_leak(task((xv, yv), (x, y)))
    assert check.status in ("warn", "fail") and "input feature 10" in check.message
