"""eval_data_deterministic: a validation sample read twice is the same sample; training randomness is reported."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from recipe import Task
from recipe.diagnostics.reading import eval_data_deterministic, training_reads_vary
from tests import tiny


class Samples(Dataset):
    """Blobs served one sample at a time; `mode` plants a bug in __getitem__ or keeps it clean."""

    def __init__(self, n: int, seed: int, mode: str = "clean"):
        self.x, self.y = tiny.blobs(n, seed)
        self.mode, self.mean = mode, self.x.mean(0)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.mode == "in_place":
            x -= self.mean  # edits the stored row: every read shifts it again
        elif self.mode == "copy":
            x = x - self.mean  # the fixed twin: a new tensor
        elif self.mode == "random":
            x = x + 0.1 * torch.randn_like(x)
        elif self.mode == "seeded":  # per-index augmentation, the same on every read
            x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        elif self.mode == "dict":
            return {"x": x.numpy(), "id": i, "text": str(i)}, self.y[i]
        return x, self.y[i]


@pytest.mark.parametrize(
    ("val_mode", "status"),
    [
        ("clean", "pass"),
        ("in_place", "fail"),
        ("copy", "pass"),
        ("random", "fail"),
        ("seeded", "pass"),
        ("dict", "pass"),
    ],
)
def test_eval_data_deterministic(val_mode, status):
    task = Task(train=Samples(64, 0), val=Samples(32, 1, val_mode), model=tiny.MLP, num_classes=tiny.CLASSES)
    check = eval_data_deterministic(task)
    assert check.status == status, check.message
    if status == "fail":
        assert "in place" in check.message and len(check.value["val_changed"]) > 0


def test_training_randomness_is_reported_not_judged():
    task = Task(train=Samples(64, 0, "random"), val=Samples(32, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
    check = eval_data_deterministic(task)
    assert check.status == "pass" and "augmentation" in check.message and check.value["train_changed"] == 8


def test_in_memory_validation_passes_without_reading():
    check = eval_data_deterministic(tiny.classification())
    assert check.status == "pass" and "in-memory" in check.message


@pytest.mark.parametrize(
    ("mode", "varies"), [("random", True), ("in_place", True), ("seeded", False), ("clean", False)]
)
def test_training_reads_vary_moves_no_generator(mode, varies):
    task = Task(train=Samples(64, 0, mode), val=Samples(32, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
    before = torch.random.get_rng_state()
    assert training_reads_vary(task) is varies
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not training_reads_vary(tiny.classification())  # in-memory tensors read the same every time
