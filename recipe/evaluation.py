"""Evaluation over a whole split, in eval mode: mean loss and metric, each with its standard error, and the task's
extra metrics.

With class weights the split's loss is the weighted mean the batch loss takes, sum(w_y * nll) / sum(w_y), over the
whole split; its per-sample losses are scaled so that their mean is that loss.

Why: recipe step 2, "add significant digits to your eval": the whole validation split, never a sample of it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recipe.data import Split, batch_size_of, eval_batches
from recipe.task import IGNORE_INDEX, Task
from recipe.validation import target_guard


@dataclass
class Evaluation:
    """Loss and metric over a whole split, each with its standard error (None when not computable), and the task's
    extra metrics by name."""

    loss: float
    loss_se: float | None
    metric: float
    metric_se: float | None
    n: int
    per_sample_loss: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def record(self, metric_name: str, prefix: str = "val") -> dict[str, Any]:
        """The figures as one metrics.jsonl record: {prefix}_loss, {prefix}_loss_se, {prefix}_<metric>, ..._se, and
        {prefix}_<name> for each extra metric."""
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_loss_se": self.loss_se,
            f"{prefix}_{metric_name}": self.metric,
            f"{prefix}_{metric_name}_se": self.metric_se,
            **{f"{prefix}_{name}": value for name, value in self.metrics.items()},
        }


def evaluate(
    task: Task,
    model: nn.Module,
    split: Split,
    device: torch.device,
    batch_size: int = 1024,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> Evaluation:
    """Loss and metric over the whole split, in eval mode, with standard errors over samples (for a loss with no
    per-sample form, over runs of CHUNK samples: at least four of them, else none); each of the task's
    extra metrics over the split's outputs and targets, concatenated on the CPU."""
    was_training = model.training
    model.eval()
    losses: list[torch.Tensor] = []
    weights: list[torch.Tensor] = []
    metrics: list[torch.Tensor] = []
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # outputs and targets, only when extra metrics need them
    batch_losses: list[tuple[float, int]] = []
    chunk_losses: list[float] = []  # a loss without a per-sample form, on runs of CHUNK samples: its noise
    with without_autograd(model), autocast():
        guard = target_guard(task, split, "val" if split is task.val else "train" if split is task.train else "split")
        for batch in eval_batches(split, batch_size, device, guard):
            output, target = task.outputs(model, batch)
            output = output.float()
            per_sample = task.loss_per_sample(output, target)
            if per_sample is None:
                batch_losses.append((float(task.compute_loss(output, target)), batch_size_of(target)))
                chunk_losses += _chunk_losses(task, output, target)
            else:
                losses.append(per_sample.float())
                if (sample_weights := task.sample_weights(target)) is not None:
                    weights.append(sample_weights.float())
            metrics.append(task.metric_per_sample(output, target).float())
            if task.metrics:
                kept.append((output.cpu(), target.cpu()))
    model.train(was_training)
    metric = torch.cat(metrics)
    n = len(metric)
    metric_se = float(metric.std() / math.sqrt(n)) if n > 1 else None
    extra = _extra_metrics(task, kept)
    if losses:
        loss = torch.cat(losses)
        if weights and float(torch.cat(weights).sum()) > 0:
            loss = loss / torch.cat(weights).mean()  # mean(loss) = sum(w * nll) / sum(w), the batch loss's form
        return Evaluation(
            float(loss.mean()),
            float(loss.std() / math.sqrt(n)) if n > 1 else None,
            float(metric.mean()),
            metric_se,
            n,
            loss.cpu(),
            extra,
        )
    total = sum(b for _, b in batch_losses)
    chunks = torch.tensor(chunk_losses, dtype=torch.float64)
    loss_se = float(chunks.std() / math.sqrt(len(chunks))) if len(chunks) >= 4 else None
    return Evaluation(
        sum(v * b for v, b in batch_losses) / total, loss_se, float(metric.mean()), metric_se, n, None, extra
    )


CHUNK = 32  # samples per run whose loss stands in for per-sample losses in a loss's noise


def _chunk_losses(task: Task, output: torch.Tensor, target: Any) -> list[float]:
    """The loss on each whole run of CHUNK samples of a batch: for a loss with no per-sample form (a callable), the
    spread of these is the noise of its mean (the batch-means estimate). Empty when the target cannot be sliced or
    the loss refuses a run."""
    try:
        values = [
            float(task.compute_loss(output[i : i + CHUNK], target[i : i + CHUNK]))
            for i in range(0, len(output) - CHUNK + 1, CHUNK)
        ]
    except Exception:  # a target of another structure, a loss that wants the whole batch
        return []
    return [v for v in values if math.isfinite(v)]


def without_autograd(model: nn.Module) -> Any:
    """`torch.inference_mode()`, or `torch.no_grad()` for a TorchScript model: its graph executor can replay a graph
    it profiled with gradients on and record it for backward, which inference tensors refuse ("Inference tensors
    cannot be saved for backward")."""
    return torch.no_grad() if isinstance(model, torch.jit.ScriptModule) else torch.inference_mode()


def _extra_metrics(task: Task, kept: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Each of `task.metrics` over the split's concatenated outputs and targets."""
    if not kept:
        return {}
    outputs, targets = torch.cat([o for o, _ in kept]), torch.cat([t for _, t in kept])
    return {name: float(fn(outputs, targets)) for name, fn in task.metrics.items()}


def constant_loss(task: Task, target: torch.Tensor, output: torch.Tensor | None = None) -> float:
    """Loss of the best constant prediction for these targets: the floor a model that ignores its input reaches.

    Cross-entropy: entropy of the label frequencies (with class weights, of the frequencies times the weights: the
    constant minimising the weighted mean); MSE: variance; L1: mean absolute deviation from the median; BCE: entropy of
    the positive rate. For a callable loss, the loss minimised over one output shared by every sample, from the mean
    of `output` (an output of the batch, for its shape); nan without one.
    """
    t = target.detach()
    if task.loss == "cross_entropy":
        valid = t[t != IGNORE_INDEX]  # positions cross-entropy ignores (padding) are not part of the floor
        p = torch.bincount(valid.long().cpu(), minlength=task.num_classes or 0).float()
        if task.class_weights is not None:
            p = p * task.class_weights[: len(p)]
        p = p[p > 0] / p.sum()
        return float(-(p * p.log()).sum())
    if task.loss == "mse":
        return float(t.float().var(0, unbiased=False).mean())
    if task.loss == "l1":
        return float((t.float() - t.float().median(0).values).abs().mean())
    if task.loss == "bce_with_logits":
        p = t.float().mean(0).clamp(1e-6, 1 - 1e-6)
        return float(-(p * p.log() + (1 - p) * (1 - p).log()).mean())
    return _minimised(task.compute_loss, output, t, constant=True)


def loss_floor(task: Task, output: torch.Tensor | None, target: torch.Tensor) -> float:
    """The lowest loss any output reaches on these targets: what memorising them means under this loss.

    Zero for the built-in losses on hard targets; for BCE on soft targets, their mean binary entropy. For a callable
    loss, found by minimising it over the output tensor itself (no model), from `output`: a loss with label
    smoothing, soft targets or a penalty term has a floor above zero that no model can go below. nan when there is
    no output to start from or the minimisation does not settle (a loss without a lower bound).
    """
    if isinstance(task.loss, str):
        if task.loss != "bce_with_logits":
            return 0.0
        p = target.detach().float().clamp(0, 1)
        return float(-(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)).mean())
    return _minimised(task.compute_loss, output, target.detach(), constant=False)


def _minimised(
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], start: Any, target: torch.Tensor, constant: bool
) -> float:
    """min of loss(output, target) over every value of the output (or, `constant`, over one sample's output shared
    by the whole batch), by L-BFGS from `start`. nan when there is no float output to start from, the loss fails or
    is not finite on the way (one defined on probabilities only), it has not settled after `MAX_ITER` steps, or the
    output is larger than `MAX_ELEMENTS` (a language model's vocabulary over a long context: the search's memory)."""
    if not (isinstance(start, torch.Tensor) and start.is_floating_point() and start.dim() > 0 and len(start)):
        return math.nan
    if start.numel() > MAX_ELEMENTS:
        return math.nan
    x = (start.detach().mean(0, keepdim=True) if constant else start.detach()).float().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], max_iter=MAX_ITER, history_size=10, line_search_fn="strong_wolfe")

    def value() -> torch.Tensor:
        return loss(x.expand_as(start) if constant else x, target)

    def closure() -> torch.Tensor:  # the loss in units of its starting value: L-BFGS's tolerances are absolute
        opt.zero_grad()
        out = value() / scale
        out.backward()
        return out

    try:
        with torch.no_grad():
            first = abs(float(value()))
        scale = first if math.isfinite(first) and first > 0 else 1.0
        with torch.enable_grad():
            opt.step(closure)
        with torch.no_grad():
            lowest = float(value())
    except Exception:  # any user loss: one that rejects outputs off its domain has no floor to find
        return math.nan
    settled = opt.state[x].get("n_iter", MAX_ITER) < MAX_ITER
    return lowest if settled and math.isfinite(lowest) else math.nan


MAX_ITER = 500  # L-BFGS steps `_minimised` allows before it calls a loss unbounded below
MAX_ELEMENTS = 2**20  # the largest output `_minimised` searches over (16 x 128 positions x 512 classes)
