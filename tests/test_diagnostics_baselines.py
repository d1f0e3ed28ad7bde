"""The dumb baselines, input_independent, simple_model and human_baseline."""

from __future__ import annotations

import math

import pytest
import torch

from recipe import fit
from recipe.diagnostics.baselines import (
    evaluate_exchanged,
    exchanged_inputs,
    human_baseline,
    input_independent,
    simple_model,
    trivial_baselines,
)
from recipe.evaluation import Evaluation, evaluate
from tests import tiny


def test_trivial_baselines_match_a_hand_computation():
    task = tiny.classification()
    check, figures = trivial_baselines(task)
    ytr, yva = task.targets("train"), task.targets("val")
    counts = torch.bincount(ytr, minlength=tiny.CLASSES).float() + 1
    prior = counts / counts.sum()
    assert figures["prior_loss"] == pytest.approx(float(-prior.log()[yva].mean()), rel=1e-5)
    assert figures["majority_accuracy"] == pytest.approx(float((yva == counts.argmax()).float().mean()))
    assert check.status == "pass"
    reg = tiny.regression()
    _, figures = trivial_baselines(reg)
    mse = ((reg.targets("val") - reg.targets("train").mean()) ** 2).mean()
    assert figures["mean_mse"] == pytest.approx(float(mse), rel=1e-5)


def test_trivial_baselines_sequence_is_unigram():
    task = tiny.sequence()
    _, figures = trivial_baselines(task)
    counts = torch.bincount(task.targets("train").reshape(-1), minlength=tiny.VOCAB).float() + 1
    log_prior = (counts / counts.sum()).log()
    assert figures["unigram_loss"] == pytest.approx(float(-log_prior[task.targets("val")].mean()), rel=1e-5)
    assert figures["unigram_loss"] < math.log(tiny.VOCAB) + 0.1


def _evaluation(losses):
    t = torch.tensor(losses)
    return Evaluation(float(t.mean()), float(t.std() / len(t) ** 0.5), 0.5, 0.01, len(t), t)


@pytest.mark.parametrize(
    ("real", "zeroed", "status"),
    [
        ([0.1, 0.2, 0.1, 0.3] * 10, [2.3, 2.2, 2.4, 2.3] * 10, "pass"),
        ([3.1, 3.4, 3.2, 3.3] * 10, [2.3, 2.2, 2.4, 2.3] * 10, "fail"),  # shuffled labels: worse than zeroed
        ([2.3, 2.2, 2.4, 2.3] * 10, [2.3, 2.2, 2.4, 2.3] * 10, "fail"),  # input ignored: the same
    ],
)
def test_input_independent_compares_paired_losses(real, zeroed, status):
    task = tiny.classification()
    assert input_independent(_evaluation(real), _evaluation(zeroed), task).status == status


def test_input_independent_end_to_end_on_shuffled_labels():
    clean = tiny.classification()
    x, y = clean.train.x, clean.train.y
    shuffled = clean.replace(train=(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]))
    verdicts = {}
    for name, task in (("clean", clean), ("shuffled", shuffled)):
        real = fit(task, epochs=None, max_steps=200, lr=3e-3, progress=False, device="cpu", evaluate_every_epoch=False)
        other = exchanged_inputs(task)
        exchanged = fit(
            other, epochs=None, max_steps=200, lr=3e-3, progress=False, device="cpu", evaluate_every_epoch=False
        )
        dev = torch.device("cpu")
        verdicts[name] = input_independent(
            evaluate(task, real.model, task.val, dev), evaluate_exchanged(other, exchanged.model, dev, 0), task
        ).status
    assert verdicts == {"clean": "pass", "shuffled": "fail"}


def test_simple_model_warns_only_when_the_reference_learns_and_the_model_does_not():
    task = tiny.classification()
    learned, constant = _evaluation([0.2] * 20), _evaluation([1.38] * 20)
    assert simple_model(learned, learned, 1.386, task, "linear").status == "pass"
    assert simple_model(constant, learned, 1.386, task, "linear").status == "warn"
    neither = simple_model(constant, constant, 1.386, task, "linear")  # the reference cannot learn it either
    assert neither.status == "skip" and "neither model beat it" in neither.message
    assert simple_model(learned, constant, 1.386, task, "linear").status == "pass"  # yours learned: reported


def test_human_baseline_is_reported_when_given():
    task = tiny.classification()
    ev = _evaluation([0.2] * 4)
    assert human_baseline(None, ev, task).status == "skip"
    check = human_baseline(0.97, ev, task)
    assert check.status == "pass" and check.value["human"] == 0.97


def test_input_independent_skips_when_the_short_run_did_not_train_at_all():
    from recipe.diagnostics.baselines import input_independent, trained_at_all

    flat = [1.386 + 0.001 * ((i * 7) % 5) for i in range(300)]  # a rate far too low: no fall beyond noise
    memorised = [1.386 * 0.997**i for i in range(300)]  # shuffled labels still get memorised
    assert not trained_at_all(flat) and trained_at_all(memorised)
    same = Evaluation(loss=1.386, loss_se=0.01, metric=0.25, metric_se=0.02, n=128)
    task = tiny.classification()
    assert input_independent(same, same, task, flat).status == "skip"
    assert input_independent(same, same, task, memorised).status == "fail"


def test_input_independent_reads_a_loss_below_zero_without_a_relative_floor():
    """Poisson NLL of counts near 30 drops log(y!): losses near -36, where 2% of the level (0.72) is an offset's
    share, not a scale. A model 0.61 better with real inputs than exchanged ones uses them (it failed before)."""
    task = tiny.regression()
    real = Evaluation(loss=-36.33, loss_se=0.05, metric=4.0, metric_se=0.1, n=360)
    exchanged = Evaluation(loss=-35.72, loss_se=0.05, metric=5.0, metric_se=0.1, n=360)
    assert input_independent(real, exchanged, task, constant=-35.7).status == "pass"
    same = Evaluation(loss=-35.72, loss_se=0.05, metric=5.0, metric_se=0.1, n=360)
    assert input_independent(same, exchanged, task, constant=-35.7).status == "fail"  # no gain at all still fails
    positive = Evaluation(loss=2.30, loss_se=0.0, metric=0.1, metric_se=0.0, n=360)
    slightly = Evaluation(loss=2.29, loss_se=0.0, metric=0.1, metric_se=0.0, n=360)
    assert input_independent(slightly, positive, tiny.classification()).status == "fail"  # within 2% of 2.30
