"""Charting dependencies with backprop: a sample's output may depend only on its own input (the order within a
sequence is `causal`'s).

Why: recipe step 2, "use backprop to chart dependencies": set the loss to something trivial like the sum of all
outputs of example i, run the backward pass, and make sure you get a non-zero gradient only on the i-th input.
Run in eval mode: BatchNorm in training mode couples samples by design (catalog section 2.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import batch_size_of, tree_map
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
        # the model gets a copy of the leaf: one that writes into its argument is probed (eval_deterministic names it)
        (grad,) = torch.autograd.grad(select(task.forward(model, x.clone())), x, allow_unused=True)
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
        return leaf.clone()  # not the leaf itself: an in-place write into the argument must not raise

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
    is ignored (the same tensor passed twice, a branch whose result is dropped), which warns. Which inputs an output
    reads is the architecture's; a parameter tensor initialised to zero (a zero-initialised head) hides it, so where
    nothing depends on anything those tensors are given small random values for a second probe.
    """
    check = _batch_independence(model, task, inputs, probes)
    zero = {n: p for n, p in model.named_parameters() if p.requires_grad and p.numel() and not bool(p.detach().any())}
    if check.expected != IGNORES_INPUTS or not zero:
        return check
    names, zeros = list(zero), list(zero.values())
    with torch.no_grad():
        for p in zeros:
            p.normal_(0.0, 1.0 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.1)
    try:
        again = _batch_independence(model, task, inputs, probes)
    finally:
        with torch.no_grad():
            for p in zeros:
                p.zero_()
    listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    note = (
        f" (probed with its all-zero parameter tensors {listed} given small random values: at zero they make the "
        "output constant)"
        if again.expected != IGNORES_INPUTS
        else f" (also with its all-zero parameter tensors {listed} given small random values)"
    )
    message = again.message[:-1] + note + "." if again.message.endswith(".") else again.message + note
    return replace(again, message=message, value={**(again.value or {}), "zero_parameters_redrawn": names})


IGNORES_INPUTS = "outputs that follow their own inputs"


def _batch_independence(model: nn.Module, task: Task, inputs: Any, probes: int) -> Check:
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
        return _mixes(f"sample {i}'s output depends on the inputs of samples {js[:6]} in eval mode", value, model)
    if own_zero == probed and not bool(own_by_part.isnan().any()):  # an integer input may carry it all
        own, leaks = _exchanged_dependence(model, task, inputs, probed)  # a path no gradient follows?
        value.update(probed_by="exchanging inputs", own_input_moves_output=own, leaking=leaks)
        if own and leaks:
            i = next(iter(leaks))
            seen = f"sample {i}'s output changes when only the other samples' inputs change (eval mode; no gradient"
            return _mixes(seen + " reaches the inputs, so they were exchanged instead)", value, model)
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
            IGNORES_INPUTS,
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


def _mixes(seen: str, value: dict[str, Any], model: nn.Module) -> Check:
    """The fail for outputs that mix samples, naming BatchNorm layers that normalise by the batch in eval mode (left
    in training mode by the forward pass, or without running statistics) where there are any."""
    batch_norms = [
        name or "the model"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
    ]
    likely = (
        f"BatchNorm layers {batch_norms[:4]} normalise by the batch's own statistics in eval mode (the forward "
        "pass puts them in training mode, or they keep no running statistics): leave them to model.eval()"
        if batch_norms
        else "Likely a view/reshape where permute/transpose was meant, a softmax or normalisation over dim 0, or an "
        "RNN missing batch_first=True"
    )
    return failed(
        "batch_independence",
        f"{seen}: the model mixes samples. {likely}.",
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
