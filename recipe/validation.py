"""What `Task.validate` checks before any training: the targets, and the model's output on two samples. Each
problem is a `TaskError` that names the field and the fix."""

from __future__ import annotations

import torch
from torch import nn

from recipe.data import TensorSplit
from recipe.errors import TaskError
from recipe.task import IGNORE_INDEX, SCAN_LIMIT, Task


def check_targets(task: Task) -> None:
    """Targets finite, integer class ids within 0..C-1 for classification; a `TaskError` naming the split."""
    for split in ("train", "val"):
        y = task.targets(split, limit=None if isinstance(getattr(task, split), TensorSplit) else SCAN_LIMIT)
        if not torch.isfinite(y.float()).all():
            bad = (~torch.isfinite(y.float())).reshape(len(y), -1).any(1).nonzero().flatten()[:5].tolist()
            raise TaskError(f"{split} targets contain NaN or Inf (first rows {bad}); remove or impute them.")
        if task.kind in ("classification", "sequence") and task.loss != "bce_with_logits":
            if y.is_floating_point():
                raise TaskError(
                    f"{split} targets are {y.dtype} but a {task.kind} task with cross-entropy needs integer "
                    "class ids; convert them (y.long()) or pass kind='regression'."
                )
            valid = y[y != IGNORE_INDEX] if task.kind == "sequence" else y
            lo, hi = int(valid.min()), int(valid.max())
            assert task.num_classes is not None
            if lo < 0 or hi >= task.num_classes:
                raise TaskError(
                    f"{split} targets span {lo}..{hi} but num_classes={task.num_classes} allows 0.."
                    f"{task.num_classes - 1}; remap the labels to 0..C-1 or fix num_classes."
                )


def check_model_output(task: Task, model: nn.Module, device: torch.device) -> None:
    """The model runs on two training samples and returns one tensor the loss can compare with the target."""
    was_training = model.training
    model.eval()  # a 2-sample forward must not update BatchNorm statistics
    batch = task.batch("train", list(range(min(2, len(task.train)))), device)
    try:
        with torch.no_grad():
            output, target = task.outputs(model, batch)
    except Exception as exc:  # the user's forward failed: say where, keep the cause attached
        raise TaskError(f"the model failed on a batch of 2 training samples: {type(exc).__name__}: {exc}") from exc
    model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise TaskError(
            f"the model returned a {type(output).__name__}; the loss needs one tensor. Subclass Task and "
            "override forward(model, inputs) to pick the output tensor."
        )
    if not callable(task.loss):
        check_output_shape(task, output, target)
    loss = task.compute_loss(output, target)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TaskError(f"the loss returned {shape}; it must return a scalar tensor (reduce with .mean()).")


def check_output_shape(task: Task, output: torch.Tensor, target: torch.Tensor) -> None:
    """The output has the shape the loss needs for these targets (no silent broadcasting)."""
    out, tgt = tuple(output.shape), tuple(target.shape)
    if task.loss == "cross_entropy":
        classes = task.num_classes or 0
        if task.kind == "sequence":
            if len(out) == len(tgt) + 1 and out[:-1] == tgt and out[-1] >= classes:
                task.num_classes = out[-1]  # a vocabulary wider than the tokens seen is normal
                return
            want = (*tgt, classes)
        else:
            want = (tgt[0], classes, *tgt[1:])
        if out != want:
            width = out[-1] if task.kind == "sequence" else (out[1] if len(out) > 1 else None)
            how = "shaped differently from"
            if width is not None and len(out) == len(want) and width != classes:
                how = f"{'narrower' if width < classes else 'wider'} ({width} outputs) than"
            raise TaskError(
                f"model output has shape {out} but {task.kind} targets of shape {tgt} with num_classes={classes} "
                f"need {want}: the head is {how} the {classes} classes. Fix the final layer's width or "
                "num_classes."
            )
        return
    if out != tgt:
        raise TaskError(
            f"model output has shape {out} but targets have shape {tgt}; {task.loss} would broadcast them "
            f"silently. Make them match (e.g. output.squeeze(-1) or y.reshape({out}))."
        )
