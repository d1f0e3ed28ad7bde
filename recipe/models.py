"""Reference models and simplifications: the linear / bigram model that "you couldn't possibly have screwed up",
and dropout switched off for the stages that must run without regularisation."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recipe.task import Task


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).reshape(len(x), *self.out_shape)


class _Bigram(nn.Module):
    """A table of next-token logits given the current token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        nn.init.zeros_(self.table.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table(tokens)


def simple_model_factory(task: Task, inputs: Any, output: torch.Tensor) -> tuple[Any, str] | None:
    """A factory for the reference model of this task and its description, or None when there is none."""
    if task.kind == "sequence":
        vocab = int(output.shape[-1])
        return (lambda: _Bigram(vocab)), "bigram table"
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        return None
    features = math.prod(inputs.shape[1:])
    out_shape = tuple(output.shape[1:])
    return (lambda: _Linear(features, out_shape)), f"linear model on {features} flattened inputs"
