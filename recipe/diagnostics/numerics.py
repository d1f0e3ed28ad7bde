"""Where a non-finite value first appears: the parameter, and the module whose output went NaN/Inf."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed
from recipe.errors import NonFiniteError


def first_non_finite_parameter(model: nn.Module) -> str | None:
    """Name of the first parameter (registration order) holding NaN or Inf, or whose gradient does."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all() or (p.grad is not None and not torch.isfinite(p.grad).all()):
            return name
    return None


def first_non_finite_module(model: nn.Module, task: Any, batch: Any) -> str | None:
    """Replay `batch` with forward hooks and name the first module (call order) whose output is not finite.

    Why: module hooks name the consumer of a functional op (bug catalog, section 2.10); that is enough to
    know where to look.
    """
    found: list[str] = []

    def hook(name: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            floating = isinstance(output, torch.Tensor) and output.is_floating_point() and not output.is_nested
            if not found and floating and not torch.isfinite(output).all():
                found.append(f"{name} ({type(module).__name__})")

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            task.outputs(model, batch)
    except Exception:  # replaying is best effort: the error being reported is the non-finite loss
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def non_finite(exc: NonFiniteError) -> Check:
    """The failed `non_finite` check for a training run stopped by a NaN/Inf loss (O4 in the bug catalog)."""
    value = {"step": exc.step, "parameter": exc.parameter, "module": exc.module, "indices": exc.indices}
    return failed("non_finite", str(exc), value, "a finite loss at every step")
