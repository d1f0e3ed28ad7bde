"""init_symmetry: hidden units with identical activations and gradients (constant init) are named; correct
initialisations, including a zero-initialised last layer, pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from examples import charlm, digits, regression, tabular
from recipe.diagnostics.symmetry import init_symmetry
from tests import tiny
from tests.new_kinds import NEW_KINDS


def mlp(init: str = "default") -> nn.Module:
    model = tiny.MLP()
    if init == "constant":  # every weight 0.1: all hidden units identical
        for layer in (model.l1, model.l2, model.head):
            nn.init.constant_(layer.weight, 0.1)
    elif init == "zero_head":  # a common, correct trick: the earlier layers still break symmetry
        nn.init.zeros_(model.head.weight)
        nn.init.zeros_(model.head.bias)
    elif init == "constant_under_zero_head":  # the zero head copies the symmetry of a constant layer below it
        nn.init.constant_(model.l2.weight, 0.1)
        nn.init.zeros_(model.head.weight)
    elif init == "constant_first":  # a constant first layer under random ones: still constant initialisation
        nn.init.constant_(model.l1.weight, 0.1)
    elif init == "zero_hidden":  # a zero-initialised hidden layer (a residual branch's trick): gradients differ
        nn.init.zeros_(model.l2.weight)
    elif init == "duplicated_rows":  # 4 copies of one row in the second layer, and of its outgoing column
        with torch.no_grad():
            model.l2.weight[1:4] = model.l2.weight[0]
            model.l2.bias[1:4] = model.l2.bias[0]
            model.head.weight[:, 1:4] = model.head.weight[:, :1]
    return model


class ConstantConv(nn.Module):
    def __init__(self, constant: bool):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 8 * 8, 10)
        if constant:
            nn.init.constant_(self.conv.weight, 0.05)
            nn.init.constant_(self.head.weight, 0.01)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x.reshape(-1, 1, 8, 8)))).flatten(1))


@pytest.mark.parametrize(
    ("init", "status"),
    [
        ("default", "pass"),
        ("constant", "fail"),
        ("zero_head", "pass"),
        ("constant_under_zero_head", "fail"),
        ("constant_first", "fail"),
        ("zero_hidden", "pass"),
        ("duplicated_rows", "warn"),
    ],
)
def test_init_symmetry_mlp(init, status):
    torch.manual_seed(0)
    task = tiny.classification(lambda: mlp(init))
    check = init_symmetry(task.make_model(), task, task.sample_batch("train", 32, seed=0))
    assert check.status == status, check.message
    if status != "pass":
        layer = "l2" if init in ("constant_under_zero_head", "duplicated_rows") else "l1"
        assert layer in check.value and "same gradient" in check.message
    if init == "duplicated_rows":
        assert check.value["l2"]["duplicated_units"] == 4


@pytest.mark.parametrize(("constant", "status"), [(False, "pass"), (True, "fail")])
def test_init_symmetry_conv_with_batchnorm(constant, status):
    torch.manual_seed(0)
    task = digits.make_task()
    task = task.replace(model=lambda: ConstantConv(constant))
    check = init_symmetry(task.make_model(), task, task.sample_batch("train", 32, seed=0))
    assert check.status == status, check.message
    if constant:
        assert "conv" in check.value


def test_bundled_examples_pass():
    torch.manual_seed(0)
    tasks = [digits.make_task(), digits.make_task("cnn"), tabular.make_task(), regression.make_task()]
    tasks += [charlm.make_task(max_chars=20_000), charlm.make_task("conv", max_chars=20_000)]
    for task in tasks:
        check = init_symmetry(task.make_model(), task, task.sample_batch("train", 16, seed=0))
        assert check.status == "pass", (task.name, check.message)


def test_custom_loss_and_regression():
    """A callable loss and a one-output regression head (a single unit is never compared)."""
    task = tiny.regression()
    assert init_symmetry(task.make_model(), task, task.sample_batch("train", 32, seed=0)).status == "pass"
    custom = tiny.classification(loss=lambda out, y: nn.functional.cross_entropy(out, y, label_smoothing=0.1))
    custom = custom.replace(model=lambda: mlp("constant"))
    assert init_symmetry(custom.make_model(), custom, custom.sample_batch("train", 32, seed=0)).status == "fail"


def test_a_frozen_constant_layer_is_a_choice():
    """A fixed, non-learned averaging layer (constant weights, requires_grad=False) is not an initialisation."""

    def averaged() -> nn.Module:
        model = tiny.MLP()
        nn.init.constant_(model.l2.weight, 1 / 32)
        model.l2.weight.requires_grad_(False)
        return model

    task = tiny.classification(averaged)
    check = init_symmetry(task.make_model(), task, task.sample_batch("train", 32, seed=0))
    assert check.status != "fail", check.message


@pytest.mark.parametrize("name", list(NEW_KINDS))
def test_shared_new_kinds_pass(name):
    torch.manual_seed(0)
    task = NEW_KINDS[name]()
    check = init_symmetry(task.make_model(), task, task.sample_batch("train", 32, seed=0))
    assert check.status == "pass", check.message


class ZeroBranches(nn.Module):
    """Residual blocks whose last layer starts at zero (Fixup, "zero-init residual") under a final ReLU: on a batch,
    some outputs of those zero layers are cut off by the ReLU for every sample, so they share a zero activation and a
    zero gradient, as silent units do, not as symmetric ones (their gradients differ on other batches)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(tiny.FEATURES, 64), nn.Linear(64, tiny.CLASSES)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)) for _ in range(3))
        for block in self.blocks:
            nn.init.zeros_(block[2].weight)
            nn.init.zeros_(block[2].bias)
        with torch.no_grad():
            self.inp.bias[:8] = -50.0  # 8 features negative for every input: cut off by the final ReLU

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.relu(h))


def test_silent_units_of_zero_initialised_branches_are_not_copies():
    torch.manual_seed(0)
    task = tiny.classification(ZeroBranches)
    check = init_symmetry(task.make_model(), task, task.sample_batch("train", 32, seed=0))
    assert check.status == "pass", check.message
