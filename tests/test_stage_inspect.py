"""The `inspect` stage end to end: its artifacts, its gate, sampling of large splits, and tasks it cannot read."""

from __future__ import annotations

import json

import pytest
import torch

from examples import digits
from recipe import InspectData, Recipe, Task
from tests import tiny


def run(task: Task, tmp_path, stages=("inspect",), **settings):
    return Recipe(
        task,
        run_dir=tmp_path / "run",
        stages=list(stages),
        device="cpu",
        config={"inspect": settings} if settings else None,
        progress=False,
        quiet=True,
    ).run()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    return run(digits.make_task("mlp"), tmp)


def test_clean_digits_pass_every_check(digits_run):
    assert digits_run.ok
    undeclared = {"group_leak"}  # skips, saying how to declare groups: digits has none
    assert {c.status for c in digits_run.checks if c.name not in undeclared} == {"pass"}, [
        (c.name, c.message) for c in digits_run.checks if c.status != "pass"
    ]
    assert [c.status for c in digits_run.checks if c.name in undeclared] == ["skip"]
    names = [c.name for c in digits_run.checks]
    for name in ("summary", "non_finite", "target_range", "class_balance", "input_stats", "split_shift"):
        assert name in names
    for name in ("duplicates", "outliers", "label_noise", "samples"):
        assert name in names


def test_digits_run_writes_the_plots_and_tables_a_person_looks_at(digits_run):
    folder = digits_run.run_dir / "01_inspect"
    for name in ("samples.png", "class_balance.png", "input_stats.png", "outliers_histogram.png", "outliers.png"):
        assert (folder / name).stat().st_size > 1000, name
    issues = json.loads((folder / "label_issues.json").read_text())
    assert isinstance(issues["estimated_noise_rate"], float) and isinstance(issues["indices"], list)
    table = json.loads((folder / "summary.table.json").read_text())
    assert [row[0] for row in table["rows"]] == ["train", "val"]
    report = (digits_run.run_dir / "report.html").read_text()
    assert "01_inspect" in report and "<caption>summary</caption>" in report and "samples.png" in report


def test_what_inspect_learned_reaches_the_manifest(digits_run):
    learned = json.loads((digits_run.run_dir / "manifest.json").read_text())["learned"]["inspect"]
    assert learned["input_scale"] == "ok" and "label_noise_rate" in learned


def test_a_failed_data_check_stops_the_recipe_before_training(tmp_path):
    x, y = tiny.blobs(256, 0)
    x[3, 0] = float("nan")
    task = Task(train=(x, y), val=tiny.blobs(128, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
    result = run(task, tmp_path, stages=("inspect", "baseline"), label_noise=False)
    assert not result.ok and result.stages == {"inspect": "fail"}
    assert result.failures[0].name == "non_finite" and "[3]" in result.failures[0].message


def test_large_splits_are_sampled_and_the_messages_say_so(tmp_path):
    result = run(tiny.classification(n_train=600), tmp_path, max_samples=200, label_noise=False)
    by_name = {c.name: c for c in result.checks}
    assert "random sample of 200 of 600" in by_name["duplicates"].message
    assert "random sample of 200 of 600" in by_name["input_stats"].message
    assert "all training" in by_name["non_finite"].message  # in-memory data is scanned whole for NaN/Inf


def test_dict_batches_are_read_joined_as_features_or_as_ids(tmp_path):
    class DictTask(Task):
        parts = "floats"

        def split_batch(self, batch):
            flag = (batch[0][:, :1] > 0).long()  # an integer part: a category beside the measurements
            if self.parts == "ids":  # token ids only: not numbers on a scale
                return {"a": flag, "b": 1 - flag}, batch[1]
            return ({"features": batch[0]} if self.parts == "floats" else {"features": batch[0], "flag": flag}), batch[
                1
            ]

        def forward(self, model, inputs):
            return model(inputs["features"]) if "features" in inputs else model(inputs["a"].float().expand(-1, 12))

    for parts, shift in (("floats", "pass"), ("mixed", "pass"), ("ids", "skip")):
        task = DictTask(train=tiny.blobs(128, 0), val=tiny.blobs(64, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
        task.parts = parts
        result = run(task, tmp_path / parts, label_noise=False)
        assert result.ok
        statuses = {c.name: c.status for c in result.checks}
        assert statuses["split_shift"] == shift, statuses  # ids alone are no measurements to compare
        assert statuses["duplicates"] == "pass", statuses  # identical samples are identical whatever they hold
        assert statuses["class_balance"] == "pass"


def test_text_tasks_get_decoded_samples(tmp_path):
    task = tiny.sequence()
    task.decoder = lambda ids: "".join(chr(97 + i) for i in ids)
    result = run(task, tmp_path)
    samples = next(c for c in result.checks if c.name == "samples")
    assert samples.status == "pass" and (result.run_dir / "01_inspect" / "samples.txt").read_text()
    assert {c.name: c.status for c in result.checks}["label_noise"] == "skip"


def test_a_subclass_adds_its_own_check(tmp_path):
    from recipe.check import passed

    class MyInspect(InspectData):
        def run(self, ctx):
            return [*super().run(ctx), passed("my_check", "looked at it.")]

    result = Recipe(
        tiny.classification(), run_dir=tmp_path / "r", stages=[MyInspect(label_noise=False)], progress=False, quiet=True
    ).run()
    assert result.checks[-1].name == "my_check" and result.checks[-1].stage == "inspect"


def test_images_hook_reshapes_flat_inputs_only_when_asked():
    flat = torch.randn(4, 64)
    plain = tiny.classification()
    assert plain.images(flat) is None
    assert digits.make_task("mlp").images(flat).shape == (4, 1, 8, 8)
    assert plain.images(torch.randn(4, 3, 8, 8)).shape == (4, 3, 8, 8)


def test_label_noise_waits_for_finite_inputs(tmp_path):
    x, y = tiny.blobs(256, 0)
    x[::10, 0] = float("nan")
    task = Task(train=(x, y), val=tiny.blobs(128, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
    result = run(task, tmp_path)
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["non_finite"] == "fail" and statuses["label_noise"] == "skip"
