"""A model input made of several tensors (a siamese pair, an image with its metadata, numbers beside category ids, a
sentence pair) read as one matrix, one row per sample, for the checks that compare samples, splits and features.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch


def tensor_leaves(obj: Any) -> list[Any]:
    """Every leaf of nested tuples, lists and dicts, in order (a dict's in its own order): tensors and anything else."""
    if isinstance(obj, dict):
        return [leaf for v in obj.values() for leaf in tensor_leaves(v)]
    if isinstance(obj, tuple | list):
        return [leaf for v in obj for leaf in tensor_leaves(v)]
    return [obj]


def joined_features(inputs: Any, measurements_only: bool = False) -> torch.Tensor | None:
    """A model input made of several tensors (a tuple, list or dict of them, nested: a pair for a siamese model, an
    image with its metadata, numeric columns beside category ids) as one float (batch, features) matrix, each part
    flattened per sample and the parts joined in order. Float tensors are measurements; integer or boolean ones
    (category ids, flags) join as their values, one column per id, or are left out with `measurements_only`.

    None for a single tensor, where any part is not a tensor with the batch as its first dimension, and where no
    part is a float tensor (token ids alone are read as tokens, not as numbers on a scale)."""
    if isinstance(inputs, torch.Tensor):
        return None
    parts = [p for p in tensor_leaves(inputs) if p is not None]  # an optional part left out (mask=None)
    if not parts or not all(isinstance(p, torch.Tensor) and p.dim() >= 1 and not p.is_complex() for p in parts):
        return None
    floats = [p for p in parts if p.is_floating_point()]
    if not floats or len({p.shape[0] for p in parts}) != 1:
        return None
    dtype = functools.reduce(torch.promote_types, [p.dtype for p in floats])
    kept = floats if measurements_only else parts
    return torch.cat([p.detach().reshape(len(p), -1).to(dtype) for p in kept], 1)


def joined_tokens(inputs: Any) -> torch.Tensor | None:
    """A model input made of several integer tensors (a premise and a hypothesis, token ids with their attention
    mask) as one (batch, ids) integer matrix, each flattened per sample and joined in order: what identical samples
    share. None for a single tensor, and where any part is not an integer tensor with the batch as its first
    dimension."""
    if isinstance(inputs, torch.Tensor):
        return None
    parts = [p for p in tensor_leaves(inputs) if p is not None]  # an optional part left out (mask=None)
    integer = [
        isinstance(p, torch.Tensor) and p.dim() >= 1 and not (p.is_floating_point() or p.is_complex()) for p in parts
    ]
    if not parts or not all(integer) or len({p.shape[0] for p in parts}) != 1:
        return None
    return torch.cat([p.detach().reshape(len(p), -1).long() for p in parts], 1)


def continuous_columns(inputs: Any) -> torch.Tensor:
    """Which columns of `joined_features(inputs)` come from float tensors (measurements), as a bool mask."""
    parts = [p for p in tensor_leaves(inputs) if isinstance(p, torch.Tensor)]
    return torch.cat([torch.full((math.prod(p.shape[1:]),), p.is_floating_point()) for p in parts])


def part_shapes(inputs: Any, measurements_only: bool = False) -> tuple[tuple[int, ...], ...]:
    """The per-sample shape of each tensor in a several-tensor input, in the order `joined_features` joins them
    (of the float ones only with `measurements_only`)."""
    parts = [p for p in tensor_leaves(inputs) if isinstance(p, torch.Tensor)]
    return tuple(tuple(p.shape[1:]) for p in parts if p.is_floating_point() or not measurements_only)


def column_name(shapes: tuple[tuple[int, ...], ...] | None, column: int) -> str:
    """A column of `joined_features` named for a person: "feature 2 of input 1 (3,)"; "input feature 7" for one
    tensor."""
    start = 0
    for k, shape in enumerate(shapes or ()):
        width = math.prod(shape)
        if column < start + width:
            return f"feature {column - start} of input {k} {shape}"
        start += width
    return f"input feature {column}"


def describe_parts(shapes: tuple[tuple[int, ...], ...]) -> str:
    """`part_shapes` for messages: "2 tensors: (64,) + (64,)"."""
    return f"{len(shapes)} tensors: " + " + ".join(str(s) for s in shapes)
