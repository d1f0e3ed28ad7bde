"""params_update on computation the data routes: a parameter without a gradient whose module did not run on the
probe batches is judged by whether it runs on the training data at all. A top-1 mixture of experts failed on
about a third of its initialisations (an expert no sample of 192 was routed to, its path read as cut)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recipe.diagnostics.parameters import params_update
from tests import tiny


class Routed(nn.Module):
    """Top-1 routing by a fixed rule on the first feature: expert 1 takes the samples above `cut`, expert 0 the
    rest; `experts` members, only the first two of which the rule can choose."""

    def __init__(self, cut: float, experts: int = 2):
        super().__init__()
        self.cut = cut
        self.experts = nn.ModuleList(nn.Linear(tiny.FEATURES, tiny.CLASSES) for _ in range(experts))

    def forward(self, x):
        chosen = (x[:, 0] > self.cut).long()
        out = torch.zeros(len(x), tiny.CLASSES)
        for e in chosen.unique().tolist():
            rows = chosen == e
            out[rows] = self.experts[e](x[rows])
        return out


class Forgotten(tiny.MLP):
    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(32, 32)  # defined, never called


class SlicedLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(tiny.FEATURES, 32), nn.Linear(32, 32), nn.Linear(32, 32)])
        self.head = nn.Linear(32, tiny.CLASSES)

    def forward(self, x):
        for layer in self.layers[:-1]:  # the last layer left out
            x = F.relu(layer(x))
        return self.head(x)


def _rare_cut(task):
    """A cut above all but the top 2% of the first feature: a few training samples go to expert 1."""
    return float(torch.quantile(task.train.x[:, 0], 0.98))


def _batch_without_them(task, cut):
    rows = (task.train.x[:, 0] <= cut).nonzero().flatten()[:64].tolist()
    return task.batch("train", rows)


def test_an_expert_the_probe_batch_missed_is_routed_not_cut():
    task = tiny.classification()
    cut = _rare_cut(task)
    check = params_update(Routed(cut), task, _batch_without_them(task, cut))
    assert check.status == "pass", check.message
    assert check.value["routed"] == ["experts.1.weight", "experts.1.bias"] and "routed by the data" in check.message


def test_an_expert_no_training_sample_reaches_warns():
    task = tiny.classification()
    cut = _rare_cut(task)
    check = params_update(Routed(cut, experts=3), task, _batch_without_them(task, cut))
    assert check.status == "warn" and "experts.2.weight" in check.message and "router" in check.message
    assert "experts.1.weight" not in check.message  # it runs on some samples


def test_a_layer_forward_never_calls_fails():
    check = params_update(Forgotten(), tiny.classification(), tiny.classification().sample_batch("train", 64, 0))
    assert check.status == "fail" and "extra.weight" in check.message and "never called in forward" in check.message


def test_a_slice_that_leaves_a_layer_out_warns():
    task = tiny.classification()
    check = params_update(SlicedLayers(), task, task.sample_batch("train", 64, 0))
    assert check.status == "warn" and "layers.2.weight" in check.message and "layers[:-1]" in check.message


def test_a_scripted_model_is_judged_as_before():
    task = tiny.classification()
    check = params_update(torch.jit.script(tiny.MLP()), task, task.sample_batch("train", 64, 0))
    assert check.status == "pass", check.message


def test_a_scripted_model_evaluates_after_steps_with_gradients():
    """TorchScript's executor replays a graph it profiled with gradients and records it for backward, which
    inference-mode tensors refuse: params_update's steps on one scripted MLP made every later evaluation of another
    raise ("Inference tensors cannot be saved for backward"), losing the baseline stage."""
    from recipe.evaluation import evaluate

    task = tiny.classification()
    params_update(torch.jit.script(tiny.MLP()), task, task.sample_batch("train", 64, 0))
    model = torch.jit.script(tiny.MLP())
    for _ in range(3):  # the executor profiles, then optimises
        model(task.train.x[:64]).sum().backward()
    assert evaluate(task, model, task.val, torch.device("cpu")).loss > 0
