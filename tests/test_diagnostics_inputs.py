"""input_batch statistics and target_leak (single-feature scan; the sequence alignment profile)."""

from __future__ import annotations

import pytest
import torch

from recipe.diagnostics.inputs import alignment_profile, feature_stats, input_batch, single_feature_scores, target_leak
from tests import tiny


def test_feature_stats_match_torch():
    x = torch.randn(50, 3, 4, 4)
    stats = feature_stats(x)
    assert len(stats["mean"]) == 3  # per channel for images
    assert stats["mean"][1] == pytest.approx(float(x[:, 1].mean()), abs=1e-5)
    assert stats["std"][2] == pytest.approx(float(x[:, 2].std(unbiased=False)), rel=1e-5)


@pytest.mark.parametrize(
    ("scale", "offset", "status"),
    [(1.0, 0.0, "pass"), (40.0, 0.0, "warn"), (1.0, 500.0, "warn"), (0.01, 0.0, "warn")],
)
def test_input_batch_scale(scale, offset, status):
    task = tiny.classification()
    x = torch.randn(64, tiny.FEATURES) * scale + offset
    check, info = input_batch(x, task)
    assert check.status == status, check.message
    assert len(info["features"]["mean"]) == tiny.FEATURES


def test_input_batch_names_constant_features_as_information():
    x = torch.randn(64, tiny.FEATURES)
    x[:, 3] = 0.0
    check, _ = input_batch(x, tiny.classification())
    assert check.status == "pass" and "constant" in check.message


def _with_leaked_column(noise: float):
    task = tiny.classification()

    def leak(split):
        x, y = split.x, split.y
        g = torch.Generator().manual_seed(len(y))
        return torch.cat([x, (y.float() + noise * torch.randn(len(y), generator=g)).unsqueeze(1)], 1), y

    return task.replace(train=leak(task.train), val=leak(task.val), model=lambda: tiny.MLP(features=tiny.FEATURES + 1))


@pytest.mark.parametrize(
    ("make_task", "status"),
    [
        (lambda: tiny.classification(), "pass"),
        (lambda: _with_leaked_column(0.0), "fail"),
        (lambda: _with_leaked_column(0.1), "fail"),
        (lambda: tiny.regression(), "pass"),
        (lambda: tiny.sequence(), "pass"),
        (lambda: tiny.sequence(shift=0), "fail"),
        (lambda: tiny.sequence(shift=2), "fail"),
    ],
)
def test_target_leak(make_task, status):
    check = target_leak(make_task())
    assert check.status == status, check.message


def test_regression_target_copied_into_an_input_is_caught():
    task = tiny.regression()

    def leak(split):
        return torch.cat([split.x, split.y * 3 + 1], 1), split.y

    planted = task.replace(train=leak(task.train), val=leak(task.val))
    assert target_leak(planted).status == "fail"


def test_alignment_profile_peaks_at_the_shift():
    x, y = tiny.sequence_pairs(20, 0, shift=1)
    rates = alignment_profile(x, y)
    assert rates[1] == 1.0 and max(v for k, v in rates.items() if k != 1) < 0.9


def test_single_feature_scores_rank_the_informative_feature_first():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g)
    y = (x[:, 2] > 0).long()
    scores = single_feature_scores(x[:300], y[:300], x[300:], y[300:], classification=True)
    assert int(scores.argmax()) == 2 and float(scores[2]) > 0.95
