"""Padding: a sample's outputs must not depend on how much padding follows it.

Why: a padded batch is a storage convenience; the model must see the same sample whatever length the batch was
padded to. An inverted key-padding mask, a mean over every position (padding included) or a recurrent net run over
the padding without packing all make the outputs move with the padding length, and the model then learns from, and
is judged on, an artefact of batching.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import tree_map
from recipe.joined import tensor_leaves
from recipe.task import Task

NOISE = 1e-4  # relative change below which two float paths (fused kernels, nested tensors) agree
BUG = 1e-2  # relative change at which padding is changing the outputs, not rounding


def _outputs(model: nn.Module, task: Task, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return task.forward(model, inputs).float()


def _tokens(inputs: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The (batch, length) token ids among the inputs, and the attention mask beside them (an integer or bool tensor
    of their shape holding only 0 and 1, 0 at padding, as Hugging Face models take it); None without one ids
    tensor. Another (batch, length) integer tensor (token type ids) goes along as content."""
    if isinstance(inputs, torch.Tensor):
        plain = not inputs.is_floating_point() and inputs.dim() == 2 and inputs.shape[1] >= 2
        return (inputs, None) if plain else None
    grids = [t for t in tensor_leaves(inputs) if not t.is_floating_point() and t.dim() == 2 and t.shape[1] >= 2]
    binary = [t for t in grids if t.dtype == torch.bool or (t.numel() and int(t.min()) >= 0 and int(t.max()) <= 1)]
    ids = [t for t in grids if all(t is not b for b in binary)]
    if len(ids) != 1:
        return None
    masks = [b for b in binary if b.shape == ids[0].shape]
    return ids[0], masks[0] if len(masks) == 1 else None


def _probe(inputs: Any, ids: torch.Tensor, mask: torch.Tensor | None, pad: int) -> tuple[Any, Any, torch.Tensor, bool]:
    """(half of each row, the same half with the other half's length of padding, its real positions, left-padded?).
    Padding goes where the batch has it: before the tokens when rows start with it and end without it. Every
    (batch, length) tensor is cut and padded alike: the ids with the pad id, the mask and any other with 0."""
    real_all = mask.bool() if mask is not None else ids != pad
    ends = ~real_all[:, -1]
    left = bool((~real_all[:, 0] & ~ends).any()) and not bool(ends.any())
    batch, width = ids.shape
    length = width // 2
    kept = slice(width - length, width) if left else slice(0, length)
    rows = real_all[:, kept].any(1)  # a row with no real token here has no real output to compare

    def cut(t: torch.Tensor) -> torch.Tensor:
        if t.dim() >= 2 and tuple(t.shape[:2]) == (batch, width):
            return t[:, kept][rows]
        return t[rows] if t.dim() and t.shape[0] == batch else t

    def padded(t: torch.Tensor) -> torch.Tensor:
        part = cut(t)
        if not (t.dim() >= 2 and tuple(t.shape[:2]) == (batch, width)):
            return part
        fill = torch.full((len(part), width - length, *part.shape[2:]), pad if t is ids else 0).to(part)
        return torch.cat([fill, part] if left else [part, fill], 1)

    return tree_map(cut, inputs), tree_map(padded, inputs), real_all[:, kept][rows], left


def _pad_id(task: Task, ids: torch.Tensor, mask: torch.Tensor | None) -> int | None:
    """The declared pad id, else the commonest id at the mask's padding (0 where the mask marks none)."""
    if task.pad_id is not None or mask is None:
        return task.pad_id
    at_padding = ids[~mask.bool()]
    return int(at_padding.mode().values) if at_padding.numel() else 0


def padding_invariance(model: nn.Module, task: Task, inputs: Any) -> Check:
    """Catches outputs that change with the amount of padding: an inverted key-padding mask (`x != pad` for
    `x == pad`), a mean-pool over all positions including padding, a GRU/LSTM run over padding without packing.

    Why: the same real tokens, followed by no padding or by a batch's worth of it, are the same sample: the model's
    outputs at the real positions (or its per-sample output) must agree up to float rounding.
    """
    name = "padding_invariance"
    found = _tokens(inputs)
    if found is None:
        return skipped(name, "applies to (batch, length) token-id inputs, where padding can be appended.")
    ids, mask = found
    pad = _pad_id(task, ids, mask)
    if pad is None:
        return skipped(name, "no pad id declared; a task that pads its token inputs declares Task(pad_id=...).")
    content, padded, real, left = _probe(inputs, ids, mask, pad)
    if not len(real):
        return skipped(name, "no probe row has real tokens in the half kept; the probe needs rows with real tokens.")
    model.eval()
    try:
        short, long = _outputs(model, task, content), _outputs(model, task, padded)
    except Exception as exc:  # a model built for one length (flatten + Linear, fixed positions) cannot be probed
        return skipped(name, f"the model does not accept another length ({type(exc).__name__}); cannot vary padding.")
    length, width = real.shape[1], ids.shape[1]
    if short.dim() >= 2 and short.shape[1] == length and long.shape[1] == width:
        long = long[:, -length:] if left else long[:, :length]  # per-position outputs: compare at the real tokens
        short, long, where = short[real], long[real], "at the real positions"
    else:
        where = "per sample"
    if short.shape != long.shape:
        return skipped(name, f"outputs have shapes {tuple(short.shape)} and {tuple(long.shape)}; cannot compare.")
    scale = max(float(long.abs().max()) if long.numel() else 0.0, 1e-6)
    change = float((short - long).abs().max()) if long.numel() else 0.0
    change = math.inf if not torch.isfinite(short).all() or not torch.isfinite(long).all() else change
    value = {"max_change": change, "output_scale": scale, "relative_change": change / scale, "pad_id": pad}
    marker = f"id {pad}, attention mask 0" if mask is not None else f"id {pad}"
    seen = (
        f"{'prepending' if left else 'appending'} {width - length} pad tokens ({marker}) to {length} positions "
        f"changes the outputs {where} by up to {change:.3g} (output scale {scale:.3g})"
    )
    unused = "an attention mask that does not reach every attention layer and the pooling, " if mask is not None else ""
    cause = (
        f": the model reads its padding. Look for {unused}an inverted key-padding mask (it must be True at padding, "
        "`x == pad_id`), a mean or sum over all positions instead of the real ones, or a recurrent net run over the "
        "padding (pack it with pack_padded_sequence, or take the state at each sample's last real token)"
    ) + ("; with left padding, position ids must count the real tokens only." if left else ".")
    if change / scale > BUG:
        return failed(name, seen + cause, value, f"relative change < {NOISE:g}")
    if change / scale > NOISE:
        return warned(name, seen + ", more than float rounding" + cause, value, f"relative change < {NOISE:g}")
    return passed(name, f"outputs {where} ignore the padding (relative change {change / scale:.1g}).", value)
