"""The arrays users hand over as a split's (X, y): tensors, numpy arrays and pandas objects become tensors; what
cannot (strings, objects, several input arrays in place of one) gets an error that names the field and the fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recipe.errors import TaskError


def as_tensor(array: Any, field: str) -> torch.Tensor:
    """`array` as a tensor: float64 numpy arrays as float32 (models are float32), integers as int64 class ids."""
    if isinstance(array, torch.Tensor):
        return array
    if not isinstance(array, np.ndarray) and callable(getattr(array, "to_numpy", None)):
        array = array.to_numpy()  # a pandas DataFrame or Series
    if isinstance(array, np.ndarray):
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype.kind in "US" or (array.dtype == object and array.size and isinstance(array.flat[0], str)):
            raise TaskError(
                f"{field} holds strings ('{array.flat[0]}', ...); encode them as integer class ids, e.g. "
                "names, y = np.unique(y, return_inverse=True), and keep `names` to read the results."
            )
        elif array.dtype == object:
            raise TaskError(
                f"{field} is a numpy array of dtype object; expected a numeric array (convert with .astype)."
            )
        return torch.from_numpy(np.ascontiguousarray(array))
    raise TaskError(f"{field} must be a tensor, numpy array or pandas object, got {type(array).__name__}.")


def several_arrays(inputs: Any, targets: Any) -> bool:
    """Whether (inputs, targets) is (X, y) with X a tuple, list or dict of arrays, one row per target each (a list
    of two (input, target) samples is a Dataset and passes)."""
    if not hasattr(targets, "shape") or not len(inputs):
        return False
    parts = inputs.values() if isinstance(inputs, dict) else inputs
    return all(hasattr(part, "shape") and len(part) == len(targets) for part in parts)


def target_tensor(target: Any) -> torch.Tensor:
    """`split_batch`'s target, which every check reads as one tensor; anything else is an error naming how to pack
    several parts (labels and per-sample weights) into one."""
    if isinstance(target, torch.Tensor):
        return target
    raise TaskError(
        f"split_batch returned a target of type {type(target).__name__}; the recipe reads the target as one tensor "
        "(class ids, values or token ids per sample). To pass labels with per-sample weights (or other parts), join "
        "them in one tensor, e.g. torch.stack([y.float(), weight], 1), with kind='regression' and a callable loss "
        "that takes it apart (y, weight = target[:, 0].long(), target[:, 1])."
    )
