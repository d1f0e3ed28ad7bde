"""`Checkpointer`: everything a `fit` keeps so that it can be stopped and resumed as if it never was.

It owns where checkpoints go (`last.pt` with the training state, `best.pt` with the best weights), how often they are
written (every epoch, every `every_steps` steps, or at most every `every_seconds`), what a resume restores, each
epoch's data order (the generator's state as the epoch drew its permutation) and the batches of it a resume skips,
the best validation loss that early stopping and `best.pt` go by, and the safe stop on SIGTERM (checkpoint the step
boundary, then raise `Terminated`). `fit` calls it at a few named points:

    start(...)          restore from `last.pt` (or `last.1.pt`) when resuming; returns the epoch to start at
    batches(epoch, f)   one epoch's batches from `f()`, those consumed before the checkpoint skipped
    after_log()         a log point: write `last.pt` when one is due
    after_step()        SIGTERM arrived: write `last.pt` and stop
    end_of_epoch(...)   track the best validation loss, write what is due; True when training should stop
    done()              put the best weights back (early stopping)

The files themselves are written and verified by `recipe.checkpoint` (atomic, with a sha256 record).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recipe import checkpoint, stopping
from recipe.data import Batch, batch_bounds
from recipe.distributed import shard
from recipe.loss_log import LossLog
from recipe.rundir import TEMPORARY
from recipe.step import TrainStep

if TYPE_CHECKING:
    from recipe.loop import FitResult


class Checkpointer:
    """Checkpoint and resume state of one `fit`; with `folder` None (no checkpoint directory, or a rank other than
    0) it writes nothing but still keeps the epoch order, the best validation loss and the SIGTERM stop.

    Args:
        folder: the checkpoint directory, or None.
        resume: continue from `folder/last.pt` when it exists.
        every_steps: also write `last.pt` every this many steps (rounded up to a multiple of `log_every`).
        every_seconds: write `last.pt` at most this often instead of after every epoch (and when training ends).
        log_every: the loop's log interval (mid-epoch checkpoints are written at log points).
        early_stopping: epochs without a better validation loss before training stops; None: never.
        train_size, batch_size, rank, world: how an epoch's order maps a step to its batch's sample indices.
    """

    def __init__(
        self,
        folder: Path | None,
        *,
        resume: bool,
        every_steps: int | None,
        every_seconds: float | None,
        log_every: int,
        early_stopping: int | None,
        train_size: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.folder, self.resume, self.every_seconds, self.early_stopping = (
            folder,
            resume,
            every_seconds,
            early_stopping,
        )
        self.every_steps = math.ceil(every_steps / log_every) * log_every if every_steps and folder else 0
        self.train_size, self.rank, self.world = train_size, rank, world
        self.bounds = batch_bounds(train_size // world, batch_size)
        self.steps_per_epoch = len(self.bounds)
        self.progress: dict[str, Any] = {"best_val_loss": math.inf, "stale_epochs": 0}  # saved in every last.pt
        self.best_state: dict[str, torch.Tensor] = {}  # the best weights, kept with early stopping
        self.best_unsaved = False  # an improvement best.pt does not hold yet (with `every_seconds`)
        self.epoch, self.batches_done, self.skip = 0, 0, 0
        self.last_saved = time.perf_counter()

    # ---- start: restore -----------------------------------------------------------------------------------------

    def start(self, step: TrainStep, generator: torch.Generator, result: FitResult, losses: LossLog) -> int:
        """Hold on to what checkpoints save; when resuming, restore it from the newest intact `last.pt` (a warning
        when it had to fall back on `last.1.pt`). Returns the epoch to start at."""
        self.model, self.step, self.generator, self.result, self.losses = step.model, step, generator, result, losses
        self.epoch_state = generator.get_state()
        self.last_saved = time.perf_counter()
        folder = self.folder
        if not self.resume or folder is None:
            return 0
        for partial in folder.glob(".*.tmp"):  # a write killed before its rename: never a checkpoint
            if TEMPORARY.match(partial.name) and partial.is_file() and not partial.is_symlink():
                partial.unlink(missing_ok=True)  # only recipe's own temporaries, in a folder that may be the user's
        if not any(folder.glob("last*.pt")):
            return 0
        state = (self.model, step.optimizer, step.schedule, generator, result, self.progress)
        (start_epoch, self.skip, log_state), used = checkpoint.restore_newest(folder / "last.pt", *state)
        result.setup["resumed_from"] = used
        if used != "last.pt":
            warnings.warn(f"fit resumed from {used}", stacklevel=3)
        losses.restore(log_state)  # re-sends the rows logged before the checkpoint: a fresh log ends up exact
        if self.early_stopping and (folder / "best.pt").exists():
            self.best_state = checkpoint.load_keys(folder / "best.pt", ("model",))["model"]
        self.last_saved = time.perf_counter()
        return start_epoch

    def sigterm_stops(self) -> contextlib.AbstractContextManager[Any]:
        """While training: SIGTERM (with a checkpoint folder) or a run's pending stop ends at a step boundary."""
        stack = contextlib.ExitStack()
        if self.folder is not None:
            stack.enter_context(stopping.handling_sigterm())
        stack.enter_context(stopping.fit_running())
        return stack

    # ---- the epoch order ----------------------------------------------------------------------------------------

    def batches(self, epoch: int, epoch_batches: Callable[[], Iterator[Batch]]) -> Iterator[Batch]:
        """One epoch's batches, the generator's state recorded as the epoch draws its order (a mid-epoch checkpoint
        replays it); on resume, the batches consumed before the checkpoint are drawn and skipped."""
        self.epoch, self.epoch_state = epoch, self.generator.get_state()
        skip, self.skip = self.skip, 0
        for i, batch in enumerate(epoch_batches()):
            if i >= skip:
                self.batches_done = i + 1
                yield batch

    def batch_indices(self, step: int) -> list[int]:
        """The training-split indices of step `step`'s batch (a step of the current epoch: losses are read before
        every epoch ends)."""
        generator = torch.Generator().set_state(self.epoch_state)
        order = shard(torch.randperm(self.train_size, generator=generator), self.rank, self.world)
        start, end = self.bounds[step % self.steps_per_epoch]
        return order[start:end].tolist()

    # ---- during the epoch ---------------------------------------------------------------------------------------

    def after_log(self) -> None:
        """At a log point: write `last.pt` (mid-epoch) when `every_steps` or `every_seconds` says it is due."""
        steps = self.every_steps and self.result.steps % self.every_steps == 0
        if steps or (self.every_seconds is not None and self._elapsed() >= self.every_seconds):
            self._save_last(mid_epoch=True)

    def after_step(self) -> None:
        """After every step: when SIGTERM arrived, checkpoint this step boundary and raise `Terminated`."""
        if stopping.requested():
            self.losses.read()
            self._save_last(mid_epoch=True)
            stopping.stop()

    # ---- end of epoch and of training ---------------------------------------------------------------------------

    def end_of_epoch(self, record: dict[str, Any], out_of_steps: bool) -> bool:
        """Track the best validation loss (and `best.pt`), write `last.pt` when due; True when training ends here
        (out of steps, early stopping, SIGTERM). SIGTERM raises `Terminated` once the checkpoint is written."""
        val_loss, progress = record.get("val_loss"), self.progress
        if val_loss is not None and val_loss < progress["best_val_loss"]:
            progress.update(best_val_loss=val_loss, stale_epochs=0, best_epoch=self.epoch)
            self.best_state = _state_copy(self.model) if self.early_stopping else {}
            if self.folder is not None and self.every_seconds is None:
                checkpoint.save_atomic({"model": self.model.state_dict(), "epoch": self.epoch}, self.folder / "best.pt")
            self.best_unsaved = self.every_seconds is not None
        else:
            progress["stale_epochs"] += 1
        stale = self.early_stopping is not None and progress["stale_epochs"] >= self.early_stopping
        ending = stale or out_of_steps or stopping.requested()
        if self.every_seconds is None or ending or self._elapsed() >= self.every_seconds:
            self._save_last(mid_epoch=False)
        if stopping.requested():
            stopping.stop()
        return ending

    def done(self) -> None:
        """Training ended: with early stopping, put the best epoch's weights back."""
        if self.early_stopping is not None and self.best_state:
            self.model.load_state_dict(self.best_state)
            self.result.setup["restored_best_val_loss"] = self.progress["best_val_loss"]

    # ---- writing ------------------------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.perf_counter() - self.last_saved

    def _save_last(self, mid_epoch: bool) -> None:
        """`last.pt` with the whole training state; mid-epoch it also records the batches consumed and the epoch's
        order. The best weights go first when `best.pt` lags behind: early stopping resumes from them."""
        if self.folder is not None:
            self.losses.check_weights()  # never a checkpoint of NaN/Inf weights
            if self.best_unsaved and self.best_state:
                best = {"model": self.best_state, "epoch": self.progress["best_epoch"]}
                checkpoint.save_atomic(best, self.folder / "best.pt")
            self.best_unsaved = False
            checkpoint.save_training_state(
                self.folder / "last.pt", self.model, self.step.optimizer, self.step.schedule, self.generator,
                self.result, self.epoch, self.progress, (self.batches_done, self.epoch_state) if mid_epoch else None,
                self.losses.state(),
            )  # fmt: skip
        self.last_saved = time.perf_counter()


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
