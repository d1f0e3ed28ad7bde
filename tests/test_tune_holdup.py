"""`tune` hands on only what holds up: a best trial that diverges on other seeds is replaced by the next stable one
(or the stage fails when none trains), and `trials` counts finished trials, pruned and diverged ones replaced."""

from __future__ import annotations

import collections
import json

import pytest
import torch
import yaml

from recipe import ConfigError, Recipe, Tune, fit_arguments, load_model
from recipe.cli import main
from recipe.diagnostics.search import beats_incoming
from tests import tiny
from tests.test_stage_tune import SOURCE, trials_of


class Fragile(tiny.MLP):
    """tiny.MLP whose widest variant trains only with the seed the search uses (0): with any other seed its weights
    start as NaN, so its seed re-runs diverge (a planted best trial that does not hold up)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.l2, self.head = torch.nn.Linear(32, width), torch.nn.Linear(width, tiny.CLASSES)
        if width >= 32 and torch.initial_seed() != 0:
            self.head.weight.data.fill_(float("nan"))


def tune(tmp_path, task, **settings):
    settings = {"epochs": 4, "seeds": 2, "distill": False, "pruning": "off", **settings}
    return Recipe(
        task, run_dir=tmp_path / "run", stages=[Tune(**settings)], device="cpu", progress=False, quiet=True,
        source=SOURCE,
    ).run()  # fmt: skip


def by_name(result):
    return {c.name: c for c in result.checks}


def test_a_best_trial_that_diverges_on_other_seeds_is_not_handed_on(tmp_path):
    space = {"width": {"choices": [32, 8, 1]}, "lr": {"low": 0.01, "high": 0.011}}
    result = tune(tmp_path, tiny.classification(model=Fragile), trials=3, space=space, scientific="width")
    checks = by_name(result)
    params = {t.number: t.params["width"] for t in trials_of(result.run_dir)}
    assert params[checks["search"].value["best_trial"]] == 32  # the fragile model is the best trial
    seeds = checks["seed_variance"]
    assert seeds.status == "warn" and "diverged on 2 of 2 seed re-runs" in seeds.message
    assert params[seeds.value["handed_on"]] == 8  # the next-best trial, which holds up
    text = (result.run_dir / "06_tune" / "best_config.yaml").read_text()
    assert '"width": 8' in text and "over 2 seed re-runs" in text


def test_the_stable_twin_hands_on_its_best_trial(tmp_path):
    space = {"width": {"choices": [16, 8, 1]}, "lr": {"low": 0.01, "high": 0.011}}
    result = tune(tmp_path, tiny.classification(model=Fragile), trials=3, space=space, scientific="width")
    checks = by_name(result)
    assert checks["seed_variance"].status == "pass"
    assert checks["seed_variance"].value["handed_on"] == checks["search"].value["best_trial"]


def test_no_top_trial_that_trains_fails_and_hands_nothing_on(tmp_path):
    space = {"width": {"choices": [32, 33, 34]}, "lr": {"low": 0.01, "high": 0.011}}
    result = tune(tmp_path, tiny.classification(model=Fragile), trials=3, space=space, scientific="width")
    seeds = by_name(result)["seed_variance"]
    assert seeds.status == "fail" and "diverge on other seeds" in seeds.message and not result.ok
    assert not (result.run_dir / "06_tune" / "best_config.yaml").exists()


def test_trials_counts_finished_trials_and_pruned_ones_are_replaced(tmp_path):
    result = tune(tmp_path, tiny.classification(), trials=8, seeds=0, epochs=6, pruning="on")
    states = collections.Counter(t.state.name for t in trials_of(result.run_dir))
    summary = by_name(result)["search"]
    assert states["PRUNED"] >= 1, states  # the median rule stopped some, and they were replaced
    assert states["COMPLETE"] == 8 and summary.message.startswith(f"8 trials finished, {states['PRUNED']} pruned")
    assert by_name(result)["enough_trials"].status != "skip"  # it reads 8 finished trials


def test_a_study_where_every_trial_diverges_ends(tmp_path):
    space = {"lr": {"low": 1e8, "high": 1e9, "log": True}, "optimizer": {"choices": ["sgd"]}}
    result = tune(tmp_path, tiny.classification(), trials=3, seeds=0, space=space)
    trials = trials_of(result.run_dir)
    assert len(trials) == 6 and all(t.state.name == "FAIL" for t in trials)  # replaced up to twice the budget
    assert result.checks[0].status == "skip" and "no trial finished" in result.checks[0].message


class Trial:
    def __init__(self, value, se):
        self.value, self.user_attrs = value, {"val_loss_se": se}


def test_a_task_nothing_learns_yet_is_no_sign_of_divergence():
    from recipe.stages.top_trials import _ceiling

    assert _ceiling(Trial(0.5, 0.05), floor=1.386) == 1.386  # the trial learned: a re-run above 1.386 diverged
    assert _ceiling(Trial(1.35, 0.05), floor=1.386) is None  # not clearly under the constant: nothing to judge by
    assert _ceiling(Trial(0.5, 0.05), floor=float("nan")) is None  # a custom loss has no constant-prediction floor


def test_a_custom_loss_task_is_judged_by_its_reruns_and_skips_distillation(tmp_path):
    task = tiny.classification(loss=lambda output, target: torch.nn.functional.cross_entropy(output, target))
    result = tune(tmp_path, task, trials=4, seeds=2, distill=True)
    checks = by_name(result)
    assert checks["seed_variance"].status == "pass" and checks["seed_variance"].value["handed_on"] is not None
    assert checks["distillation"].status == "skip" and "cross-entropy" in checks["distillation"].message


def incoming_run(tmp_path, lr, space):
    """Tune alone, started from `train.lr = lr`, searching `space`."""
    return Recipe(
        tiny.classification(), run_dir=tmp_path / "run", stages=[Tune(trials=3, epochs=4, seeds=2, space=space)],
        device="cpu", progress=False, quiet=True, source=SOURCE, config={"train": {"lr": lr}},
    ).run()  # fmt: skip


def test_a_search_whose_trials_are_all_worse_than_where_it_started_keeps_the_incoming_setup(tmp_path):
    space = {"lr": {"low": 0.5, "high": 1.0, "log": True}}  # far too high for Adam: every trial trains worse
    result = incoming_run(tmp_path, 1e-2, space)
    check = by_name(result)["beats_incoming"]
    assert check.status == "pass" and check.value["handed_on"] == "incoming", check.message
    assert check.value["gain"] < 0 and "found nothing better than the setup it started from" in check.message
    text = (result.run_dir / "06_tune" / "best_config.yaml").read_text()
    assert "lr: 0.01\n" in text and "nothing better" in text and "train.epochs = 4" in text
    assert not (result.run_dir / "06_tune" / "best.pt").exists()  # load_model returns the incoming setup's model
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["train_final"]["lr"] == 0.01 and manifest["learned"]["tune"]["kept_incoming"]


def test_a_search_that_beats_where_it_started_hands_the_tuned_setting_on(tmp_path):
    space = {"lr": {"low": 1e-2, "high": 2e-2, "log": True}}
    result = incoming_run(tmp_path, 1e-5, space)  # the incoming lr barely moves the weights in 4 epochs
    checks = by_name(result)
    check, handed = checks["beats_incoming"], checks["seed_variance"].value["handed_on"]
    assert check.status == "pass" and check.value["handed_on"] == "tuned", check.message
    assert check.value["gain"] > 2 * check.value["noise"] and check.value["tuned"]["trial"] == handed
    text = (result.run_dir / "06_tune" / "best_config.yaml").read_text()
    assert f"trial #{handed}" in text and "lr: 1e-05" not in text and "epochs: 4\n" in text
    assert (result.run_dir / "06_tune" / "best.pt").exists()


def fragile_task():
    return tiny.classification(model=Fragile)


def test_searched_model_arguments_are_handed_on_as_train_model_args_and_trained_again(tmp_path, capsys):
    space = {"width": {"choices": [16, 8]}, "lr": {"low": 0.01, "high": 0.011}}
    result = Recipe(
        fragile_task(), run_dir=tmp_path / "run", stages=[Tune(trials=2, epochs=4, seeds=2, space=space)],
        device="cpu", progress=False, quiet=True, source={"task": "tests.test_tune_holdup:fragile_task"},
    ).run()  # fmt: skip
    checks = by_name(result)
    assert checks["beats_incoming"].value["handed_on"] == "tuned"  # width 32, the incoming model, diverges
    width = {t.number: t.params["width"] for t in trials_of(result.run_dir)}[checks["seed_variance"].value["handed_on"]]
    best_config = result.run_dir / "06_tune" / "best_config.yaml"
    assert yaml.safe_load(best_config.read_text())["train"]["model_args"] == {"width": width}
    assert fit_arguments(best_config)["task"].make_model().head.in_features == width
    assert main(["train", str(best_config), "--run-dir", str(tmp_path / "final"), "--epochs", "1", "--quiet"]) == 0
    assert load_model(tmp_path / "final").head.in_features == width
    with pytest.raises(ConfigError, match=r"train\.model_args\.depth: the model factory takes no 'depth'"):
        fit_arguments({"task": "tests.test_tune_holdup:fragile_task", "train": {"model_args": {"depth": 2}}})


@pytest.mark.parametrize(
    ("tuned", "incoming", "paired", "kept"),
    [
        ([0.30, 0.31, 0.29], [0.50, 0.52, 0.49], 0.01, "tuned"),  # a clear lead
        ([0.30, 0.31, 0.29], [0.31, 0.30, 0.32], 0.01, "incoming"),  # inside the seed and sample noise
        ([0.30, 0.31, 0.29], [0.40, 0.41, 0.39], 0.06, "incoming"),  # clear over seeds, not over validation samples
        ([0.30, 0.31, 0.29], [0.31, float("nan"), 0.30], 0.01, "tuned"),  # where tune started diverges on a seed
    ],
)
def test_beats_incoming_hands_on_the_tuned_setting_only_beyond_noise(tuned, incoming, paired, kept):
    check = beats_incoming(
        {"trial": 3, "losses": tuned, "metrics": [0.9] * 3}, {"losses": incoming, "metrics": [0.8] * 3}, paired, "acc"
    )
    assert check.status == "pass" and check.value["handed_on"] == kept, check.message
    assert ("found nothing better" in check.message) == (kept == "incoming")
