"""time_leakage (shifted copies of training windows in validation) and target_derived_features (a feature computed
from the target), each on planted leaks, their fixed twins and the bundled datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples import charlm, digits, regression, tabular, transfer
from recipe import Task
from recipe.diagnostics.integrity import read_split
from recipe.diagnostics.leakage import target_derived_features, time_leakage
from tests import tiny


def windows(series: torch.Tensor, length: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of `length` values, the next value as the target."""
    starts = range(0, len(series) - length - 1, stride)
    x = torch.stack([series[s : s + length] for s in starts])
    return x, torch.stack([series[s + length] for s in starts]).unsqueeze(1)


def series_task(split: str, stride: int = 1, tokens: bool = False) -> Task:
    """A random walk cut into windows; `split="random"` plants the leak, `split="time"` is the fixed twin."""
    g = torch.Generator().manual_seed(0)
    series = torch.randn(3000, generator=g).cumsum(0)
    if tokens:
        series = torch.randint(0, 50, (3000,), generator=g)
    if split == "random":
        x, y = windows(series, 32, stride)
        order = torch.randperm(len(x), generator=g)
        cut = int(0.8 * len(x))
        train, val = (x[order[:cut]], y[order[:cut]]), (x[order[cut:]], y[order[cut:]])
    else:
        train, val = windows(series[:2400], 32, stride), windows(series[2400:], 32, stride)
    if tokens:
        train, val = (train[0], train[1][:, 0]), (val[0], val[1][:, 0])
        return Task(train=train, val=val, model=lambda: torch.nn.Embedding(50, 50), num_classes=50)
    return Task(train=train, val=val, model=lambda: torch.nn.Linear(32, 1), loss="mse")


def splits(task: Task):
    return read_split(task, "train", 20_000, 0), read_split(task, "val", 20_000, 1)


@pytest.mark.parametrize(
    ("split", "stride", "tokens", "status"),
    [
        ("random", 1, False, "fail"),
        ("random", 16, False, "fail"),  # half-overlapping windows
        ("time", 1, False, "pass"),  # the fixed twin: windows overlap within each split only
        ("random", 1, True, "fail"),  # token windows (another modality than a float series)
        ("time", 1, True, "pass"),
        ("random", 32, False, "pass"),  # disjoint windows split at random share nothing
    ],
)
def test_time_leakage(split, stride, tokens, status):
    check = time_leakage(*splits(series_task(split, stride, tokens)))
    assert check.status == status, check.message
    if status == "fail":
        assert check.value["share"] > 0.5 and "split the series by time" in check.message.lower()


def multivariate_task(split: str, channels_first: bool) -> Task:
    """Windows of 32 steps of a 3-channel random walk, (B, 32, 3) or channels first (B, 3, 32)."""
    g = torch.Generator().manual_seed(0)
    series = torch.randn(3000, 3, generator=g).cumsum(0)
    x = torch.stack([series[s : s + 32] for s in range(0, 2960)])
    y = torch.stack([series[s + 32, :1] for s in range(0, 2960)])
    if channels_first:
        x = x.transpose(1, 2).contiguous()
    order = torch.randperm(len(x), generator=g) if split == "random" else torch.arange(len(x))
    x, y, cut = x[order], y[order], 2300
    train, val = (x[:cut], y[:cut]), (x[cut + 40 :], y[cut + 40 :])  # time split: a gap of a window between
    return Task(train=train, val=val, model=lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(96, 1)))


@pytest.mark.parametrize("channels_first", [False, True])
@pytest.mark.parametrize(("split", "status"), [("random", "fail"), ("time", "pass")])
def test_time_leakage_reads_a_time_axis_of_several_channels(channels_first, split, status):
    """Steps of a multivariate series span the channels: a shift is a whole number of steps, along the axis with
    the steps (dim 1, or dim 2 when channels come first, which a shift of the flattened rows never matched)."""
    check = time_leakage(*splits(multivariate_task(split, channels_first)))
    assert check.status == status, check.message


def test_pairs_sharing_a_sample_are_not_windows():
    """Pairs of digits (B, 2, 64) drawn from one pool: a validation pair's first image is often a training pair's
    second, half of the flattened row "shifted by 64", but two slots are no time axis of 8 steps (the flattened reading
    failed it); read along the images' 64 values, no pair is a shifted copy."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, len(images), (3000,), generator=g), torch.randint(0, len(images), (3000,), generator=g)
    pairs, same = torch.stack([images[a], images[b]], 1), (a % 2 == b % 2).long()
    task = Task((pairs[:2400], same[:2400]), (pairs[2400:], same[2400:]), lambda: torch.nn.Linear(128, 2))
    check = time_leakage(*splits(task))
    assert check.status == "pass" and check.value["shifted_copies"] == 0, check.message


@pytest.mark.parametrize("make_task", [digits.make_task, tabular.make_task, regression.make_task, charlm.make_task])
def test_bundled_tasks_have_no_time_leak(make_task):
    check = time_leakage(*splits(make_task()))
    assert check.status in ("pass", "skip"), check.message


def encoded_task(own_label: bool, n: int = 600, seed: int = 0) -> Task:
    """Tabular data with a categorical column target-encoded; `own_label=True` plants each row's label in its code."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=n) > 0).astype(np.int64)
    category = rng.integers(0, n // 4, size=n)  # ~4 rows per category
    train, val = np.arange(n) < int(0.75 * n), np.arange(n) >= int(0.75 * n)
    sums = np.bincount(category[train], weights=y[train], minlength=n // 4)
    counts = np.bincount(category[train], minlength=n // 4)
    if own_label:  # the bug: the row's own label is in its category's mean
        code_train = sums[category[train]] / np.maximum(counts[category[train]], 1)
    else:  # the fixed twin: leave-one-out, each row's code from the other rows of its category
        rest = np.maximum(counts[category[train]] - 1, 1)
        code_train = (sums[category[train]] - y[train]) / rest
    code_val = sums[category[val]] / np.maximum(counts[category[val]], 1)
    features = np.zeros((n, 6), dtype=np.float32)
    features[:, :5] = x
    features[train, 5], features[val, 5] = code_train, code_val
    return Task(train=(features[train], y[train]), val=(features[val], y[val]), model=lambda: torch.nn.Linear(6, 2))


@pytest.mark.parametrize(("own_label", "status"), [(True, "fail"), (False, "pass")])
def test_target_derived_features(own_label, status):
    task = encoded_task(own_label)
    check = target_derived_features(*splits(task), task)
    assert check.status == status, check.message
    if status == "fail":
        assert check.value["feature"] == 5 and "feature 5" in check.message


def wine(seed: int) -> Task:
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    x, y = load_wine(return_X_y=True)
    xt, xv, yt, yv = train_test_split(x.astype(np.float32), y, test_size=0.25, random_state=seed, stratify=y)
    return Task(train=(xt, yt), val=(xv, yv), model=lambda: torch.nn.Linear(13, 3), num_classes=3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clean_tabular_splits_pass(seed):
    for task in (
        digits.make_task(seed=seed),
        tabular.make_task(seed=seed),
        regression.make_task(seed=seed),
        wine(seed),
    ):
        check = target_derived_features(*splits(task), task)
        assert check.status == "pass", (task.name, check.message)


def few_rows_per_class(seed: int) -> Task:
    """examples/transfer.py's clean task without its pretraining: noisy digits of the second half, five training
    images per class, the other 847 validating (H8's false alarm: pixel 22 warned at z = 5.4)."""
    x, y = transfer.digits(transfer.SECOND_HALF, noise=0.2, seed=seed)
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:5] for c in range(10)])
    val = np.setdiff1d(np.arange(len(y)), train)
    return Task(train=(x[train], y[train]), val=(x[val], y[val]), model=lambda: torch.nn.Linear(64, 10))


def noise_task(seed: int, rows: int, features: int, classes: int, binary: bool = False) -> Task:
    """Features unrelated to the labels, `rows` of them in training and 10 times as many validating."""
    rng = np.random.default_rng(seed)
    n = 11 * rows
    x = (rng.random((n, features)) < 0.3) if binary else rng.lognormal(0, 2, (n, features))
    y = rng.integers(0, classes, n)
    x, model = x.astype(np.float32), lambda: torch.nn.Linear(features, classes)
    return Task(train=(x[:rows], y[:rows]), val=(x[rows:], y[rows:]), model=model, num_classes=classes)


@pytest.mark.parametrize("seed", range(4))
def test_many_features_from_few_rows_pass(seed):
    """The largest of many gaps is no evidence: 50 rows give a 10-class correlation ratio of 0.43 on pure noise, and
    64 features tested at once reach z = 4-5 among them by chance."""
    for task in (
        few_rows_per_class(seed),
        noise_task(seed, rows=50, features=64, classes=10),
        noise_task(seed, rows=50, features=64, classes=10, binary=True),
        noise_task(seed, rows=30, features=200, classes=2),
    ):
        check = target_derived_features(*splits(task), task)
        assert check.status == "pass", check.message
        assert check.value["z_family"] < check.value["z"] and check.value["features_tested"] >= 20


def test_a_leak_among_many_features_still_fails():
    """The correction for the features tested costs little power: the target encoding among 60 noise columns."""
    task = encoded_task(own_label=True)
    noise = np.random.default_rng(1).normal(size=(600, 60)).astype(np.float32)
    x = np.concatenate([np.concatenate([task.train.x.numpy(), task.val.x.numpy()]), noise], 1)
    y = np.concatenate([task.train.y.numpy(), task.val.y.numpy()])
    wide = Task(train=(x[:450], y[:450]), val=(x[450:], y[450:]), model=lambda: torch.nn.Linear(66, 2))
    check = target_derived_features(*splits(wide), wide)
    assert check.status == "fail" and check.value["feature"] == 5, check.message
    assert check.value["features_tested"] == 66


def _trending_windows(slope: float, leak: bool) -> Task:
    """Windows of 24 values of a trending sine, the next value as the target, split by time (the last 20% for
    validation). `leak` adds a column holding the target plus noise in training and another row's target in
    validation (a target encoding with each row's own label)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(5000, dtype=torch.float32)
    series = slope * t + torch.sin(t / 10) + 0.2 * torch.randn(5000, generator=g)
    starts = torch.arange(0, 5000 - 25, 2)
    x = torch.stack([series[i : i + 24] for i in starts])
    y = torch.stack([series[i + 24] for i in starts])[:, None]
    n = int(0.8 * len(x))
    if leak:
        column = y + 0.3 * torch.randn(y.shape, generator=g)
        column[n:] = y[n:][torch.randperm(len(y) - n, generator=g)]
        x = torch.cat([x, column], 1)
    return Task((x[:n], y[:n]), (x[n:], y[n:]), lambda: torch.nn.Linear(x.shape[1], 1), loss="mse")


@pytest.mark.parametrize("slope", [0.0006, 0.002])
def test_a_gap_every_lag_shares_under_a_time_split_is_the_splits(slope):
    """A trend carries every lag's relation to the next value in training only: all 24 lags relate to it more in
    training (the slope 0.002 series failed at z = 14, feature 4, before their median gap, 29, and spread were
    set aside)."""
    clean = _trending_windows(slope, leak=False)
    check = target_derived_features(read_split(clean, "train", 10_000, 0), read_split(clean, "val", 10_000, 1), clean)
    assert check.status == "pass", check.message
    assert check.value["z_shared"] > 5


def test_a_leaked_column_still_stands_out_from_lags_that_share_a_gap():
    """The twin: the same windows (slope 0.0006) with a column that holds the target in training fail on it. (At
    slope 0.002 the lags' gaps spread so widely that such a column no longer stands out: a miss, not a false fail.)"""
    leaky = _trending_windows(0.0006, leak=True)
    check = target_derived_features(read_split(leaky, "train", 10_000, 0), read_split(leaky, "val", 10_000, 1), leaky)
    assert check.status == "fail" and check.value["feature"] == 24, check.message


def test_target_derived_features_skips_sequences_and_regression_targets_work():
    task = tiny.sequence()
    assert target_derived_features(*splits(task), task).status == "skip"
    leaky = tiny.regression()
    x, y = leaky.train.x.clone(), leaky.train.y
    x[:, 3] = y[:, 0] + 0.1 * torch.randn(len(y), generator=torch.Generator().manual_seed(0))  # the target, copied
    leaky = leaky.replace(train=(x, y))
    check = target_derived_features(*splits(leaky), leaky)
    assert check.status == "fail" and check.value["feature"] == 3


def test_padding_is_not_shared_content():
    """Short padded rows shifted against each other share mostly padding: with the pad id declared they do not count."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 30, (600, 16), generator=g)
    x[torch.arange(16) >= torch.randint(2, 16, (600, 1), generator=g)] = 0
    task = Task(train=(x[:480], x[:480, 0]), val=(x[480:], x[480:, 0]), model=lambda: torch.nn.Embedding(30, 30))
    train, val = splits(task)
    declared = time_leakage(train, val, pad_id=0)
    assert (
        declared.status == "pass"
        and declared.value["shifted_copies"] <= time_leakage(train, val).value["shifted_copies"]
    )


def test_one_hot_and_sparse_rows_are_not_series():
    """One-hot blocks and sparse counts match their own shifts by construction ((3, 5) shifted by 1 is (4, 6))."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 10, (800, 3), generator=g)
    one_hot = torch.cat([torch.nn.functional.one_hot(codes[:, i], 10) for i in range(3)], 1).float()
    counts = torch.zeros(800, 40)
    counts[torch.arange(800), torch.randint(0, 40, (800,), generator=g)] = torch.randint(
        1, 3, (800,), generator=g
    ).float()
    for x in (one_hot, counts):
        task = Task(
            train=(x[:600], codes[:600, 0]), val=(x[600:], codes[600:, 0]), model=lambda: torch.nn.Linear(30, 10)
        )
        check = time_leakage(*splits(task))
        assert check.status == "pass" and check.value["shifted_copies"] == 0, check.message


def test_a_low_entropy_stream_repeats_by_chance():
    """A stream that mostly counts up (t -> t+1) repeats its own stretches: two disjoint parts share shifted runs by
    chance. The bigram model of the training rows says such overlaps are expected, so they are not counted."""
    x = tiny.token_stream(8000, 0).reshape(500, 16)  # 11 tokens, t -> t+1 80% of the time
    task = Task(train=(x[:400], x[:400, 0]), val=(x[400:], x[400:, 0]), model=lambda: torch.nn.Embedding(11, 11))
    check = time_leakage(*splits(task))
    assert check.status == "pass" and check.value["shifted_copies"] == 0, check.message
