"""Groups across the split: a subject, patient, site or recording in both training and validation.

Why: samples of one group resemble each other more than samples of different groups, so a group on both sides
of the split lets the model score its validation samples by recognising the group, not by generalising
(Roberts et al. 2017, "Cross-validation strategies for data with temporal, spatial, hierarchical, or
phylogenetic structure"). The groups are declared with `Task(groups=(train_groups, val_groups))`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from recipe.check import Check, failed, passed, skipped
from recipe.task import Task


def group_leak(task: Task) -> Check:
    """Catches a group (subject, patient, site) present in both training and validation.

    Why: a declared group split must be disjoint; each validation sample of a shared group is scored by a model
    that saw its group in training, so the validation metric overstates generalisation to new groups. One shared
    group is already a leak, so any fails (the ids are the user's declaration, not an estimate).
    """
    if task.groups is None:
        return skipped(
            "group_leak",
            "no groups declared; if samples come in groups (subjects, patients, sites, recordings), pass "
            "Task(groups=(train_groups, val_groups)), one group id per sample of each split, to check the split.",
        )
    train_groups, val_groups = task.groups
    in_train = set(train_groups)
    val_counts = Counter(val_groups)
    shared = sorted((g for g in val_counts if g in in_train), key=lambda g: (-val_counts[g], str(g)))
    leaked = sum(val_counts[g] for g in shared)
    value: dict[str, Any] = {
        "train_groups": len(in_train),
        "val_groups": len(val_counts),
        "shared_groups": len(shared),
        "val_samples_in_shared_groups": leaked,
        "shared_examples": [str(g) for g in shared[:10]],
    }
    if shared:
        return failed(
            "group_leak",
            f"{len(shared)} of {len(val_counts)} validation groups also occur in training (e.g. "
            f"{', '.join(map(str, shared[:5]))}), covering {leaked} of {len(val_groups)} validation samples: the "
            "validation metric rewards recognising a group, not generalising to new ones. Split by group, e.g. "
            "sklearn.model_selection.GroupShuffleSplit(...).split(X, y, groups).",
            value,
            "no group in both splits",
        )
    return passed(
        "group_leak",
        f"the split is by group: {len(in_train)} training and {len(val_counts)} validation groups, none shared.",
        value,
    )
