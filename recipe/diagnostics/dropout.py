"""Dropout: the rates as the user's factory builds it (and the ones that drop most units), and dropout left on at
evaluation.

Why: recipe step 5 (regularize, "dropout"): `p` is the probability of *dropping* a unit. `nn.Dropout(p=0.9)` written
for "keep 90%" drops 90% of the activations in training, which the model then fights instead of the task. Rates up to
0.5 are the usual range (0.5 for hidden units in Srivastava et al., 2014); above it is rare and worth a look, and
p = 1 zeroes everything. The training-mode / eval-mode loss gap at initialisation shows the effect. Catalog M8 and E2:
two eval-mode passes on the same batch must agree and leave every buffer untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import batch_size_of, tree_map
from recipe.task import Task

TRACED_SAMPLES = 4  # where noise enters is read on this many samples: every activation of two passes is kept


def dropout_modules(model: nn.Module) -> dict[str, float]:
    """Every dropout rate in the model by module name: dropout modules, and the `dropout=` of attention and RNNs."""
    rates: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            rates[name or "model"] = float(module.p)
        elif isinstance(module, nn.MultiheadAttention | nn.RNNBase) and module.dropout:
            rates[f"{name or 'model'}.dropout"] = float(module.dropout)
    return rates


def _loss(model: nn.Module, task: Task, batch: Any, training: bool) -> float:
    model.train(training)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return float(task.compute_loss(*task.outputs(model, batch)))


def dropout_rates(model: nn.Module, task: Task, batch: Any, warn_above: float = 0.5) -> Check:
    """Catches dropout rates confused with keep-probabilities (`nn.Dropout(p=0.9)` meant as "keep 90%") and dropout
    that zeroes everything (p = 1); reports every rate in the model.

    Why: recipe step 5: dropout's `p` is the drop probability; above 0.5 is rare, and the loss in training mode
    rises far above the loss in eval mode when most units are dropped.
    """
    name = "dropout_rates"
    rates = dropout_modules(model)
    if not rates:
        return passed(name, "no dropout modules in the model (functional dropout inside forward is not listed).")
    high = {k: p for k, p in rates.items() if p > warn_above}
    value: dict[str, Any] = {"rates": rates}
    if not any(rates.values()):
        return passed(name, f"{len(rates)} dropout module(s), all off (p=0).", value)
    if not high:
        listed = ", ".join(f"{k} p={p:g}" for k, p in list(rates.items())[:6])
        return passed(name, f"{len(rates)} dropout rate(s), none above {warn_above:g}: {listed}.", value)
    try:
        value["train_loss"], value["eval_loss"] = _loss(model, task, batch, True), _loss(model, task, batch, False)
        gap = f" At init the loss is {value['train_loss']:.3g} in training mode vs {value['eval_loss']:.3g} in eval."
    except Exception:  # the gap is supporting evidence only; a model that cannot be probed still has its rates read
        gap = ""
    listed = ", ".join(f"{k} p={p:g}" for k, p in list(high.items())[:4])
    drop_all = [k for k, p in high.items() if p >= 1]
    if drop_all:
        return failed(
            name,
            f"dropout with p=1 ({', '.join(drop_all[:4])}) zeroes every activation in training: nothing flows through "
            f"it.{gap} p is the drop probability; set it to the share you want to drop.",
            value,
            f"p <= {warn_above:g}",
        )
    return warned(
        name,
        f"{len(high)} dropout rate(s) above {warn_above:g}: {listed}.{gap} p is the probability of dropping a unit; "
        f"p={max(high.values()):g} drops {max(high.values()):.0%} of them. If you meant to keep that share, use "
        f"p={1 - max(high.values()):.2g}.",
        value,
        f"p <= {warn_above:g}",
    )


def eval_deterministic(model: nn.Module, task: Task, inputs: Any) -> Check:
    """Catches dropout left on at evaluation (`F.dropout` without `training=self.training`, dropout built inside
    `forward`) and evaluation that changes buffers (BatchNorm forced into training mode); other noise sampled at
    evaluation warns.

    Why: catalog M8 and E2. A dropout mask has a signature: where two passes differ, one of them holds an exact zero
    (a unit dropped in one pass, kept and scaled alike in the other). Other noise may be the model's own sampling (a
    VAE's reparameterisation, as in PyTorch's own VAE example), so it is reported for a look, not failed.
    """
    model.eval()
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    kept = _leaves(tree_map(lambda t: t.detach().clone(), inputs))
    with torch.no_grad():
        first = task.forward(model, inputs)
        rewritten = _rewritten(kept, _leaves(inputs))
        if rewritten is not None:  # is a second pass on the rewritten batch still the first one's output?
            again = task.forward(model, inputs)
            drifts = not _agree(first, again)
            return _rewrites_its_input(model, task, kept, inputs, rewritten, drifts)
        second = task.forward(model, inputs)
    if not isinstance(first, torch.Tensor):
        return skipped("eval_deterministic", "the model output is not a tensor.")
    diff = float((first.float() - second.float()).abs().max())
    scale = float(first.float().abs().max())
    changed = [n for n, b in model.named_buffers() if n in buffers and not torch.equal(b, buffers[n])]
    value: dict[str, Any] = {"max_abs_difference": diff, "output_scale": scale, "buffers_changed": changed}
    if _differs(diff, scale):
        try:
            where, masked = _where_noise_enters(model, task, inputs)
        except Exception:  # a structure the trace cannot compare: where the noise enters stays unknown
            where, masked = "a place the trace could not read", False
        value.update(noise_enters_at=where, dropout_mask=masked)
        if masked:
            return failed(
                "eval_deterministic",
                f"two eval-mode passes on the same batch differ by up to {diff:.3g}: dropout or noise is active at "
                f"evaluation ({where} holds units zeroed in one pass and kept in the other, a dropout mask): "
                "F.dropout without training=self.training, or a dropout module created inside forward.",
                value,
                "identical outputs",
            )
        return warned(
            "eval_deterministic",
            f"two eval-mode passes on the same batch differ by up to {diff:.3g}, from noise first seen at {where} "
            "(not a dropout mask): the model samples at evaluation. If the sampling is its own (a VAE's "
            "reparameterisation, a stochastic layer), validation figures vary from one evaluation to the next: use "
            "the mean in eval mode (`if not self.training`) for stable ones. If it is noise augmentation or "
            "drop-path, gate it on `self.training`.",
            value,
            "identical outputs",
        )
    if changed:
        return failed(
            "eval_deterministic",
            f"evaluation changed buffers {changed[:4]}: evaluation is leaking into "
            "the model (BatchNorm forced into training mode, a running statistic updated in forward).",
            value,
            "buffers unchanged by evaluation",
        )
    return passed("eval_deterministic", "eval mode is deterministic and leaves every buffer unchanged.", value)


def _leaves(obj: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(found.append, obj)
    return found


def _rewritten(kept: list[torch.Tensor], now: list[torch.Tensor]) -> float | None:
    """The largest change of any input tensor since `kept` was copied; None when every one is as it was (NaN where
    NaN was)."""
    changes = [
        float((after.double() - before.double()).abs().nan_to_num(math.inf).max())
        for before, after in zip(kept, now, strict=True)
        if not (torch.equal(before, after) or (before.is_floating_point() and _same_with_nan(before, after)))
    ]
    return max(changes) if changes else None


def _same_with_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def _agree(a: Any, b: Any) -> bool:
    """Two outputs equal to the tolerance eval_deterministic compares passes at (NaN where NaN was)."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    if not torch.equal(a.isnan(), b.isnan()):
        return False
    gap = float((a - b).nan_to_num(0.0).abs().max()) if a.numel() else 0.0
    return not _differs(gap, float(a.nan_to_num(0.0).abs().max()) if a.numel() else 0.0)


def _differs(gap: float, scale: float) -> bool:
    """Two passes of one model differ: their largest gap beyond float rounding (1e-5 of the output's largest
    magnitude, floored at 1e-6), or NaN."""
    return math.isnan(gap) or gap > 1e-5 * max(scale, 1e-6)


def _rewrites_its_input(
    model: nn.Module, task: Task, kept: list[torch.Tensor], inputs: Any, change: float, drifts: bool
) -> Check:
    """A forward pass that changed its input tensors in place, naming the first module whose call left its input
    changed (innermost first); the caller's batch is put back as it was. It fails where a second pass on the
    rewritten batch gives other outputs (x.sub_(mean): each evaluation of a stored split shifts it again), and warns
    where the rewrite is idempotent (NaN set to 0, a clamp): the figures hold, the caller's tensors change once."""
    for before, now in zip(kept, _leaves(inputs), strict=True):
        now.copy_(before)
    names = {id(m): name or "the model's own forward" for name, m in model.named_modules()}
    calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    culprit: list[str] = []

    def before_call(module: nn.Module, args: Any) -> None:
        calls.append([(t, t.detach().clone()) for t in _leaves(args)])

    def after_call(module: nn.Module, args: Any, out: Any) -> None:
        seen = calls.pop() if calls else []
        if not culprit and any(not torch.equal(t, copy) for t, copy in seen):
            culprit.append(names.get(id(module), f"a {type(module).__name__} built inside forward"))

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(before_call),
        nn.modules.module.register_module_forward_hook(after_call),
    ]
    probe = tree_map(lambda t: t.detach().clone(), inputs)
    try:
        task.forward(model, probe)
    except Exception:  # naming the place is a courtesy: the change itself was seen
        pass
    finally:
        for hook in hooks:
            hook.remove()
    where = culprit[0] if culprit else "task.forward, outside every module"
    said = (
        f"the forward pass changes its input in place: after one eval-mode pass the batch differs by up to "
        f"{change:.3g}, rewritten by {where} (an in-place op on the argument: x.sub_(), x /= s, x[...] = ..., an "
        "activation with inplace=True applied to the input)."
    )
    value = {"max_input_change": change, "rewritten_by": where, "outputs_drift": drifts}
    fix = "Work on a copy (x = x - mean, or x = x.clone() first)."
    if not drifts:
        return warned(
            "eval_deterministic",
            f"{said} A second pass on the rewritten batch gives the same outputs, so the figures hold, but the "
            f"tensors you passed in (your stored splits) are changed. {fix}",
            value,
            "inputs unchanged by the forward pass",
        )
    return failed(
        "eval_deterministic",
        f"{said} A second pass on the rewritten batch gives other outputs: a stored validation split is transformed "
        f"again at each evaluation, so its figures drift. {fix}",
        value,
        "inputs unchanged by the forward pass",
    )


def _where_noise_enters(model: nn.Module, task: Task, inputs: Any) -> tuple[str, bool]:
    """The first module input or output (in execution order) that differs between two eval-mode passes on a few
    samples, and whether it differs as a dropout mask does: at nine in ten differing entries, one pass holds 0."""
    n = batch_size_of(inputs)
    few = tree_map(lambda t: t[:TRACED_SAMPLES] if t.dim() and len(t) == n else t, inputs)
    first, second = _traced(model, task, few), _traced(model, task, few)
    for (where, a), (_, b) in zip(first, second, strict=False):
        if a.shape != b.shape:
            return where, False
        differs = (a - b).abs() > 1e-6 * max(float(a.abs().max()), 1e-6)
        if bool(differs.any()):
            one_zero = ((a == 0) ^ (b == 0))[differs]
            return where, float(one_zero.float().mean()) >= 0.9
    return "the output of task.forward", False


def _traced(model: nn.Module, task: Task, inputs: Any) -> list[tuple[str, torch.Tensor]]:
    """Every floating-point input and output of every module call in one eval-mode pass, in execution order, named;
    modules built inside `forward` included (global hooks)."""
    names = {id(m): name or "the model" for name, m in model.named_modules()}
    seen: list[tuple[str, torch.Tensor]] = []

    def record(module: nn.Module, what: str, value: Any) -> None:
        owner = names.get(id(module), f"a {type(module).__name__} built inside forward")
        tree_map(
            lambda t: (
                seen.append((f"the {what} of {owner}", t.detach().clone()))
                if t.is_floating_point() and not t.is_nested
                else t
            ),
            value,
        )

    hooks = [
        nn.modules.module.register_module_forward_pre_hook(lambda m, args: record(m, "input", args)),
        nn.modules.module.register_module_forward_hook(lambda m, args, out: record(m, "output", out)),
    ]
    try:
        with torch.no_grad():
            task.forward(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen
