"""The loss range the overfit check measures on: the best constant prediction's loss and the lowest loss any output
reaches (`recipe.evaluation.constant_loss`, `loss_floor`), known in closed form for the built-in losses and found by
minimising a callable loss over the outputs themselves."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recipe.evaluation import constant_loss, loss_floor
from tests import tiny

G = torch.Generator().manual_seed(0)
LABELS = torch.randint(0, tiny.CLASSES, (16,), generator=G)
LOGITS = torch.randn(16, tiny.CLASSES, generator=G)
Y = torch.randn(16, 1, generator=G)


def classification(loss):
    return tiny.classification().replace(loss=loss)


def regression(loss):
    return tiny.regression().replace(loss=loss)


def smoothed_floor(eps: float, classes: int) -> float:
    """Cross-entropy against smoothed one-hot targets, at its minimum (the prediction equals the target)."""
    top, rest = 1 - eps + eps / classes, eps / classes
    return -(top * math.log(top) + (classes - 1) * rest * math.log(rest))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_has_the_floor_of_its_smoothed_targets(eps):
    task = classification(lambda output, target: F.cross_entropy(output, target, label_smoothing=eps))
    assert loss_floor(task, LOGITS, LABELS) == pytest.approx(smoothed_floor(eps, tiny.CLASSES), abs=1e-3)


def test_a_callable_loss_matches_the_built_in_one():
    same = classification(lambda output, target: F.cross_entropy(output, target))
    assert loss_floor(same, LOGITS, LABELS) < 1e-4
    assert constant_loss(same, LABELS, LOGITS) == pytest.approx(constant_loss(tiny.classification(), LABELS), abs=1e-4)
    mse = regression(lambda output, target: F.mse_loss(output, target))
    assert loss_floor(mse, torch.zeros(16, 1), Y) < 1e-6
    assert constant_loss(mse, Y, torch.zeros(16, 1)) == pytest.approx(float(Y.var(unbiased=False)), rel=1e-4)


def test_a_loss_that_broadcasts_outputs_against_every_target_is_no_better_than_a_constant():
    task = regression(lambda output, target: F.mse_loss(output, target))
    with pytest.warns(UserWarning, match="broadcasting"):
        floor = loss_floor(task, torch.zeros(16, 1), Y[:, 0])
        constant = constant_loss(task, Y[:, 0], torch.zeros(16, 1))
    assert floor == pytest.approx(constant, rel=1e-4)


def test_built_in_losses_have_closed_form_floors():
    assert loss_floor(tiny.classification(), None, LABELS) == 0.0
    bce = tiny.classification().replace(loss="bce_with_logits")
    assert loss_floor(bce, None, torch.ones(4, 3)) == 0.0
    soft = torch.full((4, 3), 0.2)
    assert loss_floor(bce, None, soft) == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))


@pytest.mark.parametrize(
    ("loss", "output"),
    [
        # a Gaussian likelihood whose variance may shrink without end: no lower bound
        (lambda o, t: (0.5 * (o[:, :1] - t) ** 2 / o[:, 1:].exp() + 0.5 * o[:, 1:]).mean(), torch.zeros(16, 2)),
        (lambda o, t: F.binary_cross_entropy(o, (t > 0).float()), torch.full((16, 1), 0.5)),  # probabilities only
        (lambda o, t: F.mse_loss(o[0], t), (torch.zeros(16, 1),)),  # an output that is not one tensor
    ],
)
def test_a_floor_that_cannot_be_found_is_nan(loss, output):
    assert math.isnan(loss_floor(regression(loss), output, Y))


def test_an_output_too_large_to_search_is_not_searched():
    task = classification(lambda output, target: F.cross_entropy(output.flatten(0, 1), target.flatten()))
    huge = torch.zeros(16, 2**16 + 1, 16)  # over MAX_ELEMENTS: its floor is left unknown rather than searched
    assert math.isnan(loss_floor(task, huge, torch.zeros(16, 2**16 + 1, dtype=torch.long)))


@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_the_search_does_not_depend_on_the_loss_scale(scale):
    """Returns of a few basis points, or a loss multiplied down: L-BFGS's tolerances are absolute, so the search
    runs in units of the loss's starting value."""
    smoothed = classification(lambda output, target: scale * F.cross_entropy(output, target, label_smoothing=0.1))
    assert loss_floor(smoothed, LOGITS, LABELS) / scale == pytest.approx(smoothed_floor(0.1, tiny.CLASSES), abs=1e-3)
    small = Y * 1e-4 if scale < 1 else Y  # returns of about a basis point
    mse = regression(lambda output, target: F.mse_loss(output, target))
    assert constant_loss(mse, small, torch.zeros(16, 1)) == pytest.approx(float(small.var(unbiased=False)), rel=1e-4)
