"""Containment: a check that raises becomes an `error` check, the stage's other checks still run, and the recipe goes
on; the exceptions that are verdicts or about the run itself still propagate."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from recipe import Recipe, Stage
from recipe.check import Check, errored, passed
from recipe.console import Console
from recipe.context import Context
from recipe.errors import ConfigError, NonFiniteError, StorageError, TaskError
from recipe.report import build_report
from recipe.reproducibility import resolve_device
from recipe.rundir import RunDir
from recipe.runner import RecipeResult, _worst
from tests import tiny


def _context(tmp_path) -> Context:
    rundir = RunDir(tmp_path / "run", ["probe"])
    rundir.create()
    return Context(tiny.classification(), resolve_device("cpu"), 0, rundir, stage="probe", progress=False)


def _raises_deep() -> Check:
    """Catches nothing: it always raises, two frames down."""
    return _inner()


def _inner() -> Check:
    raise ValueError("lengths must be > 0\nsecond line of detail")


def test_a_raising_check_becomes_an_error_named_after_it_with_the_exception_and_the_place(tmp_path):
    ctx = _context(tmp_path)
    check = ctx.check(_raises_deep)
    assert check.status == "error" and check.name == "raises_deep"  # the helper's leading underscore dropped
    assert check.value["exception"] == "ValueError"
    assert check.value["message"] == "ValueError: lengths must be > 0"  # first line only
    assert check.value["where"].startswith("test_containment.py:") and check.value["where"].endswith("_inner")
    assert "it probes: Catches nothing: it always raises, two frames down" in check.message
    assert check.seconds is not None and not check.failed
    assert ctx.check(_raises_deep, name="probe_x").name == "probe_x"
    assert ctx.check(lambda: passed("fine", "ok")).status == "pass"  # a check that returns is untouched


@pytest.mark.parametrize(
    "exc",
    [
        NonFiniteError("loss is NaN at step 3", step=3),  # a verdict: the stage records it as non_finite
        ConfigError("train.model='big' is not a rung"),  # the run's settings: nothing can run until fixed
        StorageError("could not write checks.json: the disk is full"),
        OSError(errno.ENOSPC, "No space left on device"),  # a figure the full disk refused: the run, not the check
        KeyboardInterrupt(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_verdicts_and_run_level_errors_are_not_contained(tmp_path, exc):
    ctx = _context(tmp_path)

    def boom() -> Check:
        raise exc

    with pytest.raises(type(exc)):
        ctx.check(boom)
    with pytest.raises(type(exc)), ctx.contained("block", []):
        raise exc


def test_a_task_error_raised_mid_check_is_contained(tmp_path):
    def boom() -> Check:
        raise TaskError("class id 12 in a batch past the scanned targets")

    check = _context(tmp_path).check(boom)
    assert check.status == "error" and "TaskError: class id 12" in check.message


def test_a_contained_block_appends_its_error_and_the_stage_goes_on(tmp_path):
    ctx, checks = _context(tmp_path), [passed("before", "ok")]
    made = []
    with ctx.contained("activations", checks, "dead units"):
        made.append(1)
        torch.zeros(2) @ torch.zeros(3)  # a shape error, as a hook on an unusual output would raise
        made.append(2)
    with ctx.contained("after", checks):
        checks.append(passed("after", "ok"))
    assert made == [1]
    assert [(c.name, c.status) for c in checks] == [("before", "pass"), ("activations", "error"), ("after", "pass")]
    assert "RuntimeError" in checks[1].message and "dead units" in checks[1].message


def test_a_contained_block_gives_its_time_to_the_checks_it_made(tmp_path):
    ctx, checks = _context(tmp_path), [passed("before", "ok")]
    with ctx.contained("trivial", checks):
        torch.manual_seed(0)
        torch.linalg.inv(torch.randn(200, 200) + 200 * torch.eye(200))  # some measurable work
        checks += [passed("trivial", "ok"), passed("second", "ok"), passed("timed", "ok").replace(seconds=1e-6)]
    with ctx.contained("broken", checks):
        raise ValueError("no")
    before, trivial, second, timed, broken = checks
    assert before.seconds is None  # not made in a block
    assert trivial.seconds > 0 and second.seconds == 0.0 and timed.seconds == 1e-6  # the block's time counted once
    assert broken.status == "error" and broken.seconds >= 0


@pytest.mark.parametrize(
    ("statuses", "stage"),
    [
        (["pass", "warn", "error", "fail"], "fail"),
        (["pass", "warn", "error", "skip"], "error"),
        (["pass", "warn", "skip"], "warn"),
        (["skip", "pass"], "pass"),
        (["skip"], "pass"),
    ],
)
def test_a_stage_status_is_fail_then_error_then_warn(statuses, stage):
    assert _worst([Check(f"c{i}", s) for i, s in enumerate(statuses)]) == stage


class Crashing(Stage):
    """A user's stage that raises outside any check."""

    name = "crashing"

    def run(self, ctx):
        raise ZeroDivisionError("division by zero in my custom stage")


class Mixed(Stage):
    """A user's stage whose own check raises through ctx.check beside one that passes."""

    name = "mixed"

    def run(self, ctx):
        return [ctx.check(_raises_deep, name="my_probe"), passed("my_other", "fine")]


def test_a_raising_stage_and_a_raising_check_do_not_stop_the_recipe(tmp_path, capsys):
    result = Recipe(
        tiny.classification(), run_dir=tmp_path / "run", stages=[Crashing(), Mixed()], progress=False, device="cpu"
    ).run()
    assert result.ok and result.failures == []
    assert [(c.stage, c.name, c.status) for c in result.checks] == [
        ("crashing", "crashing", "error"),
        ("mixed", "my_probe", "error"),
        ("mixed", "my_other", "pass"),
    ]
    assert result.stages == {"crashing": "error", "mixed": "error"}
    assert "stage 'crashing' raised ZeroDivisionError: division by zero" in result.checks[0].message
    assert [c.name for c in result.errors] == ["crashing", "my_probe"]
    assert "'error': 2" in repr(result)
    out = capsys.readouterr().out
    assert "ERR!  my_probe" in out and "ERR! crashing.crashing:" in out and out.count("OK: 1 pass, 2 error") == 1
    records = json.loads((result.run_dir / "checks.json").read_text())
    assert [r["status"] for r in records] == ["error", "error", "pass"]
    assert json.loads((result.run_dir / "manifest.json").read_text())["stages"] == result.stages
    page = (result.run_dir / "report.html").read_text()
    assert page.count("#8250df") >= 3  # the error badge has its own colour: two checks and two stages


def test_a_failed_stage_still_stops_the_recipe_and_an_error_does_not(tmp_path):
    class Failing(Stage):
        name = "failing"

        def run(self, ctx):
            return [Check("bad", "fail", message="a bug")]

    ran = Recipe(tiny.classification(), run_dir=tmp_path / "a", stages=[Crashing(), Mixed()], progress=False)
    stopped = Recipe(tiny.classification(), run_dir=tmp_path / "b", stages=[Failing(), Mixed()], progress=False)
    assert [c.stage for c in ran.run().checks][-1] == "mixed"
    assert {c.stage for c in stopped.run().checks} == {"failing"}


def test_console_and_report_render_an_error_apart_from_a_fail(tmp_path, capsys):
    error = errored("probe", ValueError("bad shape")).replace(stage="baseline")
    failure = Check("other", "fail", message="a real bug", stage="baseline")
    console = Console(quiet=False)
    console.stage("baseline", [error, failure], 1.0)
    console.summary(RecipeResult(False, [error, failure], tmp_path, {"baseline": "fail"}))
    out = capsys.readouterr().out
    assert "1 fail, 1 error" in out and "ERR!  probe" in out and "FAIL  other" in out
    assert out.index("FAIL baseline.other") < out.index("ERR! baseline.probe")  # failures first
    rundir = RunDir(tmp_path / "r", ["baseline"])
    rundir.create()
    rundir.write_checks([error, failure])
    page = build_report(rundir.path).read_text()
    assert page.index("a real bug") < page.index("bad shape")  # "needs attention": the fail, then the error


def test_an_os_error_that_is_not_the_disk_is_contained(tmp_path):
    ctx = _context(tmp_path)

    def boom() -> Check:
        raise FileNotFoundError(errno.ENOENT, "No such file", "the_users_data.csv")

    assert ctx.check(boom).status == "error"
