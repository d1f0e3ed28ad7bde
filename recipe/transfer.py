"""Transfer learning: a ladder rung built from pretrained weights, and fine-tuning it frozen-then-unfrozen.

    "Pretrain. It rarely ever hurts to use a pretrained network if you can, even if you have enough data."
    — Karpathy, A Recipe for Training Neural Networks, step 4 (regularize).

A `Pretrained` rung goes in `Task(models=...)` beside the rungs trained from scratch. It is a model factory like
any other (calling it loads the weights into a fresh module), and it carries what the weights expect of their
inputs: the per-feature (or per-channel) mean and std of the inputs they were trained on. `regularize` checks the
task's inputs against those (`pretrained_inputs`), then fine-tunes the rung with `fine_tune` (the new head alone
with the body frozen, then every layer at a lower rate) and keeps it only when it beats training from scratch on
validation beyond noise. `complexify` leaves pretrained rungs out of its capacity ladder: they are a starting
point, not a size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from recipe.errors import TaskError
from recipe.loop import FitResult


@dataclass(frozen=True)
class Pretrained:
    """A ladder rung whose weights come from pretraining.

    Args:
        load: zero-argument callable returning a fresh `nn.Module` holding the pretrained weights, with a head
            fitted to this task's outputs (for example the body's weights loaded and a new final layer).
        mean: the mean of the inputs the weights were trained on, as the model received them: one value per
            input feature or channel (the axis after the batch), or a single value for all of them; None when
            it was not recorded (then `pretrained_inputs` cannot judge and skips).
        std: their standard deviation, the same shape as `mean`.
        head: the name of the submodule that is new for this task (as in `named_modules`, e.g. "head" or
            "net.4"); None: the last module holding parameters. Only it trains while the body is frozen.
        lr_factor: after the head is trained, every layer trains at the learning rate times this factor.
    """

    load: Callable[[], nn.Module]
    mean: Sequence[float] | float | None = None
    std: Sequence[float] | float | None = None
    head: str | None = None
    lr_factor: float = 0.1

    def __post_init__(self) -> None:
        if not callable(self.load) or isinstance(self.load, nn.Module):
            raise TaskError(f"Pretrained(load=...) must be a factory returning a fresh nn.Module, got {self.load!r}.")
        if (self.mean is None) != (self.std is None):
            raise TaskError(
                "Pretrained: give both mean= and std= of the inputs the weights were trained on, or neither."
            )
        if self.mean is not None and self.stats()[0].shape != self.stats()[1].shape:
            raise TaskError("Pretrained: mean= and std= must have the same length (one value per feature or channel).")
        if not 0 < self.lr_factor <= 1:
            raise TaskError(f"Pretrained(lr_factor={self.lr_factor}) must be in (0, 1]: fine-tuning lowers the rate.")

    def __call__(self) -> nn.Module:
        return self.load()

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The recorded (mean, std) as 1-D float64 tensors (length 1 for a single value)."""
        if self.mean is None or self.std is None:
            raise TaskError("Pretrained: no input normalisation was recorded with these weights.")
        mean = torch.as_tensor(self.mean, dtype=torch.float64).reshape(-1)
        return mean, torch.as_tensor(self.std, dtype=torch.float64).reshape(-1)

    def head_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters of the head: the submodule named `head`, or the last module holding parameters."""
        modules = dict(model.named_modules())
        if self.head is not None:
            if self.head not in modules:
                raise TaskError(
                    f"Pretrained(head={self.head!r}): the model has no such submodule; use one of "
                    f"{[n for n in modules if n][:12]}."
                )
            return list(modules[self.head].parameters())
        owners = [m for m in modules.values() if any(True for _ in m.parameters(recurse=False))]
        if not owners:
            raise TaskError("Pretrained: the loaded model has no parameters.")
        return list(owners[-1].parameters(recurse=False))


def fine_tune(
    fit: Callable[..., FitResult], rung: Pretrained, lr: float, steps: int, **settings: Any
) -> tuple[FitResult, FitResult]:
    """Train a pretrained rung's head with the body frozen for half of `steps`, then every layer at `lr` times
    `rung.lr_factor` for the other half (the whole costs the budget of one run from scratch).

    `fit(phase, **settings)` trains one phase ("head", then "all"): `Context.fit` with the phase in the run's
    name, or `lambda phase, **kw: recipe.fit(**kw)`; `settings` are its other keyword arguments (the task, weight
    decay, ...). Returns both phases' results; the second holds the fine-tuned model.
    """
    model = rung()
    head = {id(p) for p in rung.head_parameters(model)}
    body = [p for p in model.parameters() if id(p) not in head and p.requires_grad]
    for p in body:
        p.requires_grad_(False)
    budget = {"epochs": None, "max_steps": max(1, steps // 2)}
    frozen = fit("head", **settings, **budget, model=model, lr=lr)
    for p in body:
        p.requires_grad_(True)
    return frozen, fit("all", **settings, **budget, model=frozen.model, lr=lr * rung.lr_factor)
