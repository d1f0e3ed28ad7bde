"""label_noise: confident learning against a hand-computed example and cleanlab, planted flips found, clean data
passes, shuffled labels fail, tasks it does not apply to skip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from examples import digits
from recipe import Task
from recipe.diagnostics.label_noise import (
    LINEAR_BUDGET,
    LabelIssues,
    confident_joint,
    confident_learning,
    find_label_issues,
    label_noise,
)
from recipe.diagnostics.quick_models import L2_GRID, linear_budget


def _digits_task(model: str = "mlp", flip: float = 0.0, shuffle: bool = False) -> tuple[Task, set[int]]:
    """The digits task with a share of its training labels flipped to a random other class (or all shuffled)."""
    task = digits.make_task(model)
    y_train = task.targets("train").numpy().copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y_train), round(flip * len(y_train)), replace=False)
    y_train[flipped] = (y_train[flipped] + rng.integers(1, 10, len(flipped))) % 10
    if shuffle:
        y_train = rng.permutation(y_train)
    return task.replace(train=(task.train.x, torch.as_tensor(y_train))), set(flipped.tolist())


# ---- the confident-learning core --------------------------------------------------------------------------------


def test_confident_learning_matches_a_hand_computed_example():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    probs = torch.tensor(
        [
            [0.9, 0.1, 0.0],  # labelled 0, confident 0
            [0.1, 0.8, 0.1],  # labelled 0, reaches class 1's threshold: the wrong label
            [0.1, 0.9, 0.0],
            [0.2, 0.7, 0.1],  # labelled 1, below every threshold: not counted
            [0.0, 0.2, 0.8],
            [0.1, 0.1, 0.8],
        ]
    )
    # thresholds (mean probability of a class over the samples labelled with it): 0.5, 0.8, 0.8
    # raw counts (given, likely true): row 0 = [1, 1, 0], row 1 = [0, 1, 0], row 2 = [0, 0, 2];
    # each row rescaled to the 2 samples labelled with it
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    torch.testing.assert_close(confident_joint(probs, labels, 3), expected)
    suspects, rate = confident_learning(probs, labels, 3)
    assert rate == pytest.approx(1 / 6)  # off-diagonal mass: 1 of 6 labels
    assert suspects.tolist() == [1]


def test_confident_joint_matches_cleanlab():
    count = pytest.importorskip("cleanlab.count")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=g)
    probs = (torch.randn(300, 4, generator=g) + 2 * torch.nn.functional.one_hot(labels, 4)).softmax(1).double()
    theirs = count.compute_confident_joint(labels.numpy(), probs.numpy(), calibrate=False)
    ours = confident_joint(probs, labels, 4)
    # cleanlab returns the raw counts; ours are rescaled to the label counts row by row
    scaled = theirs / theirs.sum(1, keepdims=True) * np.bincount(labels.numpy())[:, None]
    np.testing.assert_allclose(ours.numpy(), scaled, rtol=1e-6)


# ---- the search on real tasks -----------------------------------------------------------------------------------


def test_planted_flips_warn_and_the_suspects_are_the_flipped_labels():
    task, flipped = _digits_task(flip=0.2)
    issues = find_label_issues(task, probe="linear")
    assert issues is not None
    check = label_noise(issues, task)
    assert check.status in ("warn", "fail"), check.message
    assert 0.15 < issues.estimated_noise_rate < 0.25
    precision = len(set(issues.indices) & flipped) / len(issues.indices)
    recall = len(set(issues.indices) & flipped) / len(flipped)
    assert precision > 0.85 and recall > 0.85, (precision, recall)
    # most suspicious first: the probability of the given label rises along the list
    row = {p: i for i, p in enumerate(issues.positions)}
    given_prob = [float(issues.probs[row[i], y]) for i, y in zip(issues.indices, issues.given, strict=True)]
    assert given_prob == sorted(given_prob)
    assert all(p != y for p, y in zip(issues.predicted, issues.given, strict=True))


def test_the_second_round_runs_only_when_training_labels_look_worse_than_held_out_ones():
    """Retraining without the suspects sharpens the estimate when there is noise to expose; on clean labels the
    first round already says "no more than held-out data", and a second one would only double the cost."""
    clean, _ = _digits_task()
    issues = find_label_issues(clean, probe="linear")
    assert issues is not None and issues.probe == "linear probe, 5-fold, 1 round"
    assert issues.estimated_noise_rate <= issues.baseline_rate + 0.01
    noisy, _ = _digits_task(flip=0.05)
    issues = find_label_issues(noisy, probe="linear")
    assert issues is not None and issues.probe == "linear probe, 5-fold, 2 rounds"


def test_clean_digits_cnn_passes():
    task, _ = _digits_task("cnn")
    issues = find_label_issues(task)  # (B, 1, 8, 8) inputs: flattened for the linear probe
    assert issues is not None
    check = label_noise(issues, task)
    assert check.status == "pass", check.message
    assert len(issues.indices) < 0.01 * len(task.train)


def test_shuffled_labels_fail():
    task, _ = _digits_task(shuffle=True)
    check = label_noise(find_label_issues(task, probe="linear", rounds=1), task)
    assert check.status == "fail", check.message
    assert "paired" in check.message


def test_clean_tiny_task_passes_with_the_task_model_and_the_linear_probe(classification_task):
    issues = find_label_issues(classification_task, min_steps=100)
    assert issues is not None
    assert issues.probe.startswith("linear probe + task model")
    check = label_noise(issues, classification_task)
    assert check.status == "pass", check.message
    assert issues.probs.shape == (150, 3)


def test_large_split_is_sampled(classification_task):
    issues = find_label_issues(classification_task, max_samples=100, probe="linear")
    assert issues is not None and issues.sampled
    assert len(issues.positions) == 100 and set(issues.indices) <= set(issues.positions)
    assert label_noise(issues, classification_task).value["sampled"] is True


def test_dataset_split_with_the_task_model(dataset_task):
    issues = find_label_issues(dataset_task, probe="model", rounds=1, folds=3)
    assert issues is not None and issues.probe == "task model, 3-fold, 1 round"
    assert label_noise(issues, dataset_task).status == "pass"


@pytest.mark.parametrize("fixture", ["regression_task", "sequence_task"])
def test_not_applicable_tasks_skip(fixture, request):
    task = request.getfixturevalue(fixture)
    assert find_label_issues(task) is None
    check = label_noise(None, task)
    assert check.status == "skip" and "not applicable" in check.message


def test_callable_loss_skips(classification_task):
    task = classification_task.replace(loss=torch.nn.functional.cross_entropy)
    assert find_label_issues(task) is None


def _waves(n: int, seed: int, length: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sine, square and sawtooth waves (classes 0, 1, 2) of random frequency and phase, shape (n, 1, length):
    a linear probe cannot separate them (every class averages to zero at every position), a small CNN can."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 3)[torch.randperm(n, generator=g)]
    frequency, phase = 2 + 4 * torch.rand(n, 1, generator=g), torch.rand(n, 1, generator=g)
    cycle = (frequency * torch.arange(length) / length + phase) % 1
    waves = torch.stack([torch.sin(2 * torch.pi * cycle), torch.where(cycle < 0.5, 1.0, -1.0), 2 * cycle - 1])
    return (waves[y, torch.arange(n)] + 0.5 * torch.randn(n, length, generator=g)).unsqueeze(1), y


class _WaveCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        conv = [torch.nn.Conv1d(1, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv1d(16, 16, 5, padding=2)]
        self.net = torch.nn.Sequential(*conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


def _waves_task(flip: float = 0.0) -> Task:
    (x, y), val = _waves(300, 0), _waves(150, 1)
    g = torch.Generator().manual_seed(5)
    rows = torch.randperm(len(y), generator=g)[: round(flip * len(y))]
    y = y.clone()
    y[rows] = (y[rows] + torch.randint(1, 3, (len(rows),), generator=g)) % 3
    return Task(train=(x, y), val=val, model=_WaveCNN, num_classes=3, name="waves")


def test_a_probe_that_cannot_learn_the_task_skips_instead_of_failing():
    """The linear probe is at chance on waves: no evidence about the labels, clean or flipped."""
    for flip in (0.0, 0.25):
        check = label_noise(find_label_issues(_waves_task(flip), probe="linear"), _waves_task(flip))
        assert check.status == "skip", check.message
        assert "cannot learn" in check.message and "commonest label" in check.message
        assert check.value["out_of_fold_accuracy"] < 0.45
        assert check.value["suspects"] == 0  # a probe at chance names no suspects


@pytest.mark.parametrize("flip, statuses", [(0.0, {"pass"}), (0.25, {"warn", "fail"})])
def test_the_task_model_judges_when_the_linear_probe_is_weak(flip, statuses):
    """Under "auto" the CNN is over the two-round budget, so the linear probe goes first; at chance, it is left
    out and the task's model gets the budget for one round: clean waves pass, a quarter flipped is flagged."""
    task = _waves_task(flip)
    issues = find_label_issues(task)
    assert issues is not None and issues.probe.startswith("task model") and "linear probe left out" in issues.probe
    check = label_noise(issues, task)
    assert check.status in statuses, check.message
    assert issues.agreement > 0.6


def test_a_task_model_over_the_budget_is_named_in_the_skip():
    task = _waves_task()
    check = label_noise(find_label_issues(task, model_gflop=0.01), task)
    assert check.status == "skip" and "GFLOP, over 0.01" in check.message and "model_gflop" in check.message


def test_a_member_at_chance_is_left_out_of_the_average():
    task = _waves_task()
    issues = find_label_issues(task, probe="both", rounds=1)
    assert issues is not None and issues.probe == "task model, 5-fold, 1 round (linear probe left out: at chance)"
    assert label_noise(issues, task).status == "pass"


# ---- the verdict alone ------------------------------------------------------------------------------------------


def _issues(
    rate: float, baseline: float, agreement: float = 0.9, n: int = 1000, m: int = 250, val_agreement=None
) -> LabelIssues:
    return LabelIssues(
        estimated_noise_rate=rate,
        indices=[],
        given=[],
        predicted=[],
        probs=torch.zeros(n, 10),
        positions=list(range(n)),
        baseline_rate=baseline,
        baseline_samples=m,
        agreement=agreement,
        chance=0.1,
        probe="linear probe, 5-fold, 2 rounds",
        seconds=1.0,
        sampled=False,
        val_agreement=val_agreement,
        val_chance=0.1,
    )


@pytest.mark.parametrize(
    "issues, status",
    [
        (_issues(0.004, 0.002), "pass"),  # clean digits
        (_issues(0.30, 0.33), "pass"),  # a hard task: held-out labels look as noisy
        (_issues(0.08, 0.0, m=30), "pass"),  # within the sampling error of 30 validation labels
        (_issues(0.008, 0.0, n=50_000, m=50_000), "pass"),  # significant but immaterial
        (_issues(0.05, 0.0), "warn"),
        (_issues(0.20, 0.01), "warn"),
        (_issues(0.65, 0.05), "fail"),  # most labels wrong
        # shuffled: no better than the commonest label, yet the same models learn the validation labels
        (_issues(0.88, 0.90, agreement=0.11, val_agreement=0.85), "fail"),
        # no better than the commonest label on either split: the probe cannot learn the task, no evidence
        (_issues(0.88, 0.90, agreement=0.11, val_agreement=0.12), "skip"),
        (_issues(0.88, 0.90, agreement=0.11), "skip"),
        (_issues(0.05, 0.0, agreement=0.12), "skip"),  # a weak probe's estimate is not evidence either way
    ],
)
def test_verdict(issues, status, classification_task):
    check = label_noise(issues, classification_task)
    assert check.status == status, check.message
    assert check.value["estimated_noise_rate"] == issues.estimated_noise_rate


def prototypes_task(classes: int, per_class: int) -> Task:
    """`classes` Gaussian clusters of `per_class` samples in 32 dimensions, split 4:1 at random."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, 32, generator=g) * 2
    y = torch.arange(classes).repeat(per_class)[torch.randperm(classes * per_class, generator=g)]
    x = centres[y] + 0.5 * torch.randn(len(y), 32, generator=g)
    n = int(0.8 * len(y))

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, classes))

    return Task((x[:n], y[:n]), (x[n:], y[n:]), net, num_classes=classes)


def test_label_noise_skips_a_few_samples_per_class():
    """1,000 classes of 4 samples: out-of-fold probabilities trained on 2-3 samples of a class cannot set its
    confidence threshold (the scan estimated 46% of clean labels wrong, and took 140 s)."""
    task = prototypes_task(1000, 4)
    assert find_label_issues(task) is None
    check = label_noise(None, task)
    assert check.status == "skip" and "median of 3 samples per class" in check.message, check.message


def test_the_linear_probe_keeps_to_its_compute_budget():
    """Its cost grows with rows times classes: on digits it affords every row and the whole weight-decay grid; on 200
    classes it keeps one weight decay and fewer rows; on 1,000 classes of 20 (8 minutes before) it cannot keep 10
    rows per class within the budget, and with the task model over its own budget too, the scan skips saying so."""
    budget = LINEAR_BUDGET * 50e9  # on a CPU
    digits_task = digits.make_task()
    assert linear_budget(digits_task, 1437, 10, 5, budget) == (1437, L2_GRID)
    rows, grid = linear_budget(prototypes_task(200, 50), 8000, 200, 5, budget)
    assert grid == L2_GRID[1:2] and 2000 <= rows < 8000
    assert linear_budget(prototypes_task(1000, 20), 16000, 1000, 5, budget) is None
    large = prototypes_task(1000, 20)
    assert find_label_issues(large) is None
    check = label_noise(None, large)
    assert check.status == "skip" and "compute budget" in check.message, check.message
