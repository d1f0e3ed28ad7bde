"""Karpathy's "init well": the output layer's bias set from the training targets (log class priors, log-odds, the
target mean or median) before the first step; `fit(init_bias=True)` calls `init_output_bias`, and the `init_bias`
check (diagnostics/init.py) measures what it saves.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recipe.data import IGNORE_INDEX, Batch
from recipe.task import Task


def final_layer(model: nn.Module, task: Task, batch: Batch) -> tuple[str, nn.Module] | None:
    """The module with a bias that produces the model's output: identical tensor first, else same shape, last called."""
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "bias", None), nn.Parameter)]
    output, calls = recorded_forward(model, task, batch, candidates)
    for test in (lambda o: o is output, lambda o: o.shape == output.shape, lambda o: o.numel() == output.numel()):
        for name, module, out, _ in reversed(calls):
            if test(out):
                return name, module
    return None


def recorded_forward(
    model: nn.Module, task: Task, batch: Batch, modules: list[tuple[str, nn.Module]]
) -> tuple[torch.Tensor, list[tuple[str, nn.Module, torch.Tensor, int]]]:
    """The model's output on `batch` (no gradients), and each of `modules`' tensor outputs in call order with its
    version counter then (an in-place operation after it bumps the counter). A nested tensor (a transformer's fast
    path with a padding mask) has no shape to compare and is never the returned output: it is left out. TorchScript
    modules take no hooks: their outputs are not recorded."""
    calls: list[tuple[str, nn.Module, torch.Tensor, int]] = []

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and not out.is_nested:
                calls.append((name, module, out, out._version))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules if not isinstance(m, torch.jit.ScriptModule)]
    try:
        with torch.no_grad():
            output, _ = task.outputs(model, batch)
    finally:
        for h in handles:
            h.remove()
    return output, calls


def bias_values(task: Task, target: torch.Tensor) -> torch.Tensor | None:
    """Karpathy's "init well": log class priors (cross-entropy; with class weights, of the counts times the weights,
    the constant the weighted loss prefers), log-odds (BCE), target mean (MSE) or median (L1)."""
    t = target.detach().cpu()
    if task.loss == "cross_entropy":
        valid = t[t != IGNORE_INDEX]  # cross-entropy leaves these positions (padding) unscored
        counts = torch.bincount(valid.long(), minlength=task.num_classes or 0).float() + 1.0  # add-one smoothing
        if task.class_weights is not None:
            counts = counts * task.class_weights[: len(counts)]
            counts = counts.clamp_min(1e-6 * float(counts.max()))  # a weight-0 class: a low bias, not -inf
        log_prior = counts.log() - counts.sum().log()
        return log_prior - log_prior.mean()
    if task.loss == "bce_with_logits":
        p = t.float().mean(0).clamp(1e-4, 1 - 1e-4)
        return (p / (1 - p)).log().reshape(-1)
    if task.loss == "mse":
        return t.float().mean(0).reshape(-1)
    if task.loss == "l1":
        return t.float().median(0).values.reshape(-1)
    return None


def init_output_bias(model: nn.Module, task: Task, device: torch.device | str) -> dict[str, Any] | None:
    """Set the final layer's bias to `bias_values` of the training targets, in place; None when not applicable."""
    values = bias_values(task, task.targets("train", limit=50_000))
    found = final_layer(model, task, task.sample_batch("train", 8, seed=0, device=device))
    if values is None or found is None:
        return None
    name, layer = found
    bias = layer.bias
    if not isinstance(bias, torch.Tensor):
        return None
    if values.numel() not in (1, bias.numel()):
        return None
    with torch.no_grad():
        bias.copy_(values.to(bias.device, bias.dtype).expand_as(bias))
    return {"layer": name, "values": values.tolist() if values.numel() <= 16 else f"{values.numel()} values"}
