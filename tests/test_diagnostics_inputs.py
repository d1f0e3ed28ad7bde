"""input_batch statistics and target_leak (single-feature scan; the sequence alignment profile)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe import Task
from recipe.diagnostics.inputs import alignment_profile, feature_stats, input_batch, input_stats, scaled_by_model
from recipe.diagnostics.target_leak import single_feature_scores, target_leak
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


def word_counts(n: int = 256, vocabulary: int = 2000, seed: int = 0) -> torch.Tensor:
    """A bag of words: about 3 of 2,000 words present per row, each counted 1 to 3 times (overall std about 0.08)."""
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(n, vocabulary, generator=g) < 0.0015
    return present * torch.randint(1, 4, (n, vocabulary), generator=g).float()


@pytest.mark.parametrize(("scale", "status"), [(1.0, "pass"), (1 / 255, "warn")])
def test_sparse_inputs_are_judged_on_the_values_present(scale, status):
    """Word counts have an overall std far below 0.1 because most words are absent, not because they are scaled
    down; counts divided by 255 are (their non-zero values' root mean square is 0.008)."""
    x = word_counts() * scale
    assert float(x.std()) < 0.1
    for check in (input_batch(x, tiny.classification())[0], input_stats(x)[0]):
        assert check.status == status, check.message
    assert status == "pass" or "non-zero inputs" in check.message


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


def test_a_leaked_column_beyond_the_scanned_sample_of_features_is_named_by_its_own_index():
    """Wide inputs are scanned on a random 2,048 of their features; the message names the column in the input."""
    g = torch.Generator().manual_seed(0)

    def wide(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = torch.randn(n, 2600, generator=g), torch.randint(0, tiny.CLASSES, (n,), generator=g)
        x[:, 2048:] = y[:, None].float()  # every column past the first 2,048 is the label
        return x, y

    task = Task(wide(300), wide(150), lambda: tiny.MLP(features=2600), num_classes=tiny.CLASSES)
    check = target_leak(task)
    assert check.status == "fail" and check.value["best_feature"] >= 2048
    assert f"input feature {check.value['best_feature']} is the target itself" in check.message


def smooth_series_windows(n: int = 3000, window: int = 16):
    """One-step forecasting of a smooth curve (integrated AR(1) steps): the last value in the window predicts the
    next one with R² 0.9999, by the nature of the series."""
    g = torch.Generator().manual_seed(0)
    steps = torch.zeros(n)
    for t in range(1, n):
        steps[t] = 0.9 * steps[t - 1] + 0.1 * torch.randn((), generator=g)
    s = steps.cumsum(0)
    s = (s - s.mean()) / s.std()
    x = s.unfold(0, window, 1)[:-1]
    y = s[window:, None]
    cut = 2200
    return Task((x[:cut], y[:cut]), (x[cut + window :], y[cut + window :]), lambda: tiny.MLP(1, window), loss="mse")


def test_target_leak_warns_on_a_decisive_feature_and_fails_only_a_copy_of_the_target():
    """The last value of a smooth series and the target with noise both predict the target nearly perfectly: from
    the data alone they look alike, so both warn. The target itself, or the class ids mapped to other values,
    fails."""
    forecast = target_leak(smooth_series_windows())
    assert forecast.status == "warn" and forecast.value["best_single_feature_R²"] > 0.999, forecast.message
    assert "decisive by nature" in forecast.message
    regression = tiny.regression()

    def noisy_copy(split):  # the target with a little noise: from the data alone, as decisive as the series above
        g = torch.Generator().manual_seed(len(split.y))
        return torch.cat([split.x, split.y + 0.01 * torch.randn(split.y.shape, generator=g)], 1), split.y

    noisy = target_leak(regression.replace(train=noisy_copy(regression.train), val=noisy_copy(regression.val)))
    assert noisy.status == "warn" and noisy.value["best_single_feature_R²"] > 0.999, noisy.message
    task = tiny.classification()

    def coded(split):  # class c stored as the value codes[c]: not monotone in the class id
        codes = torch.tensor([7.0, 2.0, 9.0, 4.0])
        return torch.cat([split.x, codes[split.y][:, None]], 1), split.y

    planted = task.replace(train=coded(task.train), val=coded(task.val), model=lambda: tiny.MLP(features=13))
    check = target_leak(planted)
    assert check.status == "fail" and "is the target itself" in check.message, check.message


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


class Bidirectional(nn.Module):
    """Token embeddings and a linear head per position, (B, C, T) logits: one class per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.tok, self.head = nn.Embedding(vocab, 16), nn.Linear(16, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.tok(idx)).transpose(1, 2)


@pytest.mark.parametrize("masked", [True, False])
def test_masked_token_targets_left_in_the_input_are_a_leak(masked):
    """Masked-token prediction scores 15% of positions; the bug leaves those tokens unmasked, so every scored target
    is the input token at its own position."""
    mask_id = tiny.VOCAB  # one id past the stream's tokens

    def split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = tiny.sequence_pairs(n, seed)
        hidden = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < 0.15
        inputs = torch.where(hidden, torch.full_like(x, mask_id), x) if masked else x
        return inputs, torch.where(hidden, x, torch.full_like(x, -100))

    task = Task(split(96, 0), split(48, 1), lambda: Bidirectional(tiny.VOCAB + 1), num_classes=tiny.VOCAB + 1)
    assert task.kind == "classification"  # one class per token: the targets are not the next tokens
    check = target_leak(task)
    if masked:
        assert check.status == "pass" and check.value["same_token_rate"] < 0.3, check.message
    else:
        assert check.status == "warn" and "masked-token prediction" in check.message


class Standardise(nn.Module):
    """Training-split statistics held as buffers: the model standardises its raw inputs itself."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", x.mean(0))
        self.register_buffer("std", x.std(0))

    def forward(self, x):
        return (x - self.mean) / self.std


class Halve(nn.Module):
    def forward(self, x):
        return x / 2


def raw_wine() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return torch.tensor(x, dtype=torch.float32)[order], torch.tensor(y)[order]


@pytest.mark.parametrize(
    ("first", "status"),
    [
        ("standardise", "pass"),  # buffers with the training statistics
        ("batchnorm", "pass"),  # a BatchNorm on the raw inputs standardises each training batch
        ("none", "warn"),  # the planted twin: raw features (proline in the hundreds) straight into a Linear
        ("halved", "warn"),  # scaled, but not nearly enough: the first Linear still sees hundreds
    ],
)
def test_a_model_that_scales_its_own_inputs_passes_the_scale_checks(first, status):
    x, y = raw_wine()
    layers = {
        "standardise": [Standardise(x[:140])],
        "batchnorm": [nn.BatchNorm1d(13)],
        "none": [],
        "halved": [Halve()],
    }[first]
    task = Task(
        (x[:140], y[:140]),
        (x[140:], y[140:]),
        lambda: nn.Sequential(*layers, nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3)),
    )
    checks = [input_batch(x[:64], task)[0], input_stats(x[:140])[0]]
    assert [c.status for c in checks] == ["warn", "warn"]  # the raw inputs, as the data checks see them
    judged = [scaled_by_model(c, task, x[:64]) for c in checks]
    assert [c.status for c in judged] == [status, status], judged[0].message
    if status == "pass":
        assert "scales them before its first weights" in judged[0].message and "0 (Linear)" not in judged[0].message
