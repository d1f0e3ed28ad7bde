"""Whether a model's outputs can go below zero: the difference between a head that clips (ReLU, sigmoid, softplus,
abs, exp) and one whose outputs merely start positive (the cosine similarity of two fresh embeddings, which share a
large common component: 0.14 to 0.41 at its lowest over five initialisations of a ReLU encoder).

Why: `output_kind` reads the outputs of fresh initialisations; every one of them at or above zero is what a
clipping head shows, and also what a biased one does. The question is what the architecture can reach, so it is
asked of the architecture: a few optimizer steps on a fresh model that lower the mean output. A clipping head
flattens at zero and never crosses it; any other crosses within a few steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from recipe.check import Check, passed
from recipe.data import Batch
from recipe.task import Task


def outputs_at_init(
    make_model: Callable[[], nn.Module], task: Task, batch: Batch, draws: int = 5
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The outputs of `draws` freshly initialised models on one batch, and its target: what the architecture can
    output, rather than what one random draw happens to."""
    outputs, target = [], torch.empty(0)
    for _ in range(draws):
        model = make_model().eval()
        with torch.no_grad():
            output, target = task.outputs(model, batch)
        outputs.append(output.detach().float())
    return outputs, target


SIGN_VERDICTS = ("logits of both signs", "outputs covering the target range")  # output_kind's `expected` for its
# fails on the outputs' sign (the exact softmax signature, rows in [0, 1] summing to 1, is not one of them)


def crosses_zero(make_model: Callable[[], nn.Module], task: Task, batch: Batch, steps: int = 30) -> bool:
    """Whether `steps` Adam steps (lr 0.05) that lower a fresh model's mean output on `batch` take any output below
    zero. False when they do not, or when the output is not one tensor, stops being finite, or cannot be trained on
    this batch (the verdict on the outputs of the initialisations then stands)."""
    try:
        return _lowered_below_zero(make_model, task, batch, steps)
    except Exception:  # a model that trains only in another way (BatchNorm on one sample, a structured output)
        return False


def _lowered_below_zero(make_model: Callable[[], nn.Module], task: Task, batch: Batch, steps: int) -> bool:
    model = make_model().train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        return False
    optimizer = torch.optim.Adam(parameters, lr=0.05)
    inputs, _ = task.split_batch(batch)
    for _ in range(steps + 1):
        output = task.forward(model, inputs)
        if not isinstance(output, torch.Tensor) or not bool(torch.isfinite(output).all()):
            return False
        if bool((output < 0).any()):
            return True
        optimizer.zero_grad(set_to_none=True)
        output.float().mean().backward()
        optimizer.step()
    return False


def biased_not_clipped(check: Check, make_model: Callable[[], nn.Module], task: Task, batch: Batch) -> Check:
    """`output_kind`'s fail on the outputs' sign, kept only when the architecture cannot cross zero."""
    if not check.failed or check.expected not in SIGN_VERDICTS or not crosses_zero(make_model, task, batch):
        return check
    return passed(
        "output_kind",
        "every output is at or above zero at initialisation, but a few optimizer steps lowering them take some "
        "below zero: the head starts biased (a cosine similarity of fresh embeddings does), it does not clip.",
        {**(check.value or {}), "crosses_zero_when_pushed": True},
    )
