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
from recipe.task import Task

NOISE = 1e-4  # relative change below which two float paths (fused kernels, nested tensors) agree
BUG = 1e-2  # relative change at which padding is changing the outputs, not rounding


def _outputs(model: nn.Module, task: Task, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return task.forward(model, tokens).float()


def _probe(inputs: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """(half of each row, the same half with the other half's length of padding, its real positions, left-padded?).
    Padding goes where the batch has it: before the tokens when rows start with it and end without it."""
    ends = inputs[:, -1] == pad
    left = bool(((inputs[:, 0] == pad) & ~ends).any()) and not bool(ends.any())
    length = inputs.shape[1] // 2
    content = inputs[:, -length:] if left else inputs[:, :length]
    content = content[(content != pad).any(1)]  # a row with no real token here has no real output to compare
    pads = torch.full((len(content), inputs.shape[1] - length), pad).to(content)
    padded = torch.cat([pads, content] if left else [content, pads], 1)
    return content, padded, content != pad, left


def padding_invariance(model: nn.Module, task: Task, inputs: Any) -> Check:
    """Catches outputs that change with the amount of padding: an inverted key-padding mask (`x != pad` for
    `x == pad`), a mean-pool over all positions including padding, a GRU/LSTM run over padding without packing.

    Why: the same real tokens, followed by no padding or by a batch's worth of it, are the same sample: the model's
    outputs at the real positions (or its per-sample output) must agree up to float rounding.
    """
    name, pad = "padding_invariance", task.pad_id
    if not isinstance(inputs, torch.Tensor) or inputs.is_floating_point() or inputs.dim() != 2 or inputs.shape[1] < 2:
        return skipped(name, "applies to (batch, length) token-id inputs, where padding can be appended.")
    if pad is None:
        return skipped(name, "no pad id declared; a task that pads its token inputs declares Task(pad_id=...).")
    content, padded, real, left = _probe(inputs, pad)
    if not len(content):
        return skipped(name, "no probe row has real tokens in the half kept; the probe needs rows with real tokens.")
    model.eval()
    try:
        short, long = _outputs(model, task, content), _outputs(model, task, padded)
    except Exception as exc:  # a model built for one length (flatten + Linear, fixed positions) cannot be probed
        return skipped(name, f"the model does not accept another length ({type(exc).__name__}); cannot vary padding.")
    length = content.shape[1]
    if short.dim() >= 2 and short.shape[1] == length and long.shape[1] == padded.shape[1]:
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
    seen = (
        f"{'prepending' if left else 'appending'} {padded.shape[1] - length} pad tokens (id {pad}) to {length} "
        f"positions changes the outputs {where} by up to {change:.3g} (output scale {scale:.3g})"
    )
    cause = (
        ": the model reads its padding. Look for an inverted key-padding mask (it must be True at padding, "
        "`x == pad_id`), a mean or sum over all positions instead of the real ones, or a recurrent net run over the "
        "padding (pack it with pack_padded_sequence, or take the state at each sample's last real token)"
    ) + ("; with left padding, position ids must count the real tokens only." if left else ".")
    if change / scale > BUG:
        return failed(name, seen + cause, value, f"relative change < {NOISE:g}")
    if change / scale > NOISE:
        return warned(name, seen + ", more than float rounding" + cause, value, f"relative change < {NOISE:g}")
    return passed(name, f"outputs {where} ignore the padding (relative change {change / scale:.1g}).", value)
