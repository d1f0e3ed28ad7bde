"""The regularisation checks, each on a clean case and on the planted case it exists to catch."""

from __future__ import annotations

import pytest
import torch

from examples import digits
from recipe import Task, fit
from recipe.diagnostics.filters import first_layer, first_layer_filters
from recipe.diagnostics.regularization import (
    Trial,
    augmentation_invariances,
    augmentation_overfit,
    best_trial,
    chosen_regularization,
    feature_ablation,
    improves,
    more_data,
    paired_gain,
    regularizer,
)
from recipe.evaluation import Evaluation, evaluate
from recipe.task import TRANSFORMS
from tests import tiny


def trial(label: str, losses: torch.Tensor, train_loss: float = 0.0) -> Trial:
    """A trial whose validation per-sample losses are `losses`."""
    n = len(losses)
    val = Evaluation(float(losses.mean()), float(losses.std() / n**0.5), 0.9, 0.01, n, losses)
    return Trial(label, {"weight_decay": 0.1}, val, train_loss)


REFERENCE = torch.rand(400, generator=torch.Generator().manual_seed(0)) + 0.5


@pytest.mark.parametrize(
    ("shift", "seed_noise", "kept"),
    [
        (0.2, 0.0, True),  # every sample 0.2 better: far beyond the paired SE (0)
        (0.0, 0.0, False),  # the same losses
        (-0.2, 0.0, False),  # worse
        (0.2, 0.15, False),  # a gain smaller than twice the seed-to-seed difference is noise
    ],
)
def test_improves_needs_a_gain_beyond_paired_se_and_seed_noise(shift, seed_noise, kept):
    reference, candidate = trial("reference", REFERENCE), trial("candidate", REFERENCE - shift)
    assert improves(reference, candidate, seed_noise) is kept
    assert paired_gain(reference.val, candidate.val)[0] == pytest.approx(shift, abs=1e-6)


def test_paired_gain_sees_through_per_sample_noise_that_an_unpaired_test_cannot():
    noise = torch.randn(400, generator=torch.Generator().manual_seed(1))
    reference, candidate = trial("a", REFERENCE + noise), trial("b", REFERENCE + noise - 0.05)
    gain, se = paired_gain(reference.val, candidate.val)
    assert gain == pytest.approx(0.05, abs=1e-5) and se < 1e-5
    assert reference.val.loss_se > 0.04  # unpaired, a 0.05 gain would sit within about one SE


def test_best_trial_is_the_lowest_validation_loss_among_improvements_and_diverged_runs_never_win():
    reference = trial("reference", REFERENCE)
    small, large, diverged = trial("small", REFERENCE - 0.1), trial("large", REFERENCE - 0.3), Trial("nan")
    assert best_trial(reference, [small, diverged, large], 0.0) is large
    assert best_trial(reference, [diverged], 0.0) is None
    check = regularizer("weight_decay", reference, [small, diverged, large], 0.0)
    assert check.status == "pass" and check.value["kept"] == "large" and "nan: diverged" in check.message
    left_out = regularizer("weight_decay", reference, [trial("worse", REFERENCE + 0.1)], 0.0)
    assert left_out.status == "pass" and left_out.value["kept"] is None and "Left out" in left_out.message


def test_more_data_says_whether_the_learning_curve_still_falls():
    falling = [(100, trial("25", REFERENCE + 0.6)), (200, trial("50", REFERENCE + 0.3)), (400, trial("all", REFERENCE))]
    flat = [(100, trial("25", REFERENCE + 0.3)), (200, trial("50", REFERENCE)), (400, trial("all", REFERENCE))]
    assert "more data would likely help" in more_data(falling, 0.0).message
    assert "would help little" in more_data(flat, 0.0).message
    assert more_data([(100, Trial("nan")), (400, trial("all", REFERENCE))], 0.0).status == "skip"


# ---- augmentation ------------------------------------------------------------------------------------------------


def flat_images(transform):
    """An augmentation on the 64 flat digit pixels that applies an image transform to half of the samples."""

    def augment(x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, 1, 8, 8)
        chosen = (torch.rand(len(x)) < 0.5).reshape(-1, 1, 1, 1)
        return torch.where(chosen, transform(images), images).reshape(len(x), -1)

    return augment


def shift_one_pixel(x: torch.Tensor) -> torch.Tensor:
    dy, dx = torch.randint(-1, 2, (2,)).tolist()
    return torch.roll(x.reshape(-1, 1, 8, 8), (dy, dx), (-2, -1)).reshape(len(x), -1)


@pytest.fixture(scope="module")
def digit_inputs():
    task = digits.make_task()
    inputs, _ = task.split_batch(task.sample_batch("train", 64, seed=0))
    return task, inputs


@pytest.mark.parametrize(
    ("augment", "invariances", "status"),
    [
        (flat_images(TRANSFORMS["hflip"]), {"hflip": False}, "fail"),  # Karpathy's flipped images, labels unflipped
        (flat_images(TRANSFORMS["rot180"]), {"rot180": False}, "fail"),  # 6 <-> 9
        (flat_images(TRANSFORMS["hflip"]), {}, "warn"),  # applies a flip nobody declared: look, then declare
        (flat_images(TRANSFORMS["hflip"]), {"hflip": True}, "pass"),
        (shift_one_pixel, {"hflip": False}, "pass"),  # label-preserving, and no declared transform applied
        (lambda x: x + 0.1 * torch.randn_like(x), {}, "pass"),
        (lambda x: x, {}, "warn"),  # an augmentation that does nothing
    ],
)
def test_augmentation_invariances(digit_inputs, augment, invariances, status):
    task, inputs = digit_inputs
    task = task.replace(augmentation=augment, invariances=invariances)
    torch.manual_seed(0)
    check = augmentation_invariances(task, inputs, task.augment(inputs.clone()))
    assert check.status == status, check.message


def test_augmentation_invariances_skips_inputs_that_are_not_images():
    task = tiny.classification(augment=lambda x: x + 0.1 * torch.randn_like(x))
    inputs, _ = task.split_batch(task.sample_batch("train", 16, seed=0))
    assert augmentation_invariances(task, inputs, task.augment(inputs)).status == "skip"


@pytest.mark.parametrize(
    ("losses", "status"),
    [
        ([2.3 - 2.29 * i / 299 for i in range(300)], "pass"),  # memorised under augmentation
        ([2.3] * 300, "fail"),  # stuck at the constant prediction: the inputs carry no label any more
        ([2.3 - 0.7 * i / 299 for i in range(300)], "fail"),  # shuffled pixels: 0.70 of the constant loss
    ],
)
def test_augmentation_overfit(losses, status):
    assert augmentation_overfit(losses, reference=2.3, batch_size=16).status == status


# ---- feature ablation and first layer ----------------------------------------------------------------------------


def test_feature_ablation_names_pure_noise_features_and_keeps_informative_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(768, 6, generator=g)
    y = (x[:, :3] @ torch.tensor([1.0, -1.0, 0.5]) > 0).long()  # features 3, 4, 5 are pure noise
    task = Task(train=(x[:512], y[:512]), val=(x[512:], y[512:]), model=lambda: tiny.MLP(out=2, features=6))
    model = fit(task, epochs=20, batch_size=64, lr=3e-3, device="cpu", progress=False).model
    inputs, target = task.split_batch(task.batch("val", list(range(len(task.val)))))
    check = feature_ablation(task, model, inputs, target)
    assert check.status == "pass"
    assert {3, 4, 5} <= set(check.value["candidates"]) and not {0, 1, 2} & set(check.value["candidates"])
    assert "candidates to remove" in check.message


def test_feature_ablation_skips_images_and_tokens():
    task = digits.make_task()
    inputs, target = task.split_batch(task.sample_batch("val", 32, seed=0))
    assert feature_ablation(task, task.make_model(), inputs, target).status == "skip"
    seq = tiny.sequence()
    inputs, target = seq.split_batch(seq.sample_batch("val", 8, seed=0))
    assert feature_ablation(seq, seq.make_model(), inputs, target).status == "skip"


@pytest.fixture(scope="module")
def digits_task():
    return digits.make_task()


def test_first_layer_passes_trained_weights_and_warns_on_noise(digits_task):
    inputs, _ = digits_task.split_batch(digits_task.sample_batch("val", 4, seed=0))
    trained = fit(digits_task, epochs=5, batch_size=64, lr=1e-3, device="cpu", progress=False).model
    layer, filters = first_layer_filters(trained, digits_task, inputs)
    assert layer == "net.0" and filters.shape == (128, 1, 8, 8)
    assert first_layer(filters, layer).status == "pass"
    torch.manual_seed(0)
    _, untrained = first_layer_filters(digits.MLP(), digits_task, inputs)
    check = first_layer(untrained, layer)
    assert check.status == "warn" and "looks like noise" in check.message
    # noise around a per-filter offset: neighbours correlate 0.9, as they do once shuffled (the former null passed it)
    offset = untrained + 3 * untrained.std() * torch.randn(len(untrained), 1, 1, 1, generator=torch.Generator())
    check = first_layer(offset, layer)
    assert check.status == "warn" and check.value["neighbour_correlation"] > 0.5
    # the clean twin: the same offsets on trained filters keep their structure
    assert first_layer(filters + 3 * filters.std() * torch.randn(len(filters), 1, 1, 1), layer).status == "pass"


def test_noise_like_filters_of_a_model_that_learned_pass(digits_task):
    """A spectrogram CNN at 100% validation accuracy was told its first layer "barely trained": tones in noise call
    for no smooth 3x3 filters. Noise-like filters mean little training only where the model did not learn."""
    inputs, _ = digits_task.split_batch(digits_task.sample_batch("val", 4, seed=0))
    torch.manual_seed(0)
    layer, untrained = first_layer_filters(digits.MLP(), digits_task, inputs)
    check = first_layer(untrained, layer, learned=(0.05, 2.3))
    assert check.status == "pass" and "the model learned" in check.message, check.message
    assert first_layer(untrained, layer, learned=(1.9, 2.3)).status == "warn"  # little learned: barely trained


def test_first_layer_skips_filters_too_small_to_judge():
    torch.manual_seed(0)
    filters = digits.CNN().features[0].weight.detach()  # 16 filters of 3x3: the shuffled null spreads ±0.06
    check = first_layer(filters, "features.0")
    assert check.status == "skip" and "too few weights" in check.message


def test_first_layer_filters_of_a_convnet_and_none_for_tabular_models(digits_task):
    cnn_task = digits.make_task("cnn")
    inputs, _ = cnn_task.split_batch(cnn_task.sample_batch("val", 2, seed=0))
    layer, filters = first_layer_filters(digits.CNN(), cnn_task, inputs)
    assert layer == "features.0" and filters.shape == (16, 1, 3, 3)
    task = tiny.classification()
    inputs, _ = task.split_batch(task.sample_batch("val", 2, seed=0))
    assert first_layer_filters(task.make_model(), task, inputs) is None


def test_chosen_regularization_reports_before_and_after(digits_task):
    model = digits_task.make_model()
    val = evaluate(digits_task, model, digits_task.val, torch.device("cpu"))
    start, final = Trial("reference", {}, val, 0.1), Trial("weight_decay=0.1", {"weight_decay": 0.1}, val, 0.2)
    check = chosen_regularization(start, final, ["weight_decay=0.1"], "accuracy")
    assert check.status == "pass" and "kept weight_decay=0.1" in check.message
    assert check.value["val_accuracy"] == [val.metric, val.metric]


def test_correlated_features_are_shuffled_as_a_group():
    from recipe.diagnostics.regularization import correlated_groups, feature_ablation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=g)
    x[:, 1] = x[:, 0] + 0.01 * torch.randn(512, generator=g)  # a near-copy of feature 0
    y = (x[:, 0] > 0).long()
    assert correlated_groups(x) == [[0, 1], [2]]
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():  # reads the copy only: shuffling feature 0 alone would cost nothing
        model.weight.copy_(torch.tensor([[0.0, -5.0, 0.0], [0.0, 5.0, 0.0]]))
        model.bias.zero_()
    task = Task(train=(x, y), val=(x, y), model=lambda: torch.nn.Linear(3, 2), num_classes=2)
    check = feature_ablation(task, model, x, y)
    assert check.value["candidates"] == [2] and check.value["correlated_groups"] == [[0, 1]]
