"""`fit`: the one training loop. Every stage trains through it, and users call it to train the model the recipe chose.

Everything that can be decided before the loop is: the data path, then the training step (`recipe.step.build_step`:
precision, channels_last, compile, optimizer, clipping, schedule). Checkpoints, resume, early stopping's best weights
and the SIGTERM stop belong to a `recipe.checkpointer.Checkpointer`, which the loop calls at a few named points. The
hot loop is step, log, checkpoint. Per-step losses stay on the device and are read once per `log_every` steps, which
is also when non-finite losses are caught.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recipe import console, distributed
from recipe import threads as threads_module
from recipe.checkpointer import Checkpointer
from recipe.config import check_seed
from recipe.data import place, train_batches
from recipe.data import steps_per_epoch as epoch_steps
from recipe.errors import ConfigError
from recipe.evaluation import evaluate
from recipe.loss_log import LossLog, MetricsLog
from recipe.optim import check_settings
from recipe.output_bias import init_output_bias
from recipe.reproducibility import resolve_device, seed_everything
from recipe.step import StepSettings, TrainStep, build_step
from recipe.task import Task
from recipe.validation import target_guard


@dataclass
class FitResult:
    """What `fit` returns.

    Attributes:
        model: the trained module (best validation epoch when early stopping restored it).
        history: one record per epoch: epoch, step, train_loss, val_loss, val_loss_se, val_<metric>, ...
        step_losses: the training loss of every optimizer step.
        steps: optimizer steps taken.
        seconds: wall time of the loop, evaluations included.
        setup: the choices made before the loop (device, data path, precision, optimizer kernel, ...).
        log_values: what `on_log` returned at each logged step (None left out): a callback's observations travel
            with the result, so a fit resumed from a checkpoint or replayed by a resumed run hands them back too.
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    setup: dict[str, Any] = field(default_factory=dict)
    log_values: list[Any] = field(default_factory=list)


def fit(
    task: Task,
    epochs: int | None = 5,
    batch_size: int = 64,
    lr: float = 3e-4,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    *,
    max_steps: int | None = None,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str | Callable[[int], float] = "constant",
    warmup_steps: int = 0,
    grad_clip: float | None = None,
    precision: str = "auto",
    compile: bool | str = "auto",
    channels_last: bool | None = None,
    early_stopping: int | None = None,
    stop_below: float | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = None,
    model: nn.Module | None = None,
    init_bias: bool = False,
    augment: bool = False,
    eval_batch_size: int = 1024,
    evaluate_every_epoch: bool = True,
    log: MetricsLog | None = None,
    log_every: int = 10,
    on_log: Callable[[int, nn.Module], Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    num_workers: int | None = None,
    threads: int | str = "auto",
) -> FitResult:
    """Train `task`'s model and evaluate it on the whole validation split after every epoch.

    Args:
        task: the problem (data, model factory, loss).
        epochs: passes over the training split; None to run until `max_steps`.
        batch_size: training batch size.
        lr: peak learning rate.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N" or a torch.device.
        seed: seeds python, numpy, torch and CUDA before the model is built.
        progress: show progress, named after what trains (`recipe.console.bar`): a tqdm bar on a terminal, else a
            line with the step count at most every 10 s.
        max_steps: stop after this many optimizer steps (with `epochs`, whichever comes first).
        optimizer: "adamw" (default), "adam" or "sgd" (with `momentum`).
        weight_decay: decoupled weight decay; off by default.
        schedule: "constant", "cosine" or "linear" decay to zero over the run, after `warmup_steps` of linear warm-up;
            or a callable step -> multiplier of `lr` (the LR range test uses an exponential ramp).
        grad_clip: clip the global gradient norm to this value.
        precision: "auto" (bf16 autocast on CUDA GPUs that support it, else fp32), "fp32" or "bf16".
        compile: `torch.compile` the model: True, False, or "auto" (on CUDA when timing says it repays: fast_paths).
        channels_last: train conv nets in channels_last layout; None: on CUDA for models with Conv2d layers.
        early_stopping: stop after this many epochs without a better validation loss, and restore the best weights.
        stop_below: end training after the first epoch whose mean training loss is at or below this value (the
            overfit stage stops once its one batch is memorised); None trains for the whole budget.
        checkpoint_dir: write `last.pt` (model, optimizer, schedule, RNG and data-order state) after every epoch and
            `best.pt` (weights) at the best validation loss; SIGTERM then writes `last.pt` after the step in progress
            and raises `Terminated` (see `recipe.checkpointer`).
        resume: continue from `checkpoint_dir/last.pt` when it exists, mid-epoch included, ending as an uninterrupted
            run would; when `last.pt` fails its check, from the one it replaced (`last.1.pt`), with a warning.
        checkpoint_every: also write `last.pt` every this many steps (rounded up to a multiple of `log_every`).
        checkpoint_seconds: write `last.pt` at most this often instead of after every epoch (at the first log point
            or epoch end this many seconds after the last write), and when training ends.
        model: train this module instead of a fresh one from the task's factory.
        init_bias: set the final layer's bias to the log class priors / target mean before training.
        augment: pass training batches through the task's augmentation (`Task(augment=...)`).
        log: receives one record per logged step and per epoch (metrics.jsonl). On resume the records logged before
            the checkpoint are sent again first, so a fresh log gets exactly the records of an uninterrupted run.
        log_every: read the losses from the device every this many steps (logging, progress, non-finite check).
        on_log: called as on_log(step, model) at every logged step, in training mode; what it returns (unless None)
            is kept in `FitResult.log_values` and in checkpoints.
        on_epoch: called with each epoch's record (after evaluation); an exception it raises ends training (a
            search's pruner stops a hopeless trial this way).
        num_workers: DataLoader workers for Dataset splits; default: none on machines with 2 cores or fewer.
        threads: intra-op CPU threads while training: a count, or "auto" (timed per model: see `recipe.threads`).

    Raises:
        TaskError: the task is malformed (checked before training).
        NonFiniteError: the training loss became NaN/Inf; names the step, the parameter and the module.
    """
    _check_arguments(optimizer, schedule, precision, batch_size, lr, epochs, max_steps, seed, compile, stop_below)
    rank, world, dev = distributed.setup(resolve_device(device))
    task.validate(dev)
    _check_batch_size(batch_size, len(task.train))
    seed_everything(seed)
    model = (model if model is not None else task.make_model()).to(dev)
    if init_bias:
        init_output_bias(model, task, dev)
    split, data_path = place(task.train, dev)
    generator = torch.Generator().manual_seed(seed)
    guard = target_guard(task, task.train, "train")
    epoch_batches = train_batches(split, batch_size, generator, dev, num_workers, rank, world, guard)
    steps_per_epoch = epoch_steps(len(task.train) // world, batch_size)
    total = min(x for x in (max_steps, None if epochs is None else epochs * steps_per_epoch) if x is not None)
    settings = StepSettings(
        optimizer, lr, weight_decay, momentum, schedule, warmup_steps, grad_clip, precision, compile, channels_last,
        augment,
    )  # fmt: skip
    step = build_step(task, model, dev, settings, batch_size=batch_size, total_steps=total, world=world)
    n_threads, why_threads = threads_module.for_training(threads, task, model, batch_size, seed, dev)
    if rank != 0:  # one process logs, draws progress and writes checkpoints
        log, progress = None, False
    setup = _setup(task, settings, step, dev, data_path, batch_size, total, steps_per_epoch, seed, world, why_threads)
    result = FitResult(model=model, setup=setup)
    bar = console.bar(total, progress, f"fit {task.name}")
    ckpt = Checkpointer(
        Path(checkpoint_dir) if checkpoint_dir is not None and rank == 0 else None, resume=resume,
        every_steps=checkpoint_every, every_seconds=checkpoint_seconds, log_every=log_every,
        early_stopping=early_stopping, train_size=len(task.train), batch_size=batch_size, rank=rank, world=world,
    )  # fmt: skip
    losses = LossLog(result, model, task, lr, log, bar, ckpt.batch_indices)
    start_epoch = ckpt.start(step, generator, result, losses)
    step.start(result.steps, setup)  # after a resume: the automatic compile times steps from here

    t0 = time.perf_counter()
    try:
        with ckpt.sigterm_stops(), threads_module.using(n_threads):
            for epoch in range(start_epoch, math.ceil(total / steps_per_epoch)):
                model.train()
                for batch in ckpt.batches(epoch, epoch_batches):
                    losses.add(step(batch), batch)
                    result.steps += 1
                    step.after_step(result.steps)
                    if result.steps % log_every == 0 or result.steps == total:
                        losses.read()
                        losses.log(epoch)
                        if on_log is not None and (value := on_log(result.steps, model)) is not None:
                            result.log_values.append(value)
                        ckpt.after_log()
                    ckpt.after_step()  # SIGTERM: checkpoint this step boundary, then stop
                    if result.steps >= total:
                        break
                losses.read()  # the epoch's mean training loss needs every step
                record = _end_of_epoch(task, model, result, epoch, dev, eval_batch_size, evaluate_every_epoch, step)
                result.history.append(record)
                losses.log_epoch(record)
                if on_epoch is not None:
                    on_epoch(record)
                low = stop_below is not None and record["train_loss"] <= stop_below
                if ckpt.end_of_epoch(record, out_of_steps=result.steps >= total or low):
                    break
    finally:
        bar.close()
    ckpt.done()
    step.finish(setup)
    result.seconds = time.perf_counter() - t0
    return result


def _check_arguments(
    optimizer: str,
    schedule: str | Callable[[int], float],
    precision: str,
    batch_size: int,
    lr: float,
    epochs: int | None,
    max_steps: int | None,
    seed: int,
    compile: bool | str,
    stop_below: float | None,
) -> None:
    check_settings(optimizer, schedule, precision, batch_size, lr, epochs, max_steps)
    check_seed(seed, high=2**64 - 1)
    if compile not in (True, False, "auto"):
        raise ConfigError(f"compile={compile!r} is not known; use True, False or 'auto'.")
    if stop_below is not None and not (isinstance(stop_below, int | float) and math.isfinite(stop_below)):
        raise ConfigError(f"stop_below must be a finite number or None, got {stop_below!r}.")


def _check_batch_size(batch_size: int, train_size: int) -> None:
    if batch_size > train_size:
        raise ConfigError(
            f"batch_size={batch_size} is larger than the training split ({train_size} samples); "
            f"use batch_size <= {train_size}."
        )


def _setup(
    task: Task,
    s: StepSettings,
    step: TrainStep,
    device: torch.device,
    data_path: str,
    batch_size: int,
    total: int,
    steps_per_epoch: int,
    seed: int,
    world: int,
    threads: str,
) -> dict[str, Any]:
    """The choices made before the loop, for `FitResult.setup` (and manifest.json)."""
    return {
        "device": str(device),
        "data_path": data_path,
        **step.setup,
        "lr": s.lr,
        "batch_size": batch_size,
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "schedule": s.schedule if isinstance(s.schedule, str) else "custom",
        "warmup_steps": s.warmup_steps if not callable(s.schedule) else None,
        "weight_decay": s.weight_decay,
        "grad_clip": s.grad_clip,
        "augment": s.augment and task.augmentation is not None,
        "seed": seed,
        "world_size": world,
        "threads": threads,
    }


def _end_of_epoch(
    task: Task,
    model: nn.Module,
    result: FitResult,
    epoch: int,
    device: torch.device,
    eval_batch_size: int,
    evaluate_now: bool,
    step: TrainStep,
) -> dict[str, Any]:
    steps = result.setup["steps_per_epoch"]
    recent = result.step_losses[-steps:]
    record: dict[str, Any] = {"epoch": epoch, "step": result.steps, "train_loss": sum(recent) / max(1, len(recent))}
    if evaluate_now:
        ev = evaluate(task, model, task.val, device, eval_batch_size, step.autocast)
        record.update(ev.record(task.metric_name))
    return record
