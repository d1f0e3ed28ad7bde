"""What `tune` does with its best trials: re-run them with other seeds until one holds up (the one handed on), average
the top trials into an ensemble, and distil that ensemble into the handed-on trial's architecture.

    "Model ensembles are a pretty much guaranteed way to gain 2% of accuracy on anything. If you can't afford the
    computation at test time look into distilling your ensemble into a network using dark knowledge."
    — Karpathy, A Recipe for Training Neural Networks, step 6.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipe import checkpoint
from recipe.check import Check, passed, skipped
from recipe.console import doing
from recipe.context import Context
from recipe.diagnostics.search import beats_incoming, distillation, rerun_verdict, seed_variance
from recipe.distillation import compare, distillable, with_soft_targets
from recipe.errors import NonFiniteError
from recipe.evaluation import constant_loss, evaluate
from recipe.model_io import save_model
from recipe.search_space import TRAIN_KEYS
from recipe.study_storage import TRIALS
from recipe.tuning import Search, configure

ATTEMPTS = 3  # top trials re-run with other seeds, at most, to find one that holds up (`seed_variance`)
INCOMING = -1  # the key of the re-runs of the setup tune started from, among the trials' (`against_incoming`)


@dataclass
class Reruns:
    """One configuration trained again with other seeds: validation losses and metrics, one per seed (NaN:
    diverged), the per-sample validation losses averaged over the re-runs that trained, and the first one's model."""

    losses: list[float]
    metrics: list[float]
    per_sample: torch.Tensor | None = None
    model: nn.Module | None = None


def seed_reruns(ctx: Context, search: Search, finished: list[Any], seeds: int, reruns: dict[int, Reruns]) -> Check:
    """Re-run the best trials with other seeds, best first, until one holds up (`rerun_verdict`); each trial's
    re-runs are left in `reruns` by trial number."""
    if seeds < 2:
        return skipped("seed_variance", "tune.seeds < 2.")
    floor = constant_loss(ctx.task, ctx.task.targets("val"))
    attempts = []
    for i, trial in enumerate(finished[:ATTEMPTS]):
        again = reruns[trial.number] = rerun(ctx, search, trial.params, f"trial_{trial.number}", seeds)
        runner = finished[i + 1] if i + 1 < len(finished) else None
        ru, ru_se = (runner.value, runner.user_attrs.get("val_loss_se")) if runner else (None, None)
        verdict = rerun_verdict(again.losses, ru, ru_se, _ceiling(trial, floor))
        attempts.append(
            {"trial": trial.number, "trial_loss": trial.value, "losses": again.losses, "metrics": again.metrics}
            | {"runner_up": ru, "verdict": verdict}
        )
        if verdict is None:
            break
    return seed_variance(attempts, ctx.task.metric_name)


def against_incoming(ctx: Context, search: Search, handed_on: int | None, reruns: dict[int, Reruns]) -> Check:
    """Train the setup tune started from with the handed-on trial's seeds and epochs (left in `reruns` under
    `INCOMING`), and judge whether the tuned setting beats it (`beats_incoming`)."""
    tuned = reruns.get(handed_on) if handed_on is not None else None
    if tuned is None:  # tune.seeds < 2, or seed_variance handed no trial on (it says why)
        return skipped(
            "beats_incoming",
            "no seed re-runs of a handed-on trial (tune.seeds < 2, or none trains stably: see seed_variance), so "
            "nothing to compare with the setup tune started from at equal footing.",
        )
    start = reruns[INCOMING] = rerun(ctx, search, {}, "incoming", len(tuned.losses))
    paired = 0.0
    if tuned.per_sample is not None and start.per_sample is not None and len(tuned.per_sample) > 1:
        paired = float((start.per_sample - tuned.per_sample).std()) / math.sqrt(len(tuned.per_sample))
    return beats_incoming(
        {"trial": handed_on, "losses": tuned.losses, "metrics": tuned.metrics},
        {"losses": start.losses, "metrics": start.metrics},
        paired,
        ctx.task.metric_name,
    )


def _ceiling(trial: Any, floor: float) -> float | None:
    """The constant prediction's loss, as the line a diverged re-run ends above; None when the trial itself is not
    clearly under it (twice its standard error): a task nothing learns yet is no sign of divergence."""
    se = trial.user_attrs.get("val_loss_se") or 0.0
    return floor if math.isfinite(floor) and trial.value + 2 * se < floor else None


def rerun(ctx: Context, search: Search, params: dict[str, Any], run: str, seeds: int) -> Reruns:
    """The configuration `params` (a trial's; {} for the setup tune started from) trained with `seeds` other seeds,
    for the trials' epochs, each evaluated on validation."""
    settings, task = configure(search.settings(), ctx.task, params)
    out = Reruns([], [])
    samples = []
    for k in range(seeds):
        try:
            with doing("seed", k + 1, seeds):
                trained = ctx.fit(
                    f"{run}_seed_{k}",
                    task=task,
                    **{**settings.fit_kwargs(), "epochs": search.epochs, "max_steps": search.max_steps},
                    seed=ctx.seed + 1 + k,
                )
        except NonFiniteError:
            out.losses.append(math.nan)
            out.metrics.append(math.nan)
            continue
        ev = evaluate(task, trained.model, task.val, ctx.device)
        out.losses.append(ev.loss)
        out.metrics.append(ev.metric)
        out.model = out.model or trained.model.eval()
        if ev.per_sample_loss is not None:
            samples.append(ev.per_sample_loss.float().cpu())
    if samples and all(s.shape == samples[0].shape for s in samples):
        out.per_sample = torch.stack(samples).mean(0)
    return out


def ensemble(ctx: Context, search: Search, finished: list[Any], size: int, members: list[nn.Module]) -> Check:
    """Average the top trials' predictions on validation; report the gain over the best single model. The
    members are left in `members` for `distil`."""
    top = finished[:size]
    if len(top) < 2:
        return skipped("ensemble", "fewer than two finished trials to ensemble.")
    outputs, target = [], None
    for t in top:
        model = trained(ctx, search, t)
        members.append(model)
        with torch.no_grad():
            batch = ctx.task.batch("val", list(range(len(ctx.task.val))), ctx.device)
            output, target = ctx.task.outputs(model, batch)
        outputs.append(output.float())
    mean = average(outputs, ctx.task.loss, ctx.task.class_dim)
    assert target is not None
    loss = float(ctx.task.compute_loss(mean, target))
    metric = float(ctx.task.metric_per_sample(mean, target).mean())
    best_metric = top[0].user_attrs.get("val_metric", float("nan"))
    value = {"members": [t.number for t in top], "val_loss": loss, f"val_{ctx.task.metric_name}": metric}
    return passed(
        "ensemble",
        f"the top {len(top)} trials averaged: validation loss {loss:.4g} against {top[0].value:.4g} for the best "
        f"alone; {ctx.task.metric_name} {metric:.4g} against {best_metric:.4g}.",
        value,
    )


def distil(
    ctx: Context,
    search: Search,
    chosen: dict[str, Any],
    single: nn.Module,
    reference: Reruns | None,
    members: list[nn.Module],
    temperature: float | None,
) -> Check:
    """Train the handed-on setup's architecture (`chosen`: its parameters) on the ensemble's soft targets; kept,
    as `06_tune/distilled.pt` (the model `load_model` returns), only when it beats the handed-on setup beyond noise:
    its seed re-runs' mean (`reference`) when there are re-runs, else `single`, the model it is compared with."""
    why = distillable(ctx.task) if temperature is not None else "tune.distill is off"
    if why is None and len(members) < 2:
        why = "no ensemble of two or more trials to distil"
    if why is not None or temperature is None:
        return skipped("distillation", f"{why}.")
    settings, task = configure(search.settings(), ctx.task, chosen)
    student_task = with_soft_targets(task, members, ctx.device, temperature)
    run = ctx.fit(
        "distilled",
        task=student_task,
        **{**settings.fit_kwargs(), "epochs": search.epochs, "max_steps": search.max_steps},
    )
    seed_losses = reference.losses if reference is not None else None
    gain, noise, mine, theirs = compare(task, run.model, single, ctx.device, seed_losses)
    metric = statistics.fmean(reference.metrics) if reference is not None else theirs.metric
    check = distillation(
        gain,
        noise,
        {"val_loss": mine.loss, "val_metric": mine.metric},
        {"val_loss": theirs.loss if not seed_losses else gain + mine.loss, "val_metric": metric},
        ctx.task.metric_name,
    )
    if check.value and check.value["kept"]:
        ctx.learn(distilled=True)
        extra = {k: v for k, v in chosen.items() if k not in TRAIN_KEYS}
        settings = dataclasses.replace(settings, epochs=search.epochs, model_args={**settings.model_args, **extra})
        relative = f"{ctx.rundir.stage_dir('tune').name}/distilled.pt"
        save_model(ctx.rundir, relative, run.model, ctx.task, settings, mine, ctx.source, extra)
    return check


def trained(ctx: Context, search: Search, trial: Any) -> nn.Module:
    """The model a finished trial trained, rebuilt from its configuration and weights, in eval mode."""
    _, task = configure(search.settings(), ctx.task, trial.params)
    model = task.make_model().to(ctx.device)
    model.load_state_dict(checkpoint.load(Path(search.run_dir) / TRIALS / f"trial_{trial.number}.pt"))
    return model.eval()


def average(outputs: list[torch.Tensor], loss: Any, class_dim: int) -> torch.Tensor:
    """Average probabilities (returned as log-probabilities, so cross-entropy reads them as logits) or outputs."""
    if loss == "cross_entropy":
        probs = torch.stack([o.softmax(class_dim) for o in outputs]).mean(0)
        return probs.clamp_min(1e-12).log()
    if loss == "bce_with_logits":
        p = torch.stack([o.sigmoid() for o in outputs]).mean(0).clamp(1e-6, 1 - 1e-6)
        return (p / (1 - p)).log()
    return torch.stack(outputs).mean(0)
