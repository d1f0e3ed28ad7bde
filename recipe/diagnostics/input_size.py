"""Input size: the smallest input (fewer features, smaller images, shorter sequences) the model does as well on.

Why: recipe step 3, "complexify only one at a time ... (e.g. try a smaller input size first and then scale up)",
and step 4, "decrease the input dimensionality ... Similarly, if low-level details don't matter much try to input
a smaller image".
"""

from __future__ import annotations

from recipe.check import Check, passed, skipped
from recipe.diagnostics.regularization import paired_gain
from recipe.evaluation import Evaluation


def input_ladder(full: Evaluation | None, levels: dict[str, Evaluation | None], constant: float | None = None) -> Check:
    """Reports the smallest level of the task's input ladder whose validation loss is within noise of the full input.

    `levels` are the task's `input_ladder` levels, smallest first, each trained like the full input (same rung, rate
    and budget); `constant` is the loss of the best constant prediction. Not a bug detector: it passes with the
    finding, and skips when the full input's run learned nothing (no better than the constant) to lose.

    Why: a smaller input that loses nothing beyond twice the paired per-sample standard error of the validation
    loss (one-sided, ~98%) trains faster and overfits less; one that loses more dropped what the labels depend on.
    """
    if not levels:
        return skipped("input_ladder", "the task declares no input ladder (Task(input_ladder={name: shrink})).")
    if full is None:
        return skipped("input_ladder", "the run on the full input diverged; nothing to compare the levels with.")
    if constant is not None and full.loss > constant - 2 * (full.loss_se or 0.0):
        return skipped(
            "input_ladder",
            f"the run on the full input does not beat the constant prediction (validation loss {full.loss:.4g} "
            f"against {constant:.4g}): it learned nothing a smaller input could lose; compare once it learns.",
        )
    costs: dict[str, tuple[float, float] | None] = {}
    for name, level in levels.items():  # the loss the level adds to the full input's, with its paired SE
        gain, se = paired_gain(full, level) if level is not None else (0.0, 0.0)
        costs[name] = None if level is None else (-gain, se)
    within = [n for n, c in costs.items() if c is not None and c[0] <= 2 * c[1]]
    value = {
        "full_val_loss": full.loss,
        "levels": {n: None if e is None else e.loss for n, e in levels.items()},
        "loss_increase": {n: None if c is None else c[0] for n, c in costs.items()},
        "se": {n: None if c is None else c[1] for n, c in costs.items()},
        "smallest": within[0] if within else "full",
    }
    text = "; ".join(f"{n}: diverged" if c is None else f"{n}: {c[0]:+.3g} ± {c[1]:.2g}" for n, c in costs.items())
    if not within:
        return passed(
            "input_ladder",
            f"every smaller input loses validation loss beyond noise against the full one ({full.loss:.4g}): {text}. "
            "Keep the full input: the labels depend on what the smaller ones drop.",
            value,
        )
    return passed(
        "input_ladder",
        f"the smallest input within noise of the full one ({full.loss:.4g}) is {within[0]!r} ({text}): train on it "
        "to go faster and overfit less, and grow it only when a larger model needs more.",
        value,
    )
