"""Charting dependencies with backprop: a sample's output may depend only on its own input, and (sequences) the
output at position t only on inputs 0..t.

Why: recipe step 2, "use backprop to chart dependencies": set the loss to something trivial like the sum of all
outputs of example i, run the backward pass, and make sure you get a non-zero gradient only on the i-th input.
Run in eval mode: BatchNorm in training mode couples samples by design (catalog section 2.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import batch_size_of, tree_map
from recipe.diagnostics.inputs import aligned_part, holds_targets_ahead, token_distance
from recipe.joined import joined_features, joined_tokens, part_shapes
from recipe.task import Task

# A gradient this small relative to the largest one is numerical noise, not a dependency.
RELATIVE_TOLERANCE = 1e-6


def input_sensitivity(
    model: nn.Module, task: Task, inputs: Any, select: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor | None:
    """|d select(output) / d input| summed to shape (B, T) (or (B, F) for flat inputs): per sample and position.

    Float inputs are differentiated directly. For integer (token) inputs, one tensor or several (ids with their
    attention mask, a sentence pair), the gradient is taken at the outputs of the model's `nn.Embedding` layers
    that carry a batch dimension. None when neither applies.
    """
    model.eval()
    if not isinstance(inputs, torch.Tensor) and joined_features(inputs) is not None:
        return _joined_sensitivity(model, task, inputs, select)
    batch = batch_size_of(inputs)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        x = inputs.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(select(task.forward(model, x)), x, allow_unused=True)
        return _reduce(grad if grad is not None else torch.zeros_like(x))
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        plain = isinstance(out, torch.Tensor) and not out.is_nested
        if plain and out.requires_grad and out.dim() >= 2 and out.shape[0] == batch:
            captured.append(out)

    handles = [m.register_forward_hook(capture) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        output = task.forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    if not captured:
        return None
    grads = torch.autograd.grad(select(output), captured, allow_unused=True)
    parts = [_reduce(g if g is not None else torch.zeros_like(c)) for g, c in zip(grads, captured, strict=True)]
    if len({p.shape for p in parts}) != 1:
        return None
    return torch.stack(parts).sum(0)


def _joined_sensitivity(
    model: nn.Module, task: Task, inputs: Any, select: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor | None:
    """`input_sensitivity` for a model that takes several tensors: (B, F), each float tensor's sensitivities
    flattened per sample and joined in order; None for other inputs."""
    parts = _part_sensitivities(model, task, inputs, select)
    return None if parts is None else torch.cat([p for p in parts if p is not None], 1)


def _part_sensitivities(
    model: nn.Module, task: Task, inputs: Any, select: Callable[[torch.Tensor], torch.Tensor]
) -> list[torch.Tensor | None] | None:
    """|d select(output) / d input| of each tensor of a several-tensor input, in order: (B, -1) for a float tensor,
    None for an integer one (category ids: no gradient); None for inputs that are not several tensors."""
    if joined_features(inputs) is None:
        return None
    model.eval()
    leaves: list[torch.Tensor | None] = []

    def watched(t: torch.Tensor) -> torch.Tensor:
        if not t.is_floating_point():
            leaves.append(None)
            return t
        leaf = t.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    x = tree_map(watched, inputs)
    floats = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(select(task.forward(model, x)), floats, allow_unused=True))
    parts: list[torch.Tensor | None] = []
    for leaf in leaves:
        grad = None if leaf is None else next(grads)
        reduced = None if leaf is None else _reduce(grad if grad is not None else torch.zeros_like(leaf))
        parts.append(None if reduced is None else reduced.reshape(len(reduced), -1))
    return parts


def _reduce(grad: torch.Tensor) -> torch.Tensor:
    """Sum |grad| over every axis after the first two: per (sample, position) for sequences and images' channels."""
    g = grad.detach().abs().float()
    return g.reshape(*g.shape[:2], -1).sum(-1) if g.dim() > 2 else g


def batch_independence(model: nn.Module, task: Task, inputs: Any, probes: int = 4) -> Check:
    """Catches outputs that mix samples: `view`/`reshape` where `permute`/`transpose` was meant, a softmax or mean
    over the batch dimension, an RNN fed (B, T, C) without batch_first. Also catches an output that does not depend
    on its own input at all.

    Why: recipe step 2 (chart dependencies with backprop); exact in eval mode (catalog M1a, M2, M3, M12). A model
    that takes several float tensors must also depend on each of them: one that no probed output depends on at all
    is ignored (the same tensor passed twice, a branch whose result is dropped), which warns.
    """
    several = not isinstance(inputs, torch.Tensor) and joined_features(inputs) is not None  # a float among them
    if not isinstance(inputs, torch.Tensor) and not several and joined_tokens(inputs) is None:
        return skipped(
            "batch_independence", "inputs are neither tensors of numbers nor of token ids; override this check."
        )
    n = batch_size_of(inputs)
    generator = torch.Generator().manual_seed(0)
    leaking: dict[int, list[int]] = {}
    own_zero = 0
    own_by_part = torch.zeros(len(part_shapes(inputs)) if several else 0)  # NaN: an integer tensor, not probed
    for i in range(min(probes, n)):

        def select(out: torch.Tensor, i: int = i) -> torch.Tensor:
            weights = torch.randn(out[i].shape, generator=generator).to(out.device, out.dtype)
            return (out[i] * weights).sum()

        parts = _part_sensitivities(model, task, inputs, select) if several else None
        if parts is not None:
            own_by_part += torch.tensor([float(p[i].sum()) if p is not None else math.nan for p in parts])
            sens: torch.Tensor | None = torch.cat([p for p in parts if p is not None], 1)
        else:
            sens = input_sensitivity(model, task, inputs, select)
        if sens is None:
            return skipped("batch_independence", "integer inputs without an nn.Embedding to differentiate through.")
        per_sample = sens.reshape(n, -1).sum(1)
        scale = float(per_sample.max())
        others = [j for j in range(n) if j != i and float(per_sample[j]) > RELATIVE_TOLERANCE * scale]
        if others:
            leaking[i] = others
        own_zero += float(per_sample[i]) == 0.0
    probed = min(probes, n)
    value = {"samples_probed": probed, "batch_size": n, "leaking": leaking, "own_input_ignored": own_zero}
    if leaking:
        i, js = next(iter(leaking.items()))
        return _mixes(f"sample {i}'s output depends on the inputs of samples {js[:6]} in eval mode", value)
    if own_zero == probed and not bool(own_by_part.isnan().any()):  # an integer input may carry it all
        own, leaks = _exchanged_dependence(model, task, inputs, probed)  # a path no gradient follows?
        value.update(probed_by="exchanging inputs", own_input_moves_output=own, leaking=leaks)
        if own and leaks:
            i = next(iter(leaks))
            seen = f"sample {i}'s output changes when only the other samples' inputs change (eval mode; no gradient"
            return _mixes(seen + " reaches the inputs, so they were exchanged instead)", value)
        if own:
            return passed(
                "batch_independence",
                f"each of {probed} probed outputs depends on its own sample only, read by exchanging inputs between "
                "samples: no gradient reaches the inputs (a bucketize, a cast to integer ids, a detached "
                "preprocessing step), yet the outputs follow them.",
                value,
            )
        return failed(
            "batch_independence",
            "no output depends on its own input (zero gradient, and no output changes when the inputs are exchanged "
            "between samples): the forward pass ignores x (a detached or constant path, a stale tensor, the wrong "
            "argument).",
            value,
            "outputs that follow their own inputs",
        )
    ignored = [k for k in range(len(own_by_part)) if float(own_by_part[k]) == 0.0]
    if ignored:
        shapes = part_shapes(inputs)
        named = ", ".join(f"input {k} {shapes[k]}" for k in ignored)
        value["inputs_ignored"] = ignored
        return warned(
            "batch_independence",
            f"no probed output depends on {named} of the {len(shapes)} the model takes (its gradient is exactly "
            "zero in eval mode): the model ignores it. Look for the same tensor passed twice (enc(a) where enc(b) "
            "was meant) or a branch whose result is never used; if it is unused on purpose, stop passing it.",
            value,
            "every input reaches the output",
        )
    return passed(
        "batch_independence",
        f"each of {probed} probed outputs depends on its own sample only (batch of {n}, eval mode)"
        + (f", and on each of its {int(own_by_part.isfinite().sum())} float input tensors." if several else "."),
        value,
    )


def _mixes(seen: str, value: dict[str, Any]) -> Check:
    return failed(
        "batch_independence",
        f"{seen}: the model mixes samples. Likely a view/reshape where permute/transpose was meant, a softmax or "
        "normalisation over dim 0, or an RNN missing batch_first=True.",
        value,
        "each output depends only on its own sample",
    )


def _exchanged_dependence(model: nn.Module, task: Task, inputs: Any, probes: int) -> tuple[bool, dict[int, list[int]]]:
    """Dependencies read without gradients, exact in eval mode: whether any output changes when every sample's input
    is exchanged for its neighbour's, and, for each of the first `probes` samples, whether its output changes when
    every other sample is given its input (a new set of others, so a mean over the batch moves too; then every
    other sample is named as a possible source)."""
    n = batch_size_of(inputs)

    def taken(order: torch.Tensor) -> Any:
        return tree_map(lambda t: t[order.to(t.device)] if t.dim() and len(t) == n else t, inputs)

    def moved(a: torch.Tensor, b: torch.Tensor) -> bool:
        return bool((a - b).abs().max() > RELATIVE_TOLERANCE * b.abs().max().clamp_min(1e-12))

    model.eval()
    with torch.no_grad():
        base = task.forward(model, inputs).float()
        own = moved(task.forward(model, taken(torch.arange(n).roll(1))).float(), base)
        leaks = {}
        for i in range(min(probes, n)):
            if moved(task.forward(model, taken(torch.full((n,), i))).float()[i], base[i]):
                leaks[i] = [j for j in range(n) if j != i]
    return own, leaks


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
