"""The baselines a model must beat.

Why: recipe step 2: "add significant digits to your eval", "get dumb baselines", "input-independent baseline";
catalog E4 (no better than a dumb baseline).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import batch_size_of, tree_map
from recipe.evaluation import Evaluation, evaluate
from recipe.task import IGNORE_INDEX, Task


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.float()
    return float(values.mean()), float(values.std() / math.sqrt(len(values))) if len(values) > 1 else 0.0


def trivial_baselines(task: Task) -> tuple[Check, dict[str, Any]]:
    """The dumb baselines on the whole validation split: majority class and label prior (classification), the
    training mean (regression), a unigram model (sequences).

    Why: recipe step 2, "get dumb baselines"; catalog E4. Every figure carries its standard error. With class
    weights the prior is the counts times the weights and its loss the weighted mean, as the model's loss is taken.
    """
    ytr, yva = task.targets("train"), task.targets("val")
    out: dict[str, Any] = {}
    if task.loss in ("cross_entropy",) and task.kind in ("classification", "sequence"):
        train_valid = ytr[ytr != IGNORE_INDEX]  # cross-entropy leaves these positions (padding) unscored
        counts = torch.bincount(train_valid.long().reshape(-1), minlength=task.num_classes or 0).float() + 1.0
        weights = task.class_weights if task.class_weights is not None else torch.ones(len(counts))
        weighted = (counts * weights).clamp_min(1e-6)
        log_prior = (weighted / weighted.sum()).log()
        val = yva.reshape(len(yva), -1).long()
        mask = (val != IGNORE_INDEX).float()
        safe = val.clamp_min(0)
        scored = mask * weights[safe]  # each position's weight in the loss
        per_sample_loss = -(log_prior[safe] * scored).sum(1) / scored.sum(1).clamp_min(1e-12)
        sample_weights = task.sample_weights(yva)
        if sample_weights is not None:  # one class per sample: the weighted mean over the split, as `evaluate`'s
            per_sample_loss = per_sample_loss * sample_weights / sample_weights.mean()
        per_sample_acc = ((safe == counts.argmax()).float() * mask).sum(1) / mask.sum(1).clamp_min(1)
        name = "unigram" if task.kind == "sequence" else "prior"
        out[f"{name}_loss"], out[f"{name}_loss_se"] = _mean_se(per_sample_loss)
        out["majority_accuracy"], out["majority_accuracy_se"] = _mean_se(per_sample_acc)
        text = (
            f"{'unigram' if task.kind == 'sequence' else 'label-prior'} loss {out[f'{name}_loss']:.4f} "
            f"± {out[f'{name}_loss_se']:.4f}, majority-{'token' if task.kind == 'sequence' else 'class'} "
            f"accuracy {out['majority_accuracy']:.4f} ± {out['majority_accuracy_se']:.4f}"
        )
    elif task.kind == "regression" and task.loss in ("mse", "l1"):
        mean = ytr.float().mean(0)
        err = (yva.float() - mean).reshape(len(yva), -1)
        out["mean_mse"], out["mean_mse_se"] = _mean_se((err**2).mean(1))
        out["mean_mae"], out["mean_mae_se"] = _mean_se(err.abs().mean(1))
        text = (
            f"predicting the training mean: val MSE {out['mean_mse']:.4g} ± {out['mean_mse_se']:.2g}, "
            f"MAE {out['mean_mae']:.4g} ± {out['mean_mae_se']:.2g}"
        )
    else:
        return skipped("trivial_baselines", "no standard dumb baseline for this loss."), out
    return passed("trivial_baselines", f"on {len(yva)} validation samples: {text}.", out), out


def exchange_samples(inputs: Any) -> Any:
    """The batch's inputs with each sample given another sample's: a random cycle over the batch (no sample keeps
    its own; a batch of one cannot exchange), applied alike to every tensor whose first axis is the batch's, so a
    sample's token ids, mask and lengths move together. Draws from torch's global generator, which `fit` seeds."""
    n = batch_size_of(inputs)
    order = torch.randperm(n)
    source = torch.empty_like(order)
    source[order] = order.roll(1)  # sample order[k] reads the inputs of sample order[k-1]
    return tree_map(lambda t: t[source.to(t.device)] if t.dim() and t.shape[0] == n else t, inputs)


def exchanged_inputs(task: Task) -> Task:
    """The input-independent variant of `task`: the model sees another sample's inputs, in training and evaluation.

    Why: the baseline must carry no information about a sample's target and stay a valid input. Zeroing fails the
    second half for tokens (all ids become 0, often the pad id: an all-pad sequence makes `pack_padded_sequence`
    raise, an all-masked attention row gives NaN) and for masks; another sample's inputs are as valid as the data,
    keep its distribution exactly, and tell nothing about this sample's target.
    """
    return task.replace(input_transform=exchange_samples)


def evaluate_exchanged(task: Task, model: nn.Module, device: torch.device, seed: int) -> Evaluation:
    """`evaluate` of an `exchanged_inputs` variant over the validation split drawn in a random order, its per-sample
    losses put back in the split's order (to pair them with the real inputs'). In the split's own order a batch of
    neighbours (a split sorted by class) would exchange inputs that still tell the class."""
    order = torch.randperm(len(task.val), generator=torch.Generator().manual_seed(seed))
    result = evaluate(task, model, task.subset("val", order.tolist()).val, device)
    if result.per_sample_loss is not None:
        back = torch.empty_like(result.per_sample_loss)
        back[order] = result.per_sample_loss
        result.per_sample_loss = back
    return result


def trained_at_all(step_losses: list[float], fraction: float = 0.1) -> bool:
    """Whether a short run's training loss fell: the mean of its last `fraction` of steps lies more than three
    standard errors of its first `fraction` below them. Memorising misaligned labels still lowers it; a learning
    rate far too low, or gradients that never reach the weights, do not."""
    n = max(2, int(len(step_losses) * fraction))
    if len(step_losses) < 2 * n:
        return True  # too short to tell: judge on the validation comparison alone
    first, last = torch.tensor(step_losses[:n]), torch.tensor(step_losses[-n:])
    se = float(first.std() / math.sqrt(n)) + float(last.std() / math.sqrt(n))
    return bool(torch.isfinite(last).all()) and float(first.mean() - last.mean()) > 3 * se


def _metric_gain(real: Evaluation, exchanged: Evaluation, task: Task) -> tuple[float, float]:
    """How much better the metric is with real inputs than with exchanged ones (higher is better for either
    direction of metric), and the standard error of that difference (unpaired: conservative); nan, 0 unknown."""
    if real.metric_se is None or exchanged.metric_se is None or not math.isfinite(real.metric - exchanged.metric):
        return math.nan, 0.0
    sign = 1.0 if task.higher_is_better else -1.0
    return sign * (real.metric - exchanged.metric), math.hypot(real.metric_se, exchanged.metric_se)


def _ending(step_losses: list[float] | None) -> float:
    """The median of a run's last tenth of training losses (nan when there are none or one is not finite)."""
    tail = torch.tensor((step_losses or [math.nan])[-max(2, len(step_losses or ()) // 10) :])
    return float(tail.median()) if bool(torch.isfinite(tail).all()) else math.nan


def input_independent(
    real: Evaluation,
    exchanged: Evaluation,
    task: Task,
    train_losses: list[float] | None = None,
    exchanged_losses: list[float] | None = None,
    constant: float | None = None,
    reference: tuple[str, Evaluation] | None = None,
) -> Check:
    """Catches a model that does not use its inputs: labels misaligned or shuffled against the inputs, a forward
    that ignores x. The same model trained for the same budget on inputs exchanged between samples (each sees
    another sample's input: `exchanged_inputs`) must do clearly worse.

    Why: recipe step 2, "input-independent baseline"; catalog D1, M12 (overfit-one-batch passes with shuffled
    labels). The comparison is paired per validation sample, so its standard error is honest. A verdict needs the
    short run to have trained at all (`train_losses` fell beyond noise: memorising shuffled labels does that),
    and a failing one needs the budget to have sufficed for the input-free run to learn what a model without
    inputs can (`exchanged_losses` ended near `constant`, the best constant prediction's loss on the training
    targets): until then the two runs differ by how far each has come, not by what the inputs tell (a slow start
    on unscaled inputs). Otherwise the check cannot judge and skips. A model whose loss is no better but whose
    metric is, by three standard errors, uses its inputs: on wide data it memorises its training set within the
    short run, and its confident mistakes raise the validation loss above an input-free model's. A model no better
    than the input-free one warns instead of failing when `reference` (the linear model or bigram table, trained on
    the real inputs for the same budget) went clearly below `constant`: the inputs then tell the targets, so they
    are aligned with them, and the model is slow to use them (a bottleneck, a VAE's collapsed posterior). It warns
    too when the short run's training loss fell clearly below `constant` (by 5% of it and three standard errors): the
    model reads its inputs (no input-free model gets there) and memorised them, which shuffled labels and a model
    that cannot find the relation (wide data, an architecture unsuited to the task) show alike.
    """
    value: dict[str, Any] = {
        "val_loss_real": real.loss,
        "val_loss_exchanged": exchanged.loss,
        f"val_{task.metric_name}_real": real.metric,
        f"val_{task.metric_name}_exchanged": exchanged.metric,
    }
    if real.per_sample_loss is not None and exchanged.per_sample_loss is not None:
        gain, se = _mean_se(exchanged.per_sample_loss - real.per_sample_loss)
    else:
        gain, se = exchanged.loss - real.loss, 0.0
    value.update(gain=gain, gain_se=se)
    # 2% of the loss as a floor on the gain, where the loss's zero means something: a loss that goes below zero (a
    # likelihood with its constant left out, as Poisson NLL does) has a level that is an offset, not a scale
    offset = min(real.loss, exchanged.loss) < 0 or (constant is not None and constant < 0)
    floor = 0.0 if offset else 0.02 * abs(exchanged.loss)
    if not (math.isfinite(real.loss) and math.isfinite(exchanged.loss)):
        return skipped("input_independent", "a validation loss was not finite; see the non-finite check.")
    if gain <= max(2 * se, floor) and train_losses is not None and not trained_at_all(train_losses):
        return skipped(
            "input_independent",
            f"the short run did not train (training loss {train_losses[0]:.4g} -> {train_losses[-1]:.4g}, no fall "
            "beyond its noise), so comparing it with exchanged inputs cannot tell whether the model uses them; see "
            "loss_decreases (learning rate, gradients).",
        )
    margin = max(2 * se, floor)  # one-sided, about 98% confidence
    better, better_se = _metric_gain(real, exchanged, task)
    value.update({f"{task.metric_name}_gain": better, f"{task.metric_name}_gain_se": better_se})
    if gain <= margin and better > 3 * better_se > 0:
        return passed(
            "input_independent",
            f"real inputs beat inputs exchanged between samples on {task.metric_name}: {real.metric:.4g} vs "
            f"{exchanged.metric:.4g} ({better:+.3g} ± {better_se:.2g}), though not on the validation loss "
            f"({real.loss:.4g} vs {exchanged.loss:.4g}): the model uses its inputs and is overconfident where it is "
            "wrong, as a model that has begun to memorise its training set is (regularisation is off here).",
            value,
        )
    ending = _ending(exchanged_losses)
    if gain <= margin and constant is not None and ending - constant > margin:  # False for nan
        assert exchanged_losses is not None
        return skipped(
            "input_independent",
            f"the short run was too short to judge: with inputs exchanged the training loss went from "
            f"{exchanged_losses[0]:.4g} to {ending:.4g} (median of the last tenth of steps), still "
            f"{ending - constant:.3g} above the best constant prediction's {constant:.4g}. The two runs (validation "
            f"loss {real.loss:.4g} with real inputs, {exchanged.loss:.4g} exchanged) differ by how far each got, not "
            "by what the inputs tell. Raise baseline.steps or the learning rate, or standardise the inputs "
            "(input_stats).",
        ).replace(value=value)
    if gain <= margin:
        worse = "higher than" if gain < 0 else "no better than"
        if (learned := _reference_learned(reference, constant)) is not None:
            description, ahead = learned
            value["reference_val_loss"] = ahead.loss
            return warned(
                "input_independent",
                f"with real inputs the validation loss ({real.loss:.4g}) is {worse} with each sample given another "
                f"sample's inputs ({exchanged.loss:.4g}), but the {description} reached {ahead.loss:.4g} on the real "
                "inputs in the same budget: the inputs tell the targets, so inputs and targets are aligned. Your "
                f"model has not learned to use its inputs in {len(train_losses or ())} steps: a slow start (a "
                "bottleneck, a VAE's collapsed posterior, a learning rate too low for it) or a path that discards "
                "the input. Raise baseline.steps to see whether it does.",
                value,
                "real inputs clearly better than exchanged inputs",
            )
        if constant is not None and _below_constant(train_losses, constant):
            value["train_loss_real"] = fitted = _ending(train_losses)
            return warned(
                "input_independent",
                f"with real inputs the validation loss ({real.loss:.4g}) is {worse} with each sample given another "
                f"sample's inputs ({exchanged.loss:.4g}), yet the training loss fell to {fitted:.4g}, clearly below "
                f"the best constant prediction's {constant:.4g}: the model reads its inputs, and memorised its "
                "training samples without learning anything that carries to validation. Either inputs and labels are "
                "misaligned (shuffled or sorted separately), or the training set is too small for its features to "
                "show the relation in this budget: check the alignment, then add data or regularise.",
                value,
                "real inputs clearly better than exchanged inputs",
            )
        return failed(
            "input_independent",
            f"with real inputs the validation loss ({real.loss:.4g}) is {worse} with each sample given another "
            f"sample's inputs ({exchanged.loss:.4g}): the model does not use its inputs. Check that inputs and "
            "labels stay aligned (shuffled or sorted separately?) and that forward uses x.",
            value,
            "real inputs clearly better than exchanged inputs",
        )
    return passed(
        "input_independent",
        f"real inputs beat inputs exchanged between samples: validation loss {real.loss:.4g} vs "
        f"{exchanged.loss:.4g} (paired gain {gain:.3g} ± {se:.2g}).",
        value,
    )


def _below_constant(step_losses: list[float] | None, constant: float) -> bool:
    """Whether a run's training loss ended clearly below the best constant prediction's (by 5% of it and by three
    standard errors of its last tenth of steps): no model without inputs gets there on its training set."""
    ending = _ending(step_losses)
    if not ending > 0:  # False for nan
        return False
    tail = torch.tensor(step_losses or [])[-max(2, len(step_losses or ()) // 10) :]
    return ending < constant - max(3 * float(tail.std()) / math.sqrt(len(tail)), 0.05 * constant)


def _reference_learned(
    reference: tuple[str, Evaluation] | None, constant: float | None
) -> tuple[str, Evaluation] | None:
    """The reference, when its validation loss beat the best constant prediction's by 5% and by 3 standard errors
    (as `simple_model` counts a reference as having learned): no model without inputs goes below that constant, so
    the inputs tell the targets. Beating the input-free run is not enough: a reference can fit the constant better
    than the short run did."""
    if reference is None or constant is None or not math.isfinite(constant):
        return None
    ahead = reference[1]
    margin = max(0.05 * abs(constant), 3 * (ahead.loss_se or 0.0))
    return reference if math.isfinite(ahead.loss) and constant - ahead.loss > margin else None


def target_unread(task: Task, output: torch.Tensor, target: Any) -> str | None:
    """Why inputs exchanged between samples cannot be told from real ones, or None: the loss does not read the
    target (a contrastive or self-supervised loss scores the outputs among themselves), so it gives the same value
    with the targets exchanged between samples and with each target changed.

    Why: the input-independent baseline changes which target goes with which input; a loss that never reads the
    target trains the same model on both, and a verdict would be a coin toss between two equal runs.
    """
    if isinstance(task.loss, str) and type(task).compute_loss is Task.compute_loss:
        return None  # a built-in loss reads its target
    if not isinstance(target, torch.Tensor) or not target.dim() or len(target) < 2:
        return None
    if target.is_floating_point():
        changed = target + 1
    else:
        classes = max(2, task.num_classes or int(target.max()) + 1)
        changed = torch.where(target == IGNORE_INDEX, target, (target + 1) % classes)
    try:
        with torch.no_grad():
            base = float(task.compute_loss(output, target))
            others = [float(task.compute_loss(output, t)) for t in (target.roll(1, 0), changed)]
    except Exception:  # a loss that rejects a changed target reads it
        return None
    if not math.isfinite(base) or any(abs(v - base) > 1e-6 * max(1.0, abs(base)) for v in others):
        return None
    return (
        f"the loss does not read the target: on a validation batch it gives {base:.4g} with the targets exchanged "
        "between samples and with each target changed (a contrastive or self-supervised loss scores the outputs "
        "among themselves). Inputs exchanged between samples then train the same task, so this comparison cannot "
        "tell whether the model uses its inputs; batch_independence charts what each output depends on."
    )


def simple_model(
    model_eval: Evaluation, simple_eval: Evaluation, trivial_loss: float | None, task: Task, description: str
) -> Check:
    """Reports the user's model beside "a simple model you couldn't possibly have screwed up", trained with the same
    step budget through the same loop; warns when the simple model learns the task and the user's model does not
    even beat the best constant prediction.

    Why: recipe step 2 and catalog E4 ("a simpler model is not better", ML Test Score Model 5). Before the learning
    rate is tuned the user's model may trail the reference; failing to beat a constant is what deserves a look. The
    reference counts as having learned only when it beats the constant by 5% and by 3 of its standard errors: a
    reference that cannot learn the task says nothing about the user's model, and when neither beat the constant
    the check skips.
    """
    value = {
        "model_val_loss": model_eval.loss,
        "model_val_loss_se": model_eval.loss_se,
        "simple_val_loss": simple_eval.loss,
        "simple_val_loss_se": simple_eval.loss_se,
        f"model_val_{task.metric_name}": model_eval.metric,
        f"simple_val_{task.metric_name}": simple_eval.metric,
        "constant_prediction_val_loss": trivial_loss,
        "simple_model": description,
    }
    text = (
        f"your model: val loss {model_eval.loss:.4g}, {task.metric_name} {model_eval.metric:.4f}; {description}: "
        f"val loss {simple_eval.loss:.4g}, {task.metric_name} {simple_eval.metric:.4f}"
    )
    if trivial_loss is not None:
        margin = 0.05 * abs(trivial_loss)
        learned = simple_eval.loss < trivial_loss - max(margin, 3 * (simple_eval.loss_se or 0.0))
        if learned and model_eval.loss > trivial_loss - margin:
            return warned(
                "simple_model",
                f"{text}; predicting a constant scores {trivial_loss:.4g}. The simple model "
                "learns the task but yours does not beat a constant after the same budget: check the "
                "architecture, the learning rate and the init before adding complexity.",
                value,
            )
        if not learned and model_eval.loss > trivial_loss - margin:
            return skipped(
                "simple_model",
                f"{text}; predicting a constant scores {trivial_loss:.4g}: neither model beat it in this budget, so "
                "the reference says nothing about yours (see input_independent and loss_decreases).",
            ).replace(value=value)
    return passed("simple_model", text + " (the reference to beat once tuned).", value)


def human_baseline(figure: float | None, model_eval: Evaluation, task: Task) -> Check:
    """Reports an optional human figure (from the config) beside the model's validation metric."""
    if figure is None:
        return skipped(
            "human_baseline",
            f"no human figure given; set baseline.human_baseline (validation "
            f"{task.metric_name}) in the config to compare.",
        )
    value = {"human": figure, f"model_val_{task.metric_name}": model_eval.metric}
    return passed(
        "human_baseline",
        f"human {task.metric_name} {figure:.4g} vs the model's {model_eval.metric:.4g} after the short baseline run.",
        value,
    )
