"""split_shift tells a split preprocessed differently (fail) from one drawn differently (warn, or pass when declared
by group); group_leak fails a group on both sides of a declared group split."""

from __future__ import annotations

import math

import pytest
import torch

from recipe import Task
from recipe.diagnostics.groups import group_leak
from recipe.diagnostics.integrity import read_split
from recipe.diagnostics.reading import augmentation_variance, training_reads_vary
from recipe.diagnostics.shift import affine_residual, neighbour_auc, split_shift
from tests import tiny


def splits(task: Task):
    return read_split(task, "train", 20_000, 0), read_split(task, "val", 20_000, 1)


def subjects(n_subjects: int, per_subject: int = 40, effect: float = 1.0, seed: int = 0):
    """Samples in subjects: each subject offsets every feature (a subject effect of `effect` sd), the features are
    correlated within a subject, and the label depends on the features (learnable)."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(n_subjects, tiny.FEATURES, generator=g) * effect
    mixing = torch.randn(tiny.FEATURES, tiny.FEATURES, generator=g) / math.sqrt(tiny.FEATURES)
    x = torch.cat(
        [offsets[s] + torch.randn(per_subject, tiny.FEATURES, generator=g) @ mixing for s in range(n_subjects)]
    )
    w = torch.randn(tiny.FEATURES, tiny.CLASSES, generator=torch.Generator().manual_seed(99))
    return x, (x @ w).argmax(1), torch.arange(n_subjects).repeat_interleave(per_subject)


def subject_task(leak: bool = False, declare: bool = True, n_subjects: int = 10) -> Task:
    """Train on subjects 0..7, validate on 8..9; `leak` moves a quarter of subject 0's samples to validation."""
    x, y, group = subjects(n_subjects)
    val = group >= int(0.8 * n_subjects)
    if leak:
        val |= (group == 0) & (torch.arange(len(group)) % 4 == 0)
    groups = (group[~val].tolist(), group[val].tolist()) if declare else None
    return Task(train=(x[~val], y[~val]), val=(x[val], y[val]), model=tiny.MLP, num_classes=tiny.CLASSES, groups=groups)


class Augmented(torch.utils.data.Dataset):
    """Training split with random augmentation inside __getitem__ (a shift by one feature and noise); validation
    is read clean. The augmentation is a fresh draw on every read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool):
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment:
            x = x.roll(int(torch.randint(-1, 2, ())), 0) + 1.2 * torch.randn_like(x)
        return x, self.y[i]


def correlated(n: int, seed: int):
    """Inputs with structure (correlated features), as images and real tabular data have."""
    x, y = tiny.blobs(n, seed)
    mixing = torch.randn(tiny.FEATURES, tiny.FEATURES, generator=torch.Generator().manual_seed(7))
    return x @ mixing / math.sqrt(tiny.FEATURES), y


# ---- split_shift ---------------------------------------------------------------------------------------------------


def test_neighbour_auc_is_at_its_null_for_one_distribution_and_high_for_two():
    a, b = torch.randn(400, 6), torch.randn(200, 6)
    observed, null_mean, null_sd = neighbour_auc(a, b)
    assert abs(observed - null_mean) < 4 * null_sd and abs(null_mean - 0.5) < 0.05
    clustered = torch.cat([torch.randn(100, 6) * 0.2 + 2, torch.randn(100, 6) * 0.2 - 2])
    assert neighbour_auc(a, clustered)[0] > 0.9


def test_affine_residual_is_null_for_a_per_feature_rescaling():
    x, _ = correlated(900, 0)
    a, b = x[:600], x[600:]
    assert abs(affine_residual(a, b * 5 - 3)["z"]) < 3  # identical once each split is standardised on its own
    assert affine_residual(a, b * 5 - 3)["z"] == pytest.approx(affine_residual(a, b)["z"], abs=1e-6)


def test_split_shift_fails_validation_standardised_with_its_own_statistics_and_names_features():
    x, y = correlated(900, 0)
    x_train = x[:600] * torch.linspace(1, 20, tiny.FEATURES) + 10  # training left in raw units
    x_val = x[600:] * torch.linspace(1, 20, tiny.FEATURES) + 10
    x_val = (x_val - x_val.mean(0)) / x_val.std(0)  # the bug: validation standardised with its own statistics
    task = Task(train=(x_train, y[:600]), val=(x_val, y[600:]), model=tiny.MLP, num_classes=tiny.CLASSES)
    check = split_shift(*splits(task))
    assert check.status == "fail", check.message
    assert (
        "own statistics removes the difference" in check.message and "one transform fitted on training" in check.message
    )
    assert check.value["features_shifted"] == tiny.FEATURES
    named = check.value["most_different_features"][0]["feature"]
    assert f"{named} (mean shift" in check.message


def test_split_shift_twin_with_one_transform_fitted_on_training_passes():
    x, y = correlated(900, 0)
    raw = x * torch.linspace(1, 20, tiny.FEATURES) + 10
    mean, std = raw[:600].mean(0), raw[:600].std(0)
    task = Task(
        train=((raw[:600] - mean) / std, y[:600]),
        val=((raw[600:] - mean) / std, y[600:]),
        model=tiny.MLP,
        num_classes=tiny.CLASSES,
    )
    assert split_shift(*splits(task)).status == "pass"


@pytest.mark.parametrize(("declare", "status"), [(False, "warn"), (True, "pass")])
def test_split_shift_does_not_fail_a_split_by_subject(declare, status):
    task = subject_task(declare=declare)
    check = split_shift(*splits(task), groups=task.groups)
    assert check.value["auc"] > 0.9  # the splits do differ a lot: different subjects
    assert check.value["after_own_standardisation"]["z"] > 3
    assert check.status == status, check.message
    assert ("Task(groups=" in check.message) == (not declare)


def test_split_shift_does_not_fail_train_only_random_augmentation():
    x, y = correlated(900, 0)
    task = Task(
        train=Augmented(x[:600], y[:600], augment=True),
        val=Augmented(x[600:], y[600:], augment=False),
        model=tiny.MLP,
        num_classes=tiny.CLASSES,
    )
    check = split_shift(*splits(task))
    assert check.value["auc"] > 0.9, check.value  # augmentation does change the training inputs
    assert check.status == "warn" and "augmentation applied to one split only" in check.message
    # inspect tells split_shift when the training Dataset augments on read: then the difference is by design
    told = split_shift(*splits(task), train_augmented=training_reads_vary(task))
    assert told.status == "pass" and "augments on read" in told.message, told.message


class Jittered(Augmented):
    """Training reads with a light jitter (noise of 0.05 sd): augmentation that leaves the distribution nearly as is."""

    def __getitem__(self, i: int):
        return self.x[i] + 0.05 * torch.randn_like(self.x[i]), self.y[i]


def test_split_shift_told_of_augmentation_still_fails_a_preprocessing_bug():
    """Augmentation explains a different draw, not validation standardised apart from training: a shift that
    standardising each split removes still fails. (Under heavy augmentation it no longer can: then it passes.)"""
    x, y = correlated(900, 0)
    task = Task(
        train=Jittered(x[:600] * 4 + 3, y[:600], augment=True),
        val=Augmented(x[600:], y[600:], augment=False),
        model=tiny.MLP,
        num_classes=tiny.CLASSES,
    )
    assert training_reads_vary(task)
    check = split_shift(*splits(task), train_augmented=True)
    assert check.status == "fail", check.message


class Noised(Augmented):
    """Training reads with Gaussian noise of 0.1 sd on every value, the commonest augmentation of tabular and signal
    inputs. Beside features that barely vary (an image's border pixels), it alone makes the splits differ."""

    def __getitem__(self, i: int):
        return (self.x[i] + 0.1 * torch.randn_like(self.x[i]) if self.augment else self.x[i]), self.y[i]


def near_constant_features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`correlated` inputs whose last four features hardly vary (std 0.01), as border pixels do."""
    x, y = correlated(n, seed)
    x[:, -4:] = 0.01 * torch.randn(n, 4, generator=torch.Generator().manual_seed(seed + 50)) - 0.8
    return x, y


@pytest.mark.parametrize("own_scale", [False, True])
def test_split_shift_passes_noise_added_on_read_and_still_flags_validation_scaled_apart(own_scale):
    """The noise widens the near-constant features tenfold, which looks like a scale bug until the validation
    inputs get the same noise (its variance measured from two reads of the same training samples). The twin scales
    validation by its own statistics as well: the difference outlives the noise and is still reported."""
    x, y = near_constant_features(1200, 0)
    val = x[900:] * 3 + 1 if own_scale else x[900:]
    task = Task(
        train=Noised(x[:900], y[:900], augment=True),
        val=Noised(val, y[900:], augment=False),
        model=tiny.MLP,
        num_classes=tiny.CLASSES,
    )
    added = augmentation_variance(task)
    assert added is not None and added.shape == (tiny.FEATURES,)
    assert torch.allclose(added, torch.full_like(added, 0.01), rtol=0.3)
    unaided = split_shift(*splits(task), train_augmented=True)
    assert unaided.value["auc"] > 0.9 and unaided.status in ("warn", "fail"), unaided.message
    check = split_shift(*splits(task), train_augmented=True, augmentation=added)
    if own_scale:
        assert check.status == "fail", check.message
    else:
        assert check.status == "pass" and "the difference is the augmentation" in check.message, check.message
        assert check.value["auc_val_with_augmentation_noise"] < 0.6


def test_augmentation_variance_is_none_for_a_split_read_the_same_every_time():
    x, y = correlated(200, 0)
    assert augmentation_variance(Task(train=(x, y), val=(x, y), model=tiny.MLP, num_classes=tiny.CLASSES)) is None
    fixed = Task(train=Noised(x, y, augment=False), val=(x, y), model=tiny.MLP, num_classes=tiny.CLASSES)
    assert augmentation_variance(fixed) is None


def test_split_shift_warns_on_one_drifting_feature_rather_than_failing():
    x, y = correlated(900, 0)
    x[:, 0] = torch.arange(900.0)  # a time stamp, split in time
    task = Task(train=(x[:600], y[:600]), val=(x[600:], y[600:]), model=tiny.MLP, num_classes=tiny.CLASSES)
    check = split_shift(*splits(task))
    assert check.value["auc"] > 0.9 and check.status == "warn", check.message
    assert check.value["most_different_features"][0]["feature"] == 0


# ---- group_leak ----------------------------------------------------------------------------------------------------


def test_group_leak_fails_a_subject_in_both_splits_and_names_it():
    task = subject_task(leak=True)
    check = group_leak(task)
    assert check.status == "fail" and check.value["shared_groups"] == 1
    assert check.value["val_samples_in_shared_groups"] == 10
    assert "e.g. 0" in check.message and "GroupShuffleSplit" in check.message


def test_group_leak_twin_split_by_subject_passes():
    check = group_leak(subject_task())
    assert check.status == "pass" and "8 training and 2 validation groups" in check.message


def test_group_leak_skips_without_groups_and_says_how_to_declare_them():
    check = group_leak(tiny.classification())
    assert check.status == "skip" and "Task(groups=(train_groups, val_groups))" in check.message


def test_a_leaky_group_split_is_not_called_a_group_split_by_split_shift():
    task = subject_task(leak=True)
    check = split_shift(*splits(task), groups=task.groups)
    assert "as expected of a split by group" not in check.message


def test_group_leak_with_string_ids():
    x, y = tiny.blobs(60, 0)
    ids = [f"patient-{i % 6}" for i in range(60)]
    task = Task(train=(x[:40], y[:40]), val=(x[40:], y[40:]), model=tiny.MLP, groups=(ids[:40], ids[40:]))
    check = group_leak(task)
    assert check.status == "fail" and "patient-" in check.message


# ---- in the inspect stage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("leak", "group_status", "shift_status"), [(False, "pass", "pass"), (True, "fail", "warn")])
def test_inspect_runs_group_leak_and_a_group_aware_split_shift(tmp_path, leak, group_status, shift_status):
    from recipe import Recipe

    config = {"inspect": {"label_noise": False}}
    result = Recipe(subject_task(leak=leak), run_dir=tmp_path, stages=["inspect"], config=config).run()
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["group_leak"] == group_status and statuses["split_shift"] == shift_status


def test_split_shift_does_not_fail_on_too_few_rows_to_tell_a_different_draw():
    x, y = correlated(640, 0)
    x_val = x[600:]
    x_val = (x_val - x_val.mean(0)) / x_val.std(0)  # the planted bug, on 40 validation rows
    task = Task(train=(x[:600] * 5 + 10, y[:600]), val=(x_val, y[600:]), model=tiny.MLP, num_classes=tiny.CLASSES)
    check = split_shift(*splits(task))
    assert check.value["auc"] > 0.9 and check.status == "warn" and "40 rows are too few" in check.message


class ImageModel(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, : tiny.CLASSES]


@pytest.mark.parametrize(("units", "status"), [(255.0, "fail"), (1.0, "pass")])
def test_split_shift_on_images_in_other_units(units, status):
    """Another modality: (N, 3, 2, 2) images, validation in 0..255 units while training is in 0..1 (and its twin)."""
    x, y = correlated(900, 0)
    images = torch.sigmoid(x).reshape(-1, 3, 2, 2)
    task = Task(
        train=(images[:600], y[:600]), val=(images[600:] * units, y[600:]), model=ImageModel, num_classes=tiny.CLASSES
    )
    assert split_shift(*splits(task)).status == status
