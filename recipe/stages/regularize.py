"""Stage `regularize`: trade some training fit for validation performance, one regulariser at a time.

    "Get more data ... data augment ... decrease the batch size ... add dropout ... weight decay ... early stopping
    ... try a smaller model ... decrease the input dimensionality ... Finally, to gain additional confidence that
    your network is a reasonable classifier, I like to visualize the network's first-layer weights."
    — Karpathy, A Recipe for Training Neural Networks, step 4.

From the setup the earlier stages chose, each regulariser is trained on top of what was kept so far, and kept only
when it lowers the validation loss by more than twice the noise: the paired per-sample standard error and the
difference between two seeds of the same setup. A pretrained rung on the task's ladder ("pretrain: it rarely ever
hurts") goes last, by the same rule: its inputs checked against the normalisation recorded with its weights, then
fine-tuned frozen-then-unfrozen (`recipe.transfer`) against the setup trained from scratch. The result goes to
`tune` through the context and as config.yaml.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch import nn

from recipe import plots
from recipe.check import Check, skipped
from recipe.config import require
from recipe.console import doing
from recipe.context import Context, accepts, model_factory
from recipe.data import fixed_indices
from recipe.diagnostics.filters import first_layer, first_layer_filters
from recipe.diagnostics.pretrained import pretrained_inputs
from recipe.diagnostics.regularization import (
    Trial,
    best_trial,
    chosen_regularization,
    feature_ablation,
    more_data,
    paired_gain,
    regularizer,
)
from recipe.diagnostics.suspect_labels import apply_label_fix, label_fixes, suspect_labels
from recipe.errors import NonFiniteError
from recipe.evaluation import Evaluation, constant_loss, evaluate
from recipe.loop import FitResult
from recipe.model_io import runnable_config, save_model
from recipe.stage import Stage, StageSettings
from recipe.stages.augmentation import augmentation_checks
from recipe.task import Task
from recipe.transfer import Pretrained, fine_tune

REGULARIZERS = ("weight_decay", "dropout", "augmentation", "early_stopping", "smaller_model")


@dataclass(frozen=True)
class RegularizeSettings(StageSettings):
    """Settings of the `regularize` stage.

    Args:
        epochs: epochs per trial; None for `train.epochs` (the budget `complexify` trained with, when it sets one).
        max_steps: optimizer steps per trial at most; None for the epochs alone. Bounds the stage on large models.
        train_eval_size: training samples (a fixed sample) on which each trial's training loss is measured.
        data_fractions: fractions of the training split for the learning curve, besides all of it; () to skip.
        weight_decays: weight decay values to try (decoupled, AdamW's 0.01 default and a decade either side).
        dropouts: dropout rates to try, when the model factory takes a `dropout` argument.
        patience: early-stopping patience in epochs; None to skip the trial.
        smaller_model: try the ladder rung below the chosen one.
        augmentation_samples: samples compared before and after the task's augmentation.
        overfit_batch_size: samples in the batch overfit under augmentation.
        overfit_steps: optimizer steps for it.
        overfit_lr: learning rate for it.
        max_features: at most this many tabular features are ablated one by one (more: the check is skipped).
    """

    epochs: int | None = None
    max_steps: int | None = 300
    train_eval_size: int = 1024
    data_fractions: tuple[float, ...] = (0.25, 0.5)
    weight_decays: tuple[float, ...] = (0.01, 0.1, 1.0)
    dropouts: tuple[float, ...] = (0.1, 0.3)
    patience: int | None = 3
    smaller_model: bool = True
    augmentation_samples: int = 64
    overfit_batch_size: int = 16
    overfit_steps: int = 300
    overfit_lr: float = 1e-3
    max_features: int = 100

    def __post_init__(self) -> None:
        counts = ["epochs", "max_steps", "train_eval_size", "patience", "augmentation_samples", "overfit_batch_size"]
        require(self, "regularize", counts=[*counts, "overfit_steps", "max_features"], positive=["overfit_lr"])
        require(self, "regularize", positive=["data_fractions"], fractions=["data_fractions", "dropouts"])
        require(self, "regularize", non_negative=["weight_decays"])


class Regularize(Stage):
    """One regulariser at a time on top of the chosen setup; keep what improves validation beyond noise."""

    name = "regularize"
    settings_cls = RegularizeSettings
    settings: RegularizeSettings

    def run(self, ctx: Context) -> list[Check]:
        start = self._trial(ctx, "reference", {})  # a run that diverges here fails the stage (non_finite)
        second = self._trial(ctx, "reference_seed", {}, seed=ctx.seed + 1)
        assert start.val is not None and second.val is not None
        seed_noise = abs(paired_gain(start.val, second.val)[0])
        checks = [ctx.check(self._more_data, ctx, start, seed_noise)]
        with ctx.contained("augmentation_invariances", checks, "the augmentation against the declared invariances"):
            s = self.settings
            checks += augmentation_checks(
                ctx, s.augmentation_samples, s.overfit_batch_size, s.overfit_steps, s.overfit_lr
            )
        augmentation_ok = all(c.status != "fail" for c in checks)
        current, trials, kept = start, [start], []
        for k, name in enumerate(REGULARIZERS, 1):
            candidates = self._candidates(ctx, name, augmentation_ok, start.epochs)
            if isinstance(candidates, str):
                checks.append(skipped(name, candidates))
                continue
            tried: list[Trial] = []
            probing = f"regulariser {name}, kept only if validation improves beyond noise"
            with ctx.contained(name, checks, probing), doing(f"regulariser {name}", k, len(REGULARIZERS)):
                tried = [self._trial(ctx, _label(changes), changes, diverge_ok=True) for changes in candidates]
                check = regularizer(name, current, tried, seed_noise)
                checks.append(check.replace(seconds=sum(t.seconds for t in tried)))
            if checks[-1].status == "error":
                continue  # this regulariser could not be judged: keep the current setup
            trials += tried
            best = best_trial(current, tried, seed_noise)
            if best is not None:
                ctx.learn(train=best.changes)
                current = best
                kept.append(best)
        with ctx.contained("pretrained", checks, "pretrained rungs fine-tuned against the model trained from scratch"):
            found, tried = self._pretrained(ctx, current, seed_noise)
            checks, trials = checks + found, trials + tried
            best = best_trial(current, tried, seed_noise)
            if best is not None:
                ctx.learn(train=best.changes)
                current = best
                kept.append(best)
        with ctx.contained("suspect_labels", checks, "training without inspect's suspect labels, or relabelled"):
            current = self._suspect_labels(ctx, current, seed_noise, checks, trials, kept)
        assert current.model is not None
        checks.append(ctx.check(self._feature_ablation, ctx, current.model))
        checks.append(ctx.check(self._first_layer, ctx, current.model, current.val))
        checks.append(ctx.check(self._summary, ctx, trials, kept, name="chosen_regularization"))
        return checks

    def _trial(
        self,
        ctx: Context,
        label: str,
        changes: dict[str, Any],
        task: Task | None = None,
        diverge_ok: bool = False,
        **overrides: Any,
    ) -> Trial:
        """Train the current setup with `changes` (training settings) and evaluate it; a diverged run has no `val`
        when `diverge_ok`, else its NonFiniteError propagates."""
        s = dataclasses.replace(ctx.train, **changes)
        task = task or ctx.training_task(model=s.model, dropout=s.dropout)
        try:
            result = ctx.fit(
                label,
                task=task,
                weight_decay=s.weight_decay,
                augment=s.augment,
                early_stopping=s.early_stopping,
                **{"epochs": self.settings.epochs or s.epochs, "max_steps": self.settings.max_steps, **overrides},
            )
        except NonFiniteError:
            if not diverge_ok:
                raise
            return Trial(label, changes)
        probe = task.subset("train", fixed_indices(len(task.train), self.settings.train_eval_size, ctx.seed))
        val = evaluate(ctx.task, result.model, ctx.task.val, ctx.device)
        train = evaluate(ctx.task, result.model, probe.train, ctx.device)
        return Trial(label, changes, val, train.loss, result.steps, len(result.history), result.seconds, result.model)

    def _candidates(self, ctx: Context, name: str, augmentation_ok: bool, epochs: int) -> list[dict[str, Any]] | str:
        """The training-setting changes to try for regulariser `name`, or why it is not tried."""
        s, train, task = self.settings, ctx.train, ctx.task
        if name == "weight_decay":
            values = [v for v in s.weight_decays if v != train.weight_decay]
            return [{"weight_decay": v} for v in values] or "no weight_decays to try (regularize.weight_decays)."
        if name == "dropout":
            if not accepts(model_factory(task, train.model), "dropout"):
                return "the model factory takes no `dropout` argument."
            return [{"dropout": p} for p in s.dropouts if p != train.dropout] or "no dropouts to try."
        if name == "augmentation":
            if task.augmentation is None:
                return "the task has no training-time augmentation (Task(augment=...))."
            if train.augment:
                return "augmentation is already on in the training settings."
            return [{"augment": True}] if augmentation_ok else "the augmentation failed its checks; fix it first."
        if name == "early_stopping":
            if s.patience is None or train.early_stopping is not None:
                return "early stopping is already on, or regularize.patience is None."
            if epochs <= s.patience:
                return f"each trial runs {epochs} epoch(s), too few for a patience of {s.patience} to stop anything."
            return [{"early_stopping": s.patience}]
        rungs = [r for r, factory in task.models.items() if not isinstance(factory, Pretrained)]
        if not s.smaller_model or train.model not in rungs or rungs.index(train.model) == 0:
            return "no smaller rung below the chosen model on the task's ladder (Task(models=...))."
        smaller = rungs[rungs.index(train.model) - 1]
        keeps_dropout = train.dropout is None or accepts(model_factory(task, smaller), "dropout")
        return [{"model": smaller} if keeps_dropout else {"model": smaller, "dropout": None}]

    def _pretrained(self, ctx: Context, current: Trial, seed_noise: float) -> tuple[list[Check], list[Trial]]:
        """Each pretrained rung on the ladder: its inputs against the normalisation recorded with its weights, then
        fine-tuned (`recipe.transfer.fine_tune`) with the current setup's budget and regularisers against `current`."""
        task, s = ctx.task, ctx.train
        rungs = {name: f for name, f in task.models.items() if isinstance(f, Pretrained)}
        if not rungs or isinstance(model_factory(task, s.model), Pretrained):
            return [skipped("pretrained", "no pretrained rung to compare with training from scratch.")], []
        inputs, _ = task.split_batch(task.sample_batch("train", 1024, ctx.seed))
        checks, tried = [], []
        for name, rung in rungs.items():
            checks.append(ctx.check(pretrained_inputs, inputs, rung, name))
            if checks[-1].status == "fail":
                continue  # fine-tuning on inputs the weights never saw would only measure the bug
            changes = {"model": name, "lr": s.lr * rung.lr_factor}
            if not accepts(rung, "dropout"):
                changes["dropout"] = None
            fit = functools.partial(self._fine_tune_phase, ctx, name)
            settings = {"task": task.replace(model=rung), "weight_decay": s.weight_decay, "augment": s.augment}
            try:
                head, run = fine_tune(fit, rung, s.lr, current.steps, early_stopping=s.early_stopping, **settings)
            except NonFiniteError:
                tried.append(Trial(f"model={name}, fine-tuned", changes))
                continue
            probe = task.subset("train", fixed_indices(len(task.train), self.settings.train_eval_size, ctx.seed))
            val, train = (evaluate(task, run.model, split, ctx.device) for split in (task.val, probe.train))
            steps, epochs = head.steps + run.steps, len(head.history) + len(run.history)
            label, seconds = f"model={name}, fine-tuned", head.seconds + run.seconds
            tried.append(Trial(label, changes, val, train.loss, steps, epochs, seconds, run.model))
        check = regularizer("pretrained", current, tried, seed_noise)
        return [*checks, check.replace(seconds=sum(t.seconds for t in tried))], tried

    def _fine_tune_phase(self, ctx: Context, name: str, phase: str, **settings: Any) -> FitResult:
        return ctx.fit(f"pretrained_{name}_{phase}", **settings)

    def restore(self, ctx: Context) -> None:
        fix = ctx.learned.get("regularize", {}).get("label_fix")
        if fix:  # the kept fix of the suspect labels: later stages train on the changed split
            ctx.task = apply_label_fix(ctx.task, fix)

    def _suspect_labels(
        self,
        ctx: Context,
        current: Trial,
        seed_noise: float,
        checks: list[Check],
        trials: list[Trial],
        kept: list[Trial],
    ) -> Trial:
        """Inspect's suspect labels dropped, or relabelled to the confident prediction, against the current setup; a
        fix that improves validation beyond noise is kept, and the later stages train on the changed split."""
        found = ctx.learned.get("inspect", {}).get("label_issues")
        if not found or not found.get("indices"):
            checks.append(skipped("suspect_labels", "inspect found no suspect labels (or did not run)."))
            return current
        fixes = label_fixes(ctx.task, found)
        tried = [self._trial(ctx, label, {}, ctx.training_task(t), diverge_ok=True) for label, t in fixes.items()]
        check = suspect_labels(current, tried, seed_noise, ctx.task.metric_name)
        checks.append(check.replace(seconds=sum(t.seconds for t in tried)))
        trials += tried
        best = best_trial(current, tried, seed_noise)
        if best is None:
            return current
        ctx.task = fixes[best.label]
        ctx.learn(label_fix={"action": best.label.split()[0], **found})
        kept.append(best)
        return best

    def _more_data(self, ctx: Context, full: Trial, seed_noise: float) -> Check:
        """The learning curve: the same setup and step budget on nested fractions of the training split."""
        n = len(ctx.task.train)
        sizes = sorted({round(f * n) for f in self.settings.data_fractions if 0 < round(f * n) < n})
        if not sizes:
            return skipped("more_data", "no data_fractions below 1 to draw a learning curve with.")
        curve = []
        for size in sizes:
            subset = ctx.training_task().subset("train", fixed_indices(n, size, ctx.seed))
            budget = {"max_steps": full.steps, "epochs": None}
            curve.append((size, self._trial(ctx, f"more_data_{size}", {}, subset, diverge_ok=True, **budget)))
        curve.append((n, full))
        check = more_data(curve, seed_noise)
        done = [(size, t) for size, t in curve if t.val is not None and t.train_loss is not None]
        if len(done) < 2:
            return check
        fig = functools.partial(
            plots.learning_curve,
            [size for size, _ in done],
            [t.train_loss or 0.0 for _, t in done],
            [t.val.loss for _, t in done if t.val is not None],
            [t.val.loss_se or 0.0 for _, t in done if t.val is not None],
            f"Learning curve ({full.steps} steps each)",
        )
        seconds = sum(t.seconds for _, t in curve[:-1])
        return check.replace(artifacts=(ctx.save_figure("learning_curve.png", fig),), seconds=seconds)

    def _feature_ablation(self, ctx: Context, model: nn.Module) -> Check:
        task = ctx.task
        inputs, target = task.split_batch(task.sample_batch("val", 4096, ctx.seed, ctx.device))
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 2 and inputs.shape[1] > self.settings.max_features:
            return skipped("feature_ablation", f"{inputs.shape[1]} features > regularize.max_features.")
        check = ctx.check(feature_ablation, task, model, inputs, target, ctx.seed)
        if check.status == "skip":
            return check
        importance, se = check.value["importance"], check.value["se"]
        names = check.value.get("names") or [f"feature {j}" for j in range(len(importance))]
        unit = "input tensor" if "names" in check.value else "feature"
        order = sorted(range(len(importance)), key=importance.__getitem__)[:40]
        fig = functools.partial(
            plots.baselines,
            {names[j]: (importance[j], se[j]) for j in order},
            f"Validation loss increase when one {unit} is shuffled (least important first)",
            "increase in validation loss (± SE)",
        )
        table = {
            "columns": [unit, "loss increase when shuffled", "SE", "candidate to remove"],
            "rows": [
                [
                    names[j] if unit != "feature" else j,
                    f"{importance[j]:.4g}",
                    f"{se[j]:.2g}",
                    j in check.value["candidates"],
                ]
                for j in order
            ],
        }
        artifacts = (ctx.save_figure("feature_ablation.png", fig), ctx.save_json("feature_ablation.table.json", table))
        return check.replace(artifacts=artifacts)

    def _first_layer(self, ctx: Context, model: nn.Module, val: Evaluation | None) -> Check:
        inputs, _ = ctx.task.split_batch(ctx.task.sample_batch("val", 2, ctx.seed, ctx.device))
        found = first_layer_filters(model, ctx.task, inputs)
        if found is None:
            return skipped("first_layer", "not an image model whose first Linear/Conv2d layer can be drawn.")
        layer, filters = found
        learned = None if val is None else (val.loss, constant_loss(ctx.task, ctx.task.targets("val")))
        check = ctx.check(first_layer, filters, layer, learned=learned)
        fig = functools.partial(
            plots.image_grid, filters[:64], [""] * 64, f"First-layer weights ({layer}), after regularize's training"
        )
        return check.replace(artifacts=(ctx.save_figure("first_layer.png", fig),))

    def _summary(self, ctx: Context, trials: list[Trial], kept: list[Trial]) -> Check:
        """The table and plot of every trial's train/validation gap, and the configuration handed to `tune`."""
        start, metric = trials[0], ctx.task.metric_name
        final = kept[-1] if kept else start
        check = chosen_regularization(start, final, [t.label for t in kept], metric)
        rows = [_row(t, t in kept) for t in trials]
        columns = ["trial", "steps", "epochs", "train loss", "val loss", "gap", f"val {metric}", "kept"]
        gaps = [(t.label, t.train_loss, t.val.loss, t in kept) for t in trials if t.val and t.train_loss is not None]
        config = runnable_config(ctx.source, ctx.train, run_dir=str(ctx.rundir.path), seed=ctx.seed, stages=["tune"])
        header = "" if "task" in config else "# add `task: module:function` to run this with `recipe run`\n"
        artifacts = (
            ctx.save_json("trials.table.json", {"columns": columns, "rows": rows}),
            ctx.save_figure("train_val_gap.png", lambda: plots.train_val_gap(gaps, "Train/validation gap per trial")),
            ctx.save_text("config.yaml", header + yaml.safe_dump(config, sort_keys=False)),
        )
        assert final.val is not None and final.model is not None
        model_pt = f"{ctx.rundir.stage_dir(self.name).name}/model.pt"  # recipe.load_model(run_dir) before tune runs
        save_model(ctx.rundir, model_pt, final.model, ctx.task, ctx.train, final.val, ctx.source)
        ctx.learn(kept=[t.label for t in kept], val_loss=final.val.loss, **{f"val_{metric}": final.val.metric})
        return check.replace(artifacts=artifacts)


def _label(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items())


def _row(t: Trial, kept: bool) -> list[Any]:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    val, metric = (t.val.loss, t.val.metric) if t.val is not None else (None, None)
    return [t.label, t.steps, t.epochs, fmt(t.train_loss), fmt(val), fmt(t.gap), fmt(metric), "yes" if kept else ""]
