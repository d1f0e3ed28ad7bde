"""Stage `baseline`: set up the end-to-end training/evaluation skeleton and get dumb baselines.

    "Our next step is to set up a full training + evaluation skeleton and gain trust in its correctness via a
    series of experiments." — Karpathy, A Recipe for Training Neural Networks, step 2.

Fix the seed, simplify (no augmentation, dropout or weight decay here), look at the batch as the model gets it,
verify the loss at init, init well, chart dependencies with backprop, train briefly, and compare with dumb,
simple and input-independent baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from recipe import plots
from recipe.batch_size import batch_size_check, find_batch_size, no_batch_fits
from recipe.check import Check, skipped
from recipe.config import require
from recipe.context import REGULARISATION_OFF, Context
from recipe.data import SCAN_LIMIT, TensorSplit
from recipe.diagnostics.activations import activation_stats, activations
from recipe.diagnostics.baselines import (
    evaluate_exchanged,
    exchanged_inputs,
    human_baseline,
    input_independent,
    simple_model,
    target_unread,
    trivial_baselines,
)
from recipe.diagnostics.causal import causal_over_time
from recipe.diagnostics.dependencies import batch_independence
from recipe.diagnostics.dropout import dropout_rates, eval_deterministic
from recipe.diagnostics.init import init_bias, loss_at_init, output_kind, output_kind_at_init
from recipe.diagnostics.inputs import holds_targets_ahead, input_batch, scaled_by_model
from recipe.diagnostics.integrity import finite_rows_batch
from recipe.diagnostics.numerics import non_finite
from recipe.diagnostics.padding import padding_invariance
from recipe.diagnostics.parameters import params_update
from recipe.diagnostics.symmetry import init_symmetry
from recipe.diagnostics.target_leak import target_leak
from recipe.diagnostics.training import loss_decreases, parameter_change, seed_reproducible
from recipe.errors import NoBatchFitsError, NonFiniteError
from recipe.evaluation import Evaluation, constant_loss, evaluate, loss_floor
from recipe.loop import FitResult
from recipe.models import disable_dropout, reference_task, simple_model_factory
from recipe.stage import Stage, StageSettings
from recipe.task import IGNORE_INDEX, Task


@dataclass(frozen=True)
class BaselineSettings(StageSettings):
    """Settings of the `baseline` stage.

    Args:
        steps: optimizer steps of each short training run (real inputs, inputs exchanged between samples, simple
            model).
        seed_steps: steps of each of the two runs compared by the `seed` check.
        probe_size: samples in the batch used by the dependency, activation and determinism checks.
        simple_model_lr: learning rate of the linear / bigram reference model.
        human_baseline: a human's validation metric (accuracy or MAE), reported beside the model's.
        find_batch_size: on CUDA, replace train.batch_size with the largest batch that fits in memory, stopped where
            throughput stops scaling (the `batch_size` check); false keeps train.batch_size.
        frozen: names of the parameters frozen on purpose (requires_grad=False), as shell-style patterns such as
            "backbone.*": `params_update` passes them, and warns when one of them trains after all or a pattern
            names no parameter. Frozen parameters outside them still warn (a freeze left from an experiment).
    """

    steps: int = 300
    seed_steps: int = 20
    probe_size: int = 7  # a prime, so the batch axis is not confused with another axis of the same size
    simple_model_lr: float = 1e-2
    human_baseline: float | None = None
    find_batch_size: bool = True
    frozen: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(self, "baseline", counts=["steps", "seed_steps", "probe_size"], positive=["simple_model_lr"])


class Baseline(Stage):
    """End-to-end skeleton + dumb baselines: every check here runs before any real training."""

    name = "baseline"
    settings_cls = BaselineSettings
    settings: BaselineSettings

    def run(self, ctx: Context) -> list[Check]:
        s, task, device = self.settings, ctx.task, ctx.device

        def fresh() -> nn.Module:
            return disable_dropout(task.make_model()).to(device)

        found = ctx.check(self._batch_size, ctx)  # first: every batch below is drawn at the size it sets
        # the probes judge the model on finite rows: NaN/Inf inputs are non_finite's to report, not a model bug
        batch = finite_rows_batch(task.sample_batch("train", ctx.train.batch_size, ctx.seed, device))
        inputs, _ = task.split_batch(batch)
        probe_batch = finite_rows_batch(task.sample_batch("train", s.probe_size, ctx.seed + 1, device))
        probe_inputs, probe_target = task.split_batch(probe_batch)

        checks = [found, ctx.check(self._seed, ctx), ctx.check(self._input_batch, ctx, inputs, batch)]
        checks.append(ctx.check(loss_at_init, fresh(), task, batch))
        checks.append(ctx.check(init_bias, task, fresh, batch, device))
        checks.append(ctx.check(batch_independence, fresh(), task, probe_inputs))
        if task.kind == "sequence" or holds_targets_ahead(probe_inputs, probe_target):
            checks.append(ctx.check(causal_over_time, fresh(), task, probe_inputs, probe_target, name="causal"))
        checks.append(ctx.check(target_leak, task, seed=ctx.seed))
        other_batch = lambda k: task.sample_batch("train", ctx.train.batch_size, ctx.seed + k, device)  # k >= 1
        checks.append(ctx.check(params_update, fresh(), task, batch, more=other_batch, frozen_on_purpose=s.frozen))
        checks.append(ctx.check(eval_deterministic, fresh(), task, probe_inputs))
        checks.append(ctx.check(padding_invariance, fresh(), task, probe_inputs))
        checks.append(ctx.check(init_symmetry, fresh(), task, batch))
        checks.append(ctx.check(dropout_rates, task.make_model().to(device), task, batch))  # as built, dropout on
        if task.loss != "bce_with_logits":  # probabilities and clipped logits show at init; BCE's only after training
            val_batch = task.sample_batch("val", 256, ctx.seed, device)
            checks.append(ctx.check(output_kind_at_init, fresh, task, val_batch, name="output_kind"))
        try:
            self._short_runs(ctx, fresh, inputs, (probe_inputs, probe_target), checks)
        except NonFiniteError as exc:  # keep every check made so far, and say where training broke
            checks.append(non_finite(exc))
        ctx.learn(regularisation="off in baseline: dropout p=0, weight decay 0, no augmentation")
        return checks

    def _short_runs(
        self, ctx: Context, fresh: Callable[[], nn.Module], inputs: Any, probe: tuple[Any, Any], checks: list[Check]
    ) -> None:
        """Train the model, the same model on inputs exchanged between samples, and a simple reference for the same
        budget. Each part is contained: one that raises becomes its check's `error` and the others still run."""
        s, task, device = self.settings, ctx.task, ctx.device
        trivial_figures: dict[str, Any] = {}
        with ctx.contained("trivial_baselines", checks, "majority class / label prior / training mean"):
            trivial, trivial_figures = trivial_baselines(task)
            checks.append(trivial)
        initial = fresh()  # its activations are read beside the trained model's
        trained: FitResult | None = None
        with ctx.contained("loss_decreases", checks, "a loss that rises, spikes or stays flat over a short run"):
            model = fresh()
            before = [p.detach().to("cpu", copy=True) for p in model.parameters()]  # none changed: a bug
            trained, dynamics = self._short_run(ctx, "loss_decreases", task, model)
            curve = ctx.save_figure("prediction_dynamics.png", lambda: plots.prediction_dynamics(*dynamics))
            moved = parameter_change(before, trained.model)
            judged = loss_decreases(trained.step_losses, ctx.train.lr, moved, floor=_training_floor(task))
            checks.append(judged.replace(seconds=trained.seconds, artifacts=(curve,)))
        if trained is None:
            return  # everything below compares with the trained model; the error says why there is none
        with ctx.contained("activations", checks, "dead ReLU units, saturated units, scale across depth"):
            stats_init = activation_stats(initial, task, inputs)
            stats_trained = activation_stats(trained.model, task, inputs)
            ctx.save_json("activations.json", {"init": stats_init, "trained": stats_trained})
            judged = activations(stats_init, stats_trained)
            if stats_init:
                figure = ctx.save_figure("activations.png", lambda: plots.activations(stats_init, stats_trained))
                judged = judged.replace(artifacts=(figure,))
            checks.append(judged)
        output, target = self._val_outputs(ctx, trained.model)
        if task.loss == "bce_with_logits":
            checks.append(ctx.check(output_kind, output, target, task))
        if task.kind == "sequence" or holds_targets_ahead(*probe):  # a weak mask can be overcome (minGPT #75)
            after = ctx.check(causal_over_time, trained.model, task, probe[0], probe[1], name="causal")
            prefix = "after the short run: " if after.status == "pass" else ""
            checks.append(after.replace(name="causal_after_training", message=prefix + after.message))

        real = evaluate(task, trained.model, task.val, device)
        curves = {"your model": trained.step_losses}
        bars = {"your model": (real.loss, real.loss_se)}
        figures: dict[str, Any] = {"model": vars(real) | {"per_sample_loss": None}, "trivial": trivial_figures}
        reference = None  # the reference's evaluation shows whether the inputs tell the targets in this budget
        with ctx.contained("simple_model", checks, "a linear model / bigram table as the reference to beat"):
            reference = self._simple_model(ctx, inputs, output, real, trivial_figures, curves, bars, checks)
        with ctx.contained("input_independent", checks, "a model that does not use its inputs"):
            if (unread := target_unread(task, output, target)) is not None:
                checks.append(skipped("input_independent", unread))
            else:
                exchanged_task = exchanged_inputs(task)
                exchanged_run, _ = self._short_run(ctx, "input_independent", exchanged_task, fresh())
                exchanged = evaluate_exchanged(exchanged_task, exchanged_run.model, device, ctx.seed)
                constant = _training_constant(task, exchanged_run.model, ctx.seed, device)
                judged = input_independent(
                    real, exchanged, task, trained.step_losses, exchanged_run.step_losses, constant, reference
                )
                checks.append(judged.replace(seconds=exchanged_run.seconds))
                curves["exchanged inputs"] = exchanged_run.step_losses
                bars["exchanged inputs"] = (exchanged.loss, exchanged.loss_se)
                figures["exchanged_inputs"] = vars(exchanged) | {"per_sample_loss": None}
        for key in ("prior_loss", "unigram_loss", "mean_mse"):
            if key in trivial_figures and (key != "mean_mse" or task.loss == "mse"):
                bars[key.replace("_", " ")] = (trivial_figures[key], trivial_figures[f"{key}_se"])
        checks.append(ctx.check(human_baseline, s.human_baseline, real, task))

        ctx.save_figure(
            "loss_curves.png", lambda: plots.loss_curves(curves, f"Short runs ({s.steps} steps, same budget)")
        )
        ctx.save_figure(
            "baselines.png",
            lambda: plots.baselines(
                bars, "Validation loss after the same budget", "validation loss (± standard error)"
            ),
        )
        ctx.save_json("baselines.json", figures)

    def _simple_model(
        self,
        ctx: Context,
        inputs: Any,
        output: torch.Tensor,
        real: Any,
        trivial_figures: dict[str, Any],
        curves: dict[str, list[float]],
        bars: dict[str, tuple[float, float | None]],
        checks: list[Check],
    ) -> tuple[str, Evaluation] | None:
        """The linear model / bigram table trained with the same budget: the `simple_model` check and its curves;
        returns the reference's description and evaluation (None without a reference)."""
        s, task, device = self.settings, ctx.task, ctx.device
        reference = simple_model_factory(task, inputs, output)
        if reference is None:
            checks.append(skipped("simple_model", "no reference model for non-float inputs; override in a subclass."))
            return None
        factory, description = reference
        simple_task = reference_task(task, factory, inputs, output)
        simple_run, _ = self._short_run(ctx, "simple_model", simple_task, factory().to(device), s.simple_model_lr)
        simple = evaluate(simple_task, simple_run.model, task.val, device)
        constant = next(
            (trivial_figures[k] for k in ("prior_loss", "unigram_loss", "mean_mse") if k in trivial_figures), None
        )
        usable = constant if task.loss in ("cross_entropy", "mse") else None
        checks.append(simple_model(real, simple, usable, task, description).replace(seconds=simple_run.seconds))
        curves[description] = simple_run.step_losses
        bars[description] = (simple.loss, simple.loss_se)
        return description, simple

    def _batch_size(self, ctx: Context) -> Check:
        """The largest batch that fits and still speeds training up (CUDA only); later stages train with it."""
        current = ctx.train.batch_size
        if not self.settings.find_batch_size:
            return skipped("batch_size", f"turned off (baseline.find_batch_size: false); keeping batch_size={current}.")
        if ctx.device.type != "cuda":
            return skipped("batch_size", f"batch-size finder runs on CUDA only; keeping batch_size={current}.")
        s, rungs = ctx.train, list(ctx.task.models)
        largest = rungs[-1] if len(rungs) > 1 else None  # measured on the largest rung: every rung must fit later
        task = ctx.training_task(model=largest) if largest else ctx.training_task()
        try:
            result = find_batch_size(
                task, ctx.device, optimizer=s.optimizer, lr=s.lr, precision=s.precision, seed=ctx.seed,
                progress=ctx.progress,
            )  # fmt: skip
        except NoBatchFitsError as exc:
            return no_batch_fits(exc)
        if largest:
            result.message += f" Measured on the ladder's largest rung, {largest!r}."
        artifacts = (
            ctx.save_json("batch_size.json", result.to_dict()),
            ctx.save_figure(
                "batch_size.png",
                lambda: plots.batch_size_throughput(result.curve, result.batch_size, result.out_of_memory),
            ),
        )
        ctx.learn(train={"batch_size": result.batch_size}, batch_size_rule=result.rule)
        return batch_size_check(result, current).replace(artifacts=artifacts)

    def _val_outputs(self, ctx: Context, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        with torch.no_grad():
            return ctx.task.outputs(model, ctx.task.sample_batch("val", 256, ctx.seed, ctx.device))

    def _seed(self, ctx: Context) -> Check:
        """Two identical short runs on the CPU; a run that goes non-finite is compared up to that step."""
        losses, seconds = [], 0.0
        for _ in range(2):
            try:
                run = ctx.fit(
                    "seed",
                    **REGULARISATION_OFF,
                    device="cpu",
                    max_steps=self.settings.seed_steps,
                    epochs=None,
                    evaluate_every_epoch=False,
                    progress=False,
                    log=None,
                    log_every=self.settings.seed_steps,
                )
                losses.append(run.step_losses)
                seconds += run.seconds
            except NonFiniteError as exc:
                losses.append(exc.losses)
        return seed_reproducible(losses[0], losses[1], ctx.seed).replace(seconds=seconds)

    def _input_batch(self, ctx: Context, inputs: Any, batch: Any) -> Check:
        check, info = input_batch(inputs, ctx.task)
        check = scaled_by_model(check, ctx.task, inputs)
        artifacts: list[str | None] = [ctx.save_json("input_batch.json", info)]
        if (
            isinstance(inputs, torch.Tensor)
            and inputs.is_floating_point()
            and inputs.dim() == 4
            and inputs.shape[1] in (1, 3)
        ):
            _, target = ctx.task.split_batch(batch)
            labels = [str(int(t)) if t.numel() == 1 else "" for t in target[:32].cpu()]
            fig = partial(
                plots.image_grid, inputs[:32].cpu(), labels, "Training batch as the model receives it, with its labels"
            )
            artifacts.append(ctx.save_figure("input_batch.png", fig))
        if "decoded_first_sample" in info:
            artifacts.append(ctx.save_text("input_batch.txt", info["decoded_first_sample"]))
        return check.replace(artifacts=tuple(artifacts))

    def _short_run(
        self, ctx: Context, run: str, task: Task, model: nn.Module, lr: float | None = None
    ) -> tuple[FitResult, tuple[list[int], list[list[float]], str, str]]:
        """Train for the stage's step budget, recording predictions on fixed validation samples as it goes."""
        val_batch = task.sample_batch("val", 16, ctx.seed, ctx.device)
        per_class: bool | None = None  # whether the output holds a logit for each class (None: not recorded)

        def record(step: int, model: nn.Module) -> tuple[int, list[float]]:
            nonlocal per_class
            model.eval()
            with torch.no_grad():
                output, target = task.outputs(model, val_batch)
            model.train()
            per_class = _logit_per_class(task, output, target)
            return step, _prediction_quality(task, output, target)  # kept with the result: a resume replays it

        result = ctx.fit(
            run,
            **REGULARISATION_OFF,
            task=task,
            model=model,
            max_steps=self.settings.steps,
            epochs=None,
            evaluate_every_epoch=False,
            on_log=record,
            **({"lr": lr} if lr is not None else {}),
        )
        what = "prediction (first output)" if per_class is False else "probability of the correct class"
        what = "prediction" if task.kind == "regression" else what
        steps = [int(step) for step, _ in result.log_values]
        rows = [list(row) for _, row in result.log_values]
        return result, (steps, rows, "Prediction dynamics on 16 fixed validation samples", what)


def _training_constant(task: Task, model: nn.Module, seed: int, device: torch.device) -> float:
    """The best constant prediction's loss on the training targets: all of them for the built-in losses, a sample
    of 1,024 scored through `model`'s output shape for a callable one (its search needs an output to start from)."""
    if isinstance(task.loss, str):
        return constant_loss(task, task.targets("train"))
    model.eval()
    with torch.no_grad():
        output, target = task.outputs(model, task.sample_batch("train", min(len(task.train), 1024), seed, device))
    model.train()
    return constant_loss(task, target, output.float())


def _logit_per_class(task: Task, output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether a classifier's output holds a logit for every class its targets name, along the class axis (an
    ordinal model's K - 1 cumulative logits, or an embedding for a custom loss, does not)."""
    if task.kind == "regression" or task.loss == "bce_with_logits":
        return True
    scored = target[target != IGNORE_INDEX]
    top = int(scored.max()) if scored.numel() else 0
    return output.dim() > max(task.class_dim, 0) and output.shape[task.class_dim] > top


def _prediction_quality(task: Task, output: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per sample: the probability given to the correct class / token, or the prediction itself (regression, and
    an output without a logit per class: its first value)."""
    if task.kind == "regression" or not _logit_per_class(task, output, target):
        return output.float().reshape(len(output), -1)[:, 0].tolist()
    if task.loss == "bce_with_logits":
        p = torch.sigmoid(output.float())
        return torch.where(target > 0.5, p, 1 - p).reshape(len(p), -1).mean(1).tolist()
    probs = output.float().softmax(task.class_dim)
    valid = target != IGNORE_INDEX
    picked = probs.gather(task.class_dim, target.clamp_min(0).unsqueeze(task.class_dim)).squeeze(task.class_dim)
    if picked.dim() > 1:  # one class per position (tokens, pixels): the mean over the scored positions
        picked, valid = picked.reshape(len(picked), -1), valid.reshape(len(valid), -1)
        return ((picked * valid).sum(1) / valid.sum(1).clamp_min(1)).tolist()
    return picked.tolist()


def _training_floor(task: Task) -> float:
    """The lowest loss any output reaches on the training targets where it is known without a search: the mean
    entropy of soft targets under the built-in binary cross-entropy (zero on hard ones), else 0."""
    if task.loss != "bce_with_logits":
        return 0.0
    return loss_floor(task, None, task.targets("train", None if isinstance(task.train, TensorSplit) else SCAN_LIMIT))
