"""`Task`: the user's problem — data, a model factory, a loss — and the hooks a subclass overrides.

Everything the recipe knows about a problem goes through a Task: how a batch splits into model input and target
(`split_batch`), how the model is called (`forward`), how output and target are compared (`compute_loss`,
`loss_per_sample`) and which metric is reported (`metric_per_sample`). Bad input is rejected with an error that
names the field and the fix: a malformed argument as the Task is built (`task_arguments.py`, which also infers a
kind or class count left out), bad data or a model that does not fit it by `validate`, before any training starts.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils.data import Subset

from recipe.arrays import target_tensor
from recipe.data import (
    IGNORE_INDEX,
    Batch,
    HeldSamples,
    Split,
    TensorSplit,
    as_split,
    batch_bounds,
    cat_padded,
    fixed_indices,
    to_device,
)
from recipe.data import SCAN_LIMIT as SCAN_LIMIT  # imported from here by models.py
from recipe.errors import TaskError
from recipe.reproducibility import rng_state_kept
from recipe.task_arguments import KINDS as KINDS  # the public import paths of the moved names
from recipe.task_arguments import LOSSES as LOSSES
from recipe.task_arguments import TRANSFORMS as TRANSFORMS
from recipe.task_arguments import (
    Kind,
    as_class_weights,
    as_groups,
    as_metrics,
    check_arguments,
    infer_kind,
    infer_num_classes,
)
from recipe.task_arguments import next_token_share as next_token_share
from recipe.validation import check_model_output, check_targets


class Task:
    """A supervised learning problem, as the recipe sees it.

    Args:
        train: a Dataset yielding (input, target), or a tuple (X, y) of tensors / numpy arrays.
        val: same forms as `train`.
        model: zero-argument callable returning a fresh `nn.Module` on every call.
        loss: "cross_entropy" | "mse" | "l1" | "bce_with_logits", or callable(output, target) -> scalar tensor.
        kind: "classification" | "regression" | "sequence"; inferred from the targets when omitted.
        num_classes: classes (classification) or vocabulary size (sequence); inferred when omitted.
        name: names the run; defaults to "task".
        decoder: optional callable turning a list of token ids into text (sequence tasks), used to show batches.
        image_shape: optional (C, H, W) or (H, W) of one input, so flat inputs are shown as pictures (e.g. (8, 8)
            for the 64 pixels of a digit); (B, 1|3, H, W) inputs are shown as pictures without it.
        models: optional ladder of model factories, smallest first ({"small": f, "large": g}) for `complexify`;
            `model` defaults to the first rung. A single `model` is a one-rung ladder.
        augment: optional training-time augmentation, callable(batch inputs) -> inputs, drawing its randomness from
            torch's global generator (which `fit` seeds); used by `regularize` and `fit(augment=True)`.
        invariances: what the task's label does under named transforms of image inputs: True when the label is
            preserved, False when it changes (e.g. {"hflip": False} for a left/right task). Checked against
            `augment` by `regularize`. Known transforms: hflip, vflip, rot90, rot180.
        pad_id: the token id that pads integer (token) inputs to a common length, when they are padded. Positions
            holding it are padding: checks verify the model's outputs at real positions ignore them.
        groups: optional (train_groups, val_groups): a group id per sample of each split (a patient, a subject,
            a recording). Samples of one group belong in one split: a group in both splits is a leak, and a split
            by groups is declared rather than mistaken for a shift.
        class_weights: cross-entropy's per-class weights, one per class in class-id order (a list or tensor), or
            "balanced" (N / (C * n_c) from the training labels). The loss stays a (weighted) cross-entropy, so the
            checks still know its expected values; the reported metric stays unweighted.
        metrics: extra metrics reported beside the loss, {name: fn(outputs, targets) -> float}, each computed over
            a whole split's outputs and targets (e.g. a macro F1); the primary metric (`metric_name`) is unchanged.
        input_ladder: optional smaller versions of the input, smallest first, {name: shrink(batch inputs) -> inputs}
            (a feature subset, a smaller image, a shorter sequence) that the model accepts; `complexify` reports
            the smallest one the model does as well on (check `input_ladder`).

    Subclasses override `split_batch`, `forward`, `compute_loss`, `loss_per_sample`, `metric_per_sample` or
    `decode` for other data formats, and keep these constructor arguments.
    """

    def __init__(
        self,
        train: Any,
        val: Any,
        model: Callable[[], nn.Module] | None = None,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
        kind: Kind | None = None,
        num_classes: int | None = None,
        name: str | None = None,
        decoder: Callable[[list[int]], str] | None = None,
        image_shape: tuple[int, ...] | None = None,
        models: dict[str, Callable[[], nn.Module]] | None = None,
        augment: Callable[[Any], Any] | None = None,
        invariances: dict[str, bool] | None = None,
        pad_id: int | None = None,
        groups: tuple[Any, Any] | None = None,
        class_weights: Any = None,
        metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] | None = None,
        input_ladder: dict[str, Callable[[Any], Any]] | None = None,
    ):
        model = check_arguments(model, models, loss, kind, num_classes, augment, invariances, pad_id, input_ladder)
        self.train: Split = as_split(train, "train")
        self.val: Split = as_split(val, "val")
        self.model = model
        self.loss = loss
        self.name = name or "task"
        self.decoder = decoder
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.models = dict(models or {}) or {"model": model}
        self.augmentation = augment
        self.invariances = dict(invariances or {})
        self.pad_id = pad_id
        self.groups = as_groups(groups)
        self.input_ladder = dict(input_ladder or {})
        # set on a variant by a probe that changes what the model sees (the input-independent baseline exchanges
        # inputs between samples); the user's task has none
        self.input_transform: Callable[[Any], Any] | None = None
        self._targets: dict[tuple[str, int | None], torch.Tensor] = {}  # read once: a Dataset pass can be slow
        self.kind: Kind = kind or infer_kind(self)
        self.num_classes: int | None = num_classes
        if self.num_classes is None and self.kind != "regression":
            self.num_classes = infer_num_classes(self)
        self.class_weights = as_class_weights(class_weights, self.loss, self.num_classes, lambda: self.targets("train"))
        self.metrics = as_metrics(metrics)
        self._validated: set[str] = set()

    # ---- hooks a subclass overrides -------------------------------------------------------------------------

    def split_batch(self, batch: Batch) -> tuple[Any, torch.Tensor]:
        """Split a collated batch into (model input, target). Default: the first two items."""
        if isinstance(batch, dict):
            raise TaskError(
                f"batches are dicts (keys {', '.join(map(repr, list(batch)[:6]))}): subclass Task and override "
                "split_batch(self, batch) -> (inputs, target), e.g. `return batch['x'], batch['label']`."
            )
        return batch[0], batch[1]

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        """Call the model on the inputs; override for models that take several arguments or return a structure."""
        return model(inputs)

    def compute_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The scalar training loss."""
        if not isinstance(self.loss, str):
            loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.loss
            return loss_fn(output, target)
        target = _loss_dtype(self.loss, output, target)
        if self.loss == "cross_entropy":
            if self.kind == "sequence":
                output, target = output.reshape(-1, output.shape[-1]), target.reshape(-1)
            return F.cross_entropy(output, target, weight=self._weight(output))
        if self.loss == "mse":
            return F.mse_loss(output, target)
        if self.loss == "l1":
            return F.l1_loss(output, target)
        return F.binary_cross_entropy_with_logits(output, target)

    def loss_per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Loss of each sample, shape (B,); None when the loss is a user callable (per-batch only)."""
        if callable(self.loss):
            return None
        target = _loss_dtype(self.loss, output, target)
        if self.loss == "cross_entropy":
            weight = self._weight(output)
            if self.kind == "sequence" or target.dim() > 1:  # one class per position: mean over scored positions
                logits = output.transpose(1, -1) if self.kind == "sequence" else output
                per_token = F.cross_entropy(logits, target, weight, reduction="none").reshape(len(target), -1)
                valid = (target != IGNORE_INDEX).reshape(len(target), -1).float()
                if weight is not None:  # a weighted mean, as the batch loss takes it
                    valid = valid * weight[target.clamp_min(0)].reshape(len(target), -1)
                return per_token.sum(1) / valid.sum(1).clamp_min(1e-12)
            return F.cross_entropy(output, target, weight, reduction="none")  # weight[y] * nll: see `sample_weights`
        if self.loss == "mse":
            per_element = F.mse_loss(output, target, reduction="none")
        elif self.loss == "l1":
            per_element = F.l1_loss(output, target, reduction="none")
        else:
            per_element = F.binary_cross_entropy_with_logits(output, target, reduction="none")
        return per_element.reshape(len(per_element), -1).mean(1)

    def sample_weights(self, target: torch.Tensor) -> torch.Tensor | None:
        """The weight of each sample in the batch loss, shape (B,): `class_weights[y]` for one class per sample;
        None when every sample counts alike (no class weights, or one class per position: `loss_per_sample` is then
        a weighted mean already). The loss over a split is sum(loss_per_sample) / sum(sample_weights)."""
        if self.class_weights is None or self.loss != "cross_entropy" or target.dim() != 1:
            return None
        return self.class_weights.to(target.device)[target.clamp_min(0)] * (target != IGNORE_INDEX)

    def _weight(self, like: torch.Tensor) -> torch.Tensor | None:
        weights = self.class_weights
        return None if weights is None else weights.to(like.device, like.dtype)

    @property
    def metric_name(self) -> str:
        return "mae" if self.kind == "regression" else "accuracy"

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "regression"

    def metric_per_sample(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The reported metric for each sample, shape (B,): accuracy (classification, sequence) or mean |error|.
        It is nan where the output does not line up with the target: a regression output holding other values per
        sample (a callable loss's quantiles or variance), a classifier's output without a class per target (an
        embedding for a contrastive loss, an ordinal model's K - 1 cumulative logits under a callable loss). Name a
        metric that reads such outputs with `Task(metrics=...)`."""
        if not _lines_up(self, output, target):
            return torch.full((len(output),), math.nan, device=output.device)
        if self.kind == "sequence":
            valid = (target != IGNORE_INDEX).float()
            hit = (output.argmax(-1) == target).float() * valid
            return hit.sum(1) / valid.sum(1).clamp_min(1)
        if self.kind == "classification":
            if self.loss == "bce_with_logits":
                hit = ((output > 0) == (target > 0.5)).float()
                return hit.reshape(len(hit), -1).mean(1)
            hit = (output.argmax(1) == target).float()
            if target.dim() > 1:  # one class per position (a tagger): accuracy over the scored positions
                valid = (target != IGNORE_INDEX).reshape(len(target), -1).float()
                return (hit.reshape(len(hit), -1) * valid).sum(1) / valid.sum(1).clamp_min(1)
            return hit
        output, target = output.reshape(len(output), -1), target.reshape(len(target), -1)
        return (output.float() - target.float()).abs().mean(1)

    def augment(self, inputs: Any) -> Any:
        """Training-time augmentation of a batch's inputs (identity when the task has none)."""
        return self.augmentation(inputs) if self.augmentation is not None else inputs

    def decode(self, tokens: list[int]) -> str | None:
        """Text for a list of token ids, when the task has a decoder."""
        return self.decoder(tokens) if self.decoder is not None else None

    def images(self, inputs: Any) -> torch.Tensor | None:
        """Inputs as pictures (B, C, H, W) for a person to look at, or None when they are not images."""
        if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
            return None
        if self.image_shape is not None:
            shape = self.image_shape if len(self.image_shape) == 3 else (1, *self.image_shape)
            if math.prod(shape) == inputs[0].numel():
                return inputs.reshape(len(inputs), *shape)
        if inputs.dim() == 4 and inputs.shape[1] in (1, 3):
            return inputs
        return None

    # ---- used by fit and the diagnostics ----------------------------------------------------------------------

    def outputs(self, model: nn.Module, batch: Batch, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(model output, target) for a batch: split, optionally augment, forward (through a probe's
        `input_transform` in a variant that `replace` made)."""
        inputs, target = self.split_batch(batch)
        if augment:
            inputs = self.augment(inputs)
        return self.forward(model, inputs), target

    @property
    def class_dim(self) -> int:
        """The axis of the output that holds the class logits."""
        return -1 if self.kind == "sequence" else 1

    def make_model(self) -> nn.Module:
        """A fresh model from the factory. Lazy layers (`nn.LazyLinear`...) get their shapes from one forward pass on
        two training samples, as PyTorch asks before their parameters are read, counted or optimised."""
        model = self.model()
        if not isinstance(model, nn.Module):
            raise TaskError(f"the model factory returned {type(model).__name__}; it must return an nn.Module.")
        if any(is_lazy(p) for p in model.parameters()):
            inputs, _ = self.split_batch(
                to_device(self.train.batch(range(min(2, len(self.train)))), torch.device("cpu"))
            )
            was_training = model.training
            with torch.no_grad():
                self.forward(model.eval(), inputs)
            model.train(was_training)
        return model

    def replace(self, **changes: Any) -> Task:
        """A shallow copy with some attributes changed (model, train, val, input_transform); hooks are kept. New
        `train` or `val` data drops the task's `groups` unless new ones are given."""
        new = copy.copy(self)
        if changes.keys() & {"model", "train", "val"}:
            new._validated = set()  # a new model or new data must be validated again
        if changes.keys() & {"train", "val"}:
            new._targets = {}
            if "groups" not in changes:
                new.groups = None  # the group ids named the old samples; a subset passes its own (`subset`)
        for key, value in changes.items():
            key = "augmentation" if key == "augment" else key  # Task(augment=f) keeps f as `augmentation`
            if key in ("train", "val"):
                value = as_split(value, key)
            elif not hasattr(self, key) or callable(getattr(type(self), key, None)):  # a hook is not data
                raise TypeError(f"Task has no attribute {key!r} to replace")
            setattr(new, key, value)
        if "input_transform" in changes:  # the variant's class applies it: a plain task never tests for one per step
            plain: type[Task] = getattr(type(self), "plain_class", type(self))
            new.__class__ = plain if new.input_transform is None else _with_input_transform(plain)
        return new

    def subset(self, split: str, indices: list[int], held: bool = False) -> Task:
        """A variant whose `split` ("train" or "val") holds only the samples `indices`; with `held`, a Dataset's
        samples are read once and kept as read (its random transforms drawn once: a fixed batch stays fixed)."""
        data = self.train if split == "train" else self.val
        if isinstance(data, TensorSplit):
            idx = torch.as_tensor(indices, dtype=torch.long)
            part: Any = TensorSplit(data.x[idx.to(data.x.device)], data.y[idx.to(data.y.device)], split)
        elif held:
            part = data.holding(HeldSamples([data.dataset[int(i)] for i in indices]), split)
        else:
            part = data.holding(Subset(data.dataset, list(indices)), split)
        groups = self.groups
        if groups is not None:
            kept = [groups[split == "val"][int(i)] for i in indices]
            groups = (kept, groups[1]) if split == "train" else (groups[0], kept)
        return self.replace(**{split: part, "groups": groups})

    def batch(self, split: str, indices: list[int], device: torch.device | str = "cpu") -> Batch:
        """The samples `indices` of split "train" or "val", collated, on `device`."""
        data = self.train if split == "train" else self.val
        return to_device(data.batch(indices), torch.device(device))

    def sample_batch(self, split: str, size: int, seed: int, device: torch.device | str = "cpu") -> Batch:
        """A fixed random batch: the same `size` samples for the same seed."""
        data = self.train if split == "train" else self.val
        return self.batch(split, fixed_indices(len(data), size, seed), device)

    def targets(self, split: str, limit: int | None = None) -> torch.Tensor:
        """All targets of a split (or the first `limit`), on the CPU; read once per split and kept."""
        key = (split, limit)
        if key not in self._targets:
            data = self.train if split == "train" else self.val
            n = len(data) if limit is None else min(limit, len(data))
            with rng_state_kept():  # a Dataset's random transforms must not shift what training draws later
                whole = [(data.x[:n], data.y[:n])] if isinstance(data, TensorSplit) else None
                batches = whole or [data.batch(range(a, b)) for a, b in batch_bounds(n, 512)]
                parts = [target_tensor(self.split_batch(batch)[1]).cpu() for batch in batches]
            # per-token targets padded batch by batch: the unscored value fills the rest
            fill = IGNORE_INDEX if not parts[0].is_floating_point() else 0.0
            self._targets[key] = parts[0] if len(parts) == 1 else cat_padded(parts, fill)  # one part: no copy
        return self._targets[key]

    # ---- validation -------------------------------------------------------------------------------------------

    def validate(self, device: torch.device | str = "cpu") -> None:
        """Raise a `TaskError` naming the field and the fix for any malformed part; cheap, run before training."""
        device = torch.device(device)
        if str(device) in self._validated:
            return
        check_targets(self)
        first, second = self.make_model(), self.make_model()
        if first is second:
            raise TaskError(
                "the model factory returned the same nn.Module instance twice; it must build a fresh model on "
                "every call (e.g. `model=lambda: Net()`), or runs would share weights."
            )
        del second
        check_model_output(self, first.to(device), device)
        self._validated.add(str(device))


def _with_input_transform(cls: type[Task]) -> type[Task]:
    """`cls` whose `forward` passes the inputs through `input_transform` first (the user's `forward` still runs)."""

    def forward(self: Task, model: nn.Module, inputs: Any) -> torch.Tensor:
        transform = cast(Callable[[Any], Any], self.input_transform)  # set with this class by `replace`
        return cls.forward(self, model, transform(inputs))

    return type(cls.__name__, (cls,), {"forward": forward, "plain_class": cls, "__module__": cls.__module__})


def _lines_up(task: Task, output: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the default metric pairs output with target: a class axis, a logit or a value per target."""
    if output.dim() == 0 or len(output) != len(target):
        return False
    if task.kind == "regression" or task.loss == "bce_with_logits":
        return output[0].numel() == target[0].numel()
    axis = task.class_dim
    if output.dim() < 2 or output.argmax(axis).shape != target.shape:
        return False
    # under a callable loss the outputs need not be a logit per class (an ordinal model's K - 1 cumulative logits)
    return not (callable(task.loss) and task.kind == "classification" and output.shape[axis] != task.num_classes)


def _loss_dtype(loss: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class ids as int64 (from int32, uint8, bool), other targets in the output's float dtype (counts, 0/1)."""
    if loss == "cross_entropy":
        return target if target.dtype == torch.long or target.is_floating_point() else target.long()
    return target if target.is_floating_point() else target.to(output.dtype)
