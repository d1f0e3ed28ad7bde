"""The data before any network sees it: the splits as the model receives them (`SplitSample`, read once for every
inspect check), what they hold, whether every value is finite, and whether token data is consistent with its
vocabulary. The targets' own checks (range, class balance) are in `recipe.diagnostics.targets`.

Why: recipe step 1, "become one with the data"; catalog D10 (non-finite or sentinel values) and L7 (padding
counted as a target).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import TensorSplit, batch_size_of, cat_padded, fixed_indices, padded_to, tree_map
from recipe.diagnostics.inputs import token_distance
from recipe.joined import continuous_columns, describe_parts, joined_features, joined_tokens, part_shapes
from recipe.task import IGNORE_INDEX, Task


@dataclass
class SplitSample:
    """A split as the model receives it (after `Task.split_batch`), all of it or a fixed random sample, on the CPU.

    Attributes:
        name: "train" or "val".
        inputs: the inputs as one tensor: the model's own, or, for a model that takes several tensors (a tuple,
            list or dict of them), their `joined_features` (one float at least) or `joined_tokens` (integer ones
            only), one row per sample; None otherwise.
        targets: the targets.
        indices: each row's index in the split.
        size: the split's full length.
        parts: for joined inputs, the per-sample shape of each tensor joined (`part_shapes`); None for one tensor.
        continuous: for joined inputs, which columns come from float tensors (`continuous_columns`); the others
            hold category ids or flags.
    """

    name: str
    inputs: torch.Tensor | None
    targets: torch.Tensor
    indices: torch.Tensor
    size: int
    parts: tuple[tuple[int, ...], ...] | None = None
    continuous: torch.Tensor | None = None

    @property
    def sampled(self) -> bool:
        return len(self.indices) < self.size

    @property
    def scope(self) -> str:
        """How much of the split the figures cover, for messages."""
        return f"a random sample of {len(self.indices):,} of {self.size:,}" if self.sampled else "all"

    def rows(self, keep: torch.Tensor) -> SplitSample:
        """The rows where `keep` (bool, one per row) is true."""
        inputs = self.inputs[keep] if self.inputs is not None else None
        return replace(self, inputs=inputs, targets=self.targets[keep], indices=self.indices[keep])

    def part_columns(self) -> list[tuple[tuple[int, ...], slice, bool]]:
        """Each joined tensor's per-sample shape, its columns in `inputs`, and whether it is float (a measurement)."""
        out, start = [], 0
        for shape in self.parts or ():
            width = math.prod(shape)
            continuous = self.continuous is None or bool(self.continuous[start])
            out.append((shape, slice(start, start + width), continuous))
            start += width
        return out

    def measurements(self) -> SplitSample:
        """The split with its float columns only: what statistics of scale and size describe (category ids and
        flags left out), or without inputs when none is. The split itself when every column is one."""
        if self.inputs is None or self.continuous is None or bool(self.continuous.all()):
            return self
        if not bool(self.continuous.any()):
            return replace(self, inputs=None, parts=None, continuous=None)
        kept = [shape for shape, _, continuous in self.part_columns() if continuous]
        return replace(self, inputs=self.inputs[:, self.continuous], parts=tuple(kept), continuous=None)


def read_split(task: Task, split: str, max_samples: int, seed: int, chunk: int = 1024) -> SplitSample:
    """Read a split through the task's hooks: every sample, or a fixed random `max_samples` of them (sorted).
    Chunks that a collate function padded to their own longest sample are padded to the longest of all
    (`pad_value`); several tensors whose joined width varies between chunks are not joined."""
    data = task.train if split == "train" else task.val
    n = len(data)
    order = torch.arange(n) if n <= max_samples else torch.tensor(sorted(fixed_indices(n, max_samples, seed)))
    inputs, targets, first = [], [], None
    for start in range(0, len(order), chunk):
        x, y = task.split_batch(data.batch(order[start : start + chunk]))
        inputs.append(_as_one_tensor(x))
        first = x if first is None else first
        targets.append(y.detach().cpu())
    tensors = None
    if all(x is not None for x in inputs):
        kept = [x for x in inputs if x is not None]
        if isinstance(first, torch.Tensor):
            tensors = cat_padded(kept, pad_value(task, kept[0]))
        elif len({x.shape[1:] for x in kept}) == 1:  # joined: a varying width would shift the tensors' columns
            tensors = torch.cat(kept)
    parts, continuous = _layout(first) if tensors is not None else (None, None)
    y_fill = IGNORE_INDEX if not targets[0].is_floating_point() else 0.0
    return SplitSample(split, tensors, cat_padded(targets, y_fill), order, n, parts, continuous)


def pad_value(task: Task, inputs: torch.Tensor) -> float:
    """What pads variable-length inputs beyond a batch's longest sample: the task's pad id for token ids, else 0 (what
    `pad_sequence` fills with)."""
    return task.pad_id if task.pad_id is not None and not inputs.is_floating_point() else 0


def same_length(train: SplitSample, val: SplitSample, task: Task) -> tuple[SplitSample, SplitSample]:
    """The two splits with their token inputs (and per-token targets) padded to one length when a collate function
    padded each to its own longest sample: the checks that compare the splits row against row need one width. Float
    inputs of two widths are left as they are: a validation split missing a feature must not be padded into shape."""
    a, b = train.inputs, val.inputs
    if a is None or b is None or train.parts or a.dim() != b.dim() or a.shape[1:] == b.shape[1:]:
        return train, val
    if a.is_floating_point() or b.is_floating_point():
        return train, val
    longest = [max(m, n) for m, n in zip(a.shape[1:], b.shape[1:], strict=True)]
    fill = pad_value(task, a)

    def padded(part: SplitSample) -> SplitSample:
        assert part.inputs is not None
        y = part.targets
        if y.dim() == part.inputs.dim() and y.shape[1:] == part.inputs.shape[1:]:  # one target per position
            y = padded_to(y, longest, IGNORE_INDEX if not y.is_floating_point() else 0.0)
        return replace(part, inputs=padded_to(part.inputs, longest, fill), targets=y)

    return padded(train), padded(val)


def different_widths(train: SplitSample, val: SplitSample) -> str | None:
    """Why the two splits' inputs cannot be compared row against row (another shape per sample), or None."""
    a, b = train.inputs, val.inputs
    if a is None or b is None or a.shape[1:] == b.shape[1:]:
        return None
    return (
        f"training inputs are {tuple(a.shape[1:])} per sample and validation inputs {tuple(b.shape[1:])}: samples "
        "of varying length padded per split, or a feature missing from one split (then evaluation fails too); the "
        "splits cannot be compared row against row."
    )


def _layout(x: Any) -> tuple[tuple[tuple[int, ...], ...] | None, torch.Tensor | None]:
    """`parts` and `continuous` of a SplitSample whose model inputs look like `x`."""
    return (None, None) if isinstance(x, torch.Tensor) or x is None else (part_shapes(x), continuous_columns(x))


def _as_one_tensor(x: Any) -> torch.Tensor | None:
    """The inputs as one tensor on the CPU: a tensor itself, several tensors joined, else None."""
    one = x if isinstance(x, torch.Tensor) else joined_features(x)
    one = one if one is not None else joined_tokens(x)
    return None if one is None else one.detach().cpu()


def whole_split(task: Task, split: str) -> SplitSample | None:
    """Every sample of an in-memory split, as views of its tensors (no copy); None for a Dataset split."""
    data = task.train if split == "train" else task.val
    if not isinstance(data, TensorSplit):
        return None
    x, y = task.split_batch((data.x, data.y))
    inputs = _as_one_tensor(x)
    parts, continuous = _layout(x) if inputs is not None else (None, None)
    return SplitSample(split, inputs, y.detach().cpu(), torch.arange(len(data)), len(data), parts, continuous)


def is_class_task(task: Task) -> bool:
    """Single-label classification with cross-entropy: the targets are class ids, one per sample."""
    return task.kind == "classification" and task.loss == "cross_entropy"


def class_counts(sample: SplitSample, classes: int) -> torch.Tensor:
    y = scored(sample.targets)
    return torch.bincount(y.long().clamp(0, classes - 1), minlength=classes)


def scored(targets: torch.Tensor) -> torch.Tensor:
    """The class ids cross-entropy scores, flattened: positions holding IGNORE_INDEX (padding) are left out."""
    y = targets.reshape(-1)
    return y[y != IGNORE_INDEX]


def summary(train: SplitSample, val: SplitSample, task: Task) -> Check:
    """What the splits hold: sizes, input and target shapes and dtypes, target range, kind and classes."""
    table: dict[str, Any] = {"kind": task.kind, "num_classes": task.num_classes, "loss": str(task.loss)}
    for part in (train, val):
        y = part.targets.float()
        row: dict[str, Any] = {
            "size": part.size,
            "read": len(part.indices),
            "input_shape": list(part.inputs.shape[1:]) if part.inputs is not None else "not a single tensor",
            "input_dtype": str(part.inputs.dtype) if part.inputs is not None else None,
            "input_parts": describe_parts(part.parts) if part.parts else None,
            "target_shape": list(part.targets.shape[1:]),
            "target_dtype": str(part.targets.dtype),
            "target_min": float(y[torch.isfinite(y)].min()) if torch.isfinite(y).any() else None,
            "target_max": float(y[torch.isfinite(y)].max()) if torch.isfinite(y).any() else None,
        }
        if is_class_task(task) and task.num_classes:
            row["classes_present"] = int((class_counts(part, task.num_classes) > 0).sum())
        table[part.name] = row
    shape = table["train"]["input_shape"]
    if train.parts:
        shape = f"{describe_parts(train.parts)}, joined as {shape[0]} features"
    classes = f", {task.num_classes} classes" if task.num_classes else ""
    return passed(
        "summary",
        f"{task.kind}{classes}: train {train.size:,} and validation {val.size:,} samples; inputs {shape} "
        f"({table['train']['input_dtype']}), targets {table['train']['target_shape']} ({train.targets.dtype}).",
        table,
    )


def _non_finite_rows(x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None or not (x.is_floating_point() or x.is_complex()):
        return None
    return (~torch.isfinite(x)).reshape(len(x), -1).any(1)


def non_finite_data(
    train: SplitSample, val: SplitSample, copes: Callable[[str, list[int]], bool] | None = None
) -> Check:
    """Catches NaN or Inf in the inputs or targets of either split (a missing-value marker that slipped through).

    Why: catalog D10; one non-finite value gives a NaN loss at the first batch that holds it, or, averaged into
    normalisation statistics, spreads to every sample. A model and loss built to take them (missing inputs
    imputed in `forward`, missing targets masked in the loss) is no such bug: `copes(split, indices)` says whether
    a fresh model gives a finite loss and finite gradients on those samples, and then the check passes, saying so.
    """
    found: dict[str, Any] = {}
    rows: dict[str, list[int]] = {}
    for part in (train, val):
        for what, tensor in (("inputs", part.inputs), ("targets", part.targets)):
            bad = _non_finite_rows(tensor)
            if bad is not None and bool(bad.any()):
                indices = part.indices[bad].tolist()
                found[f"{part.name}_{what}"] = {"samples": len(indices), "first_indices": indices[:10]}
                rows[part.name] = sorted(set(rows.get(part.name, [])) | set(indices[:64]))[:64]
    if not found:
        scope = f"{train.scope} training and {val.scope} validation samples"
        return passed("non_finite", f"no NaN or Inf in the inputs or targets ({scope} checked).", {"scanned": scope})
    where = "; ".join(
        f"{k.replace('_', ' ')}: {v['samples']} samples (first {v['first_indices']})" for k, v in found.items()
    )
    if copes is not None and all(copes(split, indices) for split, indices in rows.items()):
        return passed(
            "non_finite",
            f"NaN or Inf values in {where}, and a fresh model gives a finite loss and finite gradients on those "
            "samples: the model or the loss handles them (missing inputs imputed in forward, missing targets "
            "masked in the loss), which no model does by accident. The data checks describe the finite rows.",
            found,
        )
    return failed(
        "non_finite",
        f"NaN or Inf values in {where}. Impute or drop them before training (and check the step that made "
        "them: a division by zero, a log of 0, a missing-value marker).",
        found,
        "every value finite",
    )


def finite_loss_on(task: Task, device: torch.device) -> Callable[[str, list[int]], bool]:
    """`non_finite_data`'s probe: whether a fresh model, in eval mode, gives a finite output, loss and gradient on
    these samples of a split (False when it raises: a model that cannot take them does not handle them)."""

    def copes(split: str, indices: list[int]) -> bool:
        model = task.make_model().to(device).eval()
        try:
            output, target = task.outputs(model, task.batch(split, indices, device))
            loss = task.compute_loss(output, target)
            loss.backward()
        except Exception:  # a forward or loss that fails on them does not handle them
            return False
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(output).all()) and bool(torch.isfinite(loss))
        return finite and all(bool(torch.isfinite(g).all()) for g in grads)

    return copes


def finite_rows(part: SplitSample) -> SplitSample:
    """The rows whose inputs and targets are all finite (the later checks describe those)."""
    keep = torch.ones(len(part.indices), dtype=torch.bool)
    for tensor in (part.inputs, part.targets):
        bad = _non_finite_rows(tensor)
        if bad is not None:
            keep &= ~bad
    return part if bool(keep.all()) else part.rows(keep)


def finite_rows_batch(batch: Any) -> Any:
    """The rows of a batch whose float tensors are all finite: model probes judge the model on valid samples, and
    `non_finite` reports the others. The batch itself when every row is finite, or when fewer than two are."""
    n = batch_size_of(batch)
    keep = torch.ones(n, dtype=torch.bool)

    def mark(t: torch.Tensor) -> torch.Tensor:
        nonlocal keep
        if t.is_floating_point() and t.dim() and t.shape[0] == n:
            keep = keep & torch.isfinite(t.reshape(n, -1)).all(1).cpu()
        return t

    tree_map(mark, batch)
    if bool(keep.all()) or int(keep.sum()) < 2:
        return batch
    rows = keep.nonzero().flatten()
    return tree_map(lambda t: t[rows.to(t.device)] if t.dim() and t.shape[0] == n else t, batch)


def sequence_data(train: SplitSample, val: SplitSample, task: Task, pad_id: int | None = None) -> Check:
    """Catches token ids outside the vocabulary, padding that is scored as a target, and a padding id that is also
    a real token.

    Why: catalog L7. A model that spends its loss on predicting padding reports an artificially low loss; an
    `ignore_index` (or pad id) shared with a real token silently never trains that token.
    """
    if task.kind != "sequence" or train.inputs is None or train.inputs.is_floating_point():
        return skipped("sequence_data", "not a sequence task with token-id inputs.")
    vocab = task.num_classes or 0
    x = torch.cat([train.inputs.reshape(-1), val.inputs.reshape(-1)]) if val.inputs is not None else train.inputs
    y = torch.cat([train.targets.reshape(-1), val.targets.reshape(-1)])
    scored = y[y != IGNORE_INDEX]
    ignored = 1 - len(scored) / max(len(y), 1)
    value: dict[str, Any] = {"vocab": vocab, "input_ids": [int(x.min()), int(x.max())], "ignored_targets": ignored}
    if token_distance(x, y, pad_id if pad_id is not None else task.pad_id) > 0.5:  # tags, not next tokens
        if int(x.min()) < 0:
            return failed("sequence_data", f"negative input token ids ({int(x.min())}).", value, ">= 0")
        return passed(
            "sequence_data",
            f"targets are tags of {vocab} classes, not the input's tokens (a tagging task): token ids are "
            f"non-negative; {ignored:.1%} of targets are ignored ({IGNORE_INDEX}).",
            value,
        )
    if int(x.min()) < 0 or int(x.max()) >= vocab:
        return failed(
            "sequence_data",
            f"input token ids span {int(x.min())}..{int(x.max())} but the vocabulary has {vocab} ids: the "
            "tokenizer and the model's embedding disagree. Fix num_classes or the encoding.",
            value,
            f"0..{vocab - 1}",
        )
    if pad_id is not None:
        pad_targets = float((scored == pad_id).float().mean()) if len(scored) else 0.0
        value["pad_share_of_scored_targets"] = pad_targets
        rows = train.inputs
        after_pad = (rows[:, :-1] == pad_id) & (rows[:, 1:] != pad_id)
        value["pad_followed_by_tokens"] = int(after_pad.sum())
        if int(after_pad.sum()) > 0:
            return warned(
                "sequence_data",
                f"the pad id {pad_id} is followed by real tokens {int(after_pad.sum())} times, so it is also used as a "
                "real token; give padding an id of its own.",
                value,
            )
        if pad_targets > 0.01:
            return failed(
                "sequence_data",
                f"{pad_targets:.0%} of the scored targets are the pad id {pad_id}: the loss rewards predicting "
                f"padding. Set those targets to {IGNORE_INDEX} (ignore_index) so they are not scored.",
                value,
                "pad targets ignored",
            )
    return passed(
        "sequence_data",
        f"token ids within the vocabulary of {vocab}; {ignored:.1%} of targets are ignored ({IGNORE_INDEX}).",
        value,
    )
