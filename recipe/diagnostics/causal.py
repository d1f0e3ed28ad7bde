"""Causality charted with backprop: in a model of sequences, the output at position t may depend only on inputs
0..t (next-token prediction, a forecaster of values).

Why: recipe step 2, "use backprop to chart dependencies"; catalog M4 (a causal model that peeks at the next token).
Run in eval mode, and by perturbing inputs where no gradient reaches them (token ids without an nn.Embedding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import tree_map
from recipe.diagnostics.dependencies import RELATIVE_TOLERANCE, input_sensitivity
from recipe.diagnostics.inputs import aligned_part, holds_targets_ahead, time_first, token_distance
from recipe.task import Task


def _reacts_to_own_token(model: nn.Module, task: Task, inputs: Any, tokens: torch.Tensor, p: int) -> bool:
    """Whether the output at position p changes when the token at p of `tokens` (the inputs, or the decoder's input
    among them) changes: a perturbation of the raw ids, so a shift applied before the embedding is seen too. The new
    token is another real one: padding stays padding and no real token becomes the pad id, so the sequence keeps
    its length (a packed or masked model stays valid)."""
    if tokens.is_floating_point():  # a value: moved by the series' own spread
        return _changes_output_at(model, task, inputs, tokens, p, tokens[:, p] + tokens.std().clamp_min(1e-3))
    vocab = max(2, task.num_classes or 0, int(tokens.max()) + 1)
    pad = task.pad_id
    new = (tokens[:, p] + 1) % vocab
    if pad is not None:
        new = torch.where(new == pad, (new + 1) % vocab, new)
        new = torch.where(tokens[:, p] == pad, tokens[:, p], new)
        if bool((new == tokens[:, p]).all()):
            return True  # padding at p in every row: nothing to perturb, nothing to judge
    return _changes_output_at(model, task, inputs, tokens, p, new)


def _changes_output_at(
    model: nn.Module, task: Task, inputs: Any, tokens: torch.Tensor, p: int, new: torch.Tensor
) -> bool:
    changed = tokens.clone()
    changed[:, p] = new
    model.eval()
    with torch.no_grad():
        before = task.forward(model, inputs)[:, p]
        after = task.forward(model, _swapped(inputs, tokens, changed))[:, p]
    return bool((before - after).abs().max() > RELATIVE_TOLERANCE * before.abs().max())


def _swapped(inputs: Any, tokens: torch.Tensor, changed: torch.Tensor) -> Any:
    """`inputs` with the tensor `tokens` replaced by `changed` (the inputs themselves when they are `tokens`)."""
    return tree_map(lambda t: changed if t is tokens else t, inputs)


def _future_by_gradient(model: nn.Module, task: Task, inputs: torch.Tensor, cuts: list[int]) -> dict[int, int] | None:
    """For each cut p whose outputs before p have a nonzero gradient to a token at p or later: the last such
    position. None when the gradient cannot reach the token positions (no embedding with a batch axis, or a path no
    gradient follows: every sensitivity is zero)."""
    generator = torch.Generator().manual_seed(0)

    def weighted(part: torch.Tensor) -> torch.Tensor:
        return (part * torch.randn(part.shape, generator=generator).to(part.device, part.dtype)).sum()

    leaks = {}
    for p in cuts:

        def before(out: torch.Tensor, p: int = p) -> torch.Tensor:
            return weighted(out[:, :p])

        sens = input_sensitivity(model, task, inputs, before)
        if sens is None or sens.dim() < 2 or not bool(sens.any()):
            return None
        future, scale = sens[:, p:], float(sens.max())
        if future.numel() and float(future.max()) > RELATIVE_TOLERANCE * scale:
            leaks[p] = int((future.sum(0) > RELATIVE_TOLERANCE * scale).nonzero()[-1]) + p
    return leaks


def _future_by_perturbation(
    model: nn.Module, task: Task, inputs: Any, tokens: torch.Tensor, cuts: list[int]
) -> dict[int, int]:
    """For each cut p whose outputs before p change when every token of `tokens` from p on changes: the sequence's
    last position (a perturbation says whether, not where). For a decoder's input beside its source, whose
    embedding the gradient path cannot tell from the source's, and for inputs no gradient reaches."""
    model.eval()
    vocab = max(2, task.num_classes or 0, int(tokens.max()) + 1)
    with torch.no_grad():
        base = task.forward(model, inputs).float()
        leaks = {}
        for p in cuts:
            changed = tokens.clone()
            if tokens.is_floating_point():  # values: moved by the series' own spread
                changed[:, p:] = tokens[:, p:] + tokens.std().clamp_min(1e-3)
            else:
                changed[:, p:] = (tokens[:, p:] + 1) % vocab
            if task.pad_id is not None:
                changed[:, p:] = torch.where(tokens[:, p:] == task.pad_id, tokens[:, p:], changed[:, p:])
            out = task.forward(model, _swapped(inputs, tokens, changed)).float()
            change = float((out[:, :p] - base[:, :p]).abs().max())
            if change > 1e-5 * float(base[:, :p].abs().max().clamp_min(1e-12)):
                leaks[p] = tokens.shape[1] - 1
    return leaks


def causal(model: nn.Module, task: Task, inputs: Any, positions: int = 4, target: Any = None) -> Check:
    """Catches a sequence model that sees the future: a missing or wrong causal mask, a convolution padded on both
    sides, a bidirectional layer. The converse catches a model that ignores the current token (over-shifted).

    Why: recipe ("ensure that your autoregressive model at time t only depends on 1..t-1"); catalog M4. Causality
    is required because the target at t is the input's token at t+1; given `target`, a sequence task whose targets
    are another alphabet (token tagging: `token_distance` > 0.5) is skipped, its model may read the whole sequence.
    A forecaster of values (any kind) is probed the same way when its float inputs (B, T) or (B, T, F) hold the
    targets 1 to 3 steps ahead along T (`holds_targets_ahead`): reading a later value reads an earlier target.
    """
    series = task.kind != "sequence" and holds_targets_ahead(inputs, target)
    if task.kind != "sequence" and not series:
        return skipped("causal", "not a sequence task, and the inputs do not hold the targets a step ahead.")
    tokens = inputs if isinstance(inputs, torch.Tensor) else aligned_part(inputs, target)
    if tokens is None or tokens.dim() < 2 or (tokens.is_floating_point() and not series):
        return skipped(
            "causal",
            "the model takes several tensors and none holds the targets at a shift of -2..2 (a decoder's input), "
            "so there is no token sequence to probe; an encoder may read its whole source.",
        )
    if (
        not series
        and isinstance(target, torch.Tensor)
        and (distance := token_distance(tokens, target, task.pad_id)) > 0.5
    ):
        return skipped(
            "causal",
            f"the targets are not the input's tokens (frequencies differ by total variation {distance:.2f}): a "
            "tagging task, not next-token prediction, so its outputs may depend on later tokens.",
        )
    length = tokens.shape[1]
    cuts = sorted({max(1, length * k // positions) for k in range(1, positions)} | {1})
    cuts = [p for p in cuts if p < length]
    found = _future_by_gradient(model, task, tokens, cuts) if tokens is inputs else None
    future_leaks = found if found is not None else _future_by_perturbation(model, task, inputs, tokens, cuts)
    current_blind = [p for p in cuts if not _reacts_to_own_token(model, task, inputs, tokens, p)]
    value = {"cut_positions": cuts, "future_leaks": future_leaks, "positions_ignoring_current_token": current_blind}
    where = "" if tokens is inputs else " of the decoder's input (the token tensor that holds the targets)"
    unit = "values (which hold the targets a step ahead)" if series else "tokens"
    if future_leaks:
        p, last = next(iter(future_leaks.items()))
        return failed(
            "causal",
            f"outputs at positions < {p} change with the {unit} at positions {p}..{last}{where}: the model "
            "sees the future. Use a causal attention mask (is_causal=True; a decoder's tgt_mask), pad convolutions "
            "on the left only, and avoid bidirectional layers.",
            value,
            "zero gradient to later positions",
        )
    if current_blind:
        return warned(
            "causal",
            f"the output at positions {current_blind} does not change with the {unit[:-1]} at that same "
            "position: inputs may be shifted twice (the model only sees up to t-1).",
            value,
        )
    return passed("causal", f"outputs depend only on {unit} at or before their position (probed cuts {cuts}).", value)


def causal_over_time(model: nn.Module, task: Task, inputs: Any, target: Any = None) -> Check:
    """`causal`, with channels-first series (B, C, T) probed as (B, T, C) and handed to the model transposed back:
    a 1-D CNN forecaster's inputs."""
    steps_first = time_first(inputs, target)
    if steps_first is inputs:
        return causal(model, task, inputs, target=target)
    return causal(model, task.replace(input_transform=lambda x: x.transpose(1, 2)), steps_first, target=target)
