"""Short training runs: the loss must go down, and two identical runs must give identical losses.

Why: recipe step 2, "fix random seed" and "verify decreasing training loss".
"""

from __future__ import annotations

import math

from recipe.check import Check, failed, passed, warned


def loss_decreases(step_losses: list[float], lr: float) -> Check:
    """Catches training that does not train: a loss that ends above where it started or spikes on the way
    (learning rate too high, sign flipped), or stays flat (learning rate too low, no gradient reaching the
    parameters, the loss clipped). The start is the first step's loss: the model at initialisation."""
    n = len(step_losses)
    if n < 4:
        return warned("loss_decreases", f"only {n} training steps were run; too few to judge.")
    k = max(2, n // 10)
    first, last = step_losses[0], sum(step_losses[-k:]) / k
    peak = max(range(n), key=step_losses.__getitem__)
    value = {
        "first": first,
        "last": last,
        "peak": step_losses[peak],
        "peak_step": peak,
        "steps": n,
        "relative_drop": (first - last) / abs(first) if first else None,
    }
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
    if last > first:
        return failed(
            "loss_decreases",
            f"the training loss rose from {first:.4g} at init to {last:.4g} over {n} steps: "
            f"the learning rate is too high (lr={lr:g}) or the loss has the wrong sign. Lower lr 10x, and "
            "check that the optimiser minimises the loss.",
            value,
            "last loss below the first",
        )
    if last > first - 0.05 * abs(first):
        return failed(
            "loss_decreases",
            f"the training loss barely moved ({first:.4g} -> {last:.4g}) over {n} steps: "
            f"the learning rate is too low (lr={lr:g}), gradients do not reach the parameters, the loss is "
            "clipped, or the labels carry no signal the model can fit (see input_independent).",
            value,
            "a drop of at least 5%",
        )
    return passed("loss_decreases", f"training loss fell from {first:.4g} at init to {last:.4g} over {n} steps.", value)


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
