"""The label-noise scan on token inputs: a linear probe on the count of each token id (a bag of words) beside, or
instead of, the task's model. Token inputs went to the task's model alone, whatever its cost (a text transformer's
scan took 123 s of a 385 s run, 44x the scan's compute budget)."""

from __future__ import annotations

import torch
from torch import nn

from recipe import Task
from recipe.diagnostics import label_noise as label_noise_module
from recipe.diagnostics import quick_models
from recipe.diagnostics.label_noise import find_label_issues, label_noise
from recipe.diagnostics.quick_models import bag_of_tokens

VOCAB, LENGTH, CLASSES = 50, 20, 4


def texts(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids: half of each row's tokens from its class's ten ids, the rest from the whole vocabulary."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    own = y[:, None] * 10 + torch.randint(0, 10, (n, LENGTH), generator=g)
    ids = torch.where(torch.rand(n, LENGTH, generator=g) < 0.5, own, torch.randint(0, VOCAB, (n, LENGTH), generator=g))
    return ids, y


def model() -> nn.Module:
    return nn.Sequential(nn.Embedding(VOCAB, 16), nn.Flatten(), nn.Linear(LENGTH * 16, CLASSES))


def task(flip: float = 0.0) -> tuple[Task, torch.Tensor]:
    (x, y), val = texts(1200, 0), texts(300, 1)
    g = torch.Generator().manual_seed(2)
    flipped = torch.rand(len(y), generator=g) < flip
    y = y.clone()
    y[flipped] = (y[flipped] + torch.randint(1, CLASSES, (int(flipped.sum()),), generator=g)) % CLASSES
    return Task((x, y), val, model, loss="cross_entropy", kind="classification", num_classes=CLASSES), flipped


def test_bag_of_tokens_counts_each_id():
    bag = bag_of_tokens(torch.tensor([[1, 1, 3], [0, 2, 7]]), 4)  # 7 shares column 3 (modulo the width)
    assert torch.allclose(bag.expm1(), torch.tensor([[0.0, 2, 0, 1], [1, 0, 1, 1]]))


def test_clean_token_labels_pass_with_the_bag_of_tokens_probe():
    clean, _ = task()
    issues = find_label_issues(clean, seed=0)
    assert issues is not None and "linear probe" in issues.probe
    assert label_noise(issues, clean).status == "pass"


def test_flipped_token_labels_warn_and_the_suspects_are_the_flipped_ones():
    noisy, flipped = task(0.2)
    issues = find_label_issues(noisy, seed=0)
    assert issues is not None and label_noise(issues, noisy).status in ("warn", "fail")
    truth = set(flipped.nonzero().flatten().tolist())
    assert len(set(issues.indices) & truth) >= 0.7 * len(issues.indices)


def test_a_token_model_over_the_budget_leaves_the_bag_of_tokens_probe_alone(monkeypatch):
    expensive = lambda task, rows: 10**15  # a petaFLOP a step: far over any budget
    monkeypatch.setattr(quick_models, "step_flops", expensive)
    monkeypatch.setattr(label_noise_module, "step_flops", expensive)
    clean, _ = task()
    issues = find_label_issues(clean, seed=0)
    assert issues is not None and issues.probe.startswith("linear probe") and "task model" not in issues.probe
