"""params_update: every trainable tensor registered, given a gradient, and moved by one step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe.diagnostics.parameters import graph_leaves, params_update, unregistered_tensors
from tests import tiny


class ListLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = [nn.Linear(tiny.FEATURES, 32)]
        self.head = nn.Linear(32, tiny.CLASSES)

    def forward(self, x):
        return self.head(F.relu(self.layers[0](x)))


class Detached(tiny.MLP):
    def forward(self, x):
        return self.head(F.relu(self.l2(F.relu(self.l1(x)).detach())))


class DeadBranch(tiny.MLP):
    def __init__(self):
        super().__init__()
        self.branch = nn.Linear(tiny.FEATURES, 32)

    def forward(self, x):
        h = F.relu(self.l1(x))
        _ = F.relu(self.branch(x))  # forgot `h = h + _`
        return self.head(F.relu(self.l2(h)))


class RawTensor(tiny.MLP):
    def __init__(self):
        super().__init__()
        self.scale = torch.ones(tiny.CLASSES, requires_grad=True)  # should be nn.Parameter

    def forward(self, x):
        return super().forward(x) * self.scale


class GRUClassifier(nn.Module):
    """Clean: nn.GRU keeps its registered weights in a plain list too (_flat_weights); that is not a bug."""

    def __init__(self):
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 16, batch_first=True), nn.Linear(16, tiny.CLASSES)

    def forward(self, x):
        return self.head(self.rnn(x.reshape(len(x), 4, 3))[1][-1])


def frozen_first_layer():
    model = tiny.MLP()
    model.l1.weight.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        (tiny.MLP, "pass", "got a gradient and changed"),
        (GRUClassifier, "pass", "got a gradient and changed"),
        (ListLayers, "fail", "not registered"),
        (RawTensor, "fail", "not registered"),
        (Detached, "fail", "l1.weight"),
        (DeadBranch, "fail", "branch.weight"),
        (frozen_first_layer, "warn", "frozen"),
    ],
)
def test_params_update(model, status, words):
    task = tiny.classification(model)
    check = params_update(task.make_model(), task, task.sample_batch("train", 32, seed=0))
    assert check.status == status, check.message
    assert words in check.message


def test_unregistered_tensors_names_the_attribute():
    assert unregistered_tensors(ListLayers()) == ["layers[0] (Linear)"]
    assert unregistered_tensors(tiny.MLP()) == []


def test_graph_leaves_are_the_parameters_that_reach_the_loss():
    model = DeadBranch()
    loss = model(torch.randn(3, tiny.FEATURES)).sum()
    leaves = {id(t) for t in graph_leaves(loss)}
    assert id(model.l1.weight) in leaves and id(model.branch.weight) not in leaves
