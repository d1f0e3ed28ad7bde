"""Reading the data: the same validation sample, read twice, must be the same sample.

Why: recipe step 2, "fix random seed" and "add significant digits to your eval": a validation metric is only
comparable across epochs and runs when the validation set does not change under it. A random transform applied at
evaluation, or a `Dataset.__getitem__` that edits a stored tensor in place (`x -= mean` on `self.x[i]`), makes
every evaluation score a different (or a progressively corrupted) dataset.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from recipe.check import Check, failed, passed
from recipe.data import DatasetSplit, fixed_indices
from recipe.joined import joined_features
from recipe.reproducibility import rng_state_kept
from recipe.task import Task


def _same(a: Any, b: Any) -> bool:
    """Equal structure and values (NaN equal to NaN), for nested tensors, arrays, numbers and strings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor | np.ndarray) and isinstance(b, torch.Tensor | np.ndarray):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        return torch.equal(a, b)
    return bool(a == b) or (a != a and b != b)  # numbers and strings; NaN == NaN here


def _changing(split: DatasetSplit, indices: list[int]) -> list[int]:
    """The indices whose second read differs from the first (first reads copied, so in-place edits show)."""
    first = [copy.deepcopy(split.dataset[i]) for i in indices]
    return [i for i, sample in zip(indices, first, strict=True) if not _same(sample, split.dataset[i])]


def training_reads_vary(task: Task, samples: int = 8, seed: int = 0) -> bool:
    """Whether a training Dataset returns other values on a second read of the same samples (it augments on read),
    read without moving any global random generator."""
    if not isinstance(task.train, DatasetSplit):
        return False
    with rng_state_kept():
        return bool(_changing(task.train, fixed_indices(len(task.train), samples, seed)))


def augmentation_variance(task: Task, samples: int = 256, seed: int = 0) -> torch.Tensor | None:
    """Per input value (flattened; several float tensors joined), the variance a training Dataset that augments on
    read adds to a sample: half the mean squared difference between two reads of the same samples, which is exact
    for noise drawn afresh on every read. None when the Dataset does not augment on read or its inputs are not
    float tensors. Read without moving any global random generator."""
    if not training_reads_vary(task, seed=seed):
        return None
    indices = fixed_indices(len(task.train), samples, seed)
    with rng_state_kept():
        first, _ = task.split_batch(task.train.batch(indices))
        second, _ = task.split_batch(task.train.batch(indices))
    if not isinstance(first, torch.Tensor):  # several float tensors: per value of their joined features
        first, second = joined_features(first), joined_features(second)
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)):
        return None
    if not (first.is_floating_point() and first.shape == second.shape):
        return None
    return (first.float() - second.float()).reshape(len(first), -1).square().mean(0) / 2


def eval_data_deterministic(task: Task, samples: int = 8, seed: int = 0) -> Check:
    """Catches validation samples that change between reads: random augmentation applied at evaluation, or a
    `Dataset.__getitem__` that edits a stored tensor in place (`x -= mean`), so every epoch evaluates other data.

    Why: recipe step 2: an evaluation is a measurement, and a measurement of a moving dataset cannot be compared
    across epochs or runs. Training-side randomness is augmentation, which is normal: it is reported, not judged.
    """
    name = "eval_data_deterministic"
    val, train = task.val, task.train
    if not isinstance(val, DatasetSplit):
        return passed(name, "validation is held as in-memory tensors: identical on every read.")
    val_idx = fixed_indices(len(val), samples, seed)
    moving = _changing(val, val_idx)
    train_moving: list[int] = []
    if isinstance(train, DatasetSplit):
        train_moving = _changing(train, fixed_indices(len(train), samples, seed))
    value = {"val_read": len(val_idx), "val_changed": moving, "train_changed": len(train_moving)}
    if moving:
        return failed(
            name,
            f"{len(moving)} of {len(val_idx)} validation samples differ between two reads (indices {moving[:5]}): "
            "the validation Dataset applies a random transform, or its __getitem__ edits a stored tensor in place "
            "(`x -= mean` on self.x[i]). Apply augmentation to the training split only, and return a new tensor "
            "(`x = x - mean`) instead of editing the stored one.",
            value,
            "identical reads",
        )
    note = (
        f" Training samples vary between reads ({len(train_moving)} of {samples}): random augmentation, normal "
        "for training (make sure it preserves the label)."
        if train_moving
        else ""
    )
    return passed(name, f"{len(val_idx)} validation samples read twice are identical.{note}", value)
