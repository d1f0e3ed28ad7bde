"""Regularisation: keep what improves validation beyond noise, and the checks that say a regulariser is broken.

Why: recipe step 4, "regularize": more data first, then data augmentation, weight decay, dropout, early stopping, a
smaller model, smaller input dimensionality. The first-layer filters are judged in `recipe.diagnostics.filters`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import tree_map
from recipe.evaluation import Evaluation
from recipe.joined import joined_features, part_shapes
from recipe.task import TRANSFORMS, Task

NEARER = 0.25  # an augmented sample "is" T(x) when it lies 4x nearer to T(x) than to x
APPLIED = 0.05  # a transform counts as applied when it shows on at least this share of samples


@dataclass(eq=False)  # compared by identity: it holds tensors and a model
class Trial:
    """One training run of the search, evaluated in eval mode on the whole validation split.

    Attributes:
        label: what was tried, e.g. "weight_decay=0.1".
        changes: the training settings changed against the setup it was compared with.
        val: the validation evaluation, with per-sample losses; None when the run diverged.
        train_loss: loss on (a fixed sample of) the samples it trained on, in eval mode.
        steps: optimizer steps taken; epochs: epochs run (early stopping may end a run early).
        seconds: wall time of the run.
        model: the trained module (not serialised).
    """

    label: str
    changes: dict[str, Any] = field(default_factory=dict)
    val: Evaluation | None = None
    train_loss: float | None = None
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    model: nn.Module | None = None

    @property
    def gap(self) -> float | None:
        """Validation loss minus training loss: the overfitting regularisation should shrink."""
        return None if self.val is None or self.train_loss is None else self.val.loss - self.train_loss


def paired_gain(before: Evaluation, after: Evaluation) -> tuple[float, float]:
    """Mean per-sample validation-loss reduction from `before` to `after`, and its standard error."""
    if before.per_sample_loss is not None and after.per_sample_loss is not None:
        d = (before.per_sample_loss - after.per_sample_loss).double()
        return float(d.mean()), float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return before.loss - after.loss, math.hypot(before.loss_se or 0.0, after.loss_se or 0.0)


def noise_level(before: Evaluation, after: Evaluation, seed_noise: float) -> float:
    """The standard error a gain is judged against: the paired per-sample SE and the seed-to-seed difference."""
    return math.hypot(paired_gain(before, after)[1], seed_noise)


def improves(reference: Trial, trial: Trial, seed_noise: float) -> bool:
    """`trial` lowers the validation loss of `reference` by more than twice the noise level (one-sided, ~98%)."""
    if reference.val is None or trial.val is None or not math.isfinite(trial.val.loss):
        return False
    return paired_gain(reference.val, trial.val)[0] > 2 * noise_level(reference.val, trial.val, seed_noise)


def best_trial(reference: Trial, trials: list[Trial], seed_noise: float) -> Trial | None:
    """The trial with the lowest validation loss among those that improve on `reference`, or None."""
    better = [t for t in trials if improves(reference, t, seed_noise)]
    return min(better, key=lambda t: t.val.loss if t.val is not None else math.inf, default=None)


def _describe(reference: Trial, trial: Trial, seed_noise: float) -> str:
    if trial.val is None or reference.val is None:
        return f"{trial.label}: diverged"
    gain, noise = paired_gain(reference.val, trial.val)[0], noise_level(reference.val, trial.val, seed_noise)
    return f"{trial.label}: val loss {trial.val.loss:.4g} (gain {gain:+.3g} ± {noise:.2g})"


def regularizer(name: str, reference: Trial, trials: list[Trial], seed_noise: float) -> Check:
    """Reports one regulariser's trials against the current setup and which one, if any, is kept.

    Not a bug detector: a regulariser that does not help is left out, not flagged.

    Why: recipe step 4, one regulariser at a time, keep what improves validation. A gain counts when it exceeds
    twice the combined standard error (one-sided, ~98%): the paired per-sample SE over the validation split, and
    the difference between two seeds of the same setup. Measured on digits: seeds alone move the validation loss by
    0.005-0.022 (4-18%), 2-3 paired SEs, so the per-sample SE by itself would keep noise.
    """
    if reference.val is None:
        return skipped(name, "the setup the trials are compared with diverged; nothing to compare against.")
    kept = best_trial(reference, trials, seed_noise)
    value = {
        "reference_val_loss": reference.val.loss,
        "seed_noise": seed_noise,
        "trials": {t.label: None if t.val is None else t.val.loss for t in trials},
        "kept": None if kept is None else kept.label,
    }
    tried = "; ".join(_describe(reference, t, seed_noise) for t in trials)
    if kept is None:
        return passed(
            name,
            f"none improved validation beyond noise (reference val loss {reference.val.loss:.4g}): {tried}. Left out.",
            value,
        )
    gaps = f"train/val gap {reference.gap:.3g} -> {kept.gap:.3g}" if kept.gap is not None else ""
    return passed(name, f"kept {kept.label} ({gaps}): {tried}.", value)


def more_data(curve: list[tuple[int, Trial]], seed_noise: float) -> Check:
    """Reports the learning curve (validation loss against training samples) and whether more data would help.

    Why: recipe step 4, "get more data" is the first regulariser. Still falling from half to all of the data by
    more than twice the noise level (the paired SE and the seed-to-seed difference) means more data would help.
    """
    points = [(n, t) for n, t in curve if t.val is not None]
    value = {str(n): None if t.val is None else t.val.loss for n, t in curve}
    if len(points) < 2:
        return skipped("more_data", "fewer than two points of the learning curve trained without diverging.")
    text = " -> ".join(f"{t.val.loss:.4g} ({n} samples)" for n, t in points if t.val is not None)
    (_, half), (_, full) = points[-2], points[-1]
    assert half.val is not None and full.val is not None
    gain, noise = paired_gain(half.val, full.val)[0], noise_level(half.val, full.val, seed_noise)
    value.update(gain_last_doubling=gain, noise=noise)
    if gain > 2 * noise:
        verdict = "still falling: more data would likely help, the first regulariser to reach for"
    else:
        verdict = (
            "not clearly falling at the end: more of the same data would help little; regularise or change the model"
        )
    return passed("more_data", f"validation loss {text}; {verdict} (last gain {gain:.3g} ± {noise:.2g}).", value)


def applied_transforms(before: torch.Tensor, after: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The share of images (B, C, H, W) the augmentation changed, and per named transform T the share it turned
    into T(x): 4x nearer to T(x) than to x (a symmetric image, equal to its T(x), never counts)."""
    b, a = before.float().flatten(1), after.float().flatten(1)
    distance = (a - b).norm(dim=1)
    changed = float((distance > 1e-6 * b.norm(dim=1).clamp_min(1e-12)).float().mean())
    applied = {}
    for name, transform in TRANSFORMS.items():
        moved = transform(before.float())
        if moved.shape == before.shape:
            applied[name] = float(((a - moved.flatten(1)).norm(dim=1) < NEARER * distance).float().mean())
    return changed, applied


def augmentation_invariances(task: Task, inputs: Any, augmented: Any) -> Check:
    """Catches an augmentation that changes the label: a flip or rotation applied while the task declares that it
    changes the label (Karpathy's flipped images with unflipped labels).

    Why: recipe step 4 and catalog D9. A sample counts as transformed when it lies 4x nearer to T(x) than to x;
    a transform on >= 5% of samples counts as applied. Without a declaration this can only warn: on 8x8 digits no
    automatic heuristic told a label-changing flip from a label-preserving 1-pixel shift (catalog section 2.5).
    """
    before, after = task.images(inputs), task.images(augmented)
    if before is None or after is None or before.shape != after.shape:
        if task.invariances:
            return skipped("augmentation_invariances", "declared invariances need image inputs (B, C, H, W).")
        return skipped("augmentation_invariances", "inputs are not images; look at augmentation.json.")
    changed, applied = applied_transforms(before, after)
    value = {"changed": changed, "applied": applied, "declared": task.invariances}
    seen = [t for t, share in applied.items() if share >= APPLIED]
    wrong = [t for t in seen if task.invariances.get(t) is False]
    undeclared = [t for t in seen if t not in task.invariances]
    shares = ", ".join(f"{t} on {applied[t]:.0%}" for t in seen)
    if wrong:
        return failed(
            "augmentation_invariances",
            f"the augmentation applies {shares} of samples, but the task declares that {', '.join(wrong)} changes "
            "the label: those samples train with the wrong label. Remove the transform or map the labels with it.",
            value,
            "no transform the task declares label-changing",
        )
    if undeclared:
        return warned(
            "augmentation_invariances",
            f"the augmentation applies {shares} of samples and the task does not say whether that preserves the "
            f"label; look at augmentation.png and declare it, e.g. invariances={{{undeclared[0]!r}: True}}.",
            value,
        )
    if changed == 0:
        return warned(
            "augmentation_invariances",
            f"task.augment returned all {len(before)} samples unchanged: the augmentation does nothing (probability 0, "
            "or it returns its input).",
            value,
        )
    what = f"applies {shares} (declared label-preserving)" if seen else f"applies none of {', '.join(applied)}"
    return passed("augmentation_invariances", f"the augmentation {what}; it changes {changed:.0%} of samples.", value)


def augmentation_overfit(step_losses: list[float], reference: float, batch_size: int, threshold: float = 0.5) -> Check:
    """Catches an augmentation that destroys the input: with it on, one small batch can no longer be overfit
    (noise in place of the image, a wrong value range, pixels shuffled).

    Why: recipe step 2 ("overfit one batch") repeated under step 4's augmentation. Threshold: half the loss of the
    best constant prediction. Measured on digits (16 samples, 300 steps): label-preserving augmentations (1-pixel
    shift, flips, noise) end at <= 0.011 of it, input-destroying ones at 0.70-1.0.
    """
    if not step_losses or not math.isfinite(reference) or reference <= 0:
        return skipped("augmentation_overfit", "no constant-prediction loss to compare with for this loss.")
    tail = step_losses[-max(1, len(step_losses) // 10) :]
    final = sum(tail) / len(tail)
    value = {"first": step_losses[0], "final": final, "reference": reference, "ratio": final / reference}
    expected = f"final loss below {threshold * reference:.3g}"
    if final > threshold * reference:
        return failed(
            "augmentation_overfit",
            f"with the augmentation on, one batch of {batch_size} trains from {step_losses[0]:.4g} to {final:.4g} "
            f"in {len(step_losses)} steps (constant prediction {reference:.4g}): augmented inputs no longer carry "
            "the label. The augmentation destroys the input; look at augmentation.png.",
            value,
            expected,
        )
    return passed(
        "augmentation_overfit",
        f"one batch of {batch_size} still overfits under augmentation: loss {step_losses[0]:.4g} -> {final:.4g} "
        f"(constant prediction {reference:.4g}).",
        value,
        expected,
    )


def _loss_per_sample(task: Task, model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = task.forward(model, inputs).float()
        per_sample = task.loss_per_sample(output, target)
        return per_sample if per_sample is not None else task.compute_loss(output, target).reshape(1)


def correlated_groups(inputs: torch.Tensor, threshold: float = 0.8) -> list[list[int]]:
    """Features linked by |correlation| >= `threshold`, directly or through others (connected components)."""
    x = inputs.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    linked = ((x.T @ x) / max(len(x) - 1, 1)).abs() >= threshold
    groups, seen = [], set()
    for start in range(inputs.shape[1]):
        if start in seen:
            continue
        stack, group = [start], []
        seen.add(start)
        while stack:
            j = stack.pop()
            group.append(j)
            for k in linked[j].nonzero().flatten().tolist():
                if k not in seen:
                    seen.add(k)
                    stack.append(k)
        groups.append(sorted(group))
    return groups


def feature_ablation(task: Task, model: nn.Module, inputs: Any, target: torch.Tensor, seed: int = 0) -> Check:
    """Names tabular input features whose permutation does not hurt validation: candidates to remove ("smaller
    input dimensionality").

    Why: recipe step 4; permutation importance (Breiman 2001). Strongly correlated features (|r| >= 0.8) are
    shuffled together, since shuffling one of several near-copies costs nothing while the group may matter. A group
    is a candidate when shuffling it raises the loss by at most twice its paired SE (one-sided, ~98%), or by under
    1% of the loss.
    """
    if not isinstance(inputs, torch.Tensor) and joined_features(inputs) is not None:
        return _input_ablation(task, model, inputs, target, seed)
    tabular = isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.dim() == 2
    if not tabular or task.image_shape is not None:
        return skipped("feature_ablation", "inputs are not tabular (a float matrix of features without image_shape).")
    was_training = model.training
    model.eval()
    base = _loss_per_sample(task, model, inputs, target)
    perm = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed)).to(inputs.device)
    groups = correlated_groups(inputs)
    importance = [(0.0, 0.0)] * inputs.shape[1]
    for group in groups:
        shuffled = inputs.clone()
        shuffled[:, group] = inputs[perm][:, group]
        delta = (_loss_per_sample(task, model, shuffled, target) - base).double()
        effect = (float(delta.mean()), float(delta.std() / math.sqrt(len(delta))) if len(delta) > 1 else 0.0)
        for j in group:
            importance[j] = effect
    model.train(was_training)
    floor = 0.01 * abs(float(base.mean()))
    candidates = [j for j, (d, se) in enumerate(importance) if d <= max(2 * se, floor)]
    linked = [g for g in groups if len(g) > 1]
    value = {
        "candidates": candidates,
        "importance": [d for d, _ in importance],
        "se": [se for _, se in importance],
        "correlated_groups": linked,
    }
    grouped = sum(len(g) for g in linked)
    note = f" ({grouped} features in {len(linked)} correlated groups were shuffled together)"
    if not candidates:
        return passed(
            "feature_ablation", f"shuffling any of the {len(importance)} features hurts validation{note}.", value
        )
    named = ", ".join(map(str, candidates[:12])) + (f" and {len(candidates) - 12} more" if len(candidates) > 12 else "")
    return passed(
        "feature_ablation",
        f"{len(candidates)} of {len(importance)} features do not hurt validation when shuffled (features {named}): "
        f"candidates to remove{note if grouped else ''}.",
        value,
    )


def _input_ablation(task: Task, model: nn.Module, inputs: Any, target: torch.Tensor, seed: int) -> Check:
    """`feature_ablation` for a model that takes several float tensors: each tensor shuffled across samples as a
    whole (an image with its metadata: does the metadata help?), judged as one feature group is."""
    was_training = model.training
    model.eval()
    base = _loss_per_sample(task, model, inputs, target)
    n = len(target)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(target.device)
    shapes = part_shapes(inputs)
    importance = []
    for k in range(len(shapes)):
        shuffled = _with_part(inputs, k, lambda t: t[perm])
        delta = (_loss_per_sample(task, model, shuffled, target) - base).double()
        importance.append((float(delta.mean()), float(delta.std() / math.sqrt(len(delta))) if len(delta) > 1 else 0.0))
    model.train(was_training)
    floor = 0.01 * abs(float(base.mean()))
    candidates = [k for k, (d, se) in enumerate(importance) if d <= max(2 * se, floor)]
    names = [f"input {k} {shape}" for k, shape in enumerate(shapes)]
    value = {
        "candidates": candidates,
        "importance": [d for d, _ in importance],
        "se": [se for _, se in importance],
        "names": names,
    }
    if not candidates:
        return passed(
            "feature_ablation",
            f"shuffling any of the model's {len(shapes)} input tensors across samples hurts validation.",
            value,
        )
    return passed(
        "feature_ablation",
        f"shuffling {' and '.join(names[k] for k in candidates)} across samples does not hurt validation: a "
        "candidate to remove (or the model has not learned to use it).",
        value,
    )


def _with_part(inputs: Any, index: int, change: Any) -> Any:
    """`inputs` with its `index`-th tensor (in `joined_features` order) replaced by `change(tensor)`."""
    seen = -1

    def visit(t: torch.Tensor) -> torch.Tensor:
        nonlocal seen
        seen += 1
        return change(t) if seen == index else t

    return tree_map(visit, inputs)


def chosen_regularization(start: Trial, final: Trial, kept: list[str], metric_name: str) -> Check:
    """Reports the regularised setup handed to `tune`: what was kept, and validation before and after."""
    if start.val is None or final.val is None:
        return skipped("chosen_regularization", "the setup before or after regularisation diverged.")
    value = {
        "kept": kept,
        "val_loss": [start.val.loss, final.val.loss],
        f"val_{metric_name}": [start.val.metric, final.val.metric],
        "gap": [start.gap, final.gap],
    }
    what = f"kept {', '.join(kept)}" if kept else "kept no regulariser: the setup before this stage stands"
    gap = (
        f", train/val gap {start.gap:.3g} -> {final.gap:.3g}" if start.gap is not None and final.gap is not None else ""
    )
    return passed(
        "chosen_regularization",
        f"{what}; val loss {start.val.loss:.4g} -> {final.val.loss:.4g}, {metric_name} {start.val.metric:.4f} -> "
        f"{final.val.metric:.4f}{gap}. config.yaml runs `tune` from it.",
        value,
    )
