"""Stage `overfit`: overfit one batch, then find a learning rate.

    "Overfit a single batch of only a few examples (e.g. as little as two). To do so we increase the capacity of
    our model (e.g. add layers or filters) and verify that we can reach the lowest achievable loss (e.g. zero)."
    — Karpathy, A Recipe for Training Neural Networks, step 2.

Regularisation stays off (dropout p=0, no weight decay), so a failure here is a bug, not regularisation. The
learning-rate range test that follows hands its suggestion to later stages through the context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from recipe import plots
from recipe.check import Check
from recipe.config import require
from recipe.context import REGULARISATION_OFF, Context
from recipe.data import SCAN_LIMIT, TensorSplit, fixed_indices
from recipe.diagnostics.numerics import non_finite
from recipe.diagnostics.optimization import (
    exponential_ramp,
    lr_range,
    overfits_batch,
    reads_other_targets,
    still_falling,
    suggest_lr,
)
from recipe.errors import ConfigError, NonFiniteError
from recipe.evaluation import constant_loss, loss_floor
from recipe.models import disable_dropout
from recipe.stage import Stage, StageSettings
from recipe.task import IGNORE_INDEX, Task


@dataclass(frozen=True)
class OverfitSettings(StageSettings):
    """Settings of the `overfit` stage.

    Args:
        batch_size: samples in the one batch to memorise ("a handful of examples is enough").
        steps: optimizer steps allowed to memorise it; training ends sooner once it is memorised
            (`memorised_below`).
        lr: learning rate for memorising it.
        tolerance: "near zero" means within this fraction of the way from the lowest loss any output reaches on the
            batch (zero for the built-in losses) up to the best constant prediction's.
        lr_min: start of the range test's exponential sweep.
        lr_max: end of the sweep.
        lr_steps: steps of the sweep (one training batch each).
    """

    batch_size: int = 16
    steps: int = 300
    lr: float = 1e-3
    tolerance: float = 0.05
    lr_min: float = 1e-7
    lr_max: float = 10.0
    lr_steps: int = 100

    def __post_init__(self) -> None:
        require(self, "overfit", counts=["batch_size", "steps", "lr_steps"], positive=["lr", "tolerance", "lr_min"])
        if self.lr_max <= self.lr_min:
            raise ConfigError(f"overfit.lr_max={self.lr_max} must be larger than overfit.lr_min={self.lr_min}.")


class OverfitOneBatch(Stage):
    """Drive the loss on one small batch to ~0; a setup that cannot is broken, not under-trained."""

    name = "overfit"
    settings_cls = OverfitSettings
    settings: OverfitSettings

    def run(self, ctx: Context) -> list[Check]:
        try:
            memorised = ctx.check(self._overfit_batch, ctx, name="overfit_batch")
        except NonFiniteError as exc:
            memorised = non_finite(exc)
        return [memorised, ctx.check(self._lr_range_test, ctx)]

    def _overfit_batch(self, ctx: Context) -> Check:
        s, task = self.settings, ctx.task
        indices = fixed_indices(len(task.train), s.batch_size, ctx.seed)
        one_batch = task.subset("train", indices, held=True)  # read once: a Dataset's random transforms stay put
        batch = one_batch.batch("train", list(range(len(indices))), ctx.device)
        varied = _varied(task, indices, task.split_batch(batch)[1], ctx.seed)
        if varied != indices:
            indices, one_batch = varied, task.subset("train", varied, held=True)
            batch = one_batch.batch("train", list(range(len(indices))), ctx.device)
        target = task.split_batch(batch)[1]
        model, steps, losses, seconds = disable_dropout(task.make_model()).to(ctx.device), s.steps, list[float](), 0.0
        reference, floor, mixes = _loss_range(task, model, batch, target)
        enough = floor + s.tolerance * (reference - floor)  # "near zero", from the lowest possible loss up
        memorised = memorised_below(task, target, floor, enough)
        for run in ("overfit_batch", "overfit_batch_longer"):  # a loss still falling gets twice the budget more
            result = ctx.fit(
                run,
                **REGULARISATION_OFF,
                task=one_batch,
                model=model,
                batch_size=len(indices),
                max_steps=steps,
                epochs=None,
                lr=s.lr,
                evaluate_every_epoch=False,
                log_every=25,
                stop_below=memorised,
            )
            model, losses, seconds = result.model, losses + result.step_losses, seconds + result.seconds
            if min(losses[-5:]) <= enough or not still_falling(losses, floor=floor):
                break
            steps *= 2
        with torch.no_grad():
            output, target = task.outputs(model, batch)
            metric = float(task.metric_per_sample(output.float(), target).mean())
        check = overfits_batch(losses, metric, reference, task, len(indices), s.tolerance, floor, mixes)
        check = check.replace(seconds=seconds)
        fig = partial(
            plots.loss_curves,
            {"one batch": losses},
            f"Overfitting one batch of {len(indices)} samples",
            logy=True,
            hlines={
                "constant prediction": reference,
                "memorised below": enough,
                **({"lowest possible": floor} if floor > 0 else {}),
            },
        )
        return check.replace(artifacts=(ctx.save_figure("overfit_batch.png", fig),))

    def _lr_range_test(self, ctx: Context) -> Check:
        s = self.settings
        ramp = exponential_ramp(s.lr_min, s.lr_max, s.lr_steps)
        try:
            result = ctx.fit(
                "lr_range_test",
                **REGULARISATION_OFF,
                model=disable_dropout(ctx.task.make_model()),
                lr=s.lr_max,
                schedule=ramp,
                max_steps=s.lr_steps,
                epochs=None,
                evaluate_every_epoch=False,
                log_every=s.lr_steps,
            )
            losses = result.step_losses
        except NonFiniteError as exc:  # divergence at high rates is expected; keep what came before
            losses = exc.losses
        lrs = [s.lr_max * ramp(i) for i in range(s.lr_steps)]
        suggestion = suggest_lr(lrs, losses)
        check = lr_range(lrs, losses, suggestion, ctx.train.lr)
        artifacts = (
            ctx.save_figure(
                "lr_range_test.png", lambda: plots.lr_range(lrs, losses, suggestion["smoothed"], suggestion)
            ),
            ctx.save_json("lr_range_test.json", {**suggestion, "lrs": lrs[: len(losses)], "losses": losses}),
        )
        if suggestion["lr"] is not None:
            ctx.learn(train={"lr": suggestion["lr"]}, lr_rule="range test, minimum/10")
        return check.replace(artifacts=artifacts)


def _varied(task: Task, indices: list[int], target: torch.Tensor, seed: int) -> list[int]:
    """`indices`, with its second half dealt from samples of other targets when every target of the batch is the
    same while the split holds others (a batch drawn from data with a rare class): one target is memorised by a bias
    alone, and the constant prediction's loss on it is zero, so memorising could not be told apart."""
    rows = target.reshape(len(target), -1).cpu()
    if len(rows) < 2 or not (rows == rows[0]).all():
        return indices
    scanned = task.targets("train", None if isinstance(task.train, TensorSplit) else SCAN_LIMIT)
    others = (scanned.reshape(len(scanned), -1) != rows[0]).any(1).nonzero().flatten()
    dealt = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))][: len(indices) // 2]
    return indices[: len(indices) - len(dealt)] + dealt.tolist()


def _loss_range(
    task: Task, model: torch.nn.Module, batch: Any, target: torch.Tensor
) -> tuple[float, float, bool | None]:
    """(the best constant prediction's loss, the lowest loss any output reaches, whether one sample's target moves
    the loss's gradient for the others: `reads_other_targets`) on this batch. A callable loss is minimised from the
    untrained model's outputs (`recipe.evaluation.loss_floor`); a batch of one target has no floor apart from the
    constant's, so for a callable loss it is not sought (nan)."""
    model.eval()
    with torch.no_grad():
        output = task.outputs(model, batch)[0]
    model.train()
    mixes = reads_other_targets(task.compute_loss, output, target)
    start = output if callable(task.loss) else None  # a built-in loss has its floor and constant in closed form
    reference = constant_loss(task, target, start)
    rows = target.reshape(len(target), -1) if isinstance(target, torch.Tensor) and target.dim() else None
    if callable(task.loss) and (rows is None or len(torch.unique(rows, dim=0)) < 2):
        return reference, math.nan, mixes
    return reference, loss_floor(task, start, target), mixes


def memorised_below(task: Task, target: torch.Tensor, floor: float, tolerance_loss: float) -> float | None:
    """The loss below which the batch is memorised by both of `overfits_batch`'s measures, so training can stop:
    under `tolerance_loss`, and, for cross-entropy, under the least loss one wrong target adds to the mean.

    A wrong target has p(true) <= 1/2, so it adds at least ln 2 times its weight over the total weight: a mean
    below that has every target right. Regression has only the loss to reach. None (train the whole budget) for a
    callable loss, whose reduction is unknown, and for a loss whose floor is above zero (soft targets).
    """
    if not isinstance(task.loss, str) or not math.isfinite(tolerance_loss) or floor != 0:
        return None
    if task.loss in ("mse", "l1"):
        return tolerance_loss
    if task.loss == "bce_with_logits":
        return min(tolerance_loss, math.log(2) / max(target.numel(), 1))
    scored = target[target != IGNORE_INDEX].long()
    weights = torch.ones(len(scored)) if task.class_weights is None else task.class_weights.cpu()[scored.cpu()]
    if not len(weights) or float(weights.sum()) <= 0:
        return None
    return min(tolerance_loss, math.log(2) * float(weights.min()) / float(weights.sum()))
