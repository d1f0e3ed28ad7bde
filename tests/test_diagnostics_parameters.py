"""params_update: every trainable tensor registered, given a gradient, and moved by one step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
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


# ---- a gradient of exactly zero: the batch or the init, not the model ------------------------------------------------


class ZeroGate(tiny.MLP):
    """Clean: a ReZero / LoRA-style branch behind a factor initialised to zero. At init the branch's weights get a
    gradient of exactly zero; once the factor moves they get one."""

    def __init__(self):
        super().__init__()
        self.branch, self.gate = nn.Linear(32, 32), nn.Parameter(torch.zeros(()))

    def forward(self, x):
        h = F.relu(self.l2(F.relu(self.l1(x))))
        return self.head(h + self.gate * self.branch(h))


class Difference(nn.Module):
    """Clean, with a redundant bias: the encoder's last bias cancels in the difference of two passes (a siamese
    distance), so it has no effect on the loss on any batch."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(tiny.FEATURES // 2, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, tiny.CLASSES)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return self.head((self.enc(a) - self.enc(b)).abs())


def more_batches(task):
    return lambda k: task.sample_batch("train", 32, seed=k)


@pytest.mark.parametrize(("more", "status"), [(True, "pass"), (False, "warn")])
def test_a_branch_behind_a_zero_gate_trains_once_the_gate_moves(more, status):
    task = tiny.classification(ZeroGate)
    batch = task.sample_batch("train", 32, seed=0)
    check = params_update(task.make_model(), task, batch, more=more_batches(task) if more else None)
    assert check.status == status, check.message
    assert check.value["steps"] == (2 if more else 1)
    if not more:
        assert check.value["zero_gradient"] == ["branch.weight", "branch.bias"]


def test_an_l1_output_bias_with_as_many_outputs_above_as_below_passes_on_the_next_batch():
    """The L1 loss's gradient for the output bias is the mean sign of the errors: exactly zero on a batch with as
    many outputs above their targets as below, which a fresh model with a zero output layer meets here."""
    x = torch.randn(64, tiny.FEATURES, generator=torch.Generator().manual_seed(0))
    y = torch.cat([torch.ones(16), -torch.ones(16), torch.full((32,), 2.0)])[:, None]  # the first 32: balanced

    def model():
        net = tiny.MLP(out=1)
        nn.init.zeros_(net.head.weight), nn.init.zeros_(net.head.bias)
        return net

    task = Task((x, y), (x, y), model, loss="l1", kind="regression")
    first = task.batch("train", list(range(32)))
    alone = params_update(task.make_model(), task, first)
    assert alone.status == "warn" and "head.bias" in alone.value["zero_gradient"], alone.message
    check = params_update(task.make_model(), task, first, more=lambda k: task.batch("train", list(range(32, 64))))
    assert check.status == "pass", check.message


def test_a_bias_that_cancels_on_every_batch_warns_and_a_cut_path_still_fails():
    task = tiny.classification(Difference)
    check = params_update(task.make_model(), task, task.sample_batch("train", 32, seed=0), more=more_batches(task))
    assert check.status == "warn", check.message
    assert check.value["zero_gradient"] == ["enc.2.bias"] and check.value["steps"] == 3
    assert "no effect on the loss" in check.message
    for planted, name in ((Detached, "l1.weight"), (DeadBranch, "branch.weight")):
        task = tiny.classification(planted)
        cut = params_update(task.make_model(), task, task.sample_batch("train", 32, seed=0), more=more_batches(task))
        assert cut.status == "fail" and name in cut.value["no_gradient"], cut.message


# ---- parameters frozen on purpose (baseline.frozen) --------------------------------------------------------------


def test_parameters_frozen_on_purpose_pass_and_a_freeze_that_did_not_happen_warns():
    """A pretrained first layer frozen on purpose passes once named; the same name on a model that forgot to
    freeze it warns (it trains), and so does a pattern that names no parameter. An undeclared freeze still warns."""
    task = tiny.classification(frozen_first_layer)
    batch = task.sample_batch("train", 32, seed=0)
    assert params_update(task.make_model(), task, batch).status == "warn"
    declared = params_update(task.make_model(), task, batch, frozen_on_purpose=("l1.w*",))
    assert declared.status == "pass" and declared.value["frozen_on_purpose"] == ["l1.weight"], declared.message
    forgot = tiny.classification(tiny.MLP)
    check = params_update(forgot.make_model(), forgot, batch, frozen_on_purpose=("l1.weight",))
    assert check.status == "warn" and "still train: l1.weight" in check.message, check.message
    typo = params_update(task.make_model(), task, batch, frozen_on_purpose=("l1.weight", "encoder.*"))
    assert typo.status == "warn" and "'encoder.*'" in typo.message, typo.message


def test_baseline_frozen_reaches_the_check_from_a_config(tmp_path):
    from recipe import Recipe

    task = tiny.classification(frozen_first_layer)
    config = {"baseline": {"frozen": ["l1.weight"], "steps": 20}}
    result = Recipe(task, run_dir=tmp_path / "run", stages=["baseline"], config=config, device="cpu", progress=False,
                    quiet=True, keep_going=True).run()  # fmt: skip
    check = next(c for c in result.checks if c.name == "params_update")
    assert check.status == "pass" and "as baseline.frozen says" in check.message, check.message
