"""The speed choices `fit` makes for itself: bf16 autocast, channels_last for conv nets, and `torch.compile` when
the run is long enough to repay it. Each choice is reported in `FitResult.setup` (and so in manifest.json) with
its reason.

`torch.compile` is decided by measurement, not by guess: with `compile="auto"` on a CUDA device, `fit` runs its
first steps eagerly, times a window of them (two host synchronisations in the whole run), and compiles when the
time compiling is expected to save on the remaining steps exceeds what compiling costs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from recipe.data import tree_map

COMPILE_SECONDS = 60.0
"""What a first `torch.compile` of a model costs, roughly: about 40-60 s for a GPT-2-small-sized model on an H100,
less for small models. Taken high on purpose: compiling a run that does not repay it is the worse mistake."""

COMPILE_SAVES = 0.2
"""The fraction of an eager step's time compiling saves on the models we measured (nanoGPT: bf16 eager 0.49M
tokens/s, compiled 0.58M on an H100, i.e. 16% less time per step). A run compiles when this fraction of its
remaining eager time exceeds `COMPILE_SECONDS`."""

WARMUP_STEPS, TIMED_STEPS = 5, 20
"""Eager steps before the timed window (allocator and cuDNN warm-up), then the steps timed."""


def bf16_autocast(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or "auto" on a CUDA GPU that supports it."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def allow_tf32(device: torch.device) -> None:
    """TF32 tensor-core matmuls and convolutions for the fp32 parts on CUDA (a 10-bit mantissa, ample for training)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_context(bf16: bool, device: torch.device) -> Callable[[], Any]:
    if not bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def wants_channels_last(model: nn.Module, device: torch.device, choice: bool | None = None) -> bool:
    """channels_last memory format: by default for models with 2-d convolutions on CUDA, where cuDNN's NHWC kernels
    (tensor cores) are faster; `choice` True/False overrides."""
    if choice is not None:
        return choice
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(batch: Any) -> Any:
    """4-d floating-point tensors of a batch in channels_last layout (same values, NHWC strides)."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and t.is_floating_point() else t

    return tree_map(convert, batch)


def compile_pays(step_seconds: float, steps_left: int) -> tuple[bool, str]:
    """Whether compiling repays its cost over the remaining steps, and the reason in words."""
    remaining = step_seconds * steps_left
    saved = COMPILE_SAVES * remaining
    reason = (
        f"{steps_left} steps left at {step_seconds * 1e3:.1f} ms each ({remaining:.0f} s eager): compiling would save "
        f"about {saved:.0f} s against about {COMPILE_SECONDS:.0f} s to compile"
    )
    return saved > COMPILE_SECONDS, reason


def compile_unavailable(device: torch.device, world: int) -> str | None:
    """Why `compile="auto"` stays eager before measuring anything, or None when it may compile."""
    if device.type != "cuda":
        return f"{device.type}: auto compiles on CUDA only (pass compile=True to force)"
    if world > 1:
        return "data parallel: auto does not compile under DDP (pass compile=True to force)"
    try:
        from torch.utils._triton import has_triton

        if not has_triton():
            return "triton is not installed, which torch.compile needs on CUDA"
    except ImportError:
        return "this torch has no triton check; not compiling"
    return None


class AutoCompile:
    """`compile="auto"`: time a window of eager steps, then compile once if the rest of the run repays it.

    Call `after_step(steps_done)` after every optimizer step; it returns the module to train from then on (the
    compiled one once decided). Compilation errors fall back to eager with the error in the reason.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        start: int,
        total: int,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.model, self.total, self.clock = model, total, clock
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.begin, self.end = start + WARMUP_STEPS, start + WARMUP_STEPS + TIMED_STEPS
        self.t0 = 0.0
        self.decided = False
        self.reason = "undecided: the run ended before the timing window"

    def after_step(self, steps: int, forward: nn.Module) -> nn.Module:
        if self.decided:
            return forward
        if steps == self.begin:
            self.sync()
            self.t0 = self.clock()
        elif steps == self.end:
            self.sync()
            self.decided = True
            pays, why = compile_pays((self.clock() - self.t0) / TIMED_STEPS, self.total - steps)
            self.reason = f"{'on' if pays else 'off'}: {why}"
            if pays:
                return torch.compile(self.model)  # type: ignore[return-value]
        return forward
