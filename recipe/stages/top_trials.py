"""What `tune` does with its best trials: re-run them with other seeds until one holds up (the one handed on), average
the top trials into an ensemble, and distil that ensemble into the handed-on trial's architecture.

    "Model ensembles are a pretty much guaranteed way to gain 2% of accuracy on anything. If you can't afford the
    computation at test time look into distilling your ensemble into a network using dark knowledge."
    — Karpathy, A Recipe for Training Neural Networks, step 6.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipe import checkpoint
from recipe.check import Check, passed, skipped
from recipe.console import doing
from recipe.context import Context
from recipe.diagnostics.search import distillation, rerun_verdict, seed_variance
from recipe.distillation import compare, distillable, with_soft_targets
from recipe.errors import NonFiniteError
from recipe.evaluation import constant_loss, evaluate
from recipe.study_storage import TRIALS
from recipe.tuning import Search, configure

ATTEMPTS = 3  # top trials re-run with other seeds, at most, to find one that holds up (`seed_variance`)


def seed_reruns(ctx: Context, search: Search, finished: list[Any], seeds: int) -> Check:
    """Re-run the best trials with other seeds, best first, until one holds up (`rerun_verdict`)."""
    if seeds < 2:
        return skipped("seed_variance", "tune.seeds < 2.")
    floor = constant_loss(ctx.task, ctx.task.targets("val"))
    attempts = []
    for i, trial in enumerate(finished[:ATTEMPTS]):
        losses, metrics = rerun(ctx, search, trial, seeds)
        runner = finished[i + 1] if i + 1 < len(finished) else None
        ru, ru_se = (runner.value, runner.user_attrs.get("val_loss_se")) if runner else (None, None)
        verdict = rerun_verdict(losses, ru, ru_se, _ceiling(trial, floor))
        attempts.append(
            {"trial": trial.number, "trial_loss": trial.value, "losses": losses, "metrics": metrics}
            | {"runner_up": ru, "verdict": verdict}
        )
        if verdict is None:
            break
    return seed_variance(attempts, ctx.task.metric_name)


def _ceiling(trial: Any, floor: float) -> float | None:
    """The constant prediction's loss, as the line a diverged re-run ends above; None when the trial itself is not
    clearly under it (twice its standard error): a task nothing learns yet is no sign of divergence."""
    se = trial.user_attrs.get("val_loss_se") or 0.0
    return floor if math.isfinite(floor) and trial.value + 2 * se < floor else None


def rerun(ctx: Context, search: Search, trial: Any, seeds: int) -> tuple[list[float], list[float]]:
    """Validation loss and metric of the trial's configuration trained with `seeds` other seeds (NaN: diverged)."""
    settings, task = configure(search.settings(), ctx.task, trial.params)
    losses, metrics = [], []
    for k in range(seeds):
        try:
            with doing("seed", k + 1, seeds):
                run = ctx.fit(
                    f"trial_{trial.number}_seed_{k}",
                    task=task,
                    **{**settings.fit_kwargs(), "epochs": search.epochs, "max_steps": search.max_steps},
                    seed=ctx.seed + 1 + k,
                )
        except NonFiniteError:
            losses.append(math.nan)
            metrics.append(math.nan)
            continue
        ev = evaluate(task, run.model, task.val, ctx.device)
        losses.append(ev.loss)
        metrics.append(ev.metric)
    return losses, metrics


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
    ctx: Context, search: Search, best: Any, members: list[nn.Module], held: dict[str, Any], temperature: float | None
) -> Check:
    """Train the handed-on trial's architecture on the ensemble's soft targets; kept only beyond noise."""
    why = distillable(ctx.task) if temperature is not None else "tune.distill is off"
    if why is None and len(members) < 2:
        why = "no ensemble of two or more trials to distil"
    if why is not None or temperature is None:
        return skipped("distillation", f"{why}.")
    settings, task = configure(search.settings(), ctx.task, best.params)
    student_task = with_soft_targets(task, members, ctx.device, temperature)
    run = ctx.fit(
        "distilled",
        task=student_task,
        **{**settings.fit_kwargs(), "epochs": search.epochs, "max_steps": search.max_steps},
    )
    seed_losses = next((a["losses"] for a in held.get("attempts", []) if a["trial"] == best.number), None)
    gain, noise, mine, theirs = compare(task, run.model, trained(ctx, search, best), ctx.device, seed_losses)
    single_loss = theirs.loss if not seed_losses else gain + mine.loss
    check = distillation(
        gain,
        noise,
        {"val_loss": mine.loss, "val_metric": mine.metric},
        {"val_loss": single_loss, "val_metric": held.get("mean", theirs.metric)},
        ctx.task.metric_name,
    )
    if check.value and check.value["kept"]:
        ctx.learn(distilled=True)
        path = ctx.rundir.stage_dir("tune") / "distilled.pt"
        checkpoint.save_atomic(run.model.state_dict(), path)  # the same architecture as best.pt
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
