"""Knowledge distillation: a student trained on an ensemble's softened predictions as well as the hard labels.

    "Model ensembles are a pretty much guaranteed way to gain 2% of accuracy on anything. If you can't afford the
    computation at test time look into distilling your ensemble into a network using dark knowledge."
    — Karpathy, A Recipe for Training Neural Networks, step 6.

Why: Hinton, Vinyals & Dean 2015: the teacher's probabilities at a temperature T > 1 carry how it ranks the wrong
classes; the student minimises T² KL(teacher_T || student_T) (the T² keeps its gradients on the scale of the hard
loss) plus the hard-label cross-entropy. The student trains through `fit` like every other model: its task is the
user's task whose targets also carry the teacher's probabilities (`SoftTargetLoss` reads them).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from recipe.data import DatasetSplit, TensorSplit
from recipe.evaluation import Evaluation, evaluate
from recipe.task import Task

HARD = 2.0  # the hard label rides in a target row as +2 on its class: soft probabilities never reach it


class SoftTargetLoss:
    """alpha T² KL(teacher_T || student_T) + (1 - alpha) cross-entropy, for targets from `with_soft_targets`: each
    row holds the teacher's probabilities at temperature T plus `HARD` on the true class."""

    def __init__(self, temperature: float, alpha: float):
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        hard = target.argmax(1)
        soft = target - HARD * F.one_hot(hard, target.shape[1]).to(target.dtype)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(output.float() / t, 1), soft.float(), reduction="batchmean") * t * t
        return self.alpha * kl + (1 - self.alpha) * F.cross_entropy(output.float(), hard)


class _Relabelled(Dataset[Any]):
    """A Dataset of (input, target) items with the targets replaced by rows of `targets`."""

    def __init__(self, dataset: Any, targets: torch.Tensor):
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return self.dataset[i][0], self.targets[i]


def distillable(task: Task) -> str | None:
    """Why this task's models cannot be distilled here (None when they can): soft targets need one class axis."""
    if task.kind != "classification" or task.loss != "cross_entropy":
        loss = task.loss if isinstance(task.loss, str) else "a custom loss"
        return f"distillation needs a classification task with cross-entropy (this one: {task.kind}, {loss})"
    if type(task).split_batch is not Task.split_batch:
        return "the task splits its batches itself (a custom split_batch): its targets cannot carry soft targets"
    if task.targets("val").dim() != 1:
        return "one class per position: distillation here handles one class per sample"
    return None


def teacher_probabilities(
    task: Task, members: list[nn.Module], split: str, device: torch.device, temperature: float
) -> torch.Tensor:
    """The members' mean probabilities at `temperature` on every sample of `split`, in eval mode, on the CPU."""
    data = task.train if split == "train" else task.val
    parts = []
    with torch.no_grad():
        for start in range(0, len(data), 1024):
            batch = task.batch(split, list(range(start, min(start + 1024, len(data)))), device)
            outputs = [task.outputs(m.eval(), batch)[0].float() for m in members]
            parts.append(torch.stack([(o / temperature).softmax(1) for o in outputs]).mean(0).cpu())
    return torch.cat(parts)


def with_soft_targets(
    task: Task, members: list[nn.Module], device: torch.device, temperature: float = 2.0, alpha: float = 0.5
) -> Task:
    """The task whose targets also carry the ensemble `members`' probabilities, trained with `SoftTargetLoss` (its
    `kind` is "regression" only so that float targets pass validation; evaluate the student on `task` itself)."""
    splits: dict[str, Any] = {}
    for split in ("train", "val"):
        soft = teacher_probabilities(task, members, split, device, temperature)
        labels = task.targets(split)
        rows = soft + HARD * F.one_hot(labels.long(), soft.shape[1]).float()
        data = task.train if split == "train" else task.val
        if isinstance(data, TensorSplit):
            splits[split] = (data.x, rows.to(data.y.device))
        else:
            assert isinstance(data, DatasetSplit)
            splits[split] = _Relabelled(data.dataset, rows)
    return task.replace(**splits, loss=SoftTargetLoss(temperature, alpha), kind="regression")


def compare(
    task: Task, student: nn.Module, single: nn.Module, device: torch.device, seed_losses: list[float] | None = None
) -> tuple[float, float, Evaluation, Evaluation]:
    """(gain, noise, student's evaluation, single model's evaluation) on `task`'s validation split. The gain is the
    single model's validation loss (the mean of its seed re-runs when given) minus the student's; the noise combines
    the paired per-sample standard error of the two models' losses with the seed spread of one draw and of the mean.
    """
    mine, theirs = evaluate(task, student, task.val, device), evaluate(task, single, task.val, device)
    reference = sum(seed_losses) / len(seed_losses) if seed_losses else theirs.loss
    paired = 0.0
    if mine.per_sample_loss is not None and theirs.per_sample_loss is not None and mine.n > 1:
        paired = float((theirs.per_sample_loss - mine.per_sample_loss).std()) / math.sqrt(mine.n)
    spread = 0.0
    if seed_losses and len(seed_losses) > 1:
        spread = float(torch.tensor(seed_losses).std()) * math.sqrt(1 + 1 / len(seed_losses))
    return reference - mine.loss, math.hypot(paired, spread), mine, theirs
