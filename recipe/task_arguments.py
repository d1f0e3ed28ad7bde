"""What `Task` checks and infers from its constructor arguments: each malformed argument is a `TaskError` naming
the field and the fix, raised as the Task is built; a `kind` or `num_classes` left out is inferred from the data.
What needs the data and the model together (targets in range, the model's output) is `validation.py`'s, run by
`Task.validate` before training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from recipe.data import IGNORE_INDEX, SCAN_LIMIT
from recipe.errors import TaskError

if TYPE_CHECKING:  # for annotations only: Task calls these as it is built, so this module sits below task.py
    from recipe.task import Task

Kind = Literal["classification", "regression", "sequence"]
KINDS: tuple[str, ...] = ("classification", "regression", "sequence")
LOSSES: tuple[str, ...] = ("cross_entropy", "mse", "l1", "bce_with_logits")
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {  # on (B, C, H, W) images
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
}


def check_arguments(
    model: Any,
    models: dict[str, Any] | None,
    loss: Any,
    kind: Any,
    num_classes: Any,
    augment: Any,
    invariances: dict[str, bool] | None,
    pad_id: Any,
    input_ladder: dict[str, Any] | None,
) -> Callable[[], nn.Module]:
    """Raise a `TaskError` for the first malformed argument; return the model factory (the ladder's first rung
    when `model` is left out)."""
    models = dict(models or {})
    for rung, factory in models.items():
        if isinstance(factory, nn.Module) or not callable(factory):
            raise TaskError(
                f"models[{rung!r}] must be a factory building a fresh nn.Module (a class or a function), "
                f"got {type(factory).__name__}."
            )
    if model is None:
        if not models:
            raise TaskError("give model= (a factory returning a fresh nn.Module), or a ladder models={name: factory}.")
        model = next(iter(models.values()))  # the smallest rung: "start simple"
    if augment is not None and not callable(augment):
        raise TaskError(f"augment must be a callable(inputs) -> inputs, got {type(augment).__name__}.")
    unknown = set(invariances or {}) - set(TRANSFORMS)
    if unknown:
        raise TaskError(
            f"invariances: unknown transform(s) {sorted(unknown)}; declare any of {', '.join(TRANSFORMS)} as "
            "True (preserves the label) or False (changes it)."
        )
    if isinstance(model, nn.Module):
        raise TaskError(
            f"model must be a factory that builds a fresh nn.Module on every call, got an instance of "
            f"{type(model).__name__}; pass the class or a function (e.g. `model=lambda: Net()`)."
        )
    if not callable(model):
        raise TaskError(
            f"model must be a zero-argument callable returning a fresh nn.Module, got {type(model).__name__}."
        )
    if isinstance(loss, str) and loss not in LOSSES:
        raise TaskError(f"loss={loss!r} is not known; use one of {', '.join(LOSSES)} or a callable(output, target).")
    if not isinstance(loss, str) and not callable(loss):
        raise TaskError(f"loss must be a name or a callable(output, target) -> scalar, got {type(loss).__name__}.")
    if kind is not None and kind not in KINDS:
        raise TaskError(f"kind={kind!r} is not known; use one of {', '.join(KINDS)} or leave it out to infer it.")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise TaskError(f"num_classes must be a positive int, got {num_classes!r}.")
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0):
        raise TaskError(f"pad_id must be a non-negative int token id, got {pad_id!r}.")
    if not all(callable(shrink) for shrink in dict(input_ladder or {}).values()):
        raise TaskError("input_ladder must map level names to callables(inputs) -> smaller inputs, smallest first.")
    return model


def infer_kind(task: Task) -> Kind:
    """From the loss where it decides (MSE/L1: regression; BCE: classification), else from the targets.

    (B, T) integer targets beside (B, T) token inputs are "sequence" (next-token prediction, with its causal
    checks) only when they are the inputs shifted by one at most positions; otherwise they are one class per
    token (a tagger, which may see the whole sequence): "classification".
    """
    if task.loss in ("mse", "l1"):
        return "regression"
    if task.loss == "bce_with_logits":
        return "classification"
    y = task.targets("train", limit=SCAN_LIMIT)
    x, _ = task.split_batch(task.train.batch(range(min(len(task.train), 256))))
    tokens = isinstance(x, torch.Tensor) and not x.is_floating_point()
    if tokens and y.dim() == 2 and not y.is_floating_point() and tuple(x.shape[1:]) == tuple(y.shape[1:]):
        return "sequence" if next_token_share(x, y[: len(x)]) >= 0.5 else "classification"
    if y.is_floating_point() and task.loss != "cross_entropy":
        return "regression"
    return "classification"


def infer_num_classes(task: Task) -> int:
    """Classes (classification) or vocabulary size (sequence): the largest class id (or token id) seen, plus one."""
    if task.loss == "bce_with_logits":  # one label per output: binary (B,) or (B, 1), else (B, labels)
        y = task.targets("train", limit=SCAN_LIMIT)
        return 2 if y.dim() == 1 or y[0].numel() == 1 else int(y[0].numel())
    top = max(int(task.targets(s, limit=SCAN_LIMIT).max()) for s in ("train", "val"))
    if task.kind == "sequence":
        x, _ = task.split_batch(task.train.batch(range(min(len(task.train), 256))))
        if isinstance(x, torch.Tensor) and not x.is_floating_point():
            top = max(top, int(x.max()))
    return top + 1


def next_token_share(x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of scored positions where the target is the next input token, y[:, t] == x[:, t + 1]; 1.0 when
    no position can be compared (length 1)."""
    scored = y[:, :-1] != IGNORE_INDEX
    if not bool(scored.any()):
        return 1.0
    return float(((y[:, :-1] == x[:, 1:]) & scored).sum() / scored.sum())
