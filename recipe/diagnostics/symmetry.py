"""Initialisation symmetry: hidden units that compute the same function and receive the same gradient.

Why: recipe step 2, "init well"; two hidden units with identical incoming weights and identical outgoing weights
produce the same activation and receive the same gradient, so gradient descent updates them alike and they never
become different (the reason weights are initialised at random). Identical activations *and* identical gradients on
a batch are that condition observed directly, whatever the architecture: a zero-initialised last layer or zero
biases leave the units' gradients or activations distinct and are not flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.task import Task

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)  # layers whose outputs are units
MAX_UNITS, MAX_ROWS = 512, 256  # compared per layer: a sample of units over a sample of (sample, position) rows
TOLERANCE = 1e-5  # relative: float rounding of one matmul, far below any difference random weights make


def _units(output: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """(rows, units): channels are the units of a convolution, the last axis of anything else."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        output = output.movedim(1, -1)
    return output.reshape(-1, output.shape[-1])


@dataclass
class _Layer:
    activation: torch.Tensor  # (rows, units) on one batch
    gradient: torch.Tensor  # the loss gradient with respect to it
    weight_rows: torch.Tensor | None  # each unit's incoming weights (Linear, Conv), one row per unit
    is_output: bool  # its output is the model's output: its units are outputs, not hidden units


def _record(model: nn.Module, task: Task, batch: Any) -> dict[str, _Layer]:
    """Each layer's output and the loss gradient with respect to it, as (rows, units), on one batch."""
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}

    def hook(name: str) -> Any:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            plain = isinstance(output, torch.Tensor) and not output.is_nested  # nested: no (rows, units) view
            if plain and output.requires_grad and name not in seen:
                output.retain_grad()
                seen[name] = (module, output)

        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, LAYERS)]
    try:
        model.eval()
        model.zero_grad(set_to_none=True)
        output, target = task.outputs(model, batch)
        task.compute_loss(output, target).backward()
    finally:
        for handle in handles:
            handle.remove()
    storage = output.untyped_storage().data_ptr()
    layers = {}
    for name, (m, out) in seen.items():
        units = _units(out.detach(), m)
        if out.grad is None or units.shape[1] < 2:
            continue
        weight = cast(torch.Tensor, m.weight)
        learned = weight.requires_grad and not isinstance(m, nn.Embedding)  # a frozen layer's constants are chosen
        rows = weight.detach().reshape(len(weight), -1) if learned else None
        is_output = out.untyped_storage().data_ptr() == storage
        layers[name] = _Layer(units, _units(out.grad, m), rows, is_output)
    return layers


def _equal_rows(rows: torch.Tensor | None) -> tuple[int, bool]:
    """(rows equal to another row, whether all rows are one non-zero row): constant or copied initialisation.
    All-zero rows are left out: zero-initialising a layer (a residual branch's last layer, a head) is deliberate."""
    if rows is None:
        return 0, False
    _, inverse, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)
    copies = (counts[inverse] > 1) & (rows != 0).any(1) & (rows.shape[1] > 1)  # one random weight per row can repeat
    return int(copies.sum()), len(counts) == 1 and bool((rows != 0).any())


def _duplicated(activation: torch.Tensor, gradient: torch.Tensor, seed: int = 0) -> tuple[int, int, int]:
    """(units that share their activation and gradient with another unit, those of them not silent, units compared).
    A silent unit (zero activation and zero gradient on every row: a zero-initialised branch's unit cut off by a ReLU
    downstream on this batch) matches every other silent one without being symmetric: on other rows its gradient
    differs. A whole layer of them is still every unit copied."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(activation), generator=g)[:MAX_ROWS]
    units = torch.randperm(activation.shape[1], generator=g)[:MAX_UNITS]
    a, d = activation[rows][:, units].float(), gradient[rows][:, units].float()
    silent = (a == 0).all(0) & (d == 0).all(0)
    a, d = a / a.abs().max().clamp_min(1e-12), d / d.abs().max().clamp_min(1e-12)
    key = torch.cat([a, d]).T  # (units, 2 * rows)
    distance = torch.cdist(key, key, p=float("inf"))
    distance.fill_diagonal_(float("inf"))
    copied = distance.min(1).values <= TOLERANCE
    return int(copied.sum()), int((copied & ~silent).sum()), len(units)


def init_symmetry(model: nn.Module, task: Task, batch: Any) -> Check:
    """Catches constant initialisation (`nn.init.constant_(w, 0.1)`, all-equal rows): hidden units with identical
    activations and identical gradients, which gradient descent can never tell apart.

    Why: recipe step 2 ("init well"); units symmetric in their incoming and outgoing weights stay symmetric under
    gradient descent, so a layer of n such units has the capacity of one.
    """
    name = "init_symmetry"
    try:
        layers = _record(model, task, batch)
    except Exception as exc:  # a loss that cannot be differentiated here: no gradients to compare
        return skipped(name, f"could not take the loss gradient on a batch ({type(exc).__name__}: {exc}).")
    if not layers:
        return skipped(name, "no Linear, Conv or Embedding layer with more than one unit took part in the loss.")
    value: dict[str, dict[str, int]] = {}
    all_same: list[str] = []
    for n, layer in layers.items():
        copied, active, units = _duplicated(layer.activation, layer.gradient)
        rows, constant = (0, False) if layer.is_output else _equal_rows(layer.weight_rows)
        if copied == units or constant:
            all_same.append(n)
        if copied == units or active or rows:
            value[n] = {"duplicated_units": copied, "units_compared": units, "equal_weight_rows": rows}
    what = "; ".join(
        f"{n}: {v['duplicated_units']} of {v['units_compared']} units copy another's activation and gradient, "
        f"{v['equal_weight_rows']} equal weight rows"
        for n, v in value.items()
    )
    fix = (
        "Units with the same incoming and outgoing weights get the same gradient and never differ: initialise "
        "weights at random (PyTorch's default, or nn.init.kaiming_normal_/xavier_uniform_), not with constant_."
    )
    if all_same:
        return failed(
            name,
            f"every hidden unit of {', '.join(all_same[:4])} starts identical ({what}): constant initialisation. {fix}",
            value,
            "no duplicated units",
        )
    if value:
        return warned(name, f"some hidden units start as exact copies of others ({what}). {fix}", value)
    return passed(name, f"the units of all {len(layers)} Linear/Conv/Embedding layers start different.")
