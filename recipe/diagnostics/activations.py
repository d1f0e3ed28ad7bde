"""Per-layer activation statistics: dead ReLU units, saturated tanh/sigmoid units, scale exploding or vanishing
with depth.

Why: recipe step 2 ("visualize ... metrics") and Slav Ivanov's #35 (activation std of 0.5-2 as a guideline); a
layer whose units are all dead or saturated passes no gradient.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from recipe.check import Check, passed, skipped, warned
from recipe.data import batch_size_of
from recipe.task import Task

SATURATING = {nn.Tanh: (-0.99, 0.99), nn.Sigmoid: (0.01, 0.99), nn.Hardtanh: (-0.99, 0.99)}
RECTIFYING = (nn.ReLU, nn.ReLU6)
PARAMETRIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _units(t: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Reshape to (samples and positions, units): channels are dim 1 for convolutions, the last dim otherwise."""
    if t.dim() >= 3 and (t.dim() == 4 or isinstance(module, nn.Conv1d | nn.BatchNorm1d)):
        t = t.movedim(1, -1)
    return t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(-1, 1)


def _plain(out: Any) -> torch.Tensor | None:
    """A module's output as one plain floating tensor, or None: a PackedSequence's data and a nested tensor's
    components (real positions only, padding left out), the first element of a tuple or list (an RNN's outputs
    before its hidden state). Anything else (a dict, integers, an empty tensor) is not an activation to measure."""
    if isinstance(out, tuple | list) and not isinstance(out, PackedSequence):
        out = out[0] if out else None
    if isinstance(out, PackedSequence):
        out = out.data
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return None
    if out.is_nested:
        parts = [p.reshape(-1, p.shape[-1]) for p in out.unbind() if p.dim() >= 1]
        out = torch.cat(parts) if parts else None
    return out if out is not None and out.numel() else None


def activation_stats(model: nn.Module, task: Task, inputs: Any) -> list[dict[str, Any]]:
    """One record per leaf module call, in call order: output mean/std, dead and saturated unit fractions.

    A unit is dead when it is exactly zero for every sample of the batch: read at the output of a ReLU module, and
    at the input of a Linear/Conv layer (which catches a functional F.relu before it). A tanh/sigmoid unit is
    saturated when over 90% of its outputs sit within 1% of the asymptotes. Outputs that are nested tensors, packed
    sequences or tuples are read through `_plain`; a module whose output is none of these is left out. The model
    runs in eval mode, except BatchNorm layers that have seen no batch yet (a fresh model's): they use the batch's
    statistics, as in training, since their running ones (0 and 1) would pass every scale through unnormalised.
    """
    records: list[dict[str, Any]] = []
    parametric_seen = [False]  # the first layer's inputs are data, not activations

    def hook(name: str):
        def record(module: nn.Module, args: Any, out: Any) -> None:
            plain = _plain(out)
            if plain is None:
                return
            units = _units(plain.detach().float(), module)
            rec: dict[str, Any] = {
                "layer": name,
                "type": type(module).__name__,
                "units": units.shape[1],
                "mean": float(units.mean()),
                "std": float(units.std()) if units.numel() > 1 else 0.0,
            }
            if isinstance(module, RECTIFYING):
                rec["dead"] = float((units <= 0).all(0).float().mean())
            elif isinstance(module, PARAMETRIC) and args and (given := _plain(args[0])) is not None:
                seen = _units(given.detach().float(), module)
                if parametric_seen[0] and bool((seen >= 0).all()):  # the input went through a rectifier
                    rec["dead_inputs"] = float((seen == 0).all(0).float().mean())
                parametric_seen[0] = True
            for cls, (lo, hi) in SATURATING.items():
                if isinstance(module, cls):
                    saturated_share = ((units < lo) | (units > hi)).float().mean(0)  # per unit, over the batch
                    rec["saturated"] = float((saturated_share > 0.9).float().mean())
            records.append(rec)

        return record

    model.eval()
    fresh = [m for m in model.modules() if _untracked(m)] if batch_size_of(inputs) > 1 else []
    kept = [copy.deepcopy(m.state_dict()) for m in fresh]
    for m in fresh:
        m.train()  # batch statistics: its running ones are still 0 and 1, which normalise nothing
    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves if not isinstance(m, torch.jit.ScriptModule)]
    try:
        with torch.no_grad():
            task.forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
        for m, state in zip(fresh, kept, strict=True):
            m.load_state_dict(state)
            m.eval()
    return records


def _untracked(module: nn.Module) -> bool:
    """A BatchNorm layer that has seen no training batch yet (a fresh model's)."""
    tracked = getattr(module, "num_batches_tracked", None)
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and tracked is not None and int(tracked) == 0


def activations(stats_init: list[dict[str, Any]], stats_trained: list[dict[str, Any]] | None = None) -> Check:
    """Warns on layers with most units dead or saturated, and on activation scale exploding/vanishing with depth."""
    if not stats_init:
        return skipped("activations", "no layer's output could be recorded (a TorchScript model takes no hooks).")
    problems = []
    for when, stats in (("at init", stats_init), ("after training", stats_trained or [])):
        for rec in stats:
            dead = max(rec.get("dead", 0.0), rec.get("dead_inputs", 0.0))
            if rec["units"] >= 8 and dead > 0.5:
                problems.append(f"{rec['layer']}: {dead:.0%} of units dead {when}")
            if rec["units"] >= 8 and rec.get("saturated", 0.0) > 0.5:
                problems.append(f"{rec['layer']}: {rec['saturated']:.0%} of units saturated {when}")
        hidden = [r for r in stats[:-1] if r["type"] in {c.__name__ for c in PARAMETRIC} and r["std"] > 0]
        if len(hidden) >= 2:
            first, last = hidden[0]["std"], hidden[-1]["std"]
            if last / first > 100 or last / first < 0.01:
                problems.append(
                    f"activation std goes from {first:.3g} ({hidden[0]['layer']}) to {last:.3g} "
                    f"({hidden[-1]['layer']}) {when}"
                )
    value = {"problems": problems, "layers": len(stats_init)}
    if problems:
        return warned(
            "activations",
            "; ".join(problems[:3]) + ". Dead or saturated units pass no gradient: lower the "
            "learning rate, check the init scale and input normalisation, or use a non-saturating "
            "activation.",
            value,
            "live, unsaturated units at a stable scale",
        )
    return passed(
        "activations", f"{len(stats_init)} layers: no dead or saturated layers, stable scale across depth.", value
    )
