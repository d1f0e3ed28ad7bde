"""The optimizer and the learning-rate schedule `fit` builds, decided once before the loop."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch

from recipe.errors import TaskError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


def build_optimizer(
    name: str, params: list[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if not params:
        raise TaskError("the model has no trainable parameters (all have requires_grad=False or there are none).")
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    settings: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        settings["momentum"] = momentum
    if all(p.is_floating_point() for p in params):
        # One fused kernel per step instead of a Python loop over parameters: CUDA, and CPU since torch 2.4
        # (a quarter less time per step than the default on a small CPU MLP). Older torch or other devices refuse.
        with contextlib.suppress(RuntimeError, TypeError):
            return cls(params, fused=True, **settings)
    return cls(params, **settings)


def kernel_name(opt: torch.optim.Optimizer) -> str:
    group = opt.param_groups[0]
    return "fused" if group.get("fused") else "foreach" if group.get("foreach") else "default"


def build_schedule(
    opt: torch.optim.Optimizer, schedule: str | Callable[[int], float], warmup_steps: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    if callable(schedule):
        return torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    if schedule == "constant" and warmup_steps == 0:
        return None
    decay_steps = max(1, total - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / decay_steps)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1 - progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
