"""Every trainable parameter gets a gradient and moves; nothing trainable hides outside the module tree.

Why: the "variables change" test (Chase Roberts' mltest, torchtest, torcheck) and catalog M5, M6, M7, O2:
overfit-one-batch passes with a `.detach()` mid-network, so the parameter audit is what catches it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, warned
from recipe.data import Batch, batch_size_of
from recipe.task import Task

_MODULE_INTERNALS = frozenset(vars(nn.Module()))
ROUTING_SAMPLES = 1024  # training samples a module that did not run in the steps may run on (a forward each)


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


def params_update(
    model: nn.Module,
    task: Task,
    batch: Batch,
    lr: float = 1e-3,
    more: Callable[[int], Batch] | None = None,
    steps: int = 3,
    frozen_on_purpose: tuple[str, ...] = (),
) -> Check:
    """Catches layers that never train: kept in a plain list/dict (unregistered), cut off by `.detach()`/`.data`/a
    numpy round-trip, a dead branch whose output is discarded, or parameters left frozen.

    Why: catalog M5-M7, O2: every trainable parameter must get a gradient and move; every tensor the loss depends
    on must be a registered parameter. A cut path leaves a parameter out of the loss's graph: its gradient stays
    None (fail). A gradient of exactly zero in the graph can be the batch or the init and not the model: an L1
    loss's output bias when as many outputs lie above their targets as below, a LoRA or ReZero branch behind a
    factor initialised to zero. So a parameter that does not move after the step on `batch` gets up to `steps` - 1
    more steps on the batches `more(k)` draws; one still without a gradient anywhere fails, and one that stays at
    zero in the graph on every batch only warns: it has no effect on the loss (a bias that what follows cancels,
    as a normalisation or the difference of two passes through the same layers does, or a branch multiplied by
    zero).

    Frozen parameters warn (a freeze left from an experiment) unless `frozen_on_purpose` (shell-style patterns,
    the `baseline.frozen` setting) names them; a named parameter that trains, or a pattern that names none,
    warns.
    """
    model.train()
    named = list(model.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    frozen = [n for n, p in named if not p.requires_grad]
    before = {n: p.detach().clone() for n, p in trainable}
    registered = {id(p) for _, p in named}
    opt = torch.optim.AdamW([p for _, p in trainable], lr=lr, weight_decay=0.0) if trainable else None
    reached: set[str] = set()  # got a gradient tensor (the parameter is in the loss's graph)
    moved: set[str] = set()  # got a non-zero gradient
    outside: list[tuple[int, ...]] = []
    taken = 0
    ran: set[str] = set()  # the modules called in a forward pass
    hooks = _recording(model, ran)
    for k in range(max(1, steps)):
        if k and (more is None or len(moved) == len(trainable)):
            break
        step_batch = batch if k == 0 or more is None else more(k)
        for _, p in trainable:
            p.grad = None
        output, target = task.outputs(model, step_batch)
        loss = task.compute_loss(output, target)
        if k == 0:
            outside = [tuple(t.shape) for t in graph_leaves(loss) if id(t) not in registered]
        loss.backward()
        reached |= {n for n, p in trainable if p.grad is not None}
        moved |= {n for n, p in trainable if p.grad is not None and bool(p.grad.any())}
        if opt is not None:
            opt.step()
        taken += 1
    for hook in hooks:
        hook.remove()
    no_grad = [n for n, _ in trainable if n not in reached]
    routed = _routed(model, task, no_grad, ran, batch_size_of(batch)) if hooks else []
    no_grad = [n for n in no_grad if n not in routed]
    zero = [n for n, _ in trainable if n in reached and n not in moved]
    unchanged = [n for n, p in trainable if n in moved and torch.equal(p.detach(), before[n])]
    unregistered = unregistered_tensors(model)
    value: dict[str, Any] = {
        "trainable": len(trainable),
        "no_gradient": no_grad,
        "zero_gradient": zero,
        "unchanged": unchanged,
        "unregistered": unregistered,
        "unregistered_graph_leaves": outside,
        "frozen": frozen,
        "steps": taken,
        "routed": routed,
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
    idle = [n for n in no_grad if hooks and _owner(n) not in ran]  # their module was never called
    modules = dict(model.named_modules())
    unselected = [n for n in idle if _unselected(_owner(n), modules, ran)]  # a member of a list others of which ran
    forgotten = [n for n in idle if n not in unselected]
    seen = f"in {_steps(taken)} nor on {min(len(task.train), ROUTING_SAMPLES):,} training samples"
    if forgotten:
        return failed(
            "params_update",
            f"{len(forgotten)} of {len(trainable)} parameter tensors belong to modules that never ran, {seen}: "
            f"{', '.join(forgotten[:6])}. A layer defined in __init__ but never called in forward: it never trains.",
            value,
            "every parameter gets a gradient and changes",
        )
    no_grad = [n for n in no_grad if n not in unselected]
    if no_grad or unchanged:
        names = no_grad or unchanged
        return failed(
            "params_update",
            f"{len(names)} of {len(trainable)} parameter tensors got no gradient or did not change after "
            f"{_steps(taken)}: {', '.join(names[:6])}. The path from them to the loss is cut (.detach(), .data, "
            "torch.no_grad, a numpy round-trip) or their output is never used.",
            value,
            "every parameter gets a gradient and changes",
        )
    if unselected:
        return warned(
            "params_update",
            f"{len(unselected)} of {len(trainable)} parameter tensors belong to members of a ModuleList or ModuleDict "
            f"that never ran, {seen}, while other members did: {', '.join(unselected[:6])}. An expert the router "
            "sends no sample to does not train until one comes (a load-balancing loss keeps experts in use); a "
            "slice or index that leaves a layer out (layers[:-1]) is a bug.",
            value,
            "every parameter gets a gradient and changes",
        )
    if zero:
        return warned(
            "params_update",
            f"{len(zero)} of {len(trainable)} parameter tensors are in the loss's graph but got a gradient of "
            f"exactly zero in each of {_steps(taken)} on different batches: {', '.join(zero[:6])}. They have no "
            "effect on the loss. Harmless when what follows cancels them (a bias before a normalisation, or one "
            "inside the difference of two passes through the same layers: drop it); a bug when their branch is "
            "multiplied by zero or masked out.",
            value,
            "every parameter gets a non-zero gradient",
        )
    declared = [n for n in frozen if _named(n, frozen_on_purpose)]
    undeclared = [n for n in frozen if n not in declared]
    training = [n for n, _ in trainable if _named(n, frozen_on_purpose)]
    unmatched = [p for p in frozen_on_purpose if not any(fnmatch.fnmatchcase(n, p) for n, _ in named)]
    value.update(frozen_on_purpose=declared)
    if training or unmatched:
        found = []
        if training:
            found.append(
                f"{len(training)} parameter tensors named in baseline.frozen still train: {', '.join(training[:6])}"
            )
        if unmatched:
            found.append(f"baseline.frozen patterns that name no parameter: {', '.join(map(repr, unmatched))}")
        return warned(
            "params_update",
            f"{'; '.join(found)}. Freeze them (requires_grad_(False)) in the model factory, or correct the patterns "
            "(they match model.named_parameters() names, such as 'backbone.0.weight').",
            value,
            "the parameters named in baseline.frozen frozen, and only those",
        )
    if undeclared:
        return warned(
            "params_update",
            f"{len(undeclared)} parameter tensors are frozen (requires_grad=False): "
            f"{', '.join(undeclared[:6])}; fine for a pretrained backbone, a bug if left from an experiment. If "
            "they are frozen on purpose, name them in baseline.frozen (patterns such as 'backbone.*').",
            value,
        )
    on_purpose = f" {len(declared)} more are frozen, as baseline.frozen says." if declared else ""
    if routed:
        on_purpose += (
            f" {len(routed)} more ({', '.join(routed[:3])}) belong to modules that ran only on other batches "
            "(computation routed by the data, as a mixture of experts does): they train when their samples come."
        )
    return passed(
        "params_update",
        f"all {len(trainable)} parameter tensors got a gradient and changed after {_steps(taken)}.{on_purpose}",
        value,
    )


def _owner(parameter: str) -> str:
    """The name of the module a parameter belongs to ("" for the model itself)."""
    return parameter.rpartition(".")[0]


def _recording(model: nn.Module, ran: set[str], only: set[str] | None = None) -> list[Any]:
    """Forward pre-hooks that add each module's name to `ran` when it is called (`only`: those modules); none when a
    module cannot take hooks (TorchScript)."""
    hooks = []
    for name, module in model.named_modules():
        if only is None or name in only:
            try:
                hooks.append(module.register_forward_pre_hook(lambda *_, name=name: ran.add(name)))
            except RuntimeError:
                for hook in hooks:
                    hook.remove()
                return []
    return hooks


def _unselected(owner: str, modules: dict[str, nn.Module], ran: set[str]) -> bool:
    """Whether module `owner`, or a module holding it, is a member of a ModuleList or ModuleDict another member of
    which ran: one chosen among several (an expert a router skips, a layer a slice leaves out), not a layer that
    forward never calls."""
    parts = owner.split(".")
    for i in range(len(parts), 0, -1):
        container, member = ".".join(parts[: i - 1]), ".".join(parts[:i])
        if isinstance(modules.get(container), nn.ModuleList | nn.ModuleDict):
            prefix = f"{container}." if container else ""
            if any(
                f"{prefix}{key}" in ran for key, _ in modules[container].named_children() if f"{prefix}{key}" != member
            ):
                return True
    return False


def _routed(model: nn.Module, task: Task, no_grad: list[str], ran: set[str], batch_size: int) -> list[str]:
    """Of the parameters without a gradient, those whose module did not run in the steps taken but does on the first
    ROUTING_SAMPLES training samples (forward only, in batches of `batch_size`): computation the data routes (a
    mixture of experts), not a cut path. `ran` gains the modules that ran."""
    owners = {_owner(n) for n in no_grad} - ran
    if not owners:
        return []
    seen: set[str] = set()
    hooks = _recording(model, seen, owners)
    device = next(model.parameters()).device
    rows = min(len(task.train), ROUTING_SAMPLES)
    try:
        with torch.no_grad():
            for start in range(0, rows, max(batch_size, 1)):
                task.outputs(model, task.batch("train", list(range(start, min(start + batch_size, rows))), device))
                if owners <= seen:
                    break
    finally:
        for hook in hooks:
            hook.remove()
    ran |= seen
    return [n for n in no_grad if _owner(n) in seen]


def _named(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _steps(n: int) -> str:
    return "one step" if n == 1 else f"{n} steps"
