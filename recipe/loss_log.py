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
from recipe.errors import NonFiniteError
from recipe.task import Task

if TYPE_CHECKING:
    from recipe.loop import FitResult

MetricsLog = Callable[[dict[str, Any]], None]


class LossLog:
    """Per-step losses of one `fit`, from the device to the progress bar, the NaN check and the metrics rows."""

    def __init__(
        self,
        result: FitResult,
        model: nn.Module,
        task: Task,
        lr: float,
        log: MetricsLog | None,
        bar: Any,
        indices_of: Callable[[int], list[int]] = lambda step: [],
    ):
        self.result, self.model, self.task, self.lr, self.log_fn, self.bar = result, model, task, lr, log, bar
        self.indices_of = indices_of  # step -> the training-split indices of its batch
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
                self.raise_non_finite(first + i, f"training loss became {v}")

    def check_weights(self) -> None:
        """Before a checkpoint: a finite loss can still be followed by an update that made the weights NaN/Inf."""
        if first_non_finite_parameter(self.model) is not None:
            self.raise_non_finite(len(self.result.step_losses) - 1, "the weights became non-finite")

    def raise_non_finite(self, step: int, what: str) -> None:
        indices = self.indices_of(step)
        device = next(self.model.parameters()).device
        batch = self.task.batch("train", indices, device) if indices else self.batch
        _raise_non_finite(step, what, self.model, self.task, batch, self.lr, self.result.step_losses[:step], indices)

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
        shown = {}
        for metric in ("loss", self.task.metric_name, *self.task.metrics):  # the task's extra metrics too
            if record.get(f"val_{metric}") is not None:
                value = record[f"val_{metric}"]
                self._emit({"step": step, "epoch": epoch, "split": "val", "metric": metric, "value": value})
                shown[f"val_{metric}"] = f"{value:.4g}"
        if shown:  # the console: the bar shows the epoch's validation figures until the next training loss
            self.bar.set_postfix(refresh=False, **shown)

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
    step: int,
    what: str,
    model: nn.Module,
    task: Task,
    batch: Batch,
    lr: float,
    losses: list[float],
    indices: list[int],
) -> None:
    parameter = first_non_finite_parameter(model)
    module = first_non_finite_module(model, task, batch)
    bad = _non_finite_samples(task, batch, indices)
    shown = ", ".join(map(str, indices[:8])) + (", ..." if len(indices) > 8 else "")
    where = "; ".join(
        part
        for part in (
            f"first non-finite parameter: {parameter}" if parameter else "",
            f"first module with non-finite output: {module}" if module else "",
            f"non-finite inputs in training samples {bad[:8]}" if bad else "",
            f"the batch held training samples [{shown}]" if indices and not bad else "",
        )
        if part
    )
    causes = (
        "The batch's inputs hold NaN/Inf, so the data, not the rate, is the cause: impute or drop those values "
        "before training (inspect's non_finite lists them), or handle them in forward."
        if bad
        else f"Likely causes: learning rate too high (lr={lr:g}), a log/division/exp of a value that reaches 0 or "
        "overflows, or NaN/Inf in the data. Lower the learning rate, add gradient clipping, or guard the operation."
    )
    raise NonFiniteError(
        f"{what} at step {step}" + (f" ({where})" if where else "") + f". {causes}",
        step=step,
        parameter=parameter,
        module=module,
        losses=losses,
        indices=indices,
    )


def _non_finite_samples(task: Task, batch: Batch, indices: list[int]) -> list[int]:
    """Which of the batch's samples (by training-split index) hold NaN/Inf among their float inputs."""
    if not indices:
        return []
    inputs, _ = task.split_batch(batch)
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or len(inputs) != len(indices):
        return []
    finite = torch.isfinite(inputs.reshape(len(inputs), -1)).all(1).tolist()
    return [i for i, ok in zip(indices, finite, strict=True) if not ok]


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

    modules = [(n, m) for n, m in model.named_modules() if n and not isinstance(m, torch.jit.ScriptModule)]
    handles = [m.register_forward_hook(hook(n)) for n, m in modules]  # TorchScript modules take no hooks
    try:
        with torch.no_grad():
            task.outputs(model, batch)
    except Exception:  # replaying is best effort: the error being reported is the non-finite loss
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None
