"""activations at initialisation with BatchNorm: a fresh BatchNorm's running statistics (0 and 1) normalise
nothing in eval mode, so a stack whose blocks each shrink the scale looked like a vanishing signal (std 0.55 ->
0.0019 on a depthwise-separable CNN) although in training each BatchNorm re-normalises. Fresh BatchNorm layers now
use the batch's statistics, and the model's buffers are left as they were."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe.diagnostics.activations import activation_stats, activations
from tests import tiny


def shrinking(norm: bool, blocks: int = 8) -> nn.Module:
    """Blocks whose Linear shrinks the scale by about 3x each, with or without a BatchNorm after it."""
    layers: list[nn.Module] = []
    width = tiny.FEATURES
    for _ in range(blocks):
        linear = nn.Linear(width, 32)
        nn.init.normal_(linear.weight, std=0.3 / width**0.5)
        layers += [linear, *([nn.BatchNorm1d(32)] if norm else []), nn.ReLU()]
        width = 32
    return nn.Sequential(*layers, nn.Linear(32, tiny.CLASSES))


@pytest.mark.parametrize(("norm", "status"), [(True, "pass"), (False, "warn")])
def test_batchnorm_at_init_is_read_as_it_trains(norm, status):
    task = tiny.classification()
    torch.manual_seed(0)
    model = shrinking(norm)
    inputs, _ = task.split_batch(task.sample_batch("val", 64, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check = activations(activation_stats(model, task, inputs))
    assert check.status == status, check.message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_a_trained_batchnorm_is_read_in_eval_mode():
    task = tiny.classification()
    model = shrinking(True)
    model.train()
    with torch.no_grad():
        model(task.train.x[:128])  # running statistics seen: eval mode uses them
    model.eval()
    inputs, _ = task.split_batch(task.sample_batch("val", 64, 0))
    tracked = {k: v.clone() for k, v in model.state_dict().items()}
    activation_stats(model, task, inputs)
    assert all(torch.equal(tracked[k], v) for k, v in model.state_dict().items())
