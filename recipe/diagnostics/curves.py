"""What training curves say: which rung of a model ladder fits best, whether a schedule helps, and the curve
pathologies of the tuning playbook (instability, still improving, overfitting onset, step-to-step noise).

Why: Karpathy's step 3 ("get a model large enough that it can overfit") and the Deep Learning Tuning Playbook's
"incremental tuning" and its section on training-curve pathologies.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.evaluation import Evaluation


@dataclass
class Rung:
    """One rung of a model ladder after its training run.

    Attributes:
        name: the rung's name in the ladder.
        params: trainable parameters.
        lr: the learning rate it trained with.
        train: evaluation on the training split after training (None when it diverged).
        val: evaluation on the validation split (None when it diverged).
        step_losses: the training loss of every step.
        history: per-epoch records from `fit`.
        diverged_at: the step where the loss became non-finite, if it did.
        seconds: wall time of the run.
        model: the trained module (not serialised), for looking at its mistakes.
        failure: the fit's own account of a run that went non-finite (the step, parameter, module, and the
            non-finite samples of the batch when there were any).
    """

    name: str
    params: int
    lr: float
    train: Evaluation | None
    val: Evaluation | None
    step_losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    diverged_at: int | None = None
    seconds: float = 0.0
    model: nn.Module | None = None
    failure: str | None = None


def paired_difference(a: Evaluation, b: Evaluation) -> tuple[float, float]:
    """Mean of b - a over the same samples and its standard error (the noise of comparing two runs)."""
    if a.per_sample_loss is None or b.per_sample_loss is None or len(a.per_sample_loss) != len(b.per_sample_loss):
        se = math.hypot(a.loss_se or 0.0, b.loss_se or 0.0)
        return b.loss - a.loss, se
    diff = (b.per_sample_loss - a.per_sample_loss).double()
    return float(diff.mean()), float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else 0.0


def pick_rung(rungs: list[Rung], margin: float = 0.1) -> Rung | None:
    """The smallest rung that fits the training set about as well as any rung: training loss within `margin`
    (relative) of the lowest, or within three standard errors of it. None when every rung diverged."""
    trained = [r for r in rungs if r.train is not None]
    if not trained:
        return None
    best = min(trained, key=lambda r: r.train.loss if r.train else math.inf)
    assert best.train is not None
    for rung in trained:
        assert rung.train is not None
        gap, se = paired_difference(best.train, rung.train)
        if gap <= margin * abs(best.train.loss) or gap <= 3 * se:
            return rung
    return best


def capacity(rungs: list[Rung], chosen: Rung | None, constant: float) -> Check:
    """Catches a bigger rung that fits the training set worse than a smaller one: optimisation (its learning
    rate, its init, a bug in it), not capacity, is the bottleneck.

    Why: Karpathy step 3, "get a model large enough that it can overfit"; a larger model trained the same way
    should reach a training loss at least as low. The gap must exceed three standard errors of the paired
    per-sample difference and 5% of `constant`, the loss of the best constant prediction (what there is to learn):
    two rungs that both fit the training set (0.004 against 0.02 nats on digits) are not told apart.
    """
    if chosen is None:
        account = next((f" Rung {r.name!r}: {r.failure}" for r in rungs if r.failure), "")
        return failed(
            "capacity", f"every rung diverged (NaN/Inf loss); fix the setup before growing the model.{account}"
        )
    table = [
        {
            "rung": r.name,
            "params": r.params,
            "lr": r.lr,
            "train_loss": r.train.loss if r.train else None,
            "val_loss": r.val.loss if r.val else None,
            "diverged_at": r.diverged_at,
        }
        for r in rungs
    ]
    value = {"rungs": table, "chosen": chosen.name, "constant_loss": constant}
    assert chosen.train is not None
    if chosen.train.loss >= constant:
        diverged = [r.name for r in rungs if r.diverged_at is not None]
        why = (
            f"{', '.join(diverged)} diverged and the rest did not learn: lower the learning rate"
            if diverged
            else f"none diverged, so at lr {chosen.lr:.3g} the loss did not fall in this budget: if that rate is "
            "far below the one baseline trained at, set train.lr (or complexify.epochs) and rerun complexify; "
            "otherwise the model does not learn"
        )
        return failed(
            "capacity",
            f"no rung fits the training set better than a constant prediction (best training loss "
            f"{chosen.train.loss:.4g} against {constant:.4g}): {why}; rerun baseline and overfit.",
            value,
            f"training loss below {constant:.4g}",
        )
    worse = []
    for small, big in itertools.pairwise(rungs):
        if big.diverged_at is not None and small.train is not None:
            worse.append(f"{big.name} diverged at step {big.diverged_at} where {small.name} trained")
        elif small.train is not None and big.train is not None:
            gap, se = paired_difference(small.train, big.train)
            if gap > 3 * se and gap > 0.05 * constant:
                worse.append(f"{big.name} ends at training loss {big.train.loss:.4g} against {small.train.loss:.4g}")
    why = _why(chosen, rungs)
    if worse:
        return warned(
            "capacity",
            f"a bigger rung fits the training set worse: {'; '.join(worse)}. Optimisation is the bottleneck there "
            f"(its learning rate, init or a bug), not capacity. {why}",
            value,
            "training loss falls as the rungs grow",
        )
    return passed("capacity", why, value)


def _why(chosen: Rung, rungs: list[Rung]) -> str:
    if len(rungs) == 1:
        return f"one rung ({chosen.name}); give Task(models=...) a ladder to compare sizes."
    assert chosen.train is not None and chosen.val is not None
    gap = chosen.val.loss - chosen.train.loss
    fits = f"it overfits (validation above training by {gap:.3g}): regularize next" if gap > 0 else "no gap yet"
    return (
        f"chose {chosen.name}: the smallest rung whose training loss ({chosen.train.loss:.4g}) is within 10% of the "
        f"best; {fits}."
    )


def lr_schedule(constant: Evaluation, scheduled: Evaluation, name: str) -> tuple[Check, bool]:
    """Keeps a warm-up + decay schedule only when it lowers the validation loss beyond noise (two standard
    errors of the paired per-sample difference); returns the check and whether to keep it.

    Why: the tuning playbook, "the learning-rate decay schedule [...] kept only if it helps"; both runs share the
    model, data order and step budget, so the paired difference isolates the schedule.
    """
    gain, se = paired_difference(scheduled, constant)  # positive: the schedule's loss is lower
    keep = gain > 2 * se and gain > 0
    value = {"constant_val_loss": constant.loss, f"{name}_val_loss": scheduled.loss, "gain": gain, "gain_se": se}
    verdict = (
        f"kept {name}: validation loss {scheduled.loss:.4g} against {constant.loss:.4g} at a constant rate "
        f"(gain {gain:.3g} ± {se:.2g})."
        if keep
        else f"kept the constant rate: {name} gave validation loss {scheduled.loss:.4g} against {constant.loss:.4g} "
        f"(difference {gain:.3g} ± {se:.2g}, within noise or worse)."
    )
    return passed("lr_schedule", verdict, value), keep


def _running_median(x: torch.Tensor, window: int) -> torch.Tensor:
    """Median of the `window` steps before each step from `window` on."""
    return x.unfold(0, window, 1)[:-1].median(dim=1).values


def loss_spikes(
    step_losses: list[float],
    window: int = 20,
    z: float = 10.0,
    failure: str | None = None,
    excursion: float | None = None,
) -> Check:
    """Catches a diverging or unstable run: a non-finite loss, a loss that ends above where it started by more than
    three times its step-to-step noise (or at over twice a positive start), or spikes that undo half the progress made
    so far.

    Why: the playbook's "training instability"; a spike is a step more than `z` robust deviations of the
    step-to-step noise above the running median of the `window` steps before it, and larger than half the drop
    achieved by then (mini-batch noise near a converged loss is not a spike), with the next step's loss still that
    high: progress undone stays undone for a step, while one batch that is hard for the model (a confident mistake
    among nearly separable samples) is back down at once. Batches differ by their samples too: `excursion`, how far
    the trained model's loss on random training batches rises above its median (the highest of a few dozen), is what
    ordinary batches do (two rare positives in one batch); a spike rises over twice that. Fix: warm-up or gradient
    clipping.
    A run that went non-finite is told by `failure`, the fit's own account, when there is one: it names
    non-finite samples where the data, not the rate, is the cause.
    """
    x = torch.tensor(step_losses, dtype=torch.float64)
    bad = (~torch.isfinite(x)).nonzero().flatten()
    if len(bad):
        return failed(
            "loss_spikes",
            f"the loss diverged (NaN/Inf at step {int(bad[0])}): "
            + (failure or "lower the learning rate, add warm-up or clip gradients."),
            {"diverged_at": int(bad[0])},
            "finite loss",
        )
    window = min(window, len(x) // 6)
    if window < 2:
        return skipped("loss_spikes", f"only {len(x)} steps; need 12 to read a curve.")
    start, end = float(x[0]), float(x[-window:].median())  # the loss at init, and where the run settled
    median = _running_median(x, window)
    residual = x[window:] - median
    scale = 1.4826 * float((residual - residual.median()).abs().median()) or 1e-12
    # beyond three times the step noise (a flat, noisy run ends above its first step half the time), or at over twice
    # the loss at init, a fresh model's highest point in any run that learns or stays flat (a run that blew up is all
    # noise: its fluctuations measure the blow-up, not the start). The noise is the larger of the robust one and the
    # last steps' own spread: batch losses of rare positives are bimodal (most batches hold none), the robust scale
    # sees one mode only, and the last steps' median lands on the upper mode when most of them hold one
    noise = max(scale, float(x[-window:].std()))
    if end > start + 3 * noise or end > 2 * start > 0:
        return failed(
            "loss_spikes",
            f"the training loss ended higher than it started ({end:.4g} against {start:.4g}, beyond its step-to-step "
            f"noise of {noise:.2g}): the run diverged. Lower the learning rate or add warm-up.",
            {"start": start, "end": end, "noise_scale": noise},
            "loss falls",
        )
    progress = (start - median).clamp_min(0)
    undone = (residual > z * scale) & (residual > 0.5 * progress) & (residual > 2 * (excursion or 0.0))
    after = torch.cat([x[window + 1 :] - median[:-1], x.new_zeros(1)])  # the next step, against the same median
    spikes = (undone & (after > 0.5 * progress)).nonzero().flatten() + window  # one hard batch is back down next
    value = {"spikes": len(spikes), "first_spike_steps": spikes[:10].tolist(), "noise_scale": scale}
    if excursion is not None:
        value["batch_excursion"] = excursion
    if len(spikes):
        return warned(
            "loss_spikes",
            f"{len(spikes)} loss spike(s) undid over half the progress (first at step {int(spikes[0])}): the rate is "
            "at the edge of stability. Add learning-rate warm-up or gradient clipping, or lower the rate.",
            value,
        )
    return passed("loss_spikes", f"no instability over {len(x)} steps.", value)


def step_noise(step_losses: list[float], window: int = 20, sampling_noise: float | None = None) -> Check:
    """Catches training so noisy from step to step that the noise exceeds the whole progress of the run.

    Why: the playbook's noisy curves (batch too small or rate too high for it); the noise is the robust spread
    of step losses around their running median over the second half of the run, the progress the drop of the
    running median from start to end. Batches differ by their samples alone: `sampling_noise`, the spread of the
    trained model's loss over random training batches with no step between them, is what a perfectly steady
    optimizer shows (rare positives, noisy count targets). Noise within 1.5 times it (the optimizer's own at most
    about as large, added in quadrature) is the data's, and passes.
    """
    x = torch.tensor(step_losses, dtype=torch.float64)
    if len(x) < 3 * window or not bool(torch.isfinite(x).all()):
        return skipped("step_noise", "too few finite steps to read the noise.")
    residual = (x[window:] - _running_median(x, window))[len(x) // 2 - window :]
    noise = 1.4826 * float((residual - residual.median()).abs().median())
    progress = float(x[:window].median() - x[-window:].median())
    value = {"noise": noise, "progress": progress, "sampling_noise": sampling_noise}
    sampled = sampling_noise is not None and noise <= 1.5 * sampling_noise
    if (progress <= 0 or noise > progress) and not sampled:
        return warned(
            "step_noise",
            f"step-to-step noise ({noise:.3g}) exceeds the progress of the whole run ({progress:.3g}): use a "
            "larger batch or a lower learning rate (or average over more steps before judging).",
            value,
            "noise below the progress",
        )
    if progress <= 0 or noise > progress:
        return passed(
            "step_noise",
            f"step noise {noise:.3g} exceeds the progress {progress:.3g}, but batches of this data differ by about "
            f"that much by their samples alone ({sampling_noise:.3g}: the trained model's loss over random training "
            "batches, no step between them): the optimizer adds little noise of its own.",
            value,
        )
    return passed("step_noise", f"step noise {noise:.3g} against progress {progress:.3g}.", value)


def _val_curve(history: list[dict[str, Any]]) -> tuple[list[float], list[float], list[float]]:
    rows = [h for h in history if h.get("val_loss") is not None]
    return [h["val_loss"] for h in rows], [h.get("val_loss_se") or 0.0 for h in rows], [h["train_loss"] for h in rows]


def still_improving(history: list[dict[str, Any]]) -> Check:
    """Catches a run stopped while the validation loss was still falling: train longer.

    Why: the playbook, "if the model is still improving at the end of training, training is compute-bound". The
    least-squares slope of the validation loss over the second half of the run (at least 4 epochs) is judged
    against its own standard error from the residuals: it warns when the fall is beyond 3 standard errors
    (one-sided) and the fall it predicts over those epochs is a gain regularize would keep (over twice the final
    validation loss's standard error). Measured on digits: lr 5e-5 still fell 0.036-0.063 per epoch and passed the
    former rule (10% of the final loss over the last third); lr 1.2e-3 falls 0.035-0.045 over its last 5 epochs
    against twice the SE 0.056, and passes.
    """
    val, se, _ = _val_curve(history)
    k = max(4, len(val) // 2)
    if len(val) < k:
        return skipped("still_improving", "fewer than 4 evaluated epochs to fit a slope to.")
    y = torch.tensor(val[-k:], dtype=torch.float64)
    x = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    slope = float((x * (y - y.mean())).sum() / (x**2).sum())
    residual = y - y.mean() - slope * x
    slope_se = math.sqrt(float((residual**2).sum()) / (k - 2) / float((x**2).sum()))
    fall = -slope * (k - 1)
    value = {"slope_per_epoch": slope, "slope_se": slope_se, "epochs": k, "final_val_loss": val[-1]}
    if -slope > 3 * slope_se and fall > 2 * se[-1]:
        return warned(
            "still_improving",
            f"validation loss still falls {-slope:.3g} ± {slope_se:.2g} per epoch over the last {k} epochs (to "
            f"{val[-1]:.4g}, {fall:.3g} over them): training stopped while still improving. Raise train.epochs.",
            value,
            "a slope within 3 standard errors of zero, or a fall under twice the validation loss's SE",
        )
    return passed(
        "still_improving",
        f"validation loss settled: slope {slope:+.3g} ± {slope_se:.2g} per epoch over the last {k} epochs.",
        value,
    )


def overfitting_onset(history: list[dict[str, Any]]) -> Check:
    """Names the epoch where validation loss starts rising while training loss still falls (the onset of
    overfitting), which early stopping and `regularize` then address.

    Why: the playbook's train/validation curve reading; a rise counts when it exceeds two standard errors of
    the validation loss. In `complexify` this is information: the model is large enough to overfit.
    """
    val, se, train = _val_curve(history)
    if len(val) < 3:
        return skipped("overfitting_onset", "fewer than 3 evaluated epochs.")
    best = min(range(len(val)), key=val.__getitem__)
    rise = val[-1] - val[best]
    value = {"best_epoch": best, "best_val_loss": val[best], "final_val_loss": val[-1]}
    if best < len(val) - 1 and rise > 2 * se[best] and train[-1] < train[best]:
        return passed(
            "overfitting_onset",
            f"validation loss bottomed at epoch {best} ({val[best]:.4g}) and rose to {val[-1]:.4g} while training "
            "loss kept falling: the model can overfit. Early stopping or regularisation next.",
            value,
        )
    return passed("overfitting_onset", f"no overfitting within the budget (best epoch {best} of {len(val)}).", value)
