"""What `Task` checks and infers from its constructor arguments: each malformed argument is a `TaskError` naming
the field and the fix, raised as the Task is built; class weights, groups and extra metrics are put in the form the
Task keeps (`as_class_weights`, `as_groups`, `as_metrics`); a `kind` or `num_classes` left out is inferred from the
data.
What needs the data and the model together (targets in range, the model's output) is `validation.py`'s, run by
`Task.validate` before training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
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
    if kind == "regression" and loss == "cross_entropy":
        raise TaskError(
            "kind='regression' with loss='cross_entropy' (the default loss): cross-entropy compares class scores "
            "with class ids. Pass loss='mse' (or 'l1', or a callable) for a regression task."
        )
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise TaskError(f"num_classes must be a positive int, got {num_classes!r}.")
    if pad_id is not None and (isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0):
        raise TaskError(f"pad_id must be a non-negative int token id, got {pad_id!r}.")
    if not all(callable(shrink) for shrink in dict(input_ladder or {}).values()):
        raise TaskError("input_ladder must map level names to callables(inputs) -> smaller inputs, smallest first.")
    return model


def as_groups(groups: Any) -> tuple[list[Any], list[Any]] | None:
    """`Task(groups=(train_groups, val_groups))` as two plain lists of hashable group ids (lengths are checked
    against the splits by `validate`)."""
    if groups is None:
        return None
    if not isinstance(groups, tuple | list) or len(groups) != 2:
        raise TaskError(
            "groups must be a pair (train_groups, val_groups): one group id per sample of each split, "
            f"got {type(groups).__name__}."
        )
    out = []
    for split, ids in zip(("train", "val"), groups, strict=True):
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        try:
            {hash(v) for v in values}
        except TypeError:
            raise TaskError(f"groups[{split}]: group ids must be hashable (ints or strings).") from None
        out.append(values)
    return out[0], out[1]


def as_class_weights(
    weights: Any, loss: Any, num_classes: int | None, train_targets: Callable[[], torch.Tensor]
) -> torch.Tensor | None:
    """`Task(class_weights=...)` as a float tensor of one weight per class: given (a list, an array, a tensor), or
    "balanced", N / (C * n_c) over the scored training labels (a class absent from them counts as seen once)."""
    if weights is None:
        return None
    if loss != "cross_entropy" or not num_classes:
        raise TaskError(
            f"class_weights weight cross-entropy's classes, but the loss is {loss!r}; use loss='cross_entropy', or "
            "weight the samples inside your own loss function."
        )
    if isinstance(weights, str):
        if weights != "balanced":
            raise TaskError(f"class_weights={weights!r}: give one weight per class, or 'balanced'.")
        y = train_targets()
        counts = torch.bincount(y[y != -100].long().reshape(-1), minlength=num_classes).float().clamp_min(1)
        return counts.sum() / (num_classes * counts)
    w = torch.as_tensor(np.asarray(weights.tolist() if hasattr(weights, "tolist") else weights, dtype=np.float32))
    if w.shape != (num_classes,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not bool(w.sum() > 0):
        raise TaskError(
            f"class_weights must be {num_classes} finite, non-negative weights (one per class, in class-id order, not "
            f"all zero), got shape {tuple(w.shape)} with values {w.tolist()[:8]}; or pass 'balanced'."
        )
    return w


def as_metrics(metrics: Any) -> dict[str, Callable[[torch.Tensor, torch.Tensor], float]]:
    """`Task(metrics={name: fn})` checked: names that can label a column (not 'loss'), callables for values."""
    out = dict(metrics or {})
    for name, fn in out.items():
        if not isinstance(name, str) or not name.isidentifier() or name in ("loss", "step", "epoch", "accuracy", "mae"):
            raise TaskError(
                f"metrics: {name!r} cannot name an extra metric (loss, step, epoch and the primary accuracy/mae are "
                "taken); use a short identifier such as 'f1'."
            )
        if not callable(fn):
            raise TaskError(
                f"metrics[{name!r}] must be a callable(outputs, targets) -> float, got {type(fn).__name__}."
            )
    return out


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
