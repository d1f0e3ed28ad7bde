"""The search checks of `tune` and the search-space machinery, on synthetic studies."""

from __future__ import annotations

import pytest

from recipe.config import TrainSettings
from recipe.diagnostics.search import (
    enough_trials,
    rerun_verdict,
    search_space_boundary,
    seed_variance,
    training_length,
)
from recipe.errors import ConfigError
from recipe.search_space import Param, default_space, parse_space, sobol_configs
from tests import tiny


def test_param_maps_the_unit_interval_onto_its_range():
    lr = Param.parse("lr", {"low": 1e-4, "high": 1e-2, "log": True})
    assert lr.from_unit(0.0) == pytest.approx(1e-4) and lr.from_unit(0.5) == pytest.approx(1e-3)
    assert lr.to_unit(1e-3) == pytest.approx(0.5)
    batch = Param.parse("batch_size", {"choices": [16, 32, 64]})
    assert [batch.from_unit(u) for u in (0.0, 0.4, 0.99)] == [16, 32, 64]
    hidden = Param.parse("hidden", {"low": 8, "high": 64, "int": True})
    assert isinstance(hidden.from_unit(0.3), int)


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"low": 1, "high": 0}, "low < high"),
        ({"low": 0, "high": 1, "log": True}, r"low > 0"),
        ({"low": 1, "hi": 2}, "unknown key"),
        ({"choices": []}, "non-empty"),
        ("1e-3", "mapping"),
    ],
)
def test_param_rejects_bad_specs_with_the_field_named(spec, match):
    with pytest.raises(ConfigError, match=match):
        Param.parse("lr", spec)


def test_space_names_must_be_settings_or_model_arguments():
    task = tiny.classification()
    with pytest.raises(ConfigError, match=r"tune\.space\.width"):
        parse_space({"width": {"low": 1, "high": 2}}, task, TrainSettings())
    params = parse_space(
        {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "out": {"choices": [4]}}, task, TrainSettings()
    )
    assert [p.name for p in params] == ["lr", "out"]  # `out` is an argument of tiny.MLP


def test_default_space_is_centred_on_the_rate_found():
    space = default_space(tiny.classification(), TrainSettings(lr=0.01))
    assert space["lr"] == {"low": 0.001, "high": 0.1, "log": True}


@pytest.mark.parametrize(
    ("lr", "kept", "low", "high"),
    [
        (1e-3, 0.0, 1e-6, 1e-2),  # a small rate: the usual 1e-6..1e-2
        (1e-3, 0.01, 1e-4, 1.0),  # x/÷100 around the kept value
        (0.08, 0.28, 0.0028, 0.28),  # the contrastive run: x100 would reach 28, lr x wd at the top rate 224
        (0.08, 0.0, 1e-6, 1e-2),  # nothing kept: the usual range, under the cap (0.125)
        (2.0, 0.0, 1e-6, 0.005),  # a rate of 2 (x10: 20) caps it at 0.005
    ],
)
def test_default_weight_decay_stops_where_the_top_rate_would_erase_the_weights(lr, kept, low, high):
    space = default_space(tiny.classification(), TrainSettings(lr=lr, weight_decay=kept))
    wd = space["weight_decay"]
    assert wd["low"] == pytest.approx(low) and wd["high"] == pytest.approx(high) and wd["log"]
    assert wd["high"] * space["lr"]["high"] <= 0.1 + 1e-12 or wd["high"] == kept


def test_sobol_configs_are_reproducible_and_fill_the_space():
    params = [Param.parse("lr", {"low": 1e-4, "high": 1e-1, "log": True}), Param.parse("wd", {"low": 0, "high": 1})]
    first, again = sobol_configs(params, 16, seed=3), sobol_configs(params, 16, seed=3)
    assert first == again and first != sobol_configs(params, 16, seed=4)
    units = sorted(params[1].to_unit(c["wd"]) for c in first)
    assert all(i / 16 <= u < (i + 1) / 16 for i, u in enumerate(units))  # one point per sixteenth: stratified


def ranked(units: list[float]) -> tuple[list[dict], dict[str, list[float]]]:
    return [{"lr": u} for u in units], {"lr": units}


def test_search_space_boundary_warns_when_the_best_crowd_an_edge():
    trials, units = ranked([0.9, 0.7, 0.8, 0.5, 0.2, 0.1, 0.4, 0.6])
    check = search_space_boundary(trials, units)
    assert check.status == "warn" and check.value["crowded"] == {"lr": "upper"} and "larger" in check.message
    trials, units = ranked([0.5, 0.45, 0.6, 0.98, 0.02, 0.1, 0.9, 0.3])
    assert search_space_boundary(trials, units).status == "pass"
    trials, units = ranked([0.05, 0.9, 0.8, 0.5, 0.4, 0.1, 0.3, 0.6])  # best at an edge, but not a trend
    assert search_space_boundary(trials, units).status == "pass"


def test_enough_trials_warns_while_the_best_still_improves():
    settled = [1.0, 0.6, 0.5, 0.52, 0.55, 0.7, 0.51, 0.6, 0.53, 0.58, 0.62, 0.54]
    assert enough_trials(settled, noise=0.01).status == "pass"
    improving = [1.0, 0.9, 0.95, 0.85, 0.8, 0.9, 0.82, 0.7, 0.75, 0.6, 0.5, 0.4]
    assert enough_trials(improving, noise=0.01).status == "warn"


def attempt(trial, losses, runner_up, ceiling=None, se=0.001):
    verdict = rerun_verdict(losses, runner_up, se, ceiling)
    metrics = [1 - v for v in losses]
    return {"trial": trial, "trial_loss": 0.1, "losses": losses, "metrics": metrics, "runner_up": runner_up} | {
        "verdict": verdict
    }


def test_rerun_verdict_names_divergence_and_the_lucky_draw():
    assert rerun_verdict([0.30, 0.31, 0.29], runner_up=0.32, runner_up_se=0.01, ceiling=1.4) is None
    assert "diverged on 1 of 3" in rerun_verdict([0.30, float("nan"), 0.29], 0.32, 0.01, 1.4)
    assert "diverged on 1 of 3" in rerun_verdict([0.30, 2.1, 0.29], 0.32, 0.01, 1.4)  # worse than a constant
    lucky = rerun_verdict([0.46, 0.47, 0.45], runner_up=0.32, runner_up_se=0.01, ceiling=1.4)
    assert "outside the runner-up's range" in lucky and "lucky draw" in lucky
    assert rerun_verdict([0.30, 0.60, 0.29], 0.32, 0.01, 1.4) is None  # a wide spread is not evidence of luck


def test_seed_variance_hands_on_the_first_trial_that_holds_up():
    clean = seed_variance([attempt(3, [0.30, 0.31, 0.29], 0.32)], "accuracy")
    assert clean.status == "pass" and clean.value["handed_on"] == 3 and clean.value["loss_mean"] == pytest.approx(0.3)
    diverged = seed_variance([attempt(3, [0.3, float("nan")], 0.32, 1.4), attempt(5, [0.33, 0.32], 0.5)], "accuracy")
    assert diverged.status == "warn" and diverged.value["handed_on"] == 5
    assert "diverged" in diverged.message and "significant digits" not in diverged.message
    lucky = seed_variance([attempt(3, [0.46, 0.47], 0.32), attempt(5, [0.33, 0.32], 0.5)], "accuracy")
    assert lucky.status == "pass" and lucky.value["handed_on"] == 5 and "lucky draw" in lucky.message


def test_seed_variance_fails_when_no_top_trial_trains_stably():
    attempts = [attempt(n, [0.3, float("nan")], 0.32, 1.4) for n in (3, 5, 7)]
    check = seed_variance(attempts, "accuracy")
    assert check.status == "fail" and "lower the learning-rate range" in check.message
    assert seed_variance([], "accuracy").status == "skip"


def test_seed_variance_warns_when_every_lead_was_luck():
    attempts = [attempt(3, [0.46, 0.47], 0.32), attempt(5, [0.40, 0.41], 0.30)]
    check = seed_variance(attempts, "accuracy")
    assert check.status == "warn" and check.value["handed_on"] == 5  # the best re-run mean


def test_training_length_reads_where_the_best_epochs_fall():
    def history(val):
        return [{"val_loss": v} for v in val]

    at_end = [history([1.0, 0.8, 0.6, 0.5])] * 4
    assert training_length(at_end).status == "warn"
    early = [history([1.0, 0.5, 0.6, 0.7, 0.8])] * 4
    check = training_length(early)
    assert check.status == "pass" and "shorter runs" in check.message


def test_search_space_boundary_passes_an_optimum_bracketed_near_the_edge():
    """The Poisson regression's study: the best of 16 trials sat at 0.93 of the lr range, and the one at 0.97 did
    worse by 0.03 (the loss turns back up), yet the warning asked to widen the range toward larger values."""
    trials, units = ranked([0.93, 0.90, 0.75, 0.97, 0.80, 0.50, 0.40, 0.20])
    bracketed = [-7.4638, -7.4627, -7.4548, -7.4338, -7.4540, -7.4521, -7.4430, -7.0221]
    check = search_space_boundary(trials, units, bracketed, noise=0.005)
    assert check.status == "pass" and "one at 0.97 did worse by 0.03" in check.value["inside"]["lr"]
    within_noise = [*bracketed[:3], -7.4630, *bracketed[4:]]  # the trial beyond is worse by less than the noise
    assert search_space_boundary(trials, units, within_noise, noise=0.005).status == "warn"
    assert search_space_boundary(trials, units, bracketed, noise=0.05).status == "warn"
    assert search_space_boundary(trials, units, bracketed, noise=None).status == "warn"  # 1% of 7.46: too coarse


def test_search_space_boundary_passes_a_plateau_the_runs_learned_their_way_onto():
    """Six binary risk factors: every trial from lr 3e-3 to 0.2 ends within 0.011 of 0.471 (the constant
    prediction scores 0.69), and the best sat at the lower end by 0.0003; the warning asked for smaller rates."""
    trials, units = ranked([0.02, 0.05, 0.10, 0.55, 0.15, 0.65, 0.50, 0.95])  # nothing beyond the best
    plateau = [0.4708, 0.4709, 0.4710, 0.4711, 0.4720, 0.4722, 0.4724, 0.4817]
    check = search_space_boundary(trials, units, plateau, noise=0.02, constant=0.69)
    assert check.status == "pass" and "flat toward the lower end" in check.value["inside"]["lr"]
    assert search_space_boundary(trials, units, plateau, noise=0.02).status == "warn"  # no constant: learned?
    near_constant = [v + 0.2 for v in plateau]  # 0.67: nothing learned, a flat trend is no plateau
    assert search_space_boundary(trials, units, near_constant, noise=0.02, constant=0.69).status == "warn"
    falling = [0.4708, 0.52, 0.55, 0.60, 0.58, 0.62, 0.61, 0.66]  # the loss still falls toward the edge
    assert search_space_boundary(trials, units, falling, noise=0.01, constant=0.69).status == "warn"
