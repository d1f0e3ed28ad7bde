"""Every bundled example builds a valid task and trains a few steps through `fit`; every shipped config builds its
task; the tabular and custom-stage examples run through the recipe on small budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples import charlm, custom_stage, digits, regression, tabular
from recipe import Recipe, fit
from recipe.config import load_yaml, split_config
from recipe.loading import load_task
from recipe.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

EXAMPLES = {
    "digits-mlp": lambda: digits.make_task("mlp"),
    "digits-cnn": lambda: digits.make_task("cnn"),
    "charlm-gpt": lambda: charlm.make_task("gpt", max_chars=50_000),
    "charlm-conv": lambda: charlm.make_task("conv", max_chars=50_000),
    "diabetes": regression.make_task,
    "tabular": tabular.make_task,
    "custom_stage": custom_stage.make_task,
}

# small budgets for every stage: enough to exercise each check's code path, not to judge the model
SMALL = {
    "inspect": {"label_noise": False},
    "baseline": {"steps": 30, "seed_steps": 5},
    "overfit": {"steps": 200, "lr_steps": 30},
    "complexify": {"epochs": 2, "lr_steps": 20},
    "regularize": {"max_steps": 20, "data_fractions": [0.5], "weight_decays": [0.1], "dropouts": [0.1]},
    "tune": {"trials": 2, "seeds": 1, "ensemble": 2},
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains(name):
    task = EXAMPLES[name]()
    out = fit(task, epochs=None, max_steps=30, lr=3e-3, progress=False, device="cpu", evaluate_every_epoch=True)
    assert out.step_losses[-1] < out.step_losses[0]
    assert out.history and out.history[-1]["val_loss"] > 0


def test_charlm_targets_are_the_next_characters():
    x, y = charlm.windows(charlm.encode("abcdefghij" * 5), 8)
    assert (y[:, :-1] == x[:, 1:]).all()
    assert charlm.decode(x[0].tolist()) == "abcdefgh"


def test_every_config_is_found():
    names = {p.stem for p in CONFIGS}
    assert {"digits", "charlm", "tabular", "custom_stage"} <= names, names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS])
def test_every_config_builds_its_task(path, tmp_path):
    run, sections = split_config(load_yaml(path), STAGES, str(path))
    kwargs = dict(run.task_args)
    if "max_chars" in kwargs:
        kwargs["max_chars"] = min(kwargs["max_chars"], 50_000)  # the same task, read from less source text
    task = load_task(run.task, kwargs, str(path))
    recipe = Recipe(task, run_dir=tmp_path, stages=run.stages, device="cpu", config={"train": run.train, **sections})
    task.validate("cpu")
    assert [s.name for s in recipe.stages] == (run.stages or list(STAGES))


def test_tabular_runs_every_stage_on_a_small_budget(tmp_path):
    result = Recipe(tabular.make_task(), run_dir=tmp_path, device="cpu", config=SMALL, progress=False, quiet=True).run()
    assert result.ok, [(c.stage, c.name, c.message) for c in result.failures]
    assert list(result.stages) == list(STAGES)
    ablation = next(c for c in result.checks if c.name == "feature_ablation")
    assert ablation.status == "pass" and len(ablation.value["importance"]) == tabular.FEATURES
    assert len(tabular.feature_names()) == tabular.FEATURES


def test_custom_stage_adds_its_check_and_reads_dict_batches(tmp_path):
    task = custom_stage.make_task()
    batch = task.batch("train", [0, 1, 2])
    assert isinstance(batch, dict) and set(batch) == {"pixels", "label"}
    stages = [custom_stage.DigitsInspect(label_noise=False), "baseline"]
    result = Recipe(task, run_dir=tmp_path, stages=stages, device="cpu", config=SMALL, progress=False, quiet=True).run()
    assert result.ok, [(c.stage, c.name, c.message) for c in result.failures]
    added = [c for c in result.checks if c.name == "enough_samples_per_class"]
    assert len(added) == 1 and added[0].stage == "inspect" and added[0].status == "pass"
    assert {c.name for c in result.checks} >= {"summary", "loss_at_init", "simple_model"}


@pytest.mark.parametrize(
    ("counts", "status"),
    [([150, 120, 100], "pass"), ([150, 120, 99], "fail"), ([150, 0, 300], "fail")],
    ids=["clean", "one-short", "class-missing"],
)
def test_enough_samples_per_class(counts, status):
    targets = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    check = custom_stage.enough_samples_per_class(targets, len(counts), minimum=100)
    assert check.status == status
    assert check.value["min"] == min(counts)
