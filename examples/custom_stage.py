"""Digits as dict-shaped samples, and a stage extended with a check of the task's own.

Adds one idea to digits.py: customising the recipe for your data, in its two places.

- The data: a Dataset yielding dicts {"pixels": ..., "label": ...} and a model returning a dict of outputs, read
  through a `Task` subclass that overrides two hooks, `split_batch` (dict batch -> inputs, target) and `forward`
  (model output -> the logits the loss takes). Every stage reads the data only through these hooks.
- The checks: `DigitsInspect(InspectData)` extends `run` with one named check built from a principle,
  `enough_samples_per_class`, a plain function callable without a Recipe.

A YAML config can name only the registered stages (`recipe.STAGES`), so `configs/custom_stage.yaml` runs the
dict-batch task with those; the subclassed stage is used from Python, as `python examples/custom_stage.py` does::

    Recipe(make_task(), stages=[DigitsInspect(), "baseline", "overfit", "complexify", "regularize", "tune"]).run()
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from examples.digits import load_digits_split
from recipe import Check, Context, InspectData, Recipe, Stage, Task
from recipe.check import failed, passed


class DigitsDataset(Dataset):
    """Each sample is a dict: {"pixels": 64 standardised pixels (float32), "label": the digit (int64)}."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray):
        self.pixels = torch.as_tensor(pixels, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.pixels[i], "label": self.labels[i]}


class DictMLP(nn.Module):
    """An MLP that returns a dict of outputs, as many library models do: the logits and the last hidden layer."""

    def __init__(self, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 10))

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.body(pixels)
        return {"logits": self.head(embedding), "embedding": embedding}


class DictDigitsTask(Task):
    """The digits task for dict batches: the two hooks below are all a new data format needs."""

    def split_batch(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["pixels"], batch["label"]

    def forward(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        output = model(inputs)
        # the recipe's own reference models (baseline's linear model) return plain logits
        return output["logits"] if isinstance(output, dict) else output


def make_task(seed: int = 0) -> Task:
    """Digits as a dict Dataset, with the dict-output MLP."""
    x_train, x_val, y_train, y_val = load_digits_split(seed)
    return DictDigitsTask(
        train=DigitsDataset(x_train, y_train),
        val=DigitsDataset(x_val, y_val),
        model=DictMLP,
        loss="cross_entropy",
        num_classes=10,
        name="digits-dict",
        image_shape=(8, 8),
    )


def enough_samples_per_class(targets: torch.Tensor, num_classes: int, minimum: int) -> Check:
    """Catches a class too rare in training to be learned, or to be judged on its share of the validation split.

    Why: recipe step 1 ("class imbalances"). With an 80/20 split, `minimum` training samples leave about
    minimum/4 validation samples of the class; at 100 that is 25, which puts a per-class accuracy of 95% within
    ±4.4 points (one standard error), close enough to compare two models by.
    """
    counts = torch.bincount(targets.long().flatten(), minlength=num_classes)
    rare = [c for c in range(num_classes) if counts[c] < minimum]
    value = {"min": int(counts.min()), "rarest_class": int(counts.argmin())}
    if rare:
        return failed(
            "enough_samples_per_class",
            f"classes {rare} have fewer than {minimum} training samples (the rarest, {value['rarest_class']}, has "
            f"{value['min']}); collect more of them, or merge or drop the class.",
            value,
            f">= {minimum} per class",
        )
    return passed(
        "enough_samples_per_class",
        f"every class has at least {minimum} training samples (the rarest, {value['rarest_class']}, has "
        f"{value['min']}).",
        value,
        f">= {minimum} per class",
    )


class DigitsInspect(InspectData):
    """`inspect`, plus a check only this task knows to ask for. Used as `stages=[DigitsInspect(), ...]`."""

    min_per_class = 100

    def run(self, ctx: Context) -> list[Check]:
        checks = super().run(ctx)
        targets = ctx.task.targets("train")  # read through the task's split_batch, like every other check
        classes = ctx.task.num_classes or int(targets.max()) + 1
        checks.append(ctx.check(enough_samples_per_class, targets, classes, self.min_per_class))
        return checks


if __name__ == "__main__":
    stages: list[str | Stage] = [DigitsInspect(), "baseline", "overfit", "complexify", "regularize", "tune"]
    result = Recipe(make_task(), run_dir="runs/custom_stage", stages=stages).run()
    raise SystemExit(0 if result.ok else 1)
