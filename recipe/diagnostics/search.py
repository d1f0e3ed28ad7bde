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

from recipe.check import Check, failed, passed, skipped, warned


def search_space_boundary(
    trials: list[dict[str, Any]],
    units: dict[str, list[float]],
    values: list[float] | None = None,
    noise: float | None = None,
    constant: float | None = None,
    top: float = 0.25,
    edge: float = 0.15,
) -> Check:
    """Catches a search space whose best trials crowd one edge of a range: the optimum lies outside it.

    Why: the playbook's "boundary" check. `trials` are sorted best first; `units` holds each numeric range's
    trial positions in [0, 1] in the same order, and `values` their validation losses. A range is flagged when the
    best trial lies within `edge` of an end and the best `top` share of trials (three at least) lean the same way on
    average (beyond 0.6 of the way), unless the trials show the optimum inside. "Worse" and "within" are measured
    against the noise of comparing two trials: 2.8 times `noise` (one trial's standard error, or the seed spread;
    1% of the loss when unknown). The optimum is inside when it is bracketed (a trial between the best one and that
    end did worse: the loss turns back up before the end), or when the loss is flat toward the end on a plateau
    the runs reached by learning (the best trial away from the outer `2 * edge` is within the noise of the best,
    and the best lies below `constant`, the constant prediction's loss, by more than the noise):
    widening the range there buys nothing measurable. Runs that all stay near the constant (a learning-rate range
    far too low) learned nothing, and a flat trend among them still warns.
    """
    k = max(3, math.ceil(top * len(trials)))
    if len(trials) < 4:
        return skipped("search_space_boundary", f"only {len(trials)} finished trials.")
    margin = 2 * math.sqrt(2) * (noise if noise is not None else 0.01 * abs(values[0])) if values else math.inf
    crowded: dict[str, str] = {}
    inside: dict[str, str] = {}
    for name, positions in units.items():
        best, lean = positions[0], sum(positions[:k]) / len(positions[:k])
        side = "upper" if best >= 1 - edge and lean > 0.6 else "lower" if best <= edge and lean < 0.4 else None
        if side is None:
            continue
        why = _optimum_inside(positions, values or [], side, margin, constant, 2 * edge)
        if why is None:
            crowded[name] = side
        else:
            inside[name] = why
    value = {"crowded": crowded, "inside": inside, "top_trials": k, "noise": margin}
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
    if inside:
        said = "; ".join(f"{name}: {why}" for name, why in inside.items())
        return passed(
            "search_space_boundary",
            f"the best trials lean toward an edge, but the optimum lies inside the range ({said}; noise {margin:.2g}).",
            value,
        )
    return passed("search_space_boundary", f"the best {k} trials lie inside every range.", value)


def _optimum_inside(
    positions: list[float], values: list[float], side: str, margin: float, constant: float | None, width: float
) -> str | None:
    """Why the trials put the optimum of a range crowded at `side` inside it (see `search_space_boundary`), or
    None when they do not."""
    if len(values) != len(positions) or not math.isfinite(values[0]):
        return None
    best = positions[0]
    beyond = [
        (u, v)
        for u, v in zip(positions, values, strict=True)
        if (u > best if side == "upper" else u < best) and v - values[0] > margin
    ]
    if beyond:
        u, v = beyond[0]
        return f"the best trial at {best:.2f} of the range, one at {u:.2f} did worse by {v - values[0]:.3g}"
    away = [(u, v) for u, v in zip(positions, values, strict=True) if (u < 1 - width if side == "upper" else u > width)]
    learned = constant is not None and math.isfinite(constant) and values[0] < constant - margin
    if away and learned:
        u, v = min(away, key=lambda pair: pair[1])
        if v - values[0] <= margin:
            return (
                f"flat toward the {side} end: the best trial away from it, at {u:.2f}, is {v - values[0]:.3g} behind, "
                f"on a plateau the runs learned their way onto (the constant prediction scores {constant:.4g})"
            )
    return None


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


def rerun_verdict(
    losses: list[float], runner_up: float | None, runner_up_se: float | None, ceiling: float | None
) -> str | None:
    """Why a trial's seed re-runs do not hold up (None when they do): a re-run diverged, or they fall outside the
    runner-up's range.

    Why: the playbook on trial-to-trial variance and the winner's curse: the best of many noisy trials is partly a
    lucky draw. A re-run diverged when its validation loss is not finite or no better than the best constant
    prediction (`ceiling`); the re-runs fall outside the runner-up's range when their mean validation loss is worse
    than the runner-up's by more than twice the noise of that difference (the seed spread of one draw and of the
    mean, and the runner-up's standard error over validation samples).
    """
    bad = [k for k, v in enumerate(losses) if not math.isfinite(v) or (ceiling is not None and v >= ceiling)]
    if bad:
        seen = ", ".join(f"{losses[k]:.4g}" for k in bad)
        floor = "" if ceiling is None else f"; a constant prediction scores {ceiling:.4g}"
        return f"diverged on {len(bad)} of {len(losses)} seed re-runs (validation loss {seen}{floor})"
    if runner_up is None or len(losses) < 2:
        return None
    mean, std = statistics.fmean(losses), statistics.stdev(losses)
    noise = math.hypot(std * math.sqrt(1 + 1 / len(losses)), runner_up_se or 0.0)
    if mean - runner_up > 2 * noise:
        return (
            f"its seed re-runs average validation loss {mean:.4g} ± {std:.2g}, outside the runner-up's range "
            f"({runner_up:.4g} + {2 * noise:.2g}): its own value was a lucky draw"
        )
    return None


def _spread(values: list[float]) -> float:
    """The sample standard deviation: 0 for one value, nan when a value is nan (a metric the task cannot take:
    `statistics.stdev` raises on one)."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) if all(math.isfinite(v) for v in values) else math.nan


def seed_variance(attempts: list[dict[str, Any]], metric: str) -> Check:
    """Catches a best trial that does not hold up when trained again: it diverges on other seeds, or its lead was a
    lucky draw. The trial handed on is the first of `attempts` (best first) whose re-runs hold up.

    Why: the playbook on trial-to-trial variance: the lead is measured on the re-run trial itself, and the re-runs'
    mean, not the trial's own draw, is what the search reports. Each attempt holds `trial`, `trial_loss`, `losses`
    and `metrics` (one per seed re-run), `runner_up` and `verdict` (`rerun_verdict`).
    """
    if not attempts:
        return skipped("seed_variance", "no seed re-runs (tune.seeds < 2).")
    kept = next((a for a in attempts if a["verdict"] is None), None)
    stable = [a for a in attempts if not a["verdict"] or not a["verdict"].startswith("diverged")]
    refused = [f"#{a['trial']} {a['verdict']}" for a in attempts if a is not kept and a["verdict"]]
    if kept is None and not stable:
        return failed(
            "seed_variance",
            f"no top trial trains stably: {'; '.join(refused)}. The search's best settings diverge on other seeds: "
            "lower the learning-rate range, add warm-up (train.warmup_steps) or gradient clipping (train.grad_clip).",
            {"attempts": attempts},
            "seed re-runs that train",
        )
    chosen = kept or min(stable, key=lambda a: statistics.fmean(a["losses"]))
    losses, metrics = chosen["losses"], chosen["metrics"]
    value = {
        "handed_on": chosen["trial"],
        "attempts": attempts,
        "loss_mean": statistics.fmean(losses),
        "loss_std": _spread(losses),
        "mean": statistics.fmean(metrics),
        "std": _spread(metrics),
    }
    measured = f", {metric} {value['mean']:.4g} ± {value['std']:.2g}" if math.isfinite(value["mean"]) else ""
    said = (
        f"trial #{chosen['trial']} over {len(losses)} seeds: validation loss {value['loss_mean']:.4g} ± "
        f"{value['loss_std']:.2g} (its own draw {chosen['trial_loss']:.4g}){measured}; this mean is what is handed on."
    )
    if kept is None:
        return warned(
            "seed_variance",
            f"no top trial's lead holds up ({'; '.join(refused)}): the ranking is inside the seed noise; handing on "
            f"the best re-run mean, {said} Average seeds per trial or evaluate on more data.",
            value,
            "a best trial whose re-runs hold up",
        )
    if refused and any(a["verdict"].startswith("diverged") for a in attempts if a is not kept):
        return warned(
            "seed_variance",
            f"not handed on: {'; '.join(refused)}: training near the best setting is unstable (lower the learning "
            f"rate, add warm-up or clipping). Handed on {said}",
            value,
            "a best trial whose re-runs train",
        )
    why = f"not handed on: {'; '.join(refused)}. Handed on " if refused else ""
    return passed("seed_variance", f"{why}{said}", value)


def distillation(gain: float, noise: float, student: dict[str, float], single: dict[str, float], metric: str) -> Check:
    """Reports whether a student trained on the ensemble's soft targets beats the handed-on single model beyond noise.

    Why: Hinton et al. 2015, "Distilling the knowledge in a neural network", and the recipe's tune step ("model
    ensembles [...] distill your ensemble into a network"). `gain` is the single model's validation loss minus the
    student's; kept only beyond twice `noise` (seed spread and paired per-sample standard error). Never a fail:
    distillation not helping is no bug.
    """
    kept = gain > 2 * noise
    value = {"kept": kept, "gain": gain, "noise": noise, "student": student, "single": single}
    verdict = "kept" if kept else "not kept (within noise or worse)"
    return passed(
        "distillation",
        f"the ensemble distilled into the handed-on setup's architecture: validation loss {student['val_loss']:.4g} "
        f"against {single['val_loss']:.4g} for that setup alone ({metric} {student['val_metric']:.4g} against "
        f"{single['val_metric']:.4g}); gain {gain:.3g}, noise {noise:.2g}: {verdict}.",
        value,
    )


def beats_incoming(tuned: dict[str, Any], incoming: dict[str, Any], paired_se: float, metric: str) -> Check:
    """Catches a search that hands on a setting no better than the setup it started from (what regularize chose).

    Why: a comparison at equal footing. The incoming setup is trained again with the seeds and epochs of the tuned
    trial's re-runs; the tuned setting replaces it only when its mean validation loss is lower by more than twice
    the noise of that difference (both means' seed spread and the paired per-sample standard error over validation),
    as `rerun_verdict` judges a lead. `tuned` and `incoming` hold `losses` and `metrics`, one per re-run (NaN:
    diverged); `tuned` also its `trial`. Never a fail: keeping the incoming setup is the right outcome, not a bug.
    """
    mine, theirs = tuned["losses"], incoming["losses"]
    diverged = sum(not math.isfinite(v) for v in theirs)
    mean_t, mean_i = statistics.fmean(mine), statistics.fmean(theirs) if not diverged else math.inf
    spread = [statistics.variance(v) / len(v) if len(v) > 1 else 0.0 for v in (mine, theirs)]
    noise = math.hypot(math.sqrt(spread[0]), math.sqrt(spread[1]) if not diverged else 0.0, paired_se)
    gain = mean_i - mean_t
    kept = "tuned" if gain > 2 * noise else "incoming"
    finite = [v for v in incoming["metrics"] if math.isfinite(v)]
    value = {
        "handed_on": kept,
        "gain": gain,
        "noise": noise,
        "tuned": {**tuned, "loss_mean": mean_t, "mean": statistics.fmean(tuned["metrics"])},
        "incoming": {
            **incoming,
            "loss_mean": None if diverged else mean_i,
            "mean": statistics.fmean(finite) if finite else None,
        },
    }
    start = (
        f"the setup tune started from diverged on {diverged} of {len(theirs)} re-runs"
        if diverged
        else f"the setup tune started from: validation loss {mean_i:.4g}"
    )
    said = (
        f"trial #{tuned['trial']}: validation loss {mean_t:.4g} over {len(mine)} seeds against {start} with the same "
        f"seeds and epochs; gain {gain:.3g}, noise {noise:.2g}"
    )
    if kept == "tuned":
        return passed("beats_incoming", f"{said}: the tuned setting is handed on.", value, "a gain > 2 × noise")
    return passed(
        "beats_incoming",
        f"the search found nothing better than the setup it started from ({said}): that setup is kept and handed on.",
        value,
        "a gain > 2 × noise",
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
