"""Recipe and Context: stage order, stopping on a failed check, keep_going, skips, the run directory, custom stages."""

from __future__ import annotations

import json

import pytest
import torch

from recipe import Baseline, Check, ConfigError, Context, Recipe, Stage, TaskError
from recipe.check import passed
from recipe.report import checks_table_html
from tests import tiny


class Softmaxed(tiny.MLP):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


def _recipe(tmp_path, task=None, **kwargs):
    kwargs.setdefault("stages", ["baseline", "overfit"])
    kwargs.setdefault("device", "cpu")
    return Recipe(task or tiny.classification(), run_dir=tmp_path / "run", progress=False, **kwargs)


def test_clean_run_writes_the_contract_files(tmp_path):
    result = _recipe(tmp_path, quiet=True).run()
    assert result.ok and result.stages == {"baseline": "pass", "overfit": "pass"}
    run = result.run_dir
    for name in ("checks.json", "manifest.json", "metrics.jsonl", "report.html", "02_baseline", "03_overfit"):
        assert (run / name).exists(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["device"] == "cpu" and manifest["versions"]["torch"] == torch.__version__
    assert set(manifest["seconds"]) == {"baseline", "overfit"}
    assert manifest["learned"]["overfit"]["lr"] == manifest["train_final"]["lr"]  # handed on through the context
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"stage", "step", "split", "metric", "value"} <= set(records[0])
    html = (run / "report.html").read_text()
    assert all(c.name in html for c in result.checks) and "data:image/png;base64" in html


def test_a_failed_check_stops_the_recipe_and_is_printed_last(tmp_path, capsys):
    result = _recipe(tmp_path, tiny.classification(Softmaxed)).run()
    assert not result.ok and list(result.stages) == ["baseline"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL baseline.output_kind") and "Remove the final softmax" in last


def test_keep_going_runs_every_stage(tmp_path):
    result = _recipe(tmp_path, tiny.classification(Softmaxed), keep_going=True, quiet=True).run()
    assert list(result.stages) == ["baseline", "overfit"] and not result.ok


def test_skip_turns_a_check_into_skip(tmp_path):
    config = {"baseline": {"skip": ["output_kind"]}}
    result = _recipe(tmp_path, tiny.classification(Softmaxed), stages=["baseline"], config=config, quiet=True).run()
    skipped = [c for c in result.checks if c.name == "output_kind"]
    assert skipped and skipped[0].status == "skip" and "skipped by config" in skipped[0].message


def test_custom_stage_subclasses(tmp_path):
    class MyBaseline(Baseline):
        def run(self, ctx: Context) -> list[Check]:
            return [*super().run(ctx), passed("my_check", "A task-specific check ran.")]

    class Probe(Stage):
        name = "probe"

        def run(self, ctx: Context) -> list[Check]:
            path = ctx.save_json("seen.json", {"lr": ctx.train.lr})
            return [passed("probe_ran", f"Saw lr {ctx.train.lr}.").replace(artifacts=(path,))]

    result = _recipe(tmp_path, stages=[MyBaseline(steps=50), "overfit", Probe()], quiet=True).run()
    assert result.checks[-1].name == "probe_ran" and any(c.name == "my_check" for c in result.checks)
    assert (result.run_dir / "07_probe" / "seen.json").exists()


def test_bad_input_fails_before_anything_is_written(tmp_path):
    task = tiny.classification()
    task.num_classes = 2  # labels span 0..3
    with pytest.raises(TaskError, match="num_classes=2"):
        _recipe(tmp_path, task).run()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stages": ["basline"]}, "did you mean 'baseline'"),
        ({"config": {"overfitt": {}}}, "did you mean 'overfit'"),
        ({"config": {"train": {"lr": "fast"}}}, "train.lr must be a number"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_recipe_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _recipe(tmp_path, **kwargs)


def test_context_learn_updates_training_settings(tmp_path):
    from recipe.rundir import RunDir

    ctx = Context(tiny.classification(), torch.device("cpu"), 0, RunDir(tmp_path), stage="overfit")
    ctx.learn(train={"lr": 1e-2}, note="x")
    assert ctx.train.lr == 1e-2 and ctx.learned == {"overfit": {"lr": 1e-2, "note": "x"}}
    ctx.learn(lr_rule="found")  # a finding changes no setting
    assert ctx.train.lr == 1e-2 and ctx.learned["overfit"]["lr_rule"] == "found"
    with pytest.raises(TypeError, match=r"pass train=\{'lr'"):
        ctx.learn(lr=1e-3)  # a setting handed on by name is refused, never routed by matching names
    with pytest.raises(TypeError, match=r"'lrr' is no training setting.*'lr'"):
        ctx.learn(train={"lrr": 1e-3})
    assert ctx.train.lr == 1e-2


def test_result_renders_in_a_notebook(tmp_path):
    result = _recipe(tmp_path, stages=["overfit"], quiet=True).run()
    html = result._repr_html_()
    assert "overfit_batch" in html and "<table>" in html
    assert "lr_range_test" in checks_table_html(result.checks[-1:])  # a Check itself renders nothing: the report does


def test_a_nan_in_training_keeps_the_checks_made_before_it(tmp_path):
    config = {"train": {"lr": 1e6, "optimizer": "sgd"}}
    result = _recipe(tmp_path, stages=["baseline"], config=config, quiet=True).run()
    names = [c.name for c in result.checks]
    assert "loss_at_init" in names and "batch_independence" in names
    nan = next(c for c in result.checks if c.name == "non_finite")
    assert nan.status == "fail" and "step" in nan.message and nan.value["step"] is not None
