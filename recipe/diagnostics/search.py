"""What a finished hyperparameter search says about itself: was the space right, was the budget enough, is the
winner's lead larger than the noise, and are the runs the right length.

Why: the Deep Learning Tuning Playbook, "how to tell whether the search space was big enough" (best trials at the
boundary), "how many trials" (best-so-far still improving), trial-to-trial variance (re-train the best with other
seeds), and "deciding how long to train" (where the best checkpoints fall).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from recipe.check import Check, passed, skipped, warned


def search_space_boundary(
    trials: list[dict[str, Any]], units: dict[str, list[float]], top: float = 0.25, edge: float = 0.15
) -> Check:
    """Catches a search space whose best trials crowd one edge of a range: the optimum lies outside it.

    Why: the playbook's "boundary" check. `trials` are sorted best first; `units` holds each numeric range's
    trial positions in [0, 1] in the same order. A range is flagged when the best trial lies within `edge` of an
    end and the best `top` share of trials (three at least) lean the same way on average (beyond 0.6 of the way).
    """
    k = max(3, math.ceil(top * len(trials)))
    if len(trials) < 4:
        return skipped("search_space_boundary", f"only {len(trials)} finished trials.")
    crowded = {}
    for name, positions in units.items():
        best, lean = positions[0], sum(positions[:k]) / len(positions[:k])
        if best >= 1 - edge and lean > 0.6:
            crowded[name] = "upper"
        elif best <= edge and lean < 0.4:
            crowded[name] = "lower"
    value = {"crowded": crowded, "top_trials": k}
    if crowded:
        advice = "; ".join(
            f"{name}: widen toward {'smaller' if side == 'lower' else 'larger'} values"
            for name, side in crowded.items()
        )
        return warned(
            "search_space_boundary",
            f"the best trials crowd the edge of the range: {advice}. The optimum probably lies outside the space.",
            value,
            "best trials inside the ranges",
        )
    return passed("search_space_boundary", f"the best {k} trials lie inside every range.", value)


def enough_trials(values: list[float], noise: float | None) -> Check:
    """Catches a budget that ended while the best value was still improving steeply.

    Why: the playbook, "if the best trial keeps improving with more trials, run more". The best-so-far value
    improved over the last quarter of the trials by more than the noise of one evaluation (or 1% when unknown).
    """
    if len(values) < 8:
        return skipped("enough_trials", f"only {len(values)} finished trials; need 8 to read a trend.")
    best = [min(values[: i + 1]) for i in range(len(values))]
    cut = len(values) - max(2, len(values) // 4)
    gain = best[cut - 1] - best[-1]
    margin = noise if noise is not None else 0.01 * abs(best[-1])
    value = {"best_so_far": best, "gain_last_quarter": gain, "noise": margin}
    if gain > 2 * margin:
        return warned(
            "enough_trials",
            f"the best validation loss still improved by {gain:.3g} over the last {len(values) - cut} trials "
            f"(noise {margin:.2g}): run more trials (tune.trials, a power of two for the quasi-random sampler).",
            value,
        )
    return passed(
        "enough_trials", f"the best value settled: the last quarter of trials improved it by {gain:.3g}.", value
    )


def seed_variance(metrics: list[float], best: float, runner_up: float | None, metric: str) -> Check:
    """Catches a winner whose lead over the runner-up is inside the seed-to-seed noise of the metric itself.

    Why: the playbook on trial-to-trial variance; the best configuration re-trained with other seeds gives the
    standard deviation a difference between configurations must clear to mean anything.
    """
    if len(metrics) < 2:
        return skipped("seed_variance", "fewer than two seeds trained.")
    mean, std = statistics.fmean(metrics), statistics.stdev(metrics)
    value = {"metrics": metrics, "mean": mean, "std": std, "best_trial": best, "runner_up": runner_up}
    lead = None if runner_up is None else abs(best - runner_up)
    if lead is not None and lead < std:
        return warned(
            "seed_variance",
            f"the best configuration gives {metric} {mean:.4g} ± {std:.2g} over {len(metrics)} seeds, and its lead "
            f"over the runner-up ({lead:.2g}) is inside that noise: the ranking is not meaningful. Evaluate on more "
            "data (add significant digits to your eval) or average seeds.",
            value,
        )
    return passed(
        "seed_variance", f"best configuration over {len(metrics)} seeds: {metric} {mean:.4g} ± {std:.2g}.", value
    )


def training_length(histories: list[list[dict[str, Any]]]) -> Check:
    """Reads where each trial's best validation loss fell within its run: always at the end means train longer,
    always early means the runs are longer than they need to be.

    Why: the playbook, "deciding how long to train when training is not compute-bound".
    """
    positions = []
    for history in histories:
        val = [h["val_loss"] for h in history if h.get("val_loss") is not None]
        if len(val) >= 2:
            positions.append(min(range(len(val)), key=val.__getitem__) / (len(val) - 1))
    if len(positions) < 3:
        return skipped("training_length", "fewer than three trials with two or more evaluated epochs.")
    at_end = sum(p == 1.0 for p in positions) / len(positions)
    early = sum(p <= 0.5 for p in positions) / len(positions)
    value = {"best_epoch_fraction": positions, "share_at_end": at_end, "share_in_first_half": early}
    if at_end >= 0.75:
        return warned(
            "training_length",
            f"{at_end:.0%} of the trials were still at their best at the last epoch: the runs are too short. "
            "Raise tune.epochs (or train.epochs).",
            value,
        )
    if early >= 0.75:
        return passed(
            "training_length",
            f"{early:.0%} of the trials peaked in the first half of their run: shorter runs (fewer epochs) would "
            "find the same configurations faster.",
            value,
        )
    return passed("training_length", "the best epochs fall across the runs; the length fits.", value)
