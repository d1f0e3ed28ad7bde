"""Overfit one batch, and the learning-rate range test.

Why: recipe step 2, "overfit one batch": a setup that cannot drive the loss on a handful of examples to ~0 is
broken, not under-trained. The range test (Smith 2017; fastai's and Lightning's lr_find) sweeps the learning rate
exponentially and reads a rate off the smoothed loss curve, and says so when the curve gives no reliable answer.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from recipe.check import Check, failed, passed, skipped
from recipe.task import Task


def softmax_floor(num_classes: int) -> float:
    """The lowest cross-entropy reachable when probabilities are fed in as logits: -log(e / (e + C - 1))."""
    return -math.log(math.e / (math.e + num_classes - 1))


def _is_softmax_floor(floor: float, num_classes: int) -> bool:
    """Whether a loss's lowest value is cross-entropy's on probabilities, to three significant figures."""
    return abs(floor - softmax_floor(num_classes)) < 1e-3 * softmax_floor(num_classes)


def _relapse(step_losses: list[float], reference: float, floor: float) -> tuple[int, float] | None:
    """(step, loss) of the highest loss of the last fifth of the run when it is above the constant prediction's
    loss although the run had come at least halfway down from there to the floor; else None."""
    tail = max(1, len(step_losses) // 5)
    learned = min(step_losses) < reference - 0.5 * (reference - floor)
    i = max(range(len(step_losses) - tail, len(step_losses)), key=step_losses.__getitem__)
    return (i + 1, step_losses[i]) if learned and step_losses[i] > reference else None


def reads_other_targets(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], output: Any, target: Any
) -> bool | None:
    """Whether changing sample 0's target moves the loss's gradient with respect to the other samples' outputs: a
    dependency that must be zero for a loss that compares each output with its own target (a broadcast between
    (B, 1) and (B,) compares every output with every target). None when it cannot be told: outputs or targets
    that are not one tensor, a batch of one target, or a loss that fails here."""
    if not (isinstance(output, torch.Tensor) and output.is_floating_point() and isinstance(target, torch.Tensor)):
        return None
    if len(output) < 2 or len(target) != len(output):
        return None
    rows = target.reshape(len(target), -1)
    other = next((j for j in range(1, len(rows)) if not torch.equal(rows[j], rows[0])), None)
    if other is None:
        return None
    changed = target.clone()
    changed[0] = target[other]
    grads = []
    try:
        for t in (target, changed):
            x = output.detach().float().clone().requires_grad_(True)
            with torch.enable_grad():
                grads.append(torch.autograd.grad(loss(x, t), x)[0][1:])
    except (RuntimeError, TypeError, ValueError):
        return None
    scale = float(grads[0].abs().max().clamp_min(1e-12))
    return bool((grads[1] - grads[0]).abs().max() > 1e-4 * scale)


def still_falling(step_losses: list[float], fraction: float = 0.1, drop: float = 0.02, floor: float = 0.0) -> bool:
    """Whether a loss curve is still going down at its end: the median of its last `fraction` of steps is at least
    `drop` of its height above `floor` (the lowest loss possible; zero when unknown) below the median of the
    `fraction` before it, or the trend of its last quarter (the median of the slopes between its steps, robust to
    spikes) takes it down that much over the quarter: a staircase, as a model with bounded outputs (spectral or
    weight normalisation) grows its margins, flat for tens of steps between drops. A curve still falling has not
    plateaued, so it is no evidence that the loss cannot go lower. Medians, so a spike in the last steps (a
    likelihood whose learned variance collapses) is not read as a plateau; a loss that goes negative is measured by
    its distance from zero."""
    n = max(1, int(len(step_losses) * fraction))
    if len(step_losses) < 4 * n or not all(math.isfinite(v) for v in step_losses[-2 * n :]):
        return False
    last, before = statistics.median(step_losses[-n:]), statistics.median(step_losses[-2 * n : -n])
    height = abs(before - (floor if math.isfinite(floor) else 0.0))
    if height > 0 and last < before - drop * height:
        return True
    quarter = torch.tensor(step_losses[-(len(step_losses) // 4) :], dtype=torch.float64)
    if len(quarter) < 8 or not bool(torch.isfinite(quarter).all()) or height == 0:
        return False
    i, j = torch.triu_indices(len(quarter), len(quarter), offset=1)
    trend = float(((quarter[j] - quarter[i]) / (j - i)).median()) * len(quarter)  # Theil-Sen, over the quarter
    return trend < -drop * height


def likelihood_far_from_floor(task: Task, first: float, final: float, reference: float, floor: float) -> bool:
    """Whether a regression run under a callable loss that goes below zero (a likelihood: Gaussian or Poisson NLL)
    learned the batch and only stopped short of the loss's floor: it fell by a tenth of the way to the floor and
    below the constant prediction. Such a floor sits where an output reaches an extreme (a variance at its clamp),
    and the loss approaches it as the logarithm of the residual: slowly, and not as a plateau from a bug."""
    return (
        callable(task.loss)
        and task.kind == "regression"
        and math.isfinite(floor)
        and floor < 0
        and final < reference
        and first - final >= 0.1 * (first - floor)
    )


def overfits_batch(
    step_losses: list[float],
    batch_metric: float,
    reference: float,
    task: Task,
    batch_size: int,
    tolerance: float = 0.05,
    floor: float = 0.0,
    mixes: bool | None = None,
) -> Check:
    """Catches a setup that cannot memorise a handful of examples: probabilities fed to a logits loss (a floor at
    -log(e/(e+C-1)) with 100% accuracy), a ReLU on the logits, a flipped sign, a clipped loss, a broken output, and a
    loss under which no output beats a constant (one that does not pair each output with its own target).

    Why: recipe step 2, "verify that we can reach the lowest achievable loss". The scale runs from `floor`, the
    lowest loss any output reaches on this batch (`recipe.evaluation.loss_floor`: zero for the built-in losses on
    hard targets, found by minimising a callable loss over the outputs themselves), to `reference`, the best constant
    prediction's; "memorised" means within `tolerance` of that range from the floor. A callable loss whose floor
    could not be found (nan) is judged by accuracy alone. A floor within 1% of the constant's is a loss that does
    not pair each output with its own target only where `mixes` (`reads_other_targets`) confirms it: soft targets
    near 0.5 under binary cross-entropy have a floor that close (their entropy) and a loss that pairs them.
    Blind spots (catalog 2.2): shuffled labels and a mid-network `.detach()` still pass; `input_independent` and
    `params_update` catch those.
    """
    first, final = step_losses[0], min(step_losses[-5:])
    accuracy_task = task.kind != "regression"
    value: dict[str, Any] = {
        "first": first,
        "final": final,
        "reference": reference,
        "floor": floor,
        "steps": len(step_losses),
        "batch_size": batch_size,
        f"batch_{task.metric_name}": batch_metric,
    }
    perfect = not batch_metric < 0.99 if accuracy_task else True  # 1 token in 100 for sequences; nan: no accuracy
    known = math.isfinite(reference) and math.isfinite(floor)
    target = floor + tolerance * (reference - floor)
    shown = f"constant-prediction loss {reference:.4g}" + (f", lowest possible {floor:.4g}" if floor > 0 else "")
    pairs = mixes is False or (mixes is None and not callable(task.loss))  # built-in losses have checked shapes
    if known and reference > 0 and reference - floor < 0.01 * reference and not pairs:
        return failed(
            "overfit_batch",
            f"no output reaches a lower loss on this batch than the best constant prediction ({reference:.4g}; the "
            f"lowest any output reaches is {floor:.4g}): the loss does not compare each output with its own target. "
            "Look for a broadcast between shapes (an output of (B, 1) against targets of (B,) makes a (B, B) loss) "
            "or a reduction over the wrong axis.",
            value,
            "a loss that rewards each output for matching its own target",
        )
    if known and callable(task.loss) and accuracy_task and _is_softmax_floor(floor, task.num_classes or 2):
        return failed(
            "overfit_batch",
            f"the loss cannot go below {floor:.4g} on this batch whatever the outputs, the floor of probabilities fed "
            f"to cross-entropy as logits (-log(e/(e+C-1)) = {softmax_floor(task.num_classes or 2):.4g}): the loss "
            "applies a softmax before its cross-entropy. Pass the logits to F.cross_entropy as they are.",
            value,
            "a loss whose lowest value on hard labels is zero",
        )
    if known and final <= target:  # memorised by the loss: a few near-ties are no evidence of a bug
        ties = (
            ""
            if perfect
            else f" A few targets are predicted with near-ties ({task.metric_name} {batch_metric:.3f}): samples that "
            "look alike with different labels, or, for a sequence model, positions whose context it cannot tell apart."
        )
        return passed(
            "overfit_batch",
            f"one batch memorised in {len(step_losses)} steps: loss {first:.4g} -> {final:.4g} ({shown}), "
            f"{task.metric_name} {batch_metric:.3f}.{ties}",
            value,
        )
    if not known and accuracy_task and perfect and math.isfinite(batch_metric):
        return passed(
            "overfit_batch",
            f"one batch memorised by {task.metric_name} ({batch_metric:.3f}) in {len(step_losses)} steps: loss "
            f"{first:.4g} -> {final:.4g}. The loss's lowest value on this batch could not be found (a callable "
            "without a lower bound, or defined on part of the outputs only), so the loss itself is not judged.",
            value,
        )
    expected = f"loss below {target:.3g}" if known else "a loss that stops falling only near its lowest value"
    expected += ", accuracy >= 0.99" if accuracy_task else ""
    if still_falling(step_losses, floor=floor):  # no plateau, so no evidence of a bug: the budget ran out first
        return skipped(
            "overfit_batch",
            f"cannot judge yet: one batch of {batch_size} samples is not memorised in {len(step_losses)} steps, but "
            f"its loss is still falling ({first:.4g} -> {final:.4g}, {task.metric_name} {batch_metric:.3f}), which is "
            "no sign of a bug; raise overfit.steps or overfit.lr to see it reach ~0.",
        ).replace(value=value, expected=expected)
    spike = _relapse(step_losses, reference, floor) if known else None
    if spike is not None:  # it learned the batch, then lost it: unstable training, not a setup that cannot learn
        step, height = spike
        return skipped(
            "overfit_batch",
            f"cannot judge: the loss fell to {min(step_losses):.4g}, then jumped back to {height:.4g} at step {step}, "
            f"above the constant prediction's {reference:.4g}: training on this batch is unstable near its lowest "
            "loss at this learning rate, which says nothing about the setup; lower overfit.lr to see it settle.",
        ).replace(value=value, expected=expected)
    classes = task.num_classes or 2
    if likelihood_far_from_floor(task, first, final, reference, floor):
        return skipped(
            "overfit_batch",
            f"cannot judge: the loss fell from {first:.4g} to {final:.4g}, below the constant prediction's "
            f"{reference:.4g}, but not near its lowest value on this batch ({floor:.4g}). This callable loss goes "
            "below zero: a likelihood of continuous targets, whose lowest value is reached only at an extreme "
            "output (a variance at its clamp) and falls as the logarithm of the residual, so a slow approach to it "
            "is no evidence of a bug.",
        ).replace(value=value, expected=expected)
    if final > first:
        cause = "the loss rose: its sign is flipped, or the learning rate is far too high"
    elif not known and not accuracy_task:
        return skipped(
            "overfit_batch",
            f"cannot judge: the loss settled at {final:.4g} (from {first:.4g}), and the lowest value this callable "
            "loss reaches on the batch could not be found, so a plateau is no evidence of a bug.",
        ).replace(value=value, expected=expected)
    elif known and first - final < 0.1 * (first - floor):
        cause = (
            "the loss hardly moved: gradients do not reach the parameters, the loss is clipped, or the learning "
            "rate is far too low"
        )
    elif task.loss == "cross_entropy" and perfect and abs(final - softmax_floor(classes)) < 0.1:
        cause = (
            f"the loss is stuck at {final:.3f} with {task.metric_name} 1.0, the floor of probabilities fed as "
            f"logits (-log(e/(e+C-1)) = {softmax_floor(classes):.3f}): remove the softmax before the loss"
        )
    elif accuracy_task and perfect:
        cause = (
            f"accuracy is perfect but the loss stays well above the lowest any output reaches on this batch "
            f"({floor:.3g}): the outputs are bounded (a softmax, sigmoid or tanh on the logits)"
        )
    else:
        cause = (
            "the loss plateaued: a non-linearity on the output (ReLU on logits), an output that cannot reach the "
            "targets' range, or a model too small for even this batch"
        )
    spread = math.sqrt(reference) if task.loss == "mse" else reference if task.loss == "l1" else 0.0
    if task.kind == "regression" and spread > 10:  # catalog M11: the outputs start near unit scale
        cause += (
            f". The batch's targets spread over about {spread:.3g} (the constant prediction's loss {reference:.4g}), "
            "far beyond the unit scale the outputs start at, which the weights reach only after many steps at this "
            "rate: standardise the targets first (see target_range)"
        )
    return failed(
        "overfit_batch",
        f"could not overfit one batch of {batch_size} samples in {len(step_losses)} steps: "
        f"loss {first:.4g} -> {final:.4g}, {task.metric_name} {batch_metric:.3f}. "
        f"{cause[0].upper() + cause[1:]}.",
        value,
        expected,
    )


def exponential_ramp(lr_min: float, lr_max: float, steps: int) -> Callable[[int], float]:
    """A multiplier of `lr_max` for `fit(schedule=...)`: lr goes from lr_min to lr_max geometrically over `steps`."""
    return lambda step: (lr_min / lr_max) ** (1 - min(step, steps - 1) / max(1, steps - 1))


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (as in fastai's lr_find)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_lr(lrs: list[float], losses: list[float], burn_in: float = 0.1, diverge: float = 4.0) -> dict[str, Any]:
    """Read a learning rate off a range test: smooth, skip the burn-in, truncate where the loss diverges, then take
    the rate at the minimum divided by 10 ("minimum/10"). `lr` is None when the curve is not reliable."""
    finite = [i for i, v in enumerate(losses) if math.isfinite(v)]
    usable = finite[-1] + 1 if finite and finite == list(range(len(finite))) else len(finite)
    curve = smooth(losses[:usable])
    start = max(3, int(burn_in * len(curve)))
    end = len(curve)
    for i in range(start, len(curve)):
        if curve[i] > diverge * min(curve[start : i + 1]) and curve[i] > curve[start]:
            end = i
            break
    out: dict[str, Any] = {
        "lr": None,
        "rule": "minimum/10",
        "burn_in_steps": start,
        "used_steps": end,
        "smoothed": curve,
        "diverged": end < len(losses),
    }
    if end - start < 5:
        out["reason"] = "too few usable points before the loss diverged; lower lr_min or use more steps"
        return out
    window = curve[start:end]
    i_min = start + min(range(len(window)), key=window.__getitem__)
    drop = (curve[start] - curve[i_min]) / abs(curve[start]) if curve[start] else 0.0
    noise = _smoothed_noise(losses[:end], start, i_min)
    out.update(lr_at_minimum=lrs[i_min], loss_at_minimum=curve[i_min], relative_drop=drop, noise=noise)
    if drop < 0.1:
        out["reason"] = f"the smoothed loss never fell more than {drop:.0%} below its start"
        return out
    if curve[start] - curve[i_min] < 3 * noise:
        out["reason"] = (
            f"the smoothed loss's lowest point ({curve[start] - curve[i_min]:.3g} below its start) is within the "
            f"step-to-step noise of the sweep (3 standard deviations of the smoothed difference: {3 * noise:.3g}), so "
            f"the sweep cannot tell which rate moves the model"
        )
        return out
    if end == len(losses) and i_min >= end - 3:
        # no turning point: minimum/10 of the sweep's own end would be lr_max / 10 whatever the model (separable
        # data only widens its margins as the rate grows). The rate where the loss had fallen half way, the middle
        # of its descent on the log-rate axis, is where it falls fastest (fastai's "steep" point, read robustly).
        half = curve[start] - (curve[start] - curve[i_min]) / 2
        i_half = next(i for i in range(start, i_min + 1) if curve[i] <= half)
        out.update(lr=lrs[i_half], rule="half-way down (the loss still fell at the top of the sweep)")
        return out
    out["lr"] = lrs[i_min] / 10
    return out


def _smoothed_noise(losses: list[float], start: int, end: int, beta: float = 0.9) -> float:
    """The standard deviation of `smooth(losses)[start] - smooth(losses)[end]` from step-to-step noise alone.

    The noise of one step's loss is read from consecutive differences (a trend cancels in them), robustly: the median
    absolute difference over 0.6745 * sqrt(2). Each smoothed value is a weighted sum of the raw losses up to it, and
    the two share their older terms, so the difference is weighted term by term."""
    steps = [b - a for a, b in itertools.pairwise(losses) if math.isfinite(a) and math.isfinite(b)]
    if not steps:
        return 0.0
    sd = statistics.median(abs(d) for d in steps) / (0.6745 * math.sqrt(2))

    def weights(i: int) -> list[float]:
        norm = 1 - beta ** (i + 1)
        return [(1 - beta) * beta ** (i - j) / norm for j in range(i + 1)]

    a, b = weights(start), weights(end)
    a += [0.0] * (len(b) - len(a))
    return sd * math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


def lr_range(lrs: list[float], losses: list[float], suggestion: dict[str, Any], current_lr: float) -> Check:
    """Reports the learning rate suggested by the range test, or says plainly that there is no reliable one."""
    value = {k: v for k, v in suggestion.items() if k != "smoothed"}
    if suggestion["lr"] is None:  # a curve that says nothing is no evidence of a bug (loss_decreases judges that)
        return skipped(
            "lr_range_test",
            f"no reliable learning-rate suggestion: {suggestion['reason']}. Keeping lr={current_lr:g}.",
        ).replace(value=value, expected="a clear descent before divergence")
    if suggestion["rule"] != "minimum/10":
        return passed(
            "lr_range_test",
            f"suggested lr {suggestion['lr']:.3g}: the smoothed loss still fell at the top of the sweep "
            f"({suggestion['lr_at_minimum']:.3g}), with no turning point for minimum/10, so the rate where it had "
            "fallen half way, where it falls fastest, is taken.",
            value,
        )
    return passed(
        "lr_range_test",
        f"suggested lr {suggestion['lr']:.3g}: the smoothed loss is lowest at "
        f"{suggestion['lr_at_minimum']:.3g}, and the rule is minimum/10.",
        value,
    )
