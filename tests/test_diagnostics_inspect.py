"""The `inspect` checks: each passes on clean data and fires on a planted problem (the label-noise scan has its own
file, test_diagnostics_label_noise.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Recipe, Task
from recipe.diagnostics.inputs import input_stats
from recipe.diagnostics.integrity import (
    finite_loss_on,
    finite_rows,
    non_finite_data,
    read_split,
    sequence_data,
    summary,
)
from recipe.diagnostics.outliers import outliers, robust_z
from recipe.diagnostics.shift import auc, domain_auc, split_shift
from recipe.diagnostics.splits import duplicates
from recipe.diagnostics.targets import class_balance, target_range
from tests import tiny


def splits(task: Task, max_samples: int = 20_000):
    return read_split(task, "train", max_samples, 0), read_split(task, "val", max_samples, 1)


def with_data(x_train, y_train, x_val=None, y_val=None, **kwargs) -> Task:
    base = tiny.classification()
    x_val = base.val.x if x_val is None else x_val
    y_val = base.val.y if y_val is None else y_val
    return Task(train=(x_train, y_train), val=(x_val, y_val), model=tiny.MLP, num_classes=tiny.CLASSES, **kwargs)


def clean_xy(n: int = 256, seed: int = 0):
    return tiny.blobs(n, seed)


# ---- reading the splits --------------------------------------------------------------------------------------------


def test_read_split_samples_large_splits_and_says_so():
    task = tiny.classification(n_train=300)
    part = read_split(task, "train", 100, 0)
    assert len(part.indices) == 100 and part.size == 300 and part.sampled
    assert torch.equal(part.inputs, task.train.x[part.indices])
    assert "random sample of 100 of 300" in part.scope
    assert not read_split(task, "train", 1000, 0).sampled


def test_read_split_goes_through_the_dataset_path():
    from torch.utils.data import TensorDataset

    x, y = clean_xy(64)
    task = Task(train=TensorDataset(x, y), val=TensorDataset(x, y), model=tiny.MLP, num_classes=tiny.CLASSES)
    part = read_split(task, "train", 1000, 0)
    assert torch.equal(part.inputs, x) and torch.equal(part.targets, y)


def test_summary_reports_sizes_shapes_and_classes():
    check = summary(*splits(tiny.classification()), tiny.classification())
    assert check.status == "pass"
    assert check.value["train"]["size"] == 256 and check.value["val"]["size"] == 128
    assert check.value["train"]["input_shape"] == [tiny.FEATURES]
    assert check.value["num_classes"] == tiny.CLASSES


# ---- non_finite ----------------------------------------------------------------------------------------------------


def test_non_finite_passes_on_clean_data():
    assert non_finite_data(*splits(tiny.classification())).status == "pass"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_fails_and_names_the_rows(bad):
    x, y = clean_xy()
    x[[5, 17], 3] = bad
    train, val = splits(with_data(x, y))
    check = non_finite_data(train, val)
    assert check.status == "fail"
    assert check.value["train_inputs"] == {"samples": 2, "first_indices": [5, 17]}
    assert len(finite_rows(train).indices) == 254


def test_non_finite_counts_targets_too():
    x, y = clean_xy()
    train, val = splits(with_data(x, y))
    train.targets = train.targets.float()
    train.targets[3] = float("nan")
    assert non_finite_data(train, val).value["train_targets"]["first_indices"] == [3]


class Imputing(nn.Module):
    """Missing inputs read as 0 beside an indicator per feature, inside the model."""

    def __init__(self):
        super().__init__()
        self.net = tiny.MLP(features=2 * tiny.FEATURES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(x)
        return self.net(torch.cat([torch.nan_to_num(x), missing.float()], 1))


class MaskedAfterTheLayer(tiny.MLP):
    """Zeroes the NaN after the first layer: the output is finite, the first layer's gradient is not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        return self.head(F.relu(self.l2(F.relu(torch.where(torch.isnan(h), 0.0, h)))))


@pytest.mark.parametrize(("model", "status"), [(Imputing, "pass"), (tiny.MLP, "fail"), (MaskedAfterTheLayer, "fail")])
def test_non_finite_passes_only_when_a_fresh_model_gives_a_finite_loss_and_gradient_on_those_rows(model, status):
    x, y = clean_xy()
    x[[5, 17, 40], 3] = float("nan")
    task = with_data(x, y).replace(model=model)
    check = non_finite_data(*splits(task), finite_loss_on(task, torch.device("cpu")))
    assert check.status == status, check.message
    assert check.value["train_inputs"]["first_indices"] == [5, 17, 40]
    assert ("the model or the loss handles them" in check.message) == (status == "pass")


def masked_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Missing targets (NaN) are left out of the loss."""
    known = ~torch.isnan(target)
    return F.mse_loss(output[known], target[known])


@pytest.mark.parametrize(("loss", "status"), [(masked_mse, "pass"), ("mse", "fail")])
def test_non_finite_targets_masked_by_the_loss_pass(loss, status):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = x @ torch.randn(4, 2, generator=g)
    y[[3, 30], 1] = float("nan")
    task = Task((x[:200], y[:200]), (x[200:], y[200:]), lambda: nn.Linear(4, 2), loss=loss, kind="regression")
    check = non_finite_data(*splits(task), finite_loss_on(task, torch.device("cpu")))
    assert check.status == status, check.message


def test_a_model_that_imputes_missing_inputs_runs_inspect_and_baseline_without_a_fail(tmp_path):
    x, y = tiny.blobs(600, 0)
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.05] = float("nan")
    task = Task((x[:450], y[:450]), (x[450:], y[450:]), Imputing, num_classes=tiny.CLASSES)
    result = Recipe(task, run_dir=tmp_path / "run", stages=["inspect", "baseline"], device="cpu").run()
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["non_finite"] == "pass" and statuses["label_noise"] in ("pass", "warn")
    assert not [c.name for c in result.checks if c.status in ("fail", "error")]


def test_the_model_probes_read_finite_rows_so_nan_inputs_are_blamed_on_the_data_alone(tmp_path):
    """NaN in the inputs and a plain MLP, with keep_going: the fits fail naming the non-finite samples, but the
    probes that judge the model itself (eval_deterministic said 'dropout active', init_symmetry 'every unit
    identical', loss_at_init 'NaN from a log or division') read the batch's finite rows and pass."""
    x, y = tiny.blobs(600, 0)
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.02] = float("nan")
    task = Task((x[:450], y[:450]), (x[450:], y[450:]), tiny.MLP, num_classes=tiny.CLASSES)
    result = Recipe(task, run_dir=tmp_path / "run", stages=["inspect", "baseline"], device="cpu", keep_going=True)
    statuses = {(c.stage, c.name): c.status for c in result.run().checks}
    assert statuses[("inspect", "non_finite")] == statuses[("baseline", "non_finite")] == "fail"
    for probe in ("loss_at_init", "eval_deterministic", "init_symmetry", "batch_independence", "params_update"):
        assert statuses[("baseline", probe)] == "pass", probe


def test_finite_rows_batch_keeps_the_rows_whose_float_tensors_are_finite():
    from recipe.diagnostics.integrity import finite_rows_batch

    x, y = torch.randn(6, 3), torch.arange(6)
    x[[1, 4], 2] = float("inf")
    kept_x, kept_y = finite_rows_batch((x, y))
    assert kept_y.tolist() == [0, 2, 3, 5] and torch.isfinite(kept_x).all()
    pairs = finite_rows_batch({"a": x, "ids": y, "note": "kept"})
    assert pairs["ids"].tolist() == [0, 2, 3, 5] and pairs["note"] == "kept"
    assert finite_rows_batch((torch.ones(3, 2), y[:3]))[1].tolist() == [0, 1, 2]  # all finite: the batch itself


# ---- target_range --------------------------------------------------------------------------------------------------


def test_target_range_passes_on_clean_labels():
    task = tiny.classification()
    assert target_range(*splits(task), task).status == "pass"


def test_target_range_fails_when_a_validation_class_is_missing_from_training():
    x, y = clean_xy()
    keep = y != 2
    task = with_data(x[keep], y[keep])
    check = target_range(*splits(task), task)
    assert check.status == "fail" and check.value["missing_in_train"] == [2]
    assert "never in training" in check.message


def test_target_range_warns_when_few_samples_per_class_leave_classes_out_by_chance():
    """1,000 classes of 4 samples split at random, 3 in 4 to training: a class lands wholly in validation with
    probability 1/256, so about 4 go missing by chance. That is not a sorted split; it warns."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(1000, 8, generator=g)
    y = torch.arange(1000).repeat(4)[torch.randperm(4000, generator=g)]
    x = centres[y] + 0.3 * torch.randn(4000, 8, generator=g)
    task = Task((x[:3000], y[:3000]), (x[3000:], y[3000:]), lambda: nn.Linear(8, 1000), num_classes=1000)
    check = target_range(*splits(task), task)
    assert check.value["missing_in_train"] and check.value["missing_by_chance"] == pytest.approx(3.9, abs=0.1)
    assert check.status == "warn" and "by chance" in check.message, check.message
    sorted_split = Task((x[:3000], y[:3000].clamp(max=899)), (x[3000:], y[3000:]), lambda: nn.Linear(8, 1000))
    check = target_range(*splits(sorted_split), sorted_split)  # classes 900..999 only in validation: no chance
    assert check.status == "fail" and "sorted by label" in check.message


def test_target_range_warns_when_a_class_is_rare_in_training():
    x, y = clean_xy(1000)
    rows = (y == 1).nonzero().flatten()
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[rows[2:]] = False  # 2 samples of class 1 left in training
    task = with_data(x[keep], y[keep])
    check = target_range(*splits(task), task)
    assert check.status == "warn" and check.value["rare_in_train"] == [1]


def test_target_range_fails_on_labels_beyond_num_classes():
    task = tiny.classification()
    train, val = splits(task)
    train.targets = train.targets.clone()
    train.targets[0] = tiny.CLASSES + 3
    assert target_range(train, val, task).status == "fail"


def test_target_range_regression_warns_with_the_standardisation():
    clean = tiny.regression()
    assert target_range(*splits(clean), clean).status == "pass"
    offset = tiny.regression(offset=500.0)
    check = target_range(*splits(offset), offset)
    assert check.status == "warn" and "Standardise" in check.message and "(y - 50" in check.message


def regression_targets(y: torch.Tensor) -> Task:
    x = torch.randn(len(y), tiny.FEATURES, generator=torch.Generator().manual_seed(0))
    return Task(train=(x[:300], y[:300]), val=(x[300:], y[300:]), model=tiny.MLP, loss="mse", kind="regression")


def test_target_range_passes_an_autoencoders_near_constant_background_columns():
    """Reconstruction targets: most pixels vary, a few (the background) barely do. Standardising those would magnify
    their noise; the targets' pooled scale is fine. Their twin, targets that are all that small, still warns."""
    g = torch.Generator().manual_seed(1)
    varying, background = torch.randn(400, 56, generator=g), 0.01 * torch.randn(400, 8, generator=g) - 0.8
    task = regression_targets(torch.cat([varying, background], 1))
    assert target_range(*splits(task), task).status == "pass"
    tiny_scale = regression_targets(0.01 * torch.randn(400, 3, generator=g))
    check = target_range(*splits(tiny_scale), tiny_scale)
    assert check.status == "warn" and "scale" in check.message


def test_target_range_leaves_the_scale_to_a_callable_loss():
    """Counts of mean 20 under Poisson NLL: the output is a log rate, and standardising counts would break the
    loss. The same counts under MSE still warn."""
    counts = torch.poisson(torch.full((400, 1), 20.0), generator=torch.Generator().manual_seed(3))
    poisson = regression_targets(counts).replace(loss=lambda o, t: F.poisson_nll_loss(o, t, log_input=True))
    check = target_range(*splits(poisson), poisson)
    assert check.status == "pass" and "not judged" in check.message, check.message
    mse = regression_targets(counts)
    assert target_range(*splits(mse), mse).status == "warn"


def test_target_range_names_the_column_that_is_off():
    g = torch.Generator().manual_seed(2)
    y = torch.cat([2 * torch.randn(400, 1, generator=g), torch.randn(400, 1, generator=g) + 40], 1)
    task = regression_targets(y)
    check = target_range(*splits(task), task)
    assert check.status == "warn" and "(column 1 of 2)" in check.message and "offset" in check.message


# ---- class_balance -------------------------------------------------------------------------------------------------


def test_class_balance_passes_on_a_random_split():
    task = tiny.classification()
    check = class_balance(*splits(task), task)
    assert check.status == "pass", check.message


def test_class_balance_fails_on_a_split_cut_from_sorted_labels():
    x, y = clean_xy(400)
    order = y.argsort()
    x, y = x[order], y[order]
    task = with_data(x[:300], y[:300], x[300:], y[300:])  # validation holds the last classes only
    check = class_balance(*splits(task), task)
    assert check.status == "fail" and check.value["total_variation"] > 0.5
    assert check.value["confined_classes"] == [0, 1, 2] and "almost only in one split" in check.message


def test_class_balance_warns_on_a_validation_set_balanced_on_purpose():
    """Training labels as they come (class 0 at 85%), validation balanced by design: as far apart as a sorted cut
    (TV 0.6), but every class is in both splits in numbers a sampler chose, so it warns and says so."""
    x, y = clean_xy(4000)
    y = torch.where(torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.8, 0, y)
    x_val, y_val = clean_xy(800, seed=1)
    task = with_data(x, y, x_val, y_val)
    check = class_balance(*splits(task), task)
    assert check.value["total_variation"] > 0.5 and check.value["confined_classes"] == []
    assert check.status == "warn" and "balanced on purpose" in check.message, check.message


def test_class_balance_warns_on_a_moderate_shift():
    x, y = clean_xy(3000)
    x_val, y_val = clean_xy(3000, seed=1)
    # validation: class 0 cut to a third of its share, beyond sampling noise but not a sorted split
    drop = (y_val == 0).nonzero().flatten()[: 2 * int((y_val == 0).sum()) // 3]
    keep = torch.ones(len(y_val), dtype=torch.bool)
    keep[drop] = False
    task = with_data(x, y, x_val[keep], y_val[keep])
    check = class_balance(*splits(task), task)
    assert check.status == "warn", check.message


def test_class_balance_warns_when_one_class_dominates():
    x, y = clean_xy(2000)
    y = torch.where(torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.97, 0, y)
    x_val, y_val = clean_xy(600, seed=1)
    y_val = torch.where(torch.rand(len(y_val), generator=torch.Generator().manual_seed(1)) < 0.97, 0, y_val)
    task = with_data(x, y, x_val, y_val)
    check = class_balance(*splits(task), task)
    assert check.status == "warn" and "constant prediction" in check.message


def test_class_balance_skips_regression():
    task = tiny.regression()
    assert class_balance(*splits(task), task).status == "skip"


# ---- input_stats ---------------------------------------------------------------------------------------------------


def test_input_stats_passes_on_standardised_inputs_and_names_constant_features_as_information():
    x, _ = clean_xy()
    x[:, 4] = 0.0
    check, stats = input_stats(x)
    assert check.status == "pass" and check.value["constant_feature_indices"] == [4]
    assert "constant" in check.message and len(stats["mean"]) == tiny.FEATURES


@pytest.mark.parametrize("scale,offset", [(255.0, 0.0), (1.0, 1000.0), (1e-3, 0.0)])
def test_input_stats_warns_far_from_unit_scale(scale, offset):
    x, _ = clean_xy()
    check, _ = input_stats(x * scale + offset)
    assert check.status == "warn" and "Standardise" in check.message


def test_input_stats_gives_per_channel_normalisation_for_images():
    images = torch.rand(64, 3, 8, 8) * 255
    check, stats = input_stats(images)
    assert check.status == "warn" and "Normalize(mean=" in check.message and len(stats["mean"]) == 3


# ---- split_shift ---------------------------------------------------------------------------------------------------


def test_auc_matches_a_reference():
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (500,), generator=g).float()  # ties included
    labels = torch.rand(500, generator=g) < 0.3
    assert auc(scores, labels) == pytest.approx(sklearn.roc_auc_score(labels.numpy(), scores.numpy()))


def test_domain_auc_is_near_half_for_one_distribution_and_one_for_a_scale_change():
    a, b = torch.randn(600, 10), torch.randn(300, 10)
    assert abs(domain_auc(a, b) - 0.5) < 0.1
    assert domain_auc(a, 3 * b) > 0.9  # same mean, different scale: the squared features see it


def test_split_shift_passes_on_a_random_split():
    task = tiny.classification()
    check = split_shift(*splits(task))
    assert check.status == "pass", check.message


def test_split_shift_fails_when_validation_is_preprocessed_differently():
    x, y = clean_xy(600)
    x_val, y_val = clean_xy(300, seed=1)
    task = with_data(x * 4 + 3, y, x_val, y_val)  # training left unstandardised
    check = split_shift(*splits(task))
    assert check.status == "fail" and check.value["auc"] > 0.95
    assert "Most different features" in check.message


def test_split_shift_warns_on_a_mild_shift():
    x, y = clean_xy(2000)
    x_val, y_val = clean_xy(1000, seed=1)
    x_val[:, 0] += 0.4
    task = with_data(x, y, x_val, y_val)
    check = split_shift(*splits(task))
    assert check.status == "warn", check.message
    assert check.value["most_different_features"][0]["feature"] == 0


def test_split_shift_names_no_constant_feature_among_the_most_different():
    """Digits split in file order (other writers in validation, a true shift), standardised with one mean and std:
    pixels 0, 32 and 39 are background in every image and hold one value in both splits. Their two means differed
    by the rounding of their sums over a standard deviation of zero, and they led the list with a mean shift of
    -59604 sd ahead of the pixels that moved."""
    from sklearn.datasets import load_digits

    x, y = (torch.tensor(a) for a in load_digits(return_X_y=True))
    x = x.float()
    x = (x - x[:1437].mean()) / x[:1437].std()
    check = split_shift(*splits(with_data(x[:1437], y[:1437], x[1437:], y[1437:])))
    named = check.value["most_different_features"]
    assert check.status == "warn", check.message
    assert not {f["feature"] for f in named} & {0, 32, 39} and all(abs(f["smd"]) < 10 for f in named), named


def test_split_shift_skips_token_inputs():
    task = tiny.sequence()
    assert split_shift(*splits(task)).status == "skip"


# ---- duplicates ----------------------------------------------------------------------------------------------------


def test_duplicates_pass_on_distinct_samples():
    task = tiny.classification()
    check = duplicates(*splits(task), task)
    assert check.status == "pass" and check.value["val_rows_in_train"] == 0


def test_duplicates_fail_on_validation_rows_copied_from_training():
    x, y = clean_xy()
    x_val, y_val = clean_xy(128, seed=1)
    x_val[:10], y_val[:10] = x[:10], y[:10]
    task = with_data(x, y, x_val, y_val)
    check = duplicates(*splits(task), task)
    assert check.status == "fail" and sorted(check.value["val_indices_in_train"]) == list(range(10))


def test_duplicates_tolerate_a_chance_twin_in_a_small_split():
    x, y = clean_xy(120)
    x_val, y_val = clean_xy(30, seed=1)
    x_val[0], y_val[0] = x[0], y[0]  # iris holds one such pair
    task = with_data(x, y, x_val, y_val)
    assert duplicates(*splits(task), task).status == "pass"


def test_duplicates_warn_on_identical_inputs_with_different_labels():
    x, y = clean_xy()
    x[1], y[1] = x[0], (y[0] + 1) % tiny.CLASSES
    task = with_data(x, y)
    check = duplicates(*splits(task), task)
    assert check.status == "warn" and check.value["conflicting_label_groups"][0]["samples"] == ["train[0]", "train[1]"]


def test_duplicates_warn_on_many_repeated_training_rows():
    x, y = clean_xy()
    x[128:160], y[128:160] = x[:32], y[:32]
    task = with_data(x, y)
    assert duplicates(*splits(task), task).status == "warn"


def test_duplicates_fail_when_the_dataset_returns_the_same_few_samples():
    class SameSample(torch.utils.data.Dataset):
        def __len__(self):
            return 256

        def __getitem__(self, i):  # the bug: ignores i
            return torch.ones(tiny.FEATURES), torch.tensor(1)

    x_val, y_val = clean_xy(64, seed=1)
    task = Task(train=SameSample(), val=(x_val, y_val), model=tiny.MLP, num_classes=tiny.CLASSES)
    check = duplicates(*splits(task), task)
    assert check.status == "fail" and "ignores its index" in check.message


def test_duplicates_warn_on_near_copies_across_the_split():
    x, y = clean_xy(1000)
    x_val, y_val = clean_xy(300, seed=1)
    x_val[:30] = x[:30] + 0.01 * torch.randn(30, tiny.FEATURES, generator=torch.Generator().manual_seed(2))
    task = with_data(x, y, x_val, y_val)
    check = duplicates(*splits(task), task)
    assert check.status == "warn" and "near-duplicates" in check.message


# ---- outliers ------------------------------------------------------------------------------------------------------


def test_robust_z_ignores_the_outliers_themselves():
    values = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(0)), torch.tensor([1e6])])
    z = robust_z(values)
    assert abs(float(z[:-1].std()) - 1) < 0.1 and float(z[-1]) > 1e5


def test_outliers_pass_on_clean_data():
    task = tiny.classification()
    check, _ = outliers(read_split(task, "train", 10_000, 0))
    assert check.status == "pass", check.message


def test_outliers_warn_on_samples_in_other_units_and_rank_them_first():
    x, y = clean_xy()
    x[[7, 42]] *= 100
    check, info = outliers(read_split(with_data(x, y), "train", 10_000, 0))
    assert check.status == "warn" and check.value["beyond_threshold"] == 2
    assert {row["index"] for row in info["table"][:2]} == {7, 42}


def test_outliers_flag_a_blank_sample():
    x, y = clean_xy()
    x[3] = 0.0
    check, info = outliers(read_split(with_data(x, y), "train", 10_000, 0))
    assert check.status == "warn" and info["table"][0]["index"] == 3


def test_outliers_pass_one_feature_near_zero_and_still_flag_a_blank_image_among_many():
    """One feature drawn evenly from [-2, 2]: the smallest |x| of 3,000 lies 8 robust deviations below the median
    log norm, as a density around zero makes it (ln n / d below, d = 1). Among 20,000 images of 64 correlated
    pixels (effective dimension about 10) a blank one is still far beyond that allowance."""
    g = torch.Generator().manual_seed(0)
    one = torch.rand(3000, 1, generator=g) * 4 - 2
    z = robust_z(one.abs().flatten().log())
    assert float(z.min()) < -8  # what the check saw before the allowance
    check, _ = outliers(read_split(with_data(one, torch.zeros(3000, dtype=torch.long)), "train", 10_000, 0))
    assert check.status == "pass", check.message
    mixing = torch.randn(10, 64, generator=g)
    images = (torch.randn(20_000, 10, generator=g) @ mixing).sigmoid()  # pixels in (0, 1), as images are stored
    images[123] = 0.0
    check, _ = outliers(read_split(with_data(images, torch.zeros(20_000, dtype=torch.long)), "train", 30_000, 0))
    assert check.status == "warn" and check.value["beyond_threshold"] == 1 and "index 123" in check.message


def _standardised_with_rare_features(seed: int = 0) -> torch.Tensor:
    """1,500 rows: 20 Gaussian features, 8 pixels lit in 2-6 rows each and a 4-level one-hot category, then
    standardised column by column as StandardScaler does (constant columns left at 0)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(1500, 20, generator=g)
    rare = torch.zeros(1500, 8)
    for k in range(8):
        rows = torch.randperm(1500, generator=g)[: 2 + k % 5]
        rare[rows, k] = torch.rand(len(rows), generator=g) * 16
    onehot = F.one_hot(torch.multinomial(torch.tensor([0.9, 0.07, 0.02, 0.01]), 1500, True, generator=g), 4)
    x = torch.cat([dense, rare, onehot.float()], 1)
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-6)


def test_outliers_pass_rare_values_of_features_constant_in_most_samples():
    """Standardised, a pixel lit in 3 of 1,500 rows sits about 20 deviations out in those rows, and a category
    held by 1% at about 10: the rows holding them are not unlike the rest (the digits example scaled this way
    warned on 10 rows). The norm is read over the features that vary in most samples."""
    x = _standardised_with_rare_features()
    labels = torch.zeros(1500, dtype=torch.long)
    z_all = robust_z(x.norm(dim=1).log())
    assert float(z_all.max()) > 8  # what the check saw over every feature
    check, _ = outliers(read_split(with_data(x, labels), "train", 10_000, 0))
    assert check.status == "pass", check.message
    assert "20 of 32 features that vary" in check.message


@pytest.mark.parametrize("plant", ["scaled", "sentinel"])
def test_outliers_still_flag_a_scaled_row_or_a_sentinel_among_rare_features(plant):
    x = _standardised_with_rare_features()
    if plant == "scaled":
        x[[11, 222]] *= 100
    else:
        x[[11, 222], 3] = -999.0
    check, info = outliers(read_split(with_data(x, torch.zeros(1500, dtype=torch.long)), "train", 10_000, 0))
    assert check.status == "warn" and check.value["beyond_threshold"] == 2, check.message
    assert {row["index"] for row in info["table"][:2]} == {11, 222}


# ---- sequence_data -------------------------------------------------------------------------------------------------


def test_sequence_data_passes_on_clean_next_token_pairs():
    task = tiny.sequence()
    assert sequence_data(*splits(task), task).status == "pass"


def test_sequence_data_fails_on_token_ids_beyond_the_vocabulary():
    task = tiny.sequence()
    train, val = splits(task)
    train.inputs = train.inputs.clone()
    train.inputs[0, 0] = tiny.VOCAB + 5
    assert sequence_data(train, val, task).status == "fail"


def padded(pad_targets: bool) -> tuple[Task, int]:
    """Sequences of random lengths padded with id 0 (a token the stream never uses otherwise)."""
    task = tiny.sequence()
    pad = 0
    x, y = task.train.x.clone() % (tiny.VOCAB - 1) + 1, task.train.y.clone() % (tiny.VOCAB - 1) + 1
    lengths = torch.randint(4, tiny.LENGTH, (len(x),), generator=torch.Generator().manual_seed(0))
    for row, n in enumerate(lengths.tolist()):
        x[row, n:] = pad
        y[row, n:] = pad if pad_targets else -100
    return task.replace(train=(x, y), val=(x, y)), pad


def test_sequence_data_fails_when_padding_is_scored_as_a_target():
    task, pad = padded(pad_targets=True)
    check = sequence_data(*splits(task), task, pad_id=pad)
    assert check.status == "fail" and "ignore_index" in check.message
    clean, pad = padded(pad_targets=False)
    assert sequence_data(*splits(clean), clean, pad_id=pad).status == "pass"


def test_sequence_data_warns_when_the_pad_id_is_also_a_real_token():
    task = tiny.sequence()  # token 0 occurs inside every stream
    assert sequence_data(*splits(task), task, pad_id=0).status == "warn"


def test_inspect_checks_run_on_numpy_data_with_float64_inputs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)), rng.integers(0, 3, 200)
    task = Task(train=(x, y), val=(x[:50] + 0.01, y[:50]), model=lambda: torch.nn.Linear(5, 3), num_classes=3)
    train, val = splits(task)
    assert split_shift(train, val).status in ("pass", "warn", "fail")
    assert duplicates(train, val, task).status in ("pass", "warn", "fail")


def test_split_shift_reads_a_random_digits_split_with_a_pixel_lit_once():
    """Pixel 56 is lit in one image of 1,797: standardised, its square stands at about 1,794, the domain classifier's
    Newton fit separated its rows, every p(1 - p) underflowed and the solve raised "the input matrix is singular" (an
    error on a correct setup, for 1 split seed in 10)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from recipe.diagnostics.shift import domain_auc

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=5, stratify=y)
    x_train, x_val = (torch.tensor(a, dtype=torch.float32) for a in (x_train, x_val))
    mean, std = x_train.mean(), x_train.std()
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    assert abs(domain_auc(x_train, x_val) - 0.5) < 0.05
    task = with_data(x_train, torch.tensor(y_train), x_val, torch.tensor(y_val))
    assert split_shift(*splits(task)).status == "pass"
