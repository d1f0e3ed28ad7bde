"""Curve and ladder checks of `complexify`, on synthetic curves and evaluations (one planted case per check)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
import torch

from recipe.diagnostics.curves import (
    Rung,
    capacity,
    loss_spikes,
    lr_schedule,
    overfitting_onset,
    paired_difference,
    pick_rung,
    step_noise,
    still_improving,
)
from recipe.evaluation import Evaluation


def evaluation(losses: torch.Tensor) -> Evaluation:
    return Evaluation(
        float(losses.mean()), float(losses.std() / len(losses) ** 0.5), 0.0, None, len(losses), per_sample_loss=losses
    )


def per_sample(mean: float, n: int = 400, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, generator=torch.Generator().manual_seed(seed)) * 2 * mean).double()


def rung(name: str, train_mean: float, val_mean: float = 0.5, diverged_at: int | None = None) -> Rung:
    if diverged_at is not None:
        return Rung(name, 100, 1e-3, None, None, [1.0] * diverged_at + [math.nan], [], diverged_at)
    return Rung(name, 100, 1e-3, evaluation(per_sample(train_mean)), evaluation(per_sample(val_mean, seed=1)))


def decaying(steps: int = 200, noise: float = 0.02, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(steps, dtype=torch.float64)
    return (2.0 * torch.exp(-t / 40) + 0.1 + noise * torch.randn(steps, generator=g, dtype=torch.float64)).tolist()


def test_paired_difference_uses_the_same_samples():
    a = evaluation(per_sample(1.0))
    b = evaluation(a.per_sample_loss + 0.1)
    gap, se = paired_difference(a, b)
    assert abs(gap - 0.1) < 1e-9 and se < 1e-9  # a constant shift has no paired noise


def test_pick_rung_takes_the_smallest_that_fits_about_as_well():
    ladder = [rung("small", 0.8), rung("medium", 0.1), rung("large", 0.095)]
    assert pick_rung(ladder).name == "medium"
    assert pick_rung([rung("a", 1.0, diverged_at=5)]) is None


def test_capacity_passes_when_bigger_rungs_fit_better():
    ladder = [rung("small", 0.8), rung("large", 0.1)]
    check = capacity(ladder, pick_rung(ladder), constant=2.3)
    assert check.status == "pass" and check.value["chosen"] == "large"


def test_capacity_warns_when_a_bigger_rung_fits_worse():
    ladder = [rung("small", 0.2), rung("broken big", 1.5)]
    check = capacity(ladder, pick_rung(ladder), constant=2.3)
    assert check.status == "warn" and "broken big" in check.message


def test_capacity_warns_when_a_bigger_rung_diverges_and_fails_when_all_do():
    ladder = [rung("small", 0.2), rung("big", 0.0, diverged_at=7)]
    assert capacity(ladder, pick_rung(ladder), constant=2.3).status == "warn"
    assert capacity([rung("only", 0.0, diverged_at=3)], None, constant=2.3).status == "fail"


def test_capacity_names_the_rate_of_a_ladder_that_did_not_learn_and_advises_by_what_happened():
    """A ladder trained at 2.4e-7 (a range test read off noise) failed with "Lower the learning rate"; the rate is
    named now, and lowering it is advised only where a rung diverged."""
    flat = [rung("small", 2.4), rung("big", 2.35)]
    check = capacity(flat, pick_rung(flat), constant=2.3)
    assert check.status == "fail" and "at lr 0.001" in check.message and "Lower" not in check.message
    blown = [rung("small", 2.4), rung("big", 0.0, diverged_at=5)]
    check = capacity(blown, pick_rung(blown), constant=2.3)
    assert check.status == "fail" and "big diverged" in check.message and "lower the learning rate" in check.message


def test_capacity_does_not_split_hairs_between_rungs_that_both_fit():
    ladder = [rung("a", 0.004), rung("b", 0.02)]
    assert capacity(ladder, pick_rung(ladder), constant=2.3).status == "pass"


def test_lr_schedule_keeps_a_schedule_only_beyond_noise():
    constant = evaluation(per_sample(0.5))
    _, keep = lr_schedule(constant, evaluation(constant.per_sample_loss * 0.8), "cosine")
    assert keep
    noisy = constant.per_sample_loss + 0.01 * torch.randn(400, generator=torch.Generator().manual_seed(3)).double()
    check, keep = lr_schedule(constant, evaluation(noisy), "cosine")
    assert not keep and "constant rate" in check.message


def test_loss_spikes_pass_on_a_smooth_decay():
    assert loss_spikes(decaying()).status == "pass"


def test_loss_spikes_warn_on_spikes_that_undo_progress():
    curve = decaying()
    curve[120] = curve[121] = 2.5
    check = loss_spikes(curve)
    assert check.status == "warn" and check.value["first_spike_steps"][0] == 120


def test_loss_spikes_fail_on_divergence():
    assert loss_spikes([*decaying(50), math.nan]).status == "fail"
    rising = [0.5 + 0.01 * i for i in range(100)]
    assert loss_spikes(rising).status == "fail"
    noise = 0.05 * torch.randn(300, generator=torch.Generator().manual_seed(0))
    assert loss_spikes((1.0 + 0.003 * torch.arange(300) + noise).tolist()).status == "fail"  # rises 0.9 through noise
    blown = (1.3 * (1 + 0.01 * torch.randn(300, generator=torch.Generator().manual_seed(2)))).tolist()
    blown[20:] = (10 ** (3 + 7 * torch.rand(280, generator=torch.Generator().manual_seed(3)))).tolist()
    assert loss_spikes(blown).status == "fail"  # a rate of 1e4: wild from step 20 on, its noise as large as its level


def test_loss_spikes_pass_a_flat_noisy_run_that_ends_above_its_first_step():
    """A model that has not started learning (fitting sin(3x) from one input) hovers at its starting loss; its first
    step is one noisy batch, and the run's end sat 0.02 above it with step noise 0.07: no divergence."""
    curve = (0.42 + 0.07 * torch.randn(250, generator=torch.Generator().manual_seed(1))).tolist()
    curve[0] = 0.40
    check = loss_spikes(curve)
    assert check.value["noise_scale"] > 0.05 and statistics.median(curve[-20:]) > curve[0]
    assert check.status == "pass", check.message


def test_step_noise_warns_when_noise_exceeds_progress():
    assert step_noise(decaying()).status == "pass"
    flat = (1.0 + 0.3 * torch.randn(200, generator=torch.Generator().manual_seed(0))).tolist()
    assert step_noise(flat).status == "warn"


def test_step_noise_that_batches_of_the_data_show_by_themselves_passes():
    """1,000 steps of batches of 64 drawn from per-sample losses with 3% rare large ones (a rare positive class)
    while the model improves by 0.015: the batch means differ by about 0.057 by their samples alone. The same
    progress with an optimizer that triples that noise still warns."""
    g = torch.Generator().manual_seed(0)
    steps, batch = 1000, 64
    rare = (torch.rand(steps, batch, generator=g) < 0.03).float()
    drift = torch.linspace(0.015, 0.0, steps)[:, None]
    per_sample = 0.03 + rare * 3.0 + drift
    sampled = per_sample.mean(1)
    sampling = float(per_sample.std() / batch**0.5)
    assert step_noise(sampled.tolist()).status == "warn"  # what it said without the data's own spread
    check = step_noise(sampled.tolist(), sampling_noise=sampling)
    assert check.status == "pass" and "by their samples alone" in check.message, check.message
    shaky = sampled + 3 * sampling * torch.randn(steps, generator=g)
    assert step_noise(shaky.tolist(), sampling_noise=sampling).status == "warn"


def history(val: list[float], train: list[float] | None = None, se: float = 0.005) -> list[dict]:
    train = train or [1.0 / (i + 1) for i in range(len(val))]
    return [{"val_loss": v, "val_loss_se": se, "train_loss": t} for v, t in zip(val, train, strict=True)]


def noisy(values: list[float], scale: float, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return [v + scale * float(e) for v, e in zip(values, torch.randn(len(values), generator=g), strict=True)]


SLOW = [2.2 - 0.036 * i for i in range(10)]  # measured: lr 5e-5 on digits, still falling 0.036 per epoch


@pytest.mark.parametrize(
    ("val", "se", "status"),
    [
        ([1.0, 0.8, 0.7, 0.65, 0.64, 0.64, 0.64], 0.005, "pass"),  # settled
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 0.005, "warn"),  # falling fast
        (noisy(SLOW, 0.01), 0.01, "warn"),  # the slow rate the former 10%-of-the-loss rule passed
        (noisy([2.2 - 0.036 * min(i, 5) for i in range(10)], 0.01), 0.01, "pass"),  # its twin, settled halfway
        (noisy([0.5] * 10, 0.02, seed=3), 0.01, "pass"),  # flat and noisy: no slope beyond its SE
        ([0.2 - 0.004 * i for i in range(10)], 0.03, "pass"),  # a steady fall too small for validation to resolve
        ([1.0, 0.5, 0.4], 0.01, "skip"),
    ],
)
def test_still_improving_judges_the_slope_against_its_standard_error(val, se, status):
    check = still_improving(history(val, se=se))
    assert check.status == status, check.message
    if status == "warn":
        assert "train.epochs" in check.message and check.value["slope_per_epoch"] < -3 * check.value["slope_se"]


def test_overfitting_onset_names_the_epoch():
    check = overfitting_onset(history([1.0, 0.6, 0.5, 0.55, 0.62, 0.7]))
    assert check.value["best_epoch"] == 2 and "epoch 2" in check.message
    assert "no overfitting" in overfitting_onset(history([1.0, 0.8, 0.7, 0.65])).message


def test_one_hard_batch_is_not_a_spike_that_undoes_progress():
    """A nearly separable task (breast_cancer, BCE): one batch of 64 holding a confident mistake scores 1.06 after
    steps near 0.05, and the next step is back at 0.15; the parameters did not jump, so nothing was undone."""
    curve = [0.586, 0.281, 0.192, 0.07, 0.055, 0.044, 1.06, 0.149, 0.032, 0.027, 0.324, 0.001, 0.284, 0.331, 0.056]
    curve += [0.23, 0.39, 0.035, 0.04, 0.126] + [0.05 + 0.1 * (i % 3) for i in range(15)]
    assert loss_spikes(curve).status == "pass"
    smooth = decaying()
    smooth[120] = 2.5  # one step: a hard batch
    assert loss_spikes(smooth).status == "pass"
    smooth[121] = 2.5  # the next step as high: undone (test_loss_spikes_warn_on_spikes_that_undo_progress)
    assert loss_spikes(smooth).status == "warn"


def rare_positives(seed: int, spike: bool = False, rise: float = 0.0) -> list[float]:
    """Step losses of a 1:160 binary task in batches of 64: most batches hold no positive (a low loss), many one
    (0.07 higher), a few two; the level falls as the model learns. `spike` adds an unstable step and its next,
    `rise` a climb per step."""
    rng = random.Random(seed)
    out = []
    for t in range(300):
        positives = sum(rng.random() < 0.006 for _ in range(64))
        out.append(0.05 * math.exp(-t / 50) + 0.008 + 0.07 * positives + rise * t)
    if spike:
        out[200] += 1.0
        out[201] += 1.0
    return out


def test_loss_spikes_reads_batches_of_rare_positives_as_ordinary():
    """A 1:100 task's batches with two positives in a row warned "spikes undid half the progress", and where most of
    the last steps held a positive, the run "diverged" (their median on the upper mode): a fail on a correct run."""
    for seed in range(20):
        assert loss_spikes(rare_positives(seed), excursion=0.2).status == "pass", seed
        assert loss_spikes(rare_positives(seed)).status != "fail", seed  # without the batches' excursion: no fail
    assert loss_spikes(rare_positives(0, spike=True), excursion=0.2).status == "warn"
    assert loss_spikes(rare_positives(0, rise=1e-3), excursion=0.2).status == "fail"
