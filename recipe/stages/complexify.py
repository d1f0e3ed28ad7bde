"""Stage `complexify`: grow the model until it overfits, one verified step at a time.

    "At this stage we should have a good understanding of the dataset and we have the full training + evaluation
    pipeline working. [...] The approach I like to take to finding a good model has two stages: first get a model
    large enough that it can overfit (i.e. focus on training loss) and then regularize it appropriately."
    — Karpathy, A Recipe for Training Neural Networks, step 3.

Train each rung of the task's model ladder (smallest first) for the same budget, its learning rate re-checked by
a short range test, regularisation off; keep the smallest rung that fits the training set about as well as any;
then compare a warm-up + cosine schedule with the constant rate and keep it only if it helps. The chosen rung,
rate and schedule go to `regularize` through the context. When the task declares an input ladder, the chosen rung
also trains on each smaller input, and the smallest that does as well as the full one is reported. Pretrained
rungs (`recipe.transfer.Pretrained`) are a starting point, not a size: they are left to `regularize`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from recipe import plots
from recipe.check import Check, skipped
from recipe.config import require
from recipe.console import doing
from recipe.context import REGULARISATION_OFF, Context
from recipe.diagnostics.curves import (
    Rung,
    capacity,
    loss_spikes,
    lr_schedule,
    overfitting_onset,
    pick_rung,
    step_noise,
    still_improving,
)
from recipe.diagnostics.input_size import input_ladder
from recipe.diagnostics.optimization import exponential_ramp, suggest_lr
from recipe.errors import ConfigError, NonFiniteError
from recipe.evaluation import Evaluation, constant_loss, evaluate
from recipe.loop import FitResult
from recipe.model_io import check_ladder, save_model, with_ladder
from recipe.models import disable_dropout
from recipe.stage import Stage, StageSettings
from recipe.stages.mistakes import look_at_mistakes
from recipe.task import Task
from recipe.transfer import Pretrained


@dataclass(frozen=True)
class ComplexifySettings(StageSettings):
    """Settings of the `complexify` stage.

    Args:
        epochs: epochs per rung (the same budget for each); None uses train.epochs.
        max_steps: cap on the steps per rung (bounds slow models, such as a GPT on a CPU).
        rungs: the ladder rungs to train, by name (empty: all of `Task(models=...)`).
        ladder: rungs built from the task's own factory with these keyword arguments, e.g.
            {small: {hidden: 32}, large: {hidden: 512}}; used when the task has no `models`.
        lr: a fixed learning rate for every rung; None re-checks it per rung with a short range test.
        lr_steps: steps of each rung's range test.
        schedule: the decay compared with the constant rate: "cosine" or "linear" (after warm-up).
        warmup_fraction: warm-up as a fraction of the run's steps.
        margin: a rung "fits as well" when its training loss is within this fraction of the best rung's.
    """

    epochs: int | None = None
    max_steps: int | None = None
    rungs: tuple[str, ...] = ()
    ladder: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr: float | None = None
    lr_steps: int = 60
    schedule: str = "cosine"
    warmup_fraction: float = 0.05
    margin: float = 0.1

    def __post_init__(self) -> None:
        require(self, "complexify", counts=["epochs", "max_steps", "lr_steps"], positive=["lr"])
        require(self, "complexify", fractions=["warmup_fraction"], non_negative=["margin"])
        if self.schedule not in ("cosine", "linear"):
            raise ConfigError(f"complexify.schedule={self.schedule!r}: use 'cosine' or 'linear'.")


class Complexify(Stage):
    """Train a ladder of models with one budget; keep the smallest that fits; try a schedule; read the curves."""

    name = "complexify"
    settings_cls = ComplexifySettings
    settings: ComplexifySettings

    def run(self, ctx: Context) -> list[Check]:
        s = self.settings
        ladder = self._ladder(ctx)
        ctx.task = ctx.task.replace(models=ladder)  # later stages and `train.model` name these rungs
        rungs: list[Rung] = []
        checks: list[Check] = []
        scratch = {n: f for n, f in ladder.items() if not isinstance(f, Pretrained)}
        trained = scratch or ladder
        start = time.perf_counter()  # capacity judges the whole ladder: its seconds are the rungs' training
        for k, (name, factory) in enumerate(trained.items(), 1):  # a rung that raises is left out, and says why
            probing = f"training rung {name!r}; the other rungs are compared"
            with ctx.contained("train_rung", checks, probing), doing(f"rung {name}", k, len(trained)):
                rungs.append(self._train_rung(ctx, name, factory))
        if not rungs:
            return checks
        chosen = pick_rung(rungs, s.margin)
        constant = constant_loss(ctx.task, ctx.task.targets("train"))
        capacity_check = ctx.check(
            lambda: capacity(rungs, chosen, constant).replace(artifacts=self._rung_artifacts(ctx, rungs)),
            name="capacity",
        )
        checks.insert(0, capacity_check.replace(seconds=time.perf_counter() - start))
        if checks[0].status == "fail":  # nothing trained: say how the curve went, skip the rest
            return [*checks, loss_spikes(rungs[0].step_losses, failure=rungs[0].failure)]
        assert chosen is not None
        budget = {"epochs": s.epochs} if s.epochs else {}  # later stages train with the same budget
        ctx.learn(train={"model": chosen.name, "lr": chosen.lr, "schedule": "constant", "warmup_steps": 0, **budget})
        final = chosen
        with ctx.contained("lr_schedule", checks, "warm-up + decay against the constant rate"):
            final = self._schedule(ctx, chosen, checks)
        sampled = _sampled_losses(ctx, final)
        excursion = None if sampled is None else float(sampled.max() - sampled.median())
        noise = None if sampled is None else 1.4826 * float((sampled - sampled.median()).abs().median())
        checks += [
            ctx.check(loss_spikes, final.step_losses, excursion=excursion),
            ctx.check(step_noise, final.step_losses, sampling_noise=noise),
            ctx.check(still_improving, final.history),
            ctx.check(overfitting_onset, final.history),
        ]
        with ctx.contained("chosen_run_figure", checks, "the chosen setup's loss curve, chosen_run.png"):
            figure = partial(
                plots.loss_curves,
                {"training loss (per step)": final.step_losses},
                f"Chosen setup: {chosen.name}, lr {chosen.lr:.2g}",
            )
            checks[-4] = checks[-4].replace(artifacts=(ctx.save_figure("chosen_run.png", figure),))
        checks.append(ctx.check(self._input_ladder, ctx, chosen, name="input_ladder"))
        if final.model is not None:
            checks.append(ctx.check(look_at_mistakes, ctx, final.model, f"{chosen.name}", name="prediction_errors"))
        if final.model is not None and final.val is not None:  # recipe.load_model(run_dir) before regularize runs
            model_pt = f"{ctx.rundir.stage_dir(self.name).name}/model.pt"
            save_model(ctx.rundir, model_pt, final.model, ctx.task, ctx.train, final.val, ctx.source)
        return checks

    def validate(self, task: Task) -> None:
        """Each `ladder` rung's arguments must be ones the task's model factory takes (checked before any training)."""
        if self.settings.ladder and len(task.models) == 1:
            check_ladder(task, self.settings.ladder)

    def restore(self, ctx: Context) -> None:
        ctx.task = ctx.task.replace(models=self._ladder(ctx))  # the rung names train.model refers to

    # ---- the ladder -----------------------------------------------------------------------------------------------

    def _ladder(self, ctx: Context) -> dict[str, Callable[[], nn.Module]]:
        s, task = self.settings, ctx.task
        ladder: dict[str, Callable[[], nn.Module]] = dict(with_ladder(task, s.ladder).models)
        if s.rungs:
            unknown = [r for r in s.rungs if r not in ladder]
            if unknown:
                raise ConfigError(f"complexify.rungs: {unknown} are not rungs of the ladder {list(ladder)}.")
            ladder = {r: ladder[r] for r in s.rungs}
        return ladder

    def _train_rung(self, ctx: Context, name: str, factory: Callable[[], nn.Module]) -> Rung:
        """The rung's learning rate (range test or fixed), then one run of the stage's budget, unregularised."""
        task = ctx.task.replace(model=factory)
        params = sum(p.numel() for p in task.make_model().parameters() if p.requires_grad)
        lr = self.settings.lr or self._range_test(ctx, task, name) or ctx.train.lr
        try:
            run = self._fit(ctx, f"rung_{name}", task, lr)
        except NonFiniteError as exc:
            return Rung(name, params, lr, None, None, [*exc.losses, math.nan], [], exc.step, failure=str(exc))
        train = evaluate(task, run.model, task.train, ctx.device)
        val = evaluate(task, run.model, task.val, ctx.device)
        return Rung(name, params, lr, train, val, run.step_losses, run.history, None, run.seconds, run.model)

    def _range_test(self, ctx: Context, task: Task, name: str) -> float | None:
        s = self.settings
        ramp = exponential_ramp(1e-6, 1.0, s.lr_steps)
        try:
            run = ctx.fit(
                f"lr_range_{name}",
                task=task,
                **REGULARISATION_OFF,
                model=disable_dropout(task.make_model()),
                lr=1.0,
                schedule=ramp,
                max_steps=s.lr_steps,
                epochs=None,
                evaluate_every_epoch=False,
                log_every=s.lr_steps,
            )
            losses = run.step_losses
        except NonFiniteError as exc:  # divergence at the top of the sweep is expected
            losses = exc.losses
        suggestion = suggest_lr([ramp(i) for i in range(s.lr_steps)], losses)
        return suggestion["lr"]

    def _fit(self, ctx: Context, run: str, task: Task, lr: float, **overrides: Any) -> FitResult:
        s = self.settings
        return ctx.fit(
            run,
            task=task,
            **REGULARISATION_OFF,
            model=disable_dropout(task.make_model()),
            lr=lr,
            epochs=s.epochs or ctx.train.epochs,
            max_steps=s.max_steps,
            **overrides,
        )

    def _rung_artifacts(self, ctx: Context, rungs: list[Rung]) -> tuple[str | None, ...]:
        table = {
            "columns": ["rung", "parameters", "lr", "train loss", "val loss", f"val {ctx.task.metric_name}", "s"],
            "rows": [
                [
                    r.name,
                    f"{r.params:,}",
                    f"{r.lr:.2g}",
                    f"{r.train.loss:.4g}" if r.train else f"diverged at step {r.diverged_at}",
                    f"{r.val.loss:.4g}" if r.val else "-",
                    f"{r.val.metric:.4g}" if r.val else "-",
                    f"{r.seconds:.1f}",
                ]
                for r in rungs
            ],
        }
        epochs = {r.name: [h["val_loss"] for h in r.history if h.get("val_loss") is not None] for r in rungs}
        steps = {r.name: r.step_losses for r in rungs}
        return (
            ctx.save_json("rungs.table.json", table),
            ctx.save_figure(
                "rungs_train.png", lambda: plots.loss_curves(steps, "Training loss per rung (same budget)", logy=True)
            ),
            ctx.save_figure(
                "rungs_val.png",
                lambda: plots.loss_curves(epochs, "Validation loss per rung", "validation loss", "epoch"),
            ),
        )

    def _input_ladder(self, ctx: Context, chosen: Rung) -> Check:
        """The chosen rung at its rate and budget on each smaller input the task declares, against the full input."""
        levels: dict[str, Evaluation | None] = {}
        for level, shrink in ctx.task.input_ladder.items():
            task = ctx.task.replace(model=ctx.task.models[chosen.name], input_transform=shrink)
            try:
                run = self._fit(ctx, f"input_{level}", task, chosen.lr)
            except NonFiniteError:
                levels[level] = None
                continue
            levels[level] = evaluate(task, run.model, task.val, ctx.device)
        return input_ladder(chosen.val, levels, constant_loss(ctx.task, ctx.task.targets("train")))

    # ---- the schedule ---------------------------------------------------------------------------------------------

    def _schedule(self, ctx: Context, chosen: Rung, checks: list[Check]) -> Rung:
        """Warm-up + decay against the constant rate for the chosen rung; returns the run that was kept."""
        s, task = self.settings, ctx.task.replace(model=ctx.task.models[chosen.name])
        steps = len(chosen.step_losses)
        warmup = max(1, round(s.warmup_fraction * steps))
        if steps < 20:
            checks.append(skipped("lr_schedule", f"only {steps} steps per run; too few to compare schedules."))
            return chosen
        try:
            run = self._fit(ctx, "schedule", task, chosen.lr, schedule=s.schedule, warmup_steps=warmup)
        except NonFiniteError as exc:
            checks.append(skipped("lr_schedule", f"the {s.schedule} run diverged at step {exc.step}; kept constant."))
            return chosen
        scheduled = evaluate(task, run.model, task.val, ctx.device)
        assert chosen.val is not None
        check, keep = lr_schedule(chosen.val, scheduled, s.schedule)
        curves = {"constant": chosen.step_losses, f"warm-up {warmup} + {s.schedule}": run.step_losses}
        figure = ctx.save_figure(
            "lr_schedule.png", lambda: plots.loss_curves(curves, "Constant rate against a schedule")
        )
        checks.append(check.replace(artifacts=(figure,), seconds=run.seconds))
        if not keep:
            return chosen
        ctx.learn(train={"schedule": s.schedule, "warmup_steps": warmup})
        train = evaluate(task, run.model, task.train, ctx.device)
        return Rung(
            chosen.name, chosen.params, chosen.lr, train, scheduled, run.step_losses, run.history, model=run.model
        )


def _sampled_losses(ctx: Context, run: Rung, draws: int = 32) -> torch.Tensor | None:
    """How a training batch's loss moves with its samples alone: the trained model's loss (eval mode, no step in
    between) on `draws` random training batches of the training batch size, what a perfectly steady optimizer would
    show (step_noise reads their robust spread, loss_spikes their highest). Any loss, a callable or a contrastive one
    included; None without a trained model, with too few samples for batches that differ, or a non-finite loss."""
    task, size = ctx.task, ctx.train.batch_size
    if run.model is None or len(task.train) < 2 * size:
        return None
    model, was_training = run.model, run.model.training
    model.eval()
    with torch.no_grad():
        batches = (task.sample_batch("train", size, ctx.seed + 1000 + k, ctx.device) for k in range(draws))
        losses = torch.tensor([float(task.compute_loss(*task.outputs(model, b))) for b in batches])
    model.train(was_training)
    return losses if bool(torch.isfinite(losses).all()) else None
