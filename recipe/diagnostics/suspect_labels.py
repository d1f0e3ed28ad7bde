"""Acting on the labels `inspect` doubts: the training split without them, or with them relabelled to the class the
out-of-fold models confidently predict, tried by `regularize` like any regulariser and kept only beyond noise.

Why: Karpathy's recipe, step 1 ("look for data imbalances and biases ... corrupted labels") and step 4 (regularize:
what improves validation is kept); confident learning's `CleanLearning` (Northcutt et al. 2021), which trains without
the issues it finds. Dropping or relabelling is a claim about the data, so it must earn its place on the validation
split, whose labels it does not touch.
"""

from __future__ import annotations

from typing import Any

import torch

from recipe.check import Check
from recipe.data import TensorSplit
from recipe.diagnostics.regularization import Trial, best_trial, regularizer
from recipe.task import Task

DROP, RELABEL = "drop", "relabel"


def label_fixes(task: Task, suspects: dict[str, list[int]]) -> dict[str, Task]:
    """The task's training split without the suspect samples, and (for a single-label classification held as
    tensors) with each suspect relabelled to its `predicted` class; keyed by a trial label naming the count.

    Args:
        task: the task to change (its validation split is left as it is).
        suspects: {"indices": training indices, "predicted": the confident class of each}, as inspect found them.
    """
    indices, predicted = list(suspects["indices"]), list(suspects.get("predicted") or [])
    drop = set(indices)
    keep = [i for i in range(len(task.train)) if i not in drop]
    fixes = {f"{DROP} {len(indices)} suspect labels": task.subset("train", keep)}
    train, known = task.train, len(predicted) == len(indices)
    if isinstance(train, TensorSplit) and train.y.dim() == 1 and task.kind == "classification" and known:
        y = train.y.clone()
        y[torch.as_tensor(indices, dtype=torch.long, device=y.device)] = torch.as_tensor(predicted, dtype=y.dtype)
        fixes[f"{RELABEL} {len(indices)} suspect labels"] = task.replace(train=(train.x, y))
    return fixes


def apply_label_fix(task: Task, fix: dict[str, Any]) -> Task:
    """The task with a kept fix re-applied: {"action": "drop" | "relabel", "indices": [...], "predicted": [...]}."""
    fixes = label_fixes(task, fix)
    return next(t for label, t in fixes.items() if label.startswith(fix["action"]))


def suspect_labels(reference: Trial, trials: list[Trial], seed_noise: float, metric_name: str) -> Check:
    """Reports training without inspect's suspect labels (and with them relabelled) against the current setup, and
    which is kept; never fails: a fix that does not help is left out.

    Why: regularize's rule, a change is kept when it lowers the validation loss by more than twice the noise (the
    paired per-sample SE and the seed-to-seed difference); the validation labels are never changed, so a fix that
    merely agrees with wrong labels cannot win there.
    """
    check = regularizer("suspect_labels", reference, trials, seed_noise)
    kept = best_trial(reference, trials, seed_noise)
    metrics = {t.label: None if t.val is None else t.val.metric for t in trials}
    value = {**(check.value or {}), f"reference_val_{metric_name}": None, f"val_{metric_name}": metrics}
    if reference.val is not None:
        value[f"reference_val_{metric_name}"] = reference.val.metric
    if kept is None or kept.val is None or reference.val is None:
        return check.replace(value=value)
    note = (
        f" Validation {metric_name} {reference.val.metric:.4g} -> {kept.val.metric:.4g}. The later stages train on "
        "the changed split; fix these labels at the source (01_inspect/label_issues.json lists them)."
    )
    return check.replace(value=value, message=check.message + note)
