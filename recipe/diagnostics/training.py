"""Short training runs: the loss must go down, and two identical runs must give identical losses.

Why: recipe step 2, "fix random seed" and "verify decreasing training loss".
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned


def parameter_change(before: list[torch.Tensor], model: nn.Module) -> float | None:
    """How far a run moved the parameters: ||theta - theta_0|| / ||theta_0|| over all of them (0.0 exactly when no
    element changed). `before` is `[p.detach().to("cpu", copy=True) for p in model.parameters()]` taken before
    training (on the CPU: no second copy of the weights on the accelerator); None when the trained model's parameters
    do not line up with it."""
    after = [p.detach() for p in model.parameters()]
    if len(after) != len(before) or any(a.shape != b.shape for a, b in zip(after, before, strict=True)):
        return None
    moved = sum(float((a.to(b.device).double() - b.double()).pow(2).sum()) for a, b in zip(after, before, strict=True))
    size = sum(float(b.double().pow(2).sum()) for b in before)
    return math.sqrt(moved / size) if size else (0.0 if moved == 0 else math.inf)


def loss_decreases(step_losses: list[float], lr: float, moved: float | None = None, floor: float = 0.0) -> Check:
    """Catches training that does not train: a loss that spikes or rises beyond its noise (learning rate too high,
    sign flipped), or stays flat while no parameter changes (gradients that never reach the parameters: frozen,
    detached or clipped; a learning rate of zero). `moved` is `parameter_change` over the run (None: not measured).

    Why: recipe step 2, "verify decreasing training loss". The start is the first step's loss (the model at init);
    rise and fall are judged between the first and last 10% of steps, beyond three standard errors of their means.
    A loss that falls slowly, or not beyond its noise while the parameters move, is a learning rate too low for this
    model or labels the model cannot fit yet, not evidence of a bug: it warns, and overfit's LR range test measures
    the rate (a fail would stop the recipe before that test runs). "Slowly" is under 5% of the room the loss has:
    from its value at init down to `floor`, the lowest loss any output reaches on the training targets (the mean
    entropy of soft targets under binary cross-entropy; zero for hard ones).
    """
    n = len(step_losses)
    if n < 4:
        return skipped("loss_decreases", f"only {n} training steps were run; too few to judge.")
    k = max(2, n // 10)
    first, last = step_losses[0], sum(step_losses[-k:]) / k
    peak = max(range(n), key=step_losses.__getitem__)
    change, se, fell = _window_change(step_losses, k)
    value = {
        "first": first,
        "last": last,
        "peak": step_losses[peak],
        "peak_step": peak,
        "steps": n,
        "relative_drop": (first - last) / abs(first) if first else None,
        "window_drop": -change,
        "window_drop_se": se,
        "parameter_change": moved,
        **({"floor": floor} if floor else {}),
    }
    head = sum(step_losses[:k]) / k
    seen = f"(at init {first:.4g}, mean of the first {k} steps {head:.4g}, of the last {k} {last:.4g}; {n} steps)"
    if not (math.isfinite(first) and math.isfinite(last)):
        return failed("loss_decreases", "the training loss is not finite; see the non-finite check.", value)
    if step_losses[peak] > 10 * abs(first) and step_losses[peak] > first + 1:
        return failed(
            "loss_decreases",
            f"the training loss spiked to {step_losses[peak]:.4g} at step {peak} from "
            f"{first:.4g} at init: the learning rate is too high (lr={lr:g}). Lower it 10x (see the LR range "
            "test), or add warm-up and gradient clipping.",
            value,
            "no spike above 10x the initial loss",
        )
    if change > 3 * se and last > first:
        return failed(
            "loss_decreases",
            f"the training loss rose beyond its noise {seen}: the learning rate is too high (lr={lr:g}) or the "
            "loss has the wrong sign. Lower lr 10x, and check that the optimiser minimises the loss.",
            value,
            "last loss below the first",
        )
    room = first - floor if math.isfinite(floor) and 0 < floor < first else abs(first)
    if fell and max(first, head) - last >= 0.05 * room:
        return passed("loss_decreases", f"the training loss fell {seen}.", value)
    if moved == 0.0:
        return failed(
            "loss_decreases",
            f"the training loss stayed flat {seen} and not one parameter changed: no gradient reaches the "
            f"parameters (frozen with requires_grad=False, a detached or clipped loss) or the learning rate "
            f"(lr={lr:g}) is zero or too small to change a weight. Check that loss.backward() reaches them.",
            value,
            "a falling loss; parameters that change",
        )
    if fell:
        return warned(
            "loss_decreases",
            f"the training loss fell, but slowly {seen}: learning slowly, the learning rate (lr={lr:g}) may be "
            "low for this model. Overfit's LR range test will tell.",
            value,
            "a drop of at least 5% of the room above the floor",
        )
    moving = "" if moved is None else f" while the parameters moved ({moved:.2g} of their norm)"
    return warned(
        "loss_decreases",
        f"the training loss did not fall beyond its noise {seen}{moving}: the learning rate (lr={lr:g}) may be "
        "far too low for this model, or the labels carry no signal it can fit (see input_independent). "
        "Overfit's LR range test will tell.",
        value,
        "a drop of at least 5% of the room above the floor",
    )


def _window_change(step_losses: list[float], k: int) -> tuple[float, float, bool]:
    """The mean of the last k step losses minus that of the first k, its standard error (from the two windows'
    spreads), and whether the loss fell beyond its noise: between the windows, or from the loss at init (one step,
    as noisy as one of the last k) to the last k. A run whose loss never varies has no noise: any change counts."""
    head, tail = torch.tensor(step_losses[:k], dtype=torch.float64), torch.tensor(step_losses[-k:], dtype=torch.float64)
    change, se = float(tail.mean() - head.mean()), math.sqrt(float(head.var() + tail.var()) / k)
    from_init = float(head[0] - tail.mean()) > 3 * float(tail.std()) * math.sqrt(1 + 1 / k)
    return change, se, -change > 3 * se or from_init


def seed_reproducible(first: list[float], second: list[float], seed: int) -> Check:
    """Catches unseeded randomness (an RNG built without a seed in the data pipeline or the model): two identical
    short runs on the CPU must give bit-identical losses."""
    differ = [i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b]
    value = {"steps": len(first), "first_difference_step": differ[0] if differ else None}
    if differ or len(first) != len(second):
        step = differ[0] if differ else min(len(first), len(second))
        return warned(
            "seed",
            f"two runs with seed {seed} diverge at step {step} ({first[step]:.6g} vs "
            f"{second[step]:.6g}): something random is not seeded (a numpy Generator or random.Random built "
            "without a seed, a time-based seed). Results will not be comparable across runs.",
            value,
            "identical losses",
        )
    return passed("seed", f"two runs with seed {seed} gave identical losses over {len(first)} steps on the CPU.", value)
