"""`fit`: the one training loop. Every stage trains through it, and users call it to train the model the recipe chose.

Everything that can be decided before the loop is (data path, precision, optimizer kernels, clipping, schedule);
the hot loop is forward, loss, backward, clip, step. Per-step losses stay on the device and are read once per
`log_every` steps, which is also when non-finite losses are caught.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from recipe import checkpoint, distributed
from recipe.data import Batch, place, train_batches
from recipe.diagnostics.numerics import first_non_finite_module, first_non_finite_parameter
from recipe.errors import ConfigError, NonFiniteError
from recipe.evaluation import evaluate
from recipe.optim import build_optimizer, build_schedule, check_settings, kernel_name
from recipe.reproducibility import resolve_device, seed_everything
from recipe.task import Task

MetricsLog = Callable[[dict[str, Any]], None]


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
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    setup: dict[str, Any] = field(default_factory=dict)


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
    compile: bool = False,
    early_stopping: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    model: nn.Module | None = None,
    init_bias: bool = False,
    augment: bool = False,
    eval_batch_size: int = 1024,
    evaluate_every_epoch: bool = True,
    log: MetricsLog | None = None,
    log_every: int = 10,
    on_log: Callable[[int, nn.Module], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    num_workers: int | None = None,
) -> FitResult:
    """Train `task`'s model and evaluate it on the whole validation split after every epoch.

    Args:
        task: the problem (data, model factory, loss).
        epochs: passes over the training split; None to run until `max_steps`.
        batch_size: training batch size.
        lr: peak learning rate.
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N" or a torch.device.
        seed: seeds python, numpy, torch and CUDA before the model is built.
        progress: show a tqdm bar (only when stderr is a terminal).
        max_steps: stop after this many optimizer steps (with `epochs`, whichever comes first).
        optimizer: "adamw" (default), "adam" or "sgd" (with `momentum`).
        weight_decay: decoupled weight decay; off by default.
        schedule: "constant", "cosine" or "linear" decay to zero over the run, after `warmup_steps` of linear warm-up;
            or a callable step -> multiplier of `lr` (the LR range test uses an exponential ramp).
        grad_clip: clip the global gradient norm to this value.
        precision: "auto" (bf16 autocast on CUDA GPUs that support it, else fp32), "fp32" or "bf16".
        compile: run the model through `torch.compile`.
        early_stopping: stop after this many epochs without a better validation loss, and restore the best weights.
        checkpoint_dir: write `last.pt` (model, optimizer, schedule, RNG and data-order state) after every epoch and
            `best.pt` (weights) at the best validation loss.
        resume: continue from `checkpoint_dir/last.pt` when it exists, mid-epoch included: the epoch's permutation
            is replayed and the batches it had consumed are skipped, so the run ends as an uninterrupted one would.
        checkpoint_every: also write `last.pt` every this many steps (rounded up to a multiple of `log_every`),
            not only at epoch ends.
        model: train this module instead of a fresh one from the task's factory.
        init_bias: set the final layer's bias to the log class priors / target mean before training.
        augment: pass training batches through the task's augmentation (`Task(augment=...)`).
        log: receives one record per logged step and per epoch (the run directory's metrics.jsonl).
        log_every: read the losses from the device every this many steps (logging, progress, non-finite check).
        on_log: called as on_log(step, model) at every logged step, in training mode.
        on_epoch: called with each epoch's record (after evaluation); an exception it raises ends training (a
            search's pruner stops a hopeless trial this way).
        num_workers: DataLoader workers for Dataset splits; default: none on machines with 2 cores or fewer.

    Raises:
        TaskError: the task is malformed (checked before training).
        NonFiniteError: the training loss became NaN/Inf; names the step, the parameter and the module.
    """
    check_settings(optimizer, schedule, precision, batch_size, lr, epochs, max_steps)
    rank, world, dev = distributed.setup(resolve_device(device))
    task.validate(dev)
    if batch_size > len(task.train):
        raise ConfigError(
            f"batch_size={batch_size} is larger than the training split ({len(task.train)} samples); "
            f"use batch_size <= {len(task.train)}."
        )
    seed_everything(seed)
    model = (model if model is not None else task.make_model()).to(dev)
    if init_bias:
        from recipe.diagnostics.init import init_output_bias

        init_output_bias(model, task, dev)

    split, data_path = place(task.train, dev)
    generator = torch.Generator().manual_seed(seed)
    epoch_batches = train_batches(split, batch_size, generator, dev, num_workers, rank, world)
    steps_per_epoch = math.ceil(len(task.train) // world / batch_size)
    total = min(x for x in (max_steps, None if epochs is None else epochs * steps_per_epoch) if x is not None)
    n_epochs = math.ceil(total / steps_per_epoch)

    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda" and torch.cuda.is_bf16_supported())
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(optimizer, params, lr, weight_decay, momentum)
    sched = build_schedule(opt, schedule, warmup_steps, total)
    clip: Callable[[], Any] = (
        (lambda: torch.nn.utils.clip_grad_norm_(params, grad_clip)) if grad_clip else (lambda: None)
    )
    forward_model = cast(nn.Module, torch.compile(model)) if compile else model
    if world > 1:  # gradients averaged across ranks in backward; every rank started from the same seed
        ids = [dev.index] if dev.type == "cuda" else None
        forward_model = torch.nn.parallel.DistributedDataParallel(forward_model, device_ids=ids)
    if rank != 0:  # one process logs and draws progress (and, below, writes checkpoints)
        log, progress = None, False
    setup = {
        "device": str(dev),
        "data_path": data_path,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "optimizer": optimizer,
        "optimizer_kernel": kernel_name(opt),
        "compile": compile,
        "lr": lr,
        "batch_size": batch_size,
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "schedule": schedule if isinstance(schedule, str) else "custom",
        "warmup_steps": warmup_steps if not callable(schedule) else None,
        "weight_decay": weight_decay,
        "grad_clip": grad_clip,
        "augment": augment and task.augmentation is not None,
        "seed": seed,
        "world_size": world,
    }

    def train_step(batch: Batch) -> torch.Tensor:
        with autocast():
            output, target = task.outputs(forward_model, batch, augment)
            loss = task.compute_loss(output, target)
        loss.backward()
        clip()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        return loss.detach()

    result = FitResult(model=model, setup=setup)
    progress_state = {"best_val_loss": math.inf, "stale_epochs": 0}  # what early stopping and best.pt go by
    best_state: dict[str, torch.Tensor] = {}
    start_epoch, skip = 0, 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    every = math.ceil(checkpoint_every / log_every) * log_every if checkpoint_every and ckpt_dir and rank == 0 else 0
    if resume and ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
        start_epoch, skip = checkpoint.restore_training_state(
            ckpt_dir / "last.pt", model, opt, sched, generator, result, progress_state
        )
        if early_stopping and (ckpt_dir / "best.pt").exists():
            best_state = checkpoint.load(ckpt_dir / "best.pt")["model"]
    bar = tqdm(
        total=total,
        initial=result.steps,
        disable=not progress or not sys.stderr.isatty(),
        leave=False,
        desc=f"fit {task.name}",
        unit="step",
        dynamic_ncols=True,
    )
    losses = _LossReader(result, model, task, lr, log, bar)
    t0 = time.perf_counter()
    try:
        for epoch in range(start_epoch, n_epochs):
            model.train()
            epoch_state = generator.get_state()  # draws this epoch's order: a mid-epoch resume replays it
            for i, batch in enumerate(epoch_batches()):
                if i < skip:
                    continue  # consumed before the checkpoint this run resumed from
                losses.add(train_step(batch), batch)
                result.steps += 1
                if result.steps % log_every == 0 or result.steps == total:
                    losses.read()
                    losses.log(epoch)
                    if on_log is not None:
                        on_log(result.steps, model)
                    if every and result.steps % every == 0 and ckpt_dir is not None:
                        checkpoint.save_training_state(
                            ckpt_dir / "last.pt", model, opt, sched, generator, result, epoch, progress_state,
                            position=(i + 1, epoch_state),
                        )  # fmt: skip
                if result.steps >= total:
                    break
            skip = 0
            losses.read()  # the epoch's mean training loss needs every step
            record = _end_of_epoch(task, model, result, epoch, dev, eval_batch_size, evaluate_every_epoch, autocast)
            result.history.append(record)
            if log is not None:
                _log_epoch(log, record, task.metric_name)
            if on_epoch is not None:
                on_epoch(record)
            val_loss = record.get("val_loss")
            if val_loss is not None and val_loss < progress_state["best_val_loss"]:
                progress_state.update(best_val_loss=val_loss, stale_epochs=0)
                best_state = _state_copy(model) if early_stopping else {}
                if ckpt_dir is not None and rank == 0:
                    checkpoint.save_atomic({"model": model.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
            else:
                progress_state["stale_epochs"] += 1
            if ckpt_dir is not None and rank == 0:
                checkpoint.save_training_state(
                    ckpt_dir / "last.pt", model, opt, sched, generator, result, epoch, progress_state
                )
            if early_stopping is not None and progress_state["stale_epochs"] >= early_stopping:
                break
            if result.steps >= total:
                break
    finally:
        bar.close()
    if early_stopping is not None and best_state:
        model.load_state_dict(best_state)
        setup["restored_best_val_loss"] = progress_state["best_val_loss"]
    result.seconds = time.perf_counter() - t0
    return result


# ---- decided once, before the loop --------------------------------------------------------------------------------


# ---- at log points and epoch ends ----------------------------------------------------------------------------------


class _LossReader:
    """Per-step losses stay on the device until read (one host sync), which is also when NaN/Inf is caught."""

    def __init__(self, result: FitResult, model: nn.Module, task: Task, lr: float, log: MetricsLog | None, bar: Any):
        self.result, self.model, self.task, self.lr, self.log_fn, self.bar = result, model, task, lr, log, bar
        self.pending: list[torch.Tensor] = []
        self.window: list[float] = []  # read but not yet logged
        self.batch: Batch = None

    def add(self, loss: torch.Tensor, batch: Batch) -> None:
        self.pending.append(loss)
        self.batch = batch

    def read(self) -> None:
        if not self.pending:
            return
        values = torch.stack(self.pending).float().tolist()
        self.pending.clear()
        first = len(self.result.step_losses)
        self.result.step_losses.extend(values)
        self.window.extend(values)
        self.bar.update(len(values))
        for i, v in enumerate(values):
            if not math.isfinite(v):
                _raise_non_finite(
                    first + i, v, self.model, self.task, self.batch, self.lr, self.result.step_losses[: first + i]
                )

    def log(self, epoch: int) -> None:
        """One metrics record: the mean training loss since the last one."""
        mean = sum(self.window) / len(self.window)
        self.window.clear()
        if self.log_fn is not None:
            self.log_fn({"step": self.result.steps, "epoch": epoch, "split": "train", "metric": "loss", "value": mean})
        self.bar.set_postfix(loss=f"{mean:.4g}", refresh=False)


def _log_epoch(log: MetricsLog, record: dict[str, Any], metric_name: str) -> None:
    """The epoch's records: training-loss mean over the epoch, validation loss and metric."""
    step, epoch = record["step"], record["epoch"]
    log({"step": step, "epoch": epoch, "split": "train", "metric": "epoch_loss", "value": record["train_loss"]})
    for metric in ("loss", metric_name):
        if record.get(f"val_{metric}") is not None:
            log({"step": step, "epoch": epoch, "split": "val", "metric": metric, "value": record[f"val_{metric}"]})


def _raise_non_finite(
    step: int, value: float, model: nn.Module, task: Task, batch: Batch, lr: float, losses: list[float]
) -> None:
    parameter = first_non_finite_parameter(model)
    module = first_non_finite_module(model, task, batch)
    where = "; ".join(
        part
        for part in (
            f"first non-finite parameter: {parameter}" if parameter else "",
            f"first module with non-finite output: {module}" if module else "",
        )
        if part
    )
    raise NonFiniteError(
        f"training loss became {value} at step {step}" + (f" ({where})" if where else "") + ". Likely causes: "
        f"learning rate too high (lr={lr:g}), a log/division/exp of a value that reaches 0 or overflows, or NaN/Inf "
        "in the data. Lower the learning rate, add gradient clipping, or guard the operation.",
        step=step,
        parameter=parameter,
        module=module,
        losses=losses,
    )


def _end_of_epoch(
    task: Task,
    model: nn.Module,
    result: FitResult,
    epoch: int,
    device: torch.device,
    eval_batch_size: int,
    evaluate_now: bool,
    autocast: Callable[[], Any],
) -> dict[str, Any]:
    steps = result.setup["steps_per_epoch"]
    recent = result.step_losses[-steps:]
    record: dict[str, Any] = {"epoch": epoch, "step": result.steps, "train_loss": sum(recent) / max(1, len(recent))}
    if evaluate_now:
        ev = evaluate(task, model, task.val, device, eval_batch_size, autocast)
        record.update(
            {
                "val_loss": ev.loss,
                "val_loss_se": ev.loss_se,
                f"val_{task.metric_name}": ev.metric,
                f"val_{task.metric_name}_se": ev.metric_se,
            }
        )
    return record


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
