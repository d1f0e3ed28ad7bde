"""Reference models and simplifications: the linear / bigram model that "you couldn't possibly have screwed up",
and dropout switched off for the stages that must run without regularisation."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from recipe.data import tree_map
from recipe.joined import continuous_columns, describe_parts, joined_features, part_shapes, tensor_leaves
from recipe.task import SCAN_LIMIT, Task


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set p=0 on every dropout module (recipe step 2, "simplify": no regularisation while looking for bugs)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return model


class _Linear(nn.Module):
    """Flatten, one linear layer, reshape to the output shape the task expects."""

    def __init__(self, in_features: int, out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = out_shape
        self.linear = nn.Linear(in_features, max(1, math.prod(out_shape)))

    def forward(self, *inputs: Any, **named: Any) -> torch.Tensor:
        """One input tensor, or the float tensors among several however they are passed (`model(*pair)`,
        `model(pair)`, `model(**parts)`), joined in order as `joined_features` joins them (category ids left out:
        their codes are no scale a linear model can read). A NaN or Inf reads as 0: inputs with missing values
        reach the reference only when the user's model takes them (`non_finite` passed them)."""
        x = inputs[0] if len(inputs) == 1 and not named and isinstance(inputs[0], torch.Tensor) else None
        x = x if x is not None else joined_features((inputs, named), measurements_only=True)
        if x is None:
            raise TypeError("the linear reference takes one tensor or several with a float one")
        x = torch.nan_to_num(x.flatten(1), nan=0.0, posinf=0.0, neginf=0.0)  # missing values a model may take
        return self.linear(x).reshape(len(x), *self.out_shape)


class _Bigram(nn.Module):
    """A table of output logits (the next token, or a tag) given the current token. Input ids may outnumber the
    output classes (a tagger's vocabulary is not its tag set); ids past the table share its last row. With
    `classes_first` the logits come out (B, C, T), the layout cross-entropy takes for one class per position."""

    def __init__(self, tokens: int, classes: int, classes_first: bool = False):
        super().__init__()
        self.table = nn.Embedding(tokens, classes)
        self.classes_first = classes_first
        nn.init.zeros_(self.table.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.table(tokens.clamp(0, self.table.num_embeddings - 1))
        return logits.transpose(1, -1) if self.classes_first else logits


def _token_count(task: Task, inputs: torch.Tensor) -> int:
    """One more than the largest input token id in either split (a Dataset's first `SCAN_LIMIT` samples)."""
    top = int(inputs.max())
    for split in (task.train, task.val):
        n = min(len(split), SCAN_LIMIT)
        for i in range(0, n, 4096):
            x, _ = task.split_batch(split.batch(range(i, min(i + 4096, n))))
            top = max(top, int(x.max())) if isinstance(x, torch.Tensor) and x.numel() else top
    return top + 1


def simple_model_factory(task: Task, inputs: Any, output: torch.Tensor) -> tuple[Any, str] | None:
    """A factory for the reference model of this task and its description, or None when there is none: a bigram
    table for next-token prediction, a unigram tagger (a table of class logits per token) for one class per token
    of (B, T) token inputs, a linear model on the flattened inputs for float inputs."""
    tokens = isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and inputs.dim() == 2
    if tokens and task.kind == "sequence" and output.dim() == 3:
        count, classes = _token_count(task, inputs), int(output.shape[-1])
        return (lambda: _Bigram(max(count, classes), classes)), "bigram table"
    if tokens and task.kind == "classification" and output.dim() == 3 and output.shape[2] == inputs.shape[1]:
        count, classes = _token_count(task, inputs), int(output.shape[1])  # (B, C, T): one class per token
        return (lambda: _Bigram(count, classes, classes_first=True)), "unigram tagger (class logits per token)"
    joined = inputs if isinstance(inputs, torch.Tensor) else joined_features(inputs, measurements_only=True)
    if joined is None or not joined.is_floating_point():
        return None
    features = math.prod(joined.shape[1:])
    out_shape = tuple(output.shape[1:])
    what = f"{features} flattened inputs"
    if joined is not inputs:
        floats = "" if bool(continuous_columns(inputs).all()) else " (the float ones)"
        what += f"{floats} joined from {describe_parts(part_shapes(inputs))}"
    dtype = joined.dtype  # float64 data keeps a float64 reference, as the user's model must be
    return (lambda: _Linear(features, out_shape).to(dtype)), f"linear model on {what}"


def reference_task(task: Task, factory: Any, inputs: Any, output: torch.Tensor) -> Task:
    """`task` with the reference model from `factory`, called through the task's `forward` hook when the hook takes
    it (a hook may prepare the inputs), else called directly: a hook written for the user's model (one that picks
    the logits out of the dict or tuple that model returns) does not fit recipe's own model, which returns the
    output tensor itself. The hook takes it when it returns a tensor of the shape `output` has, per sample."""
    reference = task.replace(model=factory)
    try:
        with torch.no_grad(), warnings.catch_warnings():  # what the hook says about a model it was not written for
            warnings.simplefilter("ignore")
            device = next(t.device for t in tensor_leaves(inputs) if isinstance(t, torch.Tensor))
            out = task.forward(factory().to(device).eval(), tree_map(lambda t: t[:2], inputs))
        fits = isinstance(out, torch.Tensor) and out.shape[1:] == output.shape[1:]
    except Exception:  # any user hook: the one for the user's model may fail on another in any way
        fits = False
    if not fits:
        reference.__class__ = type(type(task).__name__, (type(task),), {"forward": Task.forward})
    return reference
