"""The playbook's tuning: a scientific parameter with nuisance parameters searched at each of its values, isolation
plots with standard errors, and parameter importances in trials.csv."""

from __future__ import annotations

import csv

import pytest

from recipe import Recipe, Tune
from recipe.errors import ConfigError
from recipe.playbook import importances, isolation
from recipe.search_space import Param, queued_configs
from tests import tiny
from tests.test_stage_tune import SOURCE

SPACE = {"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}}


def test_each_nuisance_point_is_tried_at_every_scientific_value():
    params = [Param.parse(n, s) for n, s in SPACE.items()]
    configs = queued_configs(params, 9, seed=0, scientific="lr", levels=3)
    levels = Param.parse("lr", SPACE["lr"]).grid(3)
    assert [c["lr"] for c in configs] == levels * 3  # the values take turns: a cut-short study stays balanced
    for k in range(3):
        assert len({c["weight_decay"] for c in configs[3 * k : 3 * k + 3]}) == 1  # one nuisance point per round
    assert configs[:4] == queued_configs(params, 4, seed=0, scientific="lr", levels=3)  # replacements continue it


def test_a_scientific_study_writes_isolation_plots_and_importances(tmp_path):
    settings = {"trials": 6, "epochs": 3, "seeds": 0, "space": SPACE, "scientific": "lr", "levels": 3}
    result = Recipe(
        tiny.classification(), run_dir=tmp_path / "run", stages=[Tune(**settings)], device="cpu", progress=False,
        quiet=True, source=SOURCE,
    ).run()  # fmt: skip
    folder = result.run_dir / "06_tune"
    rows = list(csv.reader((folder / "trials.csv").open()))
    header, trials, weights = rows[0], rows[1:-1], rows[-1]
    levels = {float(v) for v in Param.parse("lr", SPACE["lr"]).grid(3)}
    assert {float(r[header.index("lr")]) for r in trials} <= levels
    assert weights[0] == "importance"
    assert sum(float(v) for v in weights[3:]) == pytest.approx(1.0)
    assert (folder / "isolation.png").exists() and (folder / "importances.json").exists()
    summary = result.checks[0]
    assert "lr under study: best at" in summary.message and len(summary.value["scientific"]["best"]) == 3


def test_scientific_must_be_searched_and_needs_the_quasi_random_queue(tmp_path):
    with pytest.raises(ConfigError, match="sampler sobol"):
        Tune(scientific="lr", sampler="tpe")
    with pytest.raises(ConfigError, match=r"tune.scientific='depth' is not searched"):
        Recipe(
            tiny.classification(), run_dir=tmp_path, stages=[Tune(scientific="depth", space=SPACE)], device="cpu",
            progress=False, quiet=True,
        ).run()  # fmt: skip


class Trial:
    def __init__(self, value, se, **params):
        self.value, self.params, self.user_attrs = value, params, {"val_loss_se": se}


def test_isolation_takes_the_best_trial_per_value_with_its_standard_error():
    lr = Param.parse("lr", SPACE["lr"])
    trials = [Trial(0.5, 0.02, lr=1.1e-3), Trial(0.4, 0.03, lr=1.2e-3), Trial(0.3, 0.01, lr=0.09)]
    panel = isolation(trials, lr)  # numeric, not under study: four bins of the log range, empty ones left out
    assert panel["best"] == [0.4, 0.3] and panel["se"] == [0.03, 0.01] and panel["trials"] == [2, 1]
    choice = Param.parse("width", {"choices": [8, 16]})
    panel = isolation([Trial(0.5, 0.02, width=8), Trial(0.6, 0.01, width=16)], choice)
    assert panel["values"] == [8, 16] and panel["best"] == [0.5, 0.6]
    assert importances(None, trials, ["lr"]) == {}  # fewer than four trials: nothing to read
