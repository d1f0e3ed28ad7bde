"""The overfit stage memorises one batch as it was read, stops once it is memorised, and gives a loss still falling
more steps before judging."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from recipe import Recipe
from recipe.data import fixed_indices
from recipe.stages.overfit import memorised_below
from recipe.task import IGNORE_INDEX
from tests import tiny


class Jittered(Dataset):
    """Training samples with fresh random noise on every read (a train-only augmentation inside the Dataset)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.5 * torch.randn_like(self.x[i]), self.y[i]


def overfit(task, tmp_path, **settings):
    config = {"overfit": {"lr_steps": 20, **settings}}
    result = Recipe(task, run_dir=tmp_path / "run", stages=["overfit"], device="cpu", config=config,
                    progress=False, quiet=True, keep_going=True).run()  # fmt: skip
    return next(c for c in result.checks if c.name == "overfit_batch")


def test_a_dataset_that_augments_every_read_is_memorised_as_read(tmp_path):
    x, y = tiny.blobs(256, 0)
    task = tiny.classification().replace(train=Jittered(x, y))
    check = overfit(task, tmp_path)
    assert check.status == "pass", check.message


def test_a_loss_still_falling_gets_more_steps_instead_of_a_fail(tmp_path):
    check = overfit(tiny.classification(), tmp_path, steps=40)  # far too few steps
    assert check.status in ("pass", "skip"), check.message
    assert check.value["steps"] > 60  # it was given more


def test_a_softmax_floor_still_fails(tmp_path):
    class Softmaxed(tiny.MLP):
        def forward(self, x):
            return super().forward(x).softmax(1)

    check = overfit(tiny.classification(model=Softmaxed), tmp_path)
    assert check.status == "fail", check.message
    assert check.value["steps"] >= 300  # never memorised: the whole budget, and more while the loss still fell


def test_a_clean_setup_stops_once_the_batch_is_memorised(tmp_path):
    check = overfit(tiny.classification(), tmp_path, steps=300)
    assert check.status == "pass", check.message
    assert check.value["steps"] < 300
    assert check.value["batch_accuracy"] == 1.0
    assert check.value["final"] <= memorised_below(tiny.classification(), torch.arange(16) % tiny.CLASSES, 0.0, 1.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_a_cross_entropy_under_the_bound_has_every_target_right(weighted):
    """Whatever the logits: a mean loss under `memorised_below` leaves no wrong target (each costs >= ln 2)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (8,), generator=g)
    weight = torch.tensor([1.0, 3.0, 0.5, 2.0]) if weighted else None
    task = tiny.classification(class_weights=weight) if weighted else tiny.classification()
    bound = memorised_below(task, target, 0.0, 10.0)
    logits = torch.randn(20_000, 8, 4, generator=g) * 6 + 9 * F.one_hot(target, 4)
    losses = torch.stack([F.cross_entropy(z, target, weight=weight) for z in logits])
    below = losses <= bound
    assert below.sum() > 100  # the bound is reachable
    right = (logits.argmax(2) == target).all(1)
    assert right[below].all()
    assert not right[losses > 2 * bound].all()  # above it, wrong targets do occur


def test_memorised_below_by_loss():
    target = torch.tensor([0, 1, 2, IGNORE_INDEX, IGNORE_INDEX])  # padding is not a target
    assert memorised_below(tiny.classification(), target, 0.0, 10.0) == pytest.approx(math.log(2) / 3)
    assert memorised_below(tiny.classification(), target, 0.0, 0.01) == 0.01  # the tolerance binds
    assert memorised_below(tiny.regression(), torch.zeros(4, 1), 0.0, 0.2) == 0.2  # regression: the loss alone
    bce = tiny.classification().replace(loss="bce_with_logits")
    assert memorised_below(bce, torch.zeros(4, 5), 0.0, 10.0) == pytest.approx(math.log(2) / 20)
    custom = tiny.classification().replace(loss=lambda output, target: F.cross_entropy(output, target))
    assert memorised_below(custom, target, 0.0, 10.0) is None  # its reduction is unknown: the whole budget
    assert memorised_below(bce, torch.full((4, 5), 0.3), 0.61, 10.0) is None  # soft targets: a floor above zero


def test_label_smoothing_is_memorised_at_its_floor_and_a_softmax_inside_the_loss_is_named(tmp_path):
    smoothed = tiny.classification().replace(
        loss=lambda output, target: F.cross_entropy(output, target, label_smoothing=0.1)
    )
    check = overfit(smoothed, tmp_path / "smoothed")
    assert check.status == "pass", check.message
    assert check.value["floor"] > 0.1  # its lowest value is above zero, and the check measured from there
    softmaxed = tiny.classification().replace(loss=lambda output, target: F.cross_entropy(output.softmax(1), target))
    check = overfit(softmaxed, tmp_path / "softmaxed")
    assert check.status == "fail" and "softmax before its cross-entropy" in check.message, check.message


def test_a_gaussian_likelihood_with_a_learned_variance_is_not_failed(tmp_path):
    """F.gaussian_nll_loss goes below zero and spikes as its variance nears the clamp: neither is a broken setup."""

    class MeanAndVariance(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(tiny.FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))

        def forward(self, x):
            return self.net(x)

    def nll(output, target):
        return F.gaussian_nll_loss(output[:, :1], target, F.softplus(output[:, 1:]) + 1e-6)

    config = {"overfit": {"lr_steps": 20}}
    result = Recipe(tiny.regression().replace(model=MeanAndVariance, loss=nll), run_dir=tmp_path / "run",
                    stages=["overfit"], device="cpu", config=config, progress=False, quiet=True,
                    keep_going=True).run()  # fmt: skip
    check = next(c for c in result.checks if c.name == "overfit_batch")
    assert check.status in ("pass", "skip"), check.message
    assert check.value["final"] < 0 < check.value["reference"]  # it learned the batch far past a constant


def test_a_batch_of_one_class_gets_samples_of_the_others(tmp_path):
    """With 3 positives in 600, the batch of 16 drawn is all negatives: memorised by the bias alone, against a
    constant prediction whose loss is zero. Half the batch is dealt from the other class, and memorising it can be
    told."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, tiny.FEATURES, generator=g)
    y = (torch.arange(600) % 200 == 100).long()
    assert y[fixed_indices(600, 16, 0)].sum() == 0  # the batch the stage draws (seed 0) holds no positive
    x[y == 1] += 2.0
    model = lambda: torch.nn.Sequential(torch.nn.Linear(tiny.FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    task = tiny.classification().replace(train=(x, y), val=(x[:100], y[:100]), model=model, num_classes=2)
    check = overfit(task, tmp_path)
    assert check.status == "pass", check.message
    p = 3 / 16  # all three positives dealt in: 13 and 3
    assert check.value["reference"] == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), rel=1e-5)
