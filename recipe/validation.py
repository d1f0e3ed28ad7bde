"""What `Task.validate` checks before any training: the targets, and the model's output on two samples. Each
problem is a `TaskError` that names the field and the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recipe.data import IGNORE_INDEX, SCAN_LIMIT, TensorSplit
from recipe.errors import ConfigError, TaskError

if TYPE_CHECKING:  # for annotations only: `Task.validate` calls these checks, so this module sits below task.py
    from recipe.task import Task


def check_targets(task: Task) -> None:
    """Targets finite, integer class ids within 0..C-1 for classification, a group id per sample where groups are
    declared; a `TaskError` naming the split."""
    for split in ("train", "val"):
        y = task.targets(split, limit=None if isinstance(getattr(task, split), TensorSplit) else SCAN_LIMIT)
        if not torch.isfinite(y.float()).all():
            bad = (~torch.isfinite(y.float())).reshape(len(y), -1).any(1).nonzero().flatten()[:5].tolist()
            raise TaskError(f"{split} targets contain NaN or Inf (first rows {bad}); remove or impute them.")
        if task.kind in ("classification", "sequence") and task.loss != "bce_with_logits":
            if y.is_floating_point():
                loss = "cross-entropy" if task.loss == "cross_entropy" else "a custom loss (its accuracy is argmax)"
                if not isinstance(task.loss, str) and bool(((y == 0) | (y == 1)).all()):
                    raise TaskError(
                        f"{split} targets are {y.dtype} 0/1 values, but a {task.kind} task with {loss} needs "
                        "integer class ids. For a binary or multi-label loss on these values (BCELoss), pass "
                        "loss='bce_with_logits' on logits (drop a final Sigmoid; accuracy is then read at logit 0), "
                        "or keep your loss and pass kind='regression'."
                    )
                raise TaskError(
                    f"{split} targets are {y.dtype} but a {task.kind} task with {loss} needs integer class ids; "
                    "convert them (y.long()), or for soft targets (distillation, mixup) pass kind='regression' "
                    "with a callable loss (loss=lambda output, target: F.cross_entropy(output, target))."
                )
            _check_class_ids(task, y, f"{split} targets span")
    for split, ids in zip(("train", "val"), task.groups or (), strict=False):
        if len(ids) != len(getattr(task, split)):
            raise TaskError(
                f"groups[{split}] has {len(ids)} group ids but the {split} split has {len(getattr(task, split))} "
                "samples; give one group id per sample."
            )


def check_model_output(task: Task, model: nn.Module, device: torch.device) -> None:
    """The model runs on two training samples and returns one tensor the loss can compare with the target."""
    was_training = model.training
    model.eval()  # a 2-sample forward must not update BatchNorm statistics
    batch = task.batch("train", list(range(min(2, len(task.train)))), device)
    inputs = task.split_batch(batch)[0]
    check_input_dtype(inputs, model)
    embeddings: list[nn.Embedding] = []  # those the inputs themselves index: their range is checked on the splits
    hooks = [m.register_forward_pre_hook(_ids_in_range(m, inputs, embeddings)) for m in _embeddings(model)]
    try:
        with torch.no_grad():
            output, target = task.outputs(model, batch)
    except TaskError:
        raise
    except Exception as exc:  # the user's forward failed: say where, keep the cause attached
        cause = " ".join(str(exc).split())  # one line: the CLI prints the message as one
        raise TaskError(
            f"the model failed on a batch of 2 training samples: {type(exc).__name__}: {cause}.{_layout_hint(inputs)}"
        ) from exc
    finally:
        for hook in hooks:
            hook.remove()
    model.train(was_training)
    for embedding in embeddings[:1]:
        for split in ("train", "val"):
            _check_ids(embedding, *_id_range(task, split), f"{split} input token ids span")
    if not isinstance(output, torch.Tensor):
        several = (
            " When the loss needs several of them (a VAE's reconstruction, mean and log-variance), return them "
            "joined in one tensor (torch.cat([recon, mu, logvar], dim=1)) and split it inside the loss."
            if callable(task.loss)
            else ""
        )
        raise TaskError(
            f"the model returned a {type(output).__name__}; the checks read one output tensor. Subclass Task and "
            f"override forward(model, inputs) to pick the output tensor.{several}"
        )
    if not callable(task.loss):
        check_output_shape(task, output, target)
    loss = task.compute_loss(output, target)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise TaskError(f"the loss returned {shape}; it must return a scalar tensor (reduce with .mean()).")


def check_input_dtype(inputs: object, model: nn.Module) -> None:
    """float64 inputs to a float32 model: numpy's and Python's default float, which the first layer refuses."""
    if not isinstance(inputs, torch.Tensor) or inputs.dtype != torch.float64:
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes and torch.float64 not in dtypes:
        raise TaskError(
            f"train inputs are torch.float64 but the model's parameters are {min(dtypes, key=str)}; convert the "
            "inputs with x.float() (numpy: x.astype('float32')) when building the Task."
        )


def _embeddings(model: nn.Module) -> list[nn.Embedding]:
    return [m for m in model.modules() if isinstance(m, nn.Embedding)]


def _ids_in_range(module: nn.Embedding, inputs: object, found: list[nn.Embedding]) -> Callable[..., None]:
    """A forward pre-hook: the ids an `nn.Embedding` receives lie in 0..num_embeddings-1 (out of range they are an
    IndexError on the CPU and a device-side assert on CUDA); notes the embedding when the inputs themselves index it."""

    def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
        ids = args[0] if args else None
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or not ids.numel():
            return
        if ids is inputs:
            found.append(module)
        _check_ids(module, int(ids.min()), int(ids.max()), "in a batch of 2 training samples, token ids span")

    return hook


def _check_ids(module: nn.Embedding, lo: int | None, hi: int | None, what: str) -> None:
    if lo is None or hi is None or (lo >= 0 and hi < module.num_embeddings):
        return
    raise TaskError(
        f"{what} {lo}..{hi} but the model's nn.Embedding({module.num_embeddings}, {module.embedding_dim}) takes ids "
        f"0..{module.num_embeddings - 1}; make the embedding (vocabulary size) larger, or fix the tokenizer's ids."
    )


def _id_range(task: Task, split: str) -> tuple[int | None, int | None]:
    """The smallest and largest integer input of a split (a Dataset's first `SCAN_LIMIT` samples)."""
    data = getattr(task, split)
    if isinstance(data, TensorSplit):
        parts = [task.split_batch((data.x, data.y))[0]]
    else:
        n = min(len(data), SCAN_LIMIT)
        parts = [task.split_batch(data.batch(range(i, min(i + 512, n))))[0] for i in range(0, n, 512)]
    ids = [p for p in parts if isinstance(p, torch.Tensor) and not p.is_floating_point() and p.numel()]
    if not ids:
        return None, None
    return min(int(p.min()) for p in ids), max(int(p.max()) for p in ids)


def _layout_hint(inputs: object) -> str:
    """What to check about the inputs' shape; for 4-D inputs whose last axis looks like colour channels, the permute
    that turns channels-last images into the (N, C, H, W) a conv net wants."""
    if not isinstance(inputs, torch.Tensor):
        return ""
    shape = tuple(inputs.shape)
    if inputs.dim() == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return (
            f" The inputs have shape {shape}: if they are channels-last images (N, H, W, C), convert them to the "
            "(N, C, H, W) a conv net wants with x.permute(0, 3, 1, 2)."
        )
    return f" Check that the model's first layer fits inputs of shape {shape}."


def check_batch_fits(task: Task, batch_size: int) -> None:
    """A training split smaller than one batch: every "epoch" would be one short batch, not what was configured."""
    if batch_size > len(task.train):
        raise ConfigError(
            f"train.batch_size={batch_size} is larger than the train split ({len(task.train)} samples); set "
            f"train.batch_size <= {len(task.train)} in the config's `train` section, or add training data."
        )


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
            if task.kind == "classification" and len(tgt) > 1 and out[:-1] == tgt:  # (B, T, C) for (B, T) targets
                raise TaskError(
                    f"model output has shape {out}, classes last, but classification targets of shape {tgt} (one "
                    f"class per position) need the classes on axis 1, {want}: return output.transpose(1, -1), or, "
                    "for next-token prediction (targets = inputs shifted by one), pass kind='sequence'."
                )
            if task.kind == "classification" and tgt[1:] == (1,) and out == (tgt[0], classes):
                raise TaskError(
                    f"classification targets have shape {tgt}: one class id per sample held in a column (a "
                    f"reshape(-1, 1) from scikit-learn?), while the model gives {out}, a logit per class. Pass the "
                    "targets flat, shape (N,): y.squeeze(1) (numpy: y.ravel())."
                )
            raise TaskError(
                f"model output has shape {out} but {task.kind} targets of shape {tgt} with num_classes={classes} "
                f"need {want}: the head is {how} the {classes} classes. Fix the final layer's width or "
                "num_classes."
            )
        return
    if out != tgt:
        if out == (*tgt, 1):
            fix = "squeeze the output (output.squeeze(-1)) or give the targets a trailing axis (y.unsqueeze(-1))"
        elif tgt == (*out, 1):
            fix = "give the model a trailing output axis (output.unsqueeze(-1)) or squeeze the targets (y.squeeze(-1))"
        else:
            fix = "make the final layer's width match the targets' shape"
        raise TaskError(
            f"model output has shape {out} but targets have shape {tgt}; {task.loss} would broadcast them "
            f"silently. Make them match: {fix}."
        )


def target_guard(task: Task, data: Any, split: str) -> Callable[[Any], None] | None:
    """A host-side check of each batch's class ids, for a Dataset split larger than what `check_targets` reads
    (`SCAN_LIMIT`): a label out of range found later is a `TaskError`, never a CUDA device-side assert. None when
    there is nothing left to check. It runs on the collated batch before it moves to the device (no sync)."""
    if isinstance(data, TensorSplit) or len(data) <= SCAN_LIMIT or task.num_classes is None:
        return None
    if task.kind not in ("classification", "sequence") or task.loss == "bce_with_logits":
        return None

    def guard(batch: Any) -> None:
        _, y = task.split_batch(batch)
        if isinstance(y, torch.Tensor) and not y.is_floating_point():
            _check_class_ids(
                task, y, f"past the first {SCAN_LIMIT} samples checked before training, {split} targets span"
            )

    return guard


def _check_class_ids(task: Task, y: torch.Tensor, what: str) -> None:
    """Class ids within 0..num_classes-1 (a sequence's ignored positions aside); a `TaskError` saying `what` spans."""
    valid = y[y != IGNORE_INDEX] if task.kind == "sequence" or y.dim() > 1 else y  # per-position ids may be ignored
    if not valid.numel():
        return
    lo, hi = int(valid.min()), int(valid.max())
    classes = task.num_classes
    assert classes is not None
    if lo < 0 or hi >= classes:
        raise TaskError(
            f"{what} {lo}..{hi} but num_classes={classes} allows 0..{classes - 1}; remap the labels to 0..C-1 or fix "
            "num_classes."
        )
