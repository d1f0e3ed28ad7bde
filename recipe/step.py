"""The training step, built once before the loop: `build_step` decides precision (bf16 autocast or fp32), the
channels_last layout, `torch.compile` and its fallback, gradient clipping and the learning-rate schedule, and returns
a `TrainStep` whose call is forward, loss, backward, clip, optimizer step, zero_grad, schedule step.

`fit` trains with it and the batch-size finder measures with it, so both run the same step. Like nanoGPT's
`train.py`, nothing here is re-decided inside the loop except the automatic compile, which is a measurement
(see `recipe.fast_paths.AutoCompile`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from recipe import fast_paths
from recipe.data import Batch, batch_size_of
from recipe.optim import build_optimizer, build_schedule, kernel_name
from recipe.task import Task


@dataclass(frozen=True)
class StepSettings:
    """How every optimizer step runs (the `fit` keywords of the same names).

    Args:
        optimizer: "adamw", "adam" or "sgd" (with `momentum`).
        lr: peak learning rate.
        weight_decay: decoupled weight decay.
        momentum: SGD's momentum.
        schedule: "constant", "cosine", "linear", or a callable step -> multiplier of `lr`.
        warmup_steps: linear warm-up steps before the schedule.
        grad_clip: clip the global gradient norm to this value; None: no clipping.
        precision: "auto" (bf16 autocast on CUDA GPUs that support it), "fp32" or "bf16".
        compile: `torch.compile` the model: True, False or "auto" (decided by timing, CUDA only).
        channels_last: channels_last layout for conv nets; None: on CUDA for models with Conv2d layers.
        augment: pass training batches through the task's augmentation.
    """

    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str | Callable[[int], float] = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    precision: str = "auto"
    compile: bool | str = False
    channels_last: bool | None = None
    augment: bool = False


def _nothing(*args: Any) -> None:
    return None


class TrainStep:
    """One optimizer step on a batch, every choice made when it was built (`build_step`). Call it with a batch on
    the device; it returns the batch's loss, detached and still on the device (reading it is the loop's choice).

    Attributes:
        model: the module that trains (the user's, never wrapped).
        optimizer, schedule: built for the model's trainable parameters (`schedule` None when the lr is constant).
        autocast: a context-manager factory: bf16 autocast or a null context; evaluation uses it too.
        setup: the choices made, in words, for `FitResult.setup`.
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        forward: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler | None,
        autocast: Callable[[], Any],
        settings: StepSettings,
        batch_size: int,
        setup: dict[str, Any],
        device: torch.device,
        world: int,
        total_steps: int,
    ):
        self.task, self.model, self.forward = task, model, forward
        self.optimizer, self.schedule, self.autocast, self.setup = optimizer, schedule, autocast, setup
        self.augment, self.batch_size, self.data_parallel = settings.augment, batch_size, world > 1
        self.device, self.world, self.total_steps, self.auto_compile = (
            device,
            world,
            total_steps,
            settings.compile == "auto",
        )
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip = settings.grad_clip
        self.clip = functools.partial(nn.utils.clip_grad_norm_, params, clip) if clip else _nothing
        self.prepare = fast_paths.to_channels_last if setup["channels_last"] else (lambda batch: batch)
        self.schedule_step = schedule.step if schedule is not None else _nothing
        self.auto: fast_paths.AutoCompile | None = None

    def __call__(self, batch: Batch) -> torch.Tensor:
        try:
            return self._step(batch)
        except Exception as exc:
            if self.auto is None or self.forward is self.model:
                raise
            self.forward = self.model  # the automatic compile failed: train on eagerly, and say so
            self.auto.reason = f"off: torch.compile failed ({type(exc).__name__}: {exc})"[:300]
            return self._step(batch)

    def _step(self, batch: Batch) -> torch.Tensor:
        batch = self.prepare(batch)
        module = self.forward
        if module is not self.model and not self.data_parallel and batch_size_of(batch) != self.batch_size:
            module = self.model  # an epoch's last, shorter batch runs eagerly: the compiled graph keeps one shape
        with self.autocast():
            output, target = self.task.outputs(module, batch, self.augment)
            loss = self.task.compute_loss(output, target)
        loss.backward()
        self.clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule_step()
        return loss.detach()

    def start(self, steps_done: int, setup: dict[str, Any]) -> None:
        """Training starts (or resumes) after `steps_done` steps. With `compile="auto"`, time eager steps from here
        and compile once the rest of the run repays it (`after_step` decides); where it cannot compile, say why in
        `setup["compile"]`."""
        if not self.auto_compile:
            return
        why_not = fast_paths.compile_unavailable(self.device, self.world)
        setup["compile"] = f"auto: off ({why_not})" if why_not else "auto"
        self.auto = None if why_not else fast_paths.AutoCompile(self.model, self.device, steps_done, self.total_steps)

    def after_step(self, steps_done: int) -> None:
        """Give the automatic compile its measurement point (a no-op unless `start` armed it)."""
        if self.auto is not None:
            self.forward = self.auto.after_step(steps_done, self.forward)

    def finish(self, setup: dict[str, Any]) -> None:
        """Record the automatic compile's decision and its reason in `setup`."""
        if self.auto is not None:
            setup["compile"] = f"auto: {self.auto.reason}"


def build_step(
    task: Task,
    model: nn.Module,
    device: torch.device,
    settings: StepSettings,
    *,
    batch_size: int,
    total_steps: int,
    world: int = 1,
) -> TrainStep:
    """Decide everything about the step before the loop: the layout of `model` (converted in place to channels_last
    when chosen), the optimizer and schedule over its trainable parameters, bf16 autocast, TF32, `torch.compile`
    (`compile=True`; "auto" is armed by `TrainStep.start`), data-parallel wrapping when
    `world` > 1, clipping. `total_steps` sets the schedule's length."""
    bf16 = fast_paths.bf16_autocast(settings.precision, device)
    nhwc = fast_paths.wants_channels_last(model, device, settings.channels_last)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    fast_paths.allow_tf32(device)
    s = settings
    opt = build_optimizer(
        s.optimizer, [p for p in model.parameters() if p.requires_grad], s.lr, s.weight_decay, s.momentum
    )
    sched = build_schedule(opt, s.schedule, s.warmup_steps, total_steps)
    forward = cast(nn.Module, torch.compile(model)) if s.compile is True else model
    if world > 1:  # gradients averaged across ranks in backward; every rank started from the same seed
        ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(forward, device_ids=ids)
    setup = {
        "precision": "bf16 autocast" if bf16 else "fp32",
        "optimizer": s.optimizer,
        "optimizer_kernel": kernel_name(opt),
        "compile": s.compile is True,
        "channels_last": nhwc,
    }
    autocast = fast_paths.autocast_context(bf16, device)
    return TrainStep(task, model, forward, opt, sched, autocast, s, batch_size, setup, device, world, total_steps)
