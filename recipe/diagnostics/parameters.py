"""Every trainable parameter gets a gradient and moves; nothing trainable hides outside the module tree.

Why: the "variables change" test (Chase Roberts' mltest, torchtest, torcheck) and catalog M5, M6, M7, O2:
overfit-one-batch passes with a `.detach()` mid-network, so the parameter audit is what catches it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, warned
from recipe.data import Batch
from recipe.task import Task

_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def unregistered_tensors(model: nn.Module) -> list[str]:
    """Modules, parameters and grad-requiring tensors kept in plain attributes, lists, tuples or dicts, and not
    registered anywhere in the model (an RNN's `_flat_weights` list holds registered parameters: not reported)."""
    registered = {id(p) for p in model.parameters()} | {id(m) for m in model.modules()}
    found = []
    for prefix, module in model.named_modules():
        for attr, value in vars(module).items():
            if attr in _MODULE_INTERNALS:
                continue
            items = (
                value.items()
                if isinstance(value, dict)
                else enumerate(value)
                if isinstance(value, list | tuple)
                else None
            )
            where = f"{prefix + '.' if prefix else ''}{attr}"
            if items is None:
                if isinstance(value, torch.Tensor) and value.requires_grad and id(value) not in registered:
                    found.append(f"{where} (tensor {tuple(value.shape)})")
                continue
            for key, item in items:
                trainable = isinstance(item, nn.Module) or (isinstance(item, torch.Tensor) and item.requires_grad)
                if trainable and id(item) not in registered:
                    found.append(f"{where}[{key!r}] ({type(item).__name__})")
    return found


def graph_leaves(loss: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors that require grad and feed `loss` (walks the autograd graph)."""
    leaves, seen, stack = [], set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return leaves


def params_update(model: nn.Module, task: Task, batch: Batch, lr: float = 1e-3) -> Check:
    """Catches layers that never train: kept in a plain list/dict (unregistered), cut off by `.detach()`/`.data`/a
    numpy round-trip, a dead branch whose output is discarded, or parameters left frozen.

    Why: catalog M5-M7, O2: after one optimizer step, every trainable parameter must have had a non-zero gradient
    and must have changed; every tensor the loss depends on must be a registered parameter.
    """
    model.train()
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    frozen = [n for n, p in named if not p.requires_grad]
    before = {n: p.detach().clone() for n, p in trainable}
    registered = {id(p) for _, p in named}
    for _, p in trainable:
        p.grad = None
    output, target = task.outputs(model, batch)
    loss = task.compute_loss(output, target)
    outside = [tuple(t.shape) for t in graph_leaves(loss) if id(t) not in registered]
    loss.backward()
    no_grad = [n for n, p in trainable if p.grad is None or not bool(p.grad.any())]
    if trainable:
        opt = torch.optim.AdamW([p for _, p in trainable], lr=lr, weight_decay=0.0)
        opt.step()
    unchanged = [n for n, p in trainable if torch.equal(p.detach(), before[n])]
    unregistered = unregistered_tensors(model)
    value: dict[str, Any] = {
        "trainable": len(trainable),
        "no_gradient": no_grad,
        "unchanged": unchanged,
        "unregistered": unregistered,
        "unregistered_graph_leaves": outside,
        "frozen": frozen,
    }
    if unregistered or outside:
        names = unregistered or [f"tensor of shape {s}" for s in outside]
        return failed(
            "params_update",
            f"{len(names)} trainable object(s) are not registered with the model: "
            f"{', '.join(names[:4])}. They are never optimised, saved or moved to the device; use "
            "nn.ModuleList / nn.ModuleDict / nn.Parameter.",
            value,
            "every trainable tensor registered",
        )
    if no_grad or unchanged:
        names = no_grad or unchanged
        return failed(
            "params_update",
            f"{len(names)} of {len(trainable)} parameter tensors got no gradient or did not "
            f"change after a step: {', '.join(names[:6])}. The path from them to the loss is cut (.detach(), "
            ".data, torch.no_grad, a numpy round-trip) or their output is never used.",
            value,
            "every parameter gets a gradient and changes",
        )
    if frozen:
        return warned(
            "params_update",
            f"{len(frozen)} parameter tensors are frozen (requires_grad=False): "
            f"{', '.join(frozen[:6])}; fine for a pretrained backbone, a bug if left from an experiment.",
            value,
        )
    return passed(
        "params_update", f"all {len(trainable)} parameter tensors got a gradient and changed after one step.", value
    )
