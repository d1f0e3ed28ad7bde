"""What `fit` does with its losses: keep them on the device until a log point, read them there (one host sync, and
the NaN/Inf check), and write the metrics rows.

The rows written are also kept, and saved in every training checkpoint with the losses read but not yet logged: a
resumed `fit` sends the rows logged before its checkpoint again, so a log opened fresh for the resumed run ends up
with exactly the rows an uninterrupted run writes, none lost and none twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recipe.data import Batch
from recipe.diagnostics.numerics import first_non_finite_module, first_non_finite_parameter
from recipe.errors import NonFiniteError
from recipe.task import Task

if TYPE_CHECKING:
    from recipe.fit import FitResult

MetricsLog = Callable[[dict[str, Any]], None]


class LossLog:
    """Per-step losses of one `fit`, from the device to the progress bar, the NaN check and the metrics rows."""

    def __init__(self, result: FitResult, model: nn.Module, task: Task, lr: float, log: MetricsLog | None, bar: Any):
        self.result, self.model, self.task, self.lr, self.log_fn, self.bar = result, model, task, lr, log, bar
        self.pending: list[torch.Tensor] = []
        self.window: list[float] = []  # read but not yet logged
        self.rows: list[dict[str, Any]] = []  # every row written, for checkpoints
        self.batch: Batch = None

    def add(self, loss: torch.Tensor, batch: Batch) -> None:
        self.pending.append(loss)
        self.batch = batch

    def read(self) -> None:
        """Bring the pending losses to the host (one sync); a non-finite one raises `NonFiniteError`."""
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
        self._emit({"step": self.result.steps, "epoch": epoch, "split": "train", "metric": "loss", "value": mean})
        self.bar.set_postfix(loss=f"{mean:.4g}", refresh=False)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """The epoch's records: training-loss mean over the epoch, validation loss and metric."""
        step, epoch = record["step"], record["epoch"]
        self._emit(
            {"step": step, "epoch": epoch, "split": "train", "metric": "epoch_loss", "value": record["train_loss"]}
        )
        for metric in ("loss", self.task.metric_name):
            if record.get(f"val_{metric}") is not None:
                value = record[f"val_{metric}"]
                self._emit({"step": step, "epoch": epoch, "split": "val", "metric": metric, "value": value})

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the log (call after `read`: nothing may be pending)."""
        return {"rows": list(self.rows), "window": list(self.window)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `state()`, sending its rows to the log again."""
        self.window = list(state.get("window", []))
        self.bar.update(self.result.steps)
        for row in state.get("rows", []):
            self._emit(row)

    def _emit(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.log_fn is not None:
            self.log_fn(row)


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
