"""overfit_batch verdicts and causes, and the learning-rate suggestion read off range-test curves."""

from __future__ import annotations

import math

import pytest

from recipe.diagnostics.optimization import (
    exponential_ramp,
    lr_range,
    overfits_batch,
    softmax_floor,
    still_falling,
    suggest_lr,
)
from tests import tiny


def test_softmax_floor_matches_the_catalog():
    assert softmax_floor(10) == pytest.approx(1.461, abs=1e-3)


@pytest.mark.parametrize(
    ("losses", "metric", "status", "words"),
    [
        ([1.4 * 0.97**i for i in range(300)], 1.0, "pass", "memorised"),
        ([1.40] + [softmax_floor(tiny.CLASSES)] * 299, 1.0, "fail", "floor of probabilities"),
        ([1.4] + [0.6] * 299, 1.0, "fail", "bounded"),
        ([1.4] + [1.1] * 299, 0.6, "fail", "plateaued"),
        ([1.4] + [1.39] * 299, 0.3, "fail", "hardly moved"),
        ([1.4 + 0.1 * i for i in range(300)], 0.0, "fail", "rose"),
        ([1.4 * 0.995**i for i in range(300)], 1.0, "skip", "still falling"),  # a budget too small is not a bug
        ([1.4 * 0.97**i for i in range(100)] + [0.05] * 200, 0.9375, "pass", "near-ties"),  # one tie in 16: no bug
    ],
)
def test_overfits_batch(losses, metric, status, words):
    check = overfits_batch(losses, metric, reference=1.38, task=tiny.classification(), batch_size=16)
    assert check.status == status and words in check.message, check.message


def _curve(lrs, valley_at=1e-2, diverge_at=1.0):
    """A typical range-test curve: flat, then falling towards `valley_at`, then exploding past `diverge_at`."""
    out = []
    for lr in lrs:
        x = math.log10(lr / valley_at)
        loss = 2.3 - 1.5 / (1 + math.exp(-3 * (x + 1.5)))
        if lr > diverge_at:
            loss = float("nan")
        elif lr > valley_at:
            loss += 5 * x**2
        out.append(loss)
    return out


def test_suggest_lr_on_a_typical_curve():
    ramp = exponential_ramp(1e-7, 10.0, 100)
    lrs = [10.0 * ramp(i) for i in range(100)]
    losses = _curve(lrs)
    finite = [v for v in losses if math.isfinite(v)]
    out = suggest_lr(lrs[: len(finite)], finite)
    assert out["lr"] is not None
    assert 1e-4 < out["lr"] < 1e-2  # minimum/10 of a valley near 1e-2, after smoothing lag
    assert lr_range(lrs, finite, out, 3e-4).status == "pass"


def test_suggest_lr_ignores_an_early_spike_in_the_burn_in():
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    losses = _curve(lrs)
    losses = [v for v in losses if math.isfinite(v)]
    losses[1] = 50.0
    out = suggest_lr(lrs[: len(losses)], losses)
    assert out["lr"] is not None and out["burn_in_steps"] >= 3


def test_suggest_lr_says_so_when_the_curve_is_flat():
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    out = suggest_lr(lrs, [2.3] * 100)
    assert out["lr"] is None and "never fell" in out["reason"]
    assert lr_range(lrs, [2.3] * 100, out, 3e-4).status == "skip"


def test_suggest_lr_with_divergence_from_the_start():
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    out = suggest_lr(lrs, [2.3, 40.0, 900.0, 1e5, 1e7, 1e9])
    assert out["lr"] is None


def test_exponential_ramp_spans_the_range():
    ramp = exponential_ramp(1e-6, 1.0, 50)
    assert ramp(0) == pytest.approx(1e-6) and ramp(49) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("losses", "falling"),
    [
        ([1.4 * 0.995**i for i in range(300)], True),
        ([1.4] + [0.6] * 299, False),  # a floor
        ([1.4 * 0.97**i for i in range(100)] + [0.07] * 200, False),  # fell, then flat
        ([1.4 + 0.1 * i for i in range(300)], False),  # rising
        ([1.0, 0.5, 0.2], False),  # too short to tell
    ],
)
def test_still_falling(losses, falling):
    assert still_falling(losses) is falling
