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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm.auto import tqdm

from recipe import checkpoint, distributed, fast_paths, stopping
from recipe import threads as threads_module
from recipe.config import check_seed
from recipe.data import Batch, batch_size_of, place, train_batches
from recipe.distributed import shard
from recipe.errors import ConfigError
from recipe.evaluation import evaluate
from recipe.loss_log import LossLog, MetricsLog
from recipe.optim import build_optimizer, build_schedule, check_settings, kernel_name
from recipe.reproducibility import resolve_device, seed_everything
from recipe.rundir import TEMPORARY
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
        progress: show a tqdm bar (only when stderr is a terminal).
        max_steps: stop after this many optimizer steps (with `epochs`, whichever comes first).
        optimizer: "adamw" (default), "adam" or "sgd" (with `momentum`).
        weight_decay: decoupled weight decay; off by default.
        schedule: "constant", "cosine" or "linear" decay to zero over the run, after `warmup_steps` of linear warm-up;
            or a callable step -> multiplier of `lr` (the LR range test uses an exponential ramp).
        grad_clip: clip the global gradient norm to this value.
        precision: "auto" (bf16 autocast on CUDA GPUs that support it, else fp32), "fp32" or "bf16".
        compile: run the model through `torch.compile`: True, False, or "auto" (CUDA only: time the first eager
            steps and compile when the rest of the run repays the compile time; see `recipe.fast_paths`).
        channels_last: train conv nets in channels_last layout; None: on CUDA for models with Conv2d layers.
        early_stopping: stop after this many epochs without a better validation loss, and restore the best weights.
        checkpoint_dir: write `last.pt` (model, optimizer, schedule, RNG and data-order state) after every epoch and
            `best.pt` (weights) at the best validation loss.
        resume: continue from `checkpoint_dir/last.pt` when it exists, mid-epoch included: the epoch's permutation
            is replayed and the batches it had consumed are skipped, so the run ends as an uninterrupted one would.
            When `last.pt` fails its check, the one it replaced (`last.1.pt`) is used, with a warning.
        checkpoint_every: also write `last.pt` every this many steps (rounded up to a multiple of `log_every`),
            not only at epoch ends.
        checkpoint_seconds: write `last.pt` at most this often instead of after every epoch: at the first log point
            or epoch end this many seconds after the last write, and when training ends.
            With a checkpoint directory, SIGTERM also writes `last.pt` (after the step in progress) and raises
            `Terminated`.
        model: train this module instead of a fresh one from the task's factory.
        init_bias: set the final layer's bias to the log class priors / target mean before training.
        augment: pass training batches through the task's augmentation (`Task(augment=...)`).
        log: receives one record per logged step and per epoch (the run directory's metrics.jsonl). On resume the
            records logged before the checkpoint are sent again first, so a fresh log gets exactly the records of
            an uninterrupted run.
        log_every: read the losses from the device every this many steps (logging, progress, non-finite check).
        on_log: called as on_log(step, model) at every logged step, in training mode; what it returns (unless None)
            is kept in `FitResult.log_values` and in checkpoints.
        on_epoch: called with each epoch's record (after evaluation); an exception it raises ends training (a
            search's pruner stops a hopeless trial this way).
        num_workers: DataLoader workers for Dataset splits; default: none on machines with 2 cores or fewer.
        threads: intra-op CPU threads while training: "auto" times one step on one thread and on every core and
            takes the faster (see `recipe.threads`; your OMP_NUM_THREADS or torch.set_num_threads wins), or a count.

    Raises:
        TaskError: the task is malformed (checked before training).
        NonFiniteError: the training loss became NaN/Inf; names the step, the parameter and the module.
    """
    check_settings(optimizer, schedule, precision, batch_size, lr, epochs, max_steps)
    check_seed(seed, high=2**64 - 1)
    if compile not in (True, False, "auto"):
        raise ConfigError(f"compile={compile!r} is not known; use True, False or 'auto'.")
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
    guard = target_guard(task, task.train, "train")
    epoch_batches = train_batches(split, batch_size, generator, dev, num_workers, rank, world, guard)
    steps_per_epoch = math.ceil(len(task.train) // world / batch_size)
    total = min(x for x in (max_steps, None if epochs is None else epochs * steps_per_epoch) if x is not None)
    n_epochs = math.ceil(total / steps_per_epoch)

    bf16 = fast_paths.bf16_autocast(precision, dev)
    autocast = fast_paths.autocast_context(bf16, dev)
    nhwc = fast_paths.wants_channels_last(model, dev, channels_last)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    fast_paths.allow_tf32(dev)
    n_threads, threads_reason = threads_module.for_training(threads, task, model, batch_size, seed, dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(optimizer, params, lr, weight_decay, momentum)
    sched = build_schedule(opt, schedule, warmup_steps, total)
    clip: Callable[[], Any] = (
        (lambda: torch.nn.utils.clip_grad_norm_(params, grad_clip)) if grad_clip else (lambda: None)
    )
    forward_model = cast(nn.Module, torch.compile(model)) if compile is True else model
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
        "compile": compile is True,
        "channels_last": nhwc,
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
        "threads": threads_reason,
    }

    def train_step(batch: Batch) -> torch.Tensor:
        if nhwc:
            batch = fast_paths.to_channels_last(batch)
        module = forward_model
        if module is not model and world == 1 and batch_size_of(batch) != batch_size:
            module = model  # an epoch's last, shorter batch runs eagerly: the compiled graph keeps one shape
        with autocast():
            output, target = task.outputs(module, batch, augment)
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
    bar = tqdm(
        total=total,
        disable=not progress or not sys.stderr.isatty(),
        leave=False,
        desc=f"fit {task.name}",
        unit="step",
        dynamic_ncols=True,
    )
    epoch_order = [generator.get_state()]  # the generator's state when the current epoch drew its order

    def batch_indices(step: int) -> list[int]:
        """The training-split indices of step `step`'s batch (it lies in the current epoch: losses are read before
        every epoch ends)."""
        order = shard(
            torch.randperm(len(task.train), generator=torch.Generator().set_state(epoch_order[0])), rank, world
        )
        i = step % steps_per_epoch
        return order[i * batch_size : (i + 1) * batch_size].tolist()

    losses = LossLog(result, model, task, lr, log, bar, batch_indices)
    start_epoch, skip = 0, 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None and rank == 0 else None
    every = math.ceil(checkpoint_every / log_every) * log_every if checkpoint_every and ckpt_dir else 0
    if resume and ckpt_dir is not None:
        for partial in ckpt_dir.glob(".*.tmp"):  # a write killed before its rename: never a checkpoint
            if TEMPORARY.match(partial.name) and partial.is_file() and not partial.is_symlink():
                partial.unlink(missing_ok=True)  # only recipe's own temporaries, in a folder that may be the user's
    if resume and ckpt_dir is not None and any(ckpt_dir.glob("last*.pt")):
        (start_epoch, skip, extra), used = checkpoint.restore_newest(
            ckpt_dir / "last.pt", model, opt, sched, generator, result, progress_state
        )
        setup["resumed_from"] = used
        if used != "last.pt":
            warnings.warn(f"fit resumed from {used}", stacklevel=2)
        losses.restore(extra)  # re-sends the rows logged before the checkpoint: a fresh log ends up exact
        if early_stopping and (ckpt_dir / "best.pt").exists():
            best_state = checkpoint.load_keys(ckpt_dir / "best.pt", ("model",))["model"]
    auto = None
    if compile == "auto":
        why_not = fast_paths.compile_unavailable(dev, world)
        setup["compile"] = f"auto: off ({why_not})" if why_not else "auto"
        auto = None if why_not else fast_paths.AutoCompile(model, dev, result.steps, total)

    best_pending = [False]  # an improvement best.pt does not hold yet (with `checkpoint_seconds`)

    def save_last(epoch: int, position: tuple[int, torch.Tensor] | None = None) -> None:
        if ckpt_dir is not None:
            losses.check_weights()  # never a checkpoint of NaN/Inf weights
            if best_pending[0] and best_state:  # early stopping resumes from these weights: write them first
                checkpoint.save_atomic(
                    {"model": best_state, "epoch": progress_state["best_epoch"]}, ckpt_dir / "best.pt"
                )
            best_pending[0] = False
            checkpoint.save_training_state(
                ckpt_dir / "last.pt", model, opt, sched, generator, result, epoch, progress_state, position,
                losses.state(),
            )  # fmt: skip
        last_saved[0] = time.perf_counter()

    t0 = time.perf_counter()
    last_saved = [t0]
    try:
        with (
            stopping.handling_sigterm() if ckpt_dir is not None else contextlib.nullcontext(),
            stopping.fit_running(),
            threads_module.using(n_threads),
        ):
            for epoch in range(start_epoch, n_epochs):
                model.train()
                epoch_state = generator.get_state()  # draws this epoch's order: a mid-epoch resume replays it
                epoch_order[0] = epoch_state
                for i, batch in enumerate(epoch_batches()):
                    if i < skip:
                        continue  # consumed before the checkpoint this run resumed from
                    try:
                        losses.add(train_step(batch), batch)
                    except Exception as exc:
                        if auto is None or forward_model is model:
                            raise
                        forward_model = model  # the automatic compile failed: train on eagerly, and say so
                        auto.reason = f"off: torch.compile failed ({type(exc).__name__}: {exc})"[:300]
                        losses.add(train_step(batch), batch)
                    result.steps += 1
                    if auto is not None:
                        forward_model = auto.after_step(result.steps, forward_model)
                    if result.steps % log_every == 0 or result.steps == total:
                        losses.read()
                        losses.log(epoch)
                        if on_log is not None and (value := on_log(result.steps, model)) is not None:
                            result.log_values.append(value)
                        due = (
                            checkpoint_seconds is not None and time.perf_counter() - last_saved[0] >= checkpoint_seconds
                        )
                        if (every and result.steps % every == 0) or due:
                            save_last(epoch, (i + 1, epoch_state))
                    if stopping.requested():  # SIGTERM: checkpoint this step boundary, then stop
                        losses.read()
                        save_last(epoch, (i + 1, epoch_state))
                        stopping.stop()
                    if result.steps >= total:
                        break
                skip = 0
                losses.read()  # the epoch's mean training loss needs every step
                record = _end_of_epoch(task, model, result, epoch, dev, eval_batch_size, evaluate_every_epoch, autocast)
                result.history.append(record)
                losses.log_epoch(record)
                if on_epoch is not None:
                    on_epoch(record)
                val_loss = record.get("val_loss")
                if val_loss is not None and val_loss < progress_state["best_val_loss"]:
                    progress_state.update(best_val_loss=val_loss, stale_epochs=0, best_epoch=epoch)
                    best_state = _state_copy(model) if early_stopping else {}
                    if ckpt_dir is not None and checkpoint_seconds is None:
                        checkpoint.save_atomic({"model": model.state_dict(), "epoch": epoch}, ckpt_dir / "best.pt")
                    best_pending[0] = checkpoint_seconds is not None
                else:
                    progress_state["stale_epochs"] += 1
                stale = early_stopping is not None and progress_state["stale_epochs"] >= early_stopping
                ending = stale or result.steps >= total or stopping.requested()
                if checkpoint_seconds is None or ending or time.perf_counter() - last_saved[0] >= checkpoint_seconds:
                    save_last(epoch)
                if stopping.requested():
                    stopping.stop()
                if ending:
                    break
    finally:
        bar.close()
    if early_stopping is not None and best_state:
        model.load_state_dict(best_state)
        setup["restored_best_val_loss"] = progress_state["best_val_loss"]
    result.seconds = time.perf_counter() - t0
    if auto is not None:
        setup["compile"] = f"auto: {auto.reason}"
    return result


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
