"""Continuous targets in [0, 1] under binary cross-entropy (the share of ink in the top half of a digit): the loss
cannot go below the targets' mean entropy, which sits within 1% of the constant prediction's when the shares stay
near one half. Such a run memorised its batch and failed overfit_batch as a loss that "does not compare each output
with its own target", warned loss_decreases for falling "slowly" (it fell all the way to its floor) and target_range
for a small scale (standardising would leave [0, 1]). The planted bugs beside it are still caught."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from recipe import Recipe, Task
from recipe.diagnostics.integrity import read_split
from recipe.diagnostics.optimization import overfits_batch, reads_other_targets
from recipe.diagnostics.targets import target_range
from recipe.diagnostics.training import loss_decreases
from tests import tiny


def shares_task(scale: float = 1.0, loss="bce_with_logits") -> Task:
    """Digits in, the share of ink in the top half out (0.30..0.75, std 0.09): a learnable proportion."""
    x, _ = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    y = (x[:, :32].sum(1) / x.sum(1))[:, None] * scale
    x = (x - x[:1400].mean()) / x[:1400].std()
    model = lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    return Task((x[:1400], y[:1400]), (x[1400:], y[1400:]), model, loss=loss, kind="regression", name="shares")


def checks(task: Task, tmp_path, stages=("inspect", "baseline", "overfit")) -> dict[str, object]:
    result = Recipe(
        task, run_dir=tmp_path / "run", stages=list(stages), device="cpu", progress=False, quiet=True, keep_going=True
    ).run()  # fmt: skip
    return {c.name: c for c in result.checks}


def test_a_proportion_under_binary_cross_entropy_runs_clean(tmp_path):
    found = checks(shares_task(), tmp_path)
    for name in ("target_range", "loss_decreases", "overfit_batch"):
        assert found[name].status == "pass", (name, found[name].message)
    assert "probabilities" in found["target_range"].message
    assert [c.name for c in found.values() if c.status in ("fail", "warn", "error")] == []


def test_targets_outside_zero_one_under_binary_cross_entropy_fail_target_range():
    task = shares_task(scale=4.0)  # shares read as percentages/25: up to 3, where the loss has no minimum
    check = target_range(read_split(task, "train", 2000, 0), read_split(task, "val", 2000, 0), task)
    assert check.status == "fail" and "[0, 1]" in check.message, check.message


def test_loss_decreases_measures_a_drop_against_the_room_above_the_floor():
    """From 0.6942 at init to the floor 0.6762 is the whole way down, 2.6% of the start."""
    falling = [0.6942 - 0.018 * min(1.0, i / 150) for i in range(300)]
    assert loss_decreases(falling, 1e-3, moved=0.1).status == "warn"  # judged from zero: "slowly"
    assert loss_decreases(falling, 1e-3, moved=0.1, floor=0.6762).status == "pass"
    flat = [0.6942 + 0.0005 * (i % 3) for i in range(300)]
    assert loss_decreases(flat, 1e-3, moved=0.1, floor=0.6762).status == "warn"


def test_reads_other_targets_tells_a_broadcast_from_a_loss_that_pairs():
    g = torch.Generator().manual_seed(0)
    output, y = torch.randn(16, 1, generator=g), torch.rand(16, 1, generator=g)
    with pytest.warns(UserWarning, match="broadcasting"):
        assert reads_other_targets(F.mse_loss, output, y[:, 0]) is True  # (16, 1) against (16,): every pair
    assert reads_other_targets(F.mse_loss, output, y) is False
    assert reads_other_targets(F.binary_cross_entropy_with_logits, output, y) is False
    assert reads_other_targets(F.mse_loss, output, torch.ones(16, 1)) is None  # one target: nothing to move


def test_overfit_batch_fails_a_floor_at_the_constant_only_where_the_loss_reads_other_targets():
    memorised = [0.6923 * 0.98**i + 0.6877 * (1 - 0.98**i) for i in range(300)]
    task = tiny.regression().replace(loss=lambda output, target: F.binary_cross_entropy_with_logits(output, target))
    paired = overfits_batch(memorised, 0.01, 0.6923, task, 16, floor=0.6877, mixes=False)
    assert paired.status == "pass", paired.message
    crossed = overfits_batch(memorised, 0.01, 0.6923, task, 16, floor=0.6877, mixes=True)
    assert crossed.status == "fail" and "broadcast" in crossed.message
    built_in = overfits_batch(memorised, 0.01, 0.6923, task.replace(loss="bce_with_logits"), 16, floor=0.6877)
    assert built_in.status == "pass", built_in.message


def diabetes_task(own_val_stats: bool) -> Task:
    from sklearn.datasets import load_diabetes

    x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    x = (x - x[:330].mean(0)) / x[:330].std(0)
    y_train, y_val = y[:330], y[330:]
    mean, std = (y_val.mean(), y_val.std()) if own_val_stats else (y_train.mean(), y_train.std())
    y_train, y_val = (y_train - y_train.mean()) / y_train.std(), (y_val - mean) / std
    model = lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0))
    return Task((x[:330], y_train), (x[330:], y_val), model, loss="mse", kind="regression")


def test_validation_targets_standardised_with_their_own_statistics_fail_target_range():
    """Nothing saw it (target_range read the training targets only): validation at mean 0 and std 1 exactly, which
    a split standardised with the training statistics reaches by chance about once in a million."""
    for own, status in ((True, "fail"), (False, "pass")):
        task = diabetes_task(own)
        check = target_range(read_split(task, "train", 2000, 0), read_split(task, "val", 2000, 0), task)
        assert check.status == status, check.message
    assert "their own statistics" in target_range(
        read_split(diabetes_task(True), "train", 2000, 0), read_split(diabetes_task(True), "val", 2000, 0),
        diabetes_task(True),
    ).message  # fmt: skip
