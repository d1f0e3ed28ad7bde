"""The overfit stage memorises one batch as it was read, and gives a loss still falling more steps before judging."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from recipe import Recipe
from tests import tiny


class Jittered(Dataset):
    """Training samples with fresh random noise on every read (a train-only augmentation inside the Dataset)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.5 * torch.randn_like(self.x[i]), self.y[i]


def overfit(task, tmp_path, **settings):
    config = {"overfit": {"lr_steps": 20, **settings}}
    result = Recipe(task, run_dir=tmp_path / "run", stages=["overfit"], device="cpu", config=config,
                    progress=False, quiet=True, keep_going=True).run()  # fmt: skip
    return next(c for c in result.checks if c.name == "overfit_batch")


def test_a_dataset_that_augments_every_read_is_memorised_as_read(tmp_path):
    x, y = tiny.blobs(256, 0)
    task = tiny.classification().replace(train=Jittered(x, y))
    check = overfit(task, tmp_path)
    assert check.status == "pass", check.message


def test_a_loss_still_falling_gets_more_steps_instead_of_a_fail(tmp_path):
    check = overfit(tiny.classification(), tmp_path, steps=40)  # far too few steps
    assert check.status in ("pass", "skip"), check.message
    assert check.value["steps"] > 60  # it was given more


def test_a_softmax_floor_still_fails(tmp_path):
    class Softmaxed(tiny.MLP):
        def forward(self, x):
            return super().forward(x).softmax(1)

    check = overfit(tiny.classification(model=Softmaxed), tmp_path)
    assert check.status == "fail", check.message
