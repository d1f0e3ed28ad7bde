"""console: what runs now (`doing`) names fit's bar and the run's progress line; off a terminal the line is printed
when a stage or a loop starts and otherwise at most once per interval, never with a carriage return; time left is
estimated from the items of a loop already done."""

from __future__ import annotations

import io

import pytest

from recipe import Recipe, console, fit
from recipe.check import Check
from tests import tiny


class Clock:
    """A clock the test moves by hand (no sleeps)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_describe_names_the_stage_then_what_runs_in_it():
    assert console.describe("fit digits") == "fit digits"  # a fit on its own keeps its name
    with console.doing("complexify", 4, 6):
        assert console.describe("fit digits") == "complexify"  # the stage's count is the run line's
        with console.doing("rung w16", 2, 4):
            assert console.describe("fit digits") == "complexify: rung w16 (2/4)"
            with console.doing("rung_w16"):
                assert console.describe("x") == "complexify: rung w16 (2/4) · rung_w16"
    with console.doing("tune", 6, 6), console.doing("trial", 3, 8), console.doing("trial"):
        assert console.describe("x") == "tune: trial 3/8 · trial"
    with console.doing("overfit"), console.doing("overfit_batch"), console.doing("overfit_batch"):
        assert console.describe("x") == "overfit: overfit_batch"  # a fit named after its check: said once
    assert console.describe("fit digits") == "fit digits"  # the stack is left as it was found


def test_off_a_terminal_a_line_when_a_stage_or_loop_starts_and_else_at_most_once_per_interval():
    clock, out = Clock(), io.StringIO()
    with console.progress_line(stream=out, interval=10.0, clock=clock), console.doing("complexify", 4, 6):
        for k in range(1, 4):
            with console.doing(f"rung w{k}", k, 3), console.doing(f"rung_w{k}"):
                steps = console.bar(total=100, enabled=True, default="fit tiny")
                for _ in range(100):  # 100 updates over 25 s: two or three lines, not a hundred
                    clock.now += 0.25
                    steps.update(1)
                steps.close()
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "[4/6] complexify · 0s elapsed",
        "[4/6] complexify: rung w1 (1/3) · 0s elapsed",
        "[4/6] complexify: rung w1 (1/3) · rung_w1 · step 40/100 · 10s elapsed",
        "[4/6] complexify: rung w1 (1/3) · rung_w1 · step 80/100 · 20s elapsed",
        "[4/6] complexify: rung w2 (2/3) · rung_w2 · step 20/100 · 30s elapsed · rungs done in ~45s",
        "[4/6] complexify: rung w2 (2/3) · rung_w2 · step 60/100 · 40s elapsed · rungs done in ~35s",
        "[4/6] complexify: rung w2 (2/3) · rung_w2 · step 100/100 · 50s elapsed · rungs done in ~25s",
        "[4/6] complexify: rung w3 (3/3) · rung_w3 · step 40/100 · 1m00s elapsed · rungs done in ~15s",
        "[4/6] complexify: rung w3 (3/3) · rung_w3 · step 80/100 · 1m10s elapsed · rungs done in ~5s",
    ]


def test_a_trial_run_again_keeps_the_loop_timed_and_a_new_loop_starts_afresh():
    clock, out = Clock(), io.StringIO()
    with console.progress_line(stream=out, interval=60.0, clock=clock) as line, console.doing("tune", 6, 6):
        for k in (1, 2, 2, 3):  # trial 2 pruned and replaced: still the same loop
            with console.doing("trial", k, 4):
                clock.now += 10
        with console.doing("trial", 4, 4):
            assert line.text().endswith("trials done in ~13s")  # 40 s for 3 trials done (one ran twice)
            with console.doing("seed", 1, 3):
                assert line.text().endswith("trials done in ~13s")  # the seeds have no pace yet: the trials' time
                clock.now += 2
            with console.doing("seed", 2, 3):
                assert line.text().endswith("seeds done in ~4s")
        with console.doing("seed", 1, 3):
            assert "done in" not in line.text()  # a new loop: no pace yet
    assert out.getvalue().count("\n") == 4  # the stage and three loops starting (no 60 s passed between)


def test_time_left_counts_down_within_an_item():
    clock, out = Clock(), io.StringIO()
    with console.progress_line(stream=out, clock=clock) as line, console.doing("tune", 6, 6):
        with console.doing("trial", 1, 5):
            clock.now += 60
        with console.doing("trial", 2, 5):
            assert line.text().endswith("trials done in ~4m00s")
            clock.now += 45
            assert line.text().endswith("trials done in ~3m15s")
            clock.now += 600  # slower than the pace: the items still to come, never a negative time
            assert line.text().endswith("trials done in ~3m00s")


def test_a_disabled_line_prints_nothing_and_fit_draws_no_bar():
    out = io.StringIO()
    with console.progress_line(enabled=False, stream=out), console.doing("overfit", 3, 6):
        steps = console.bar(total=10, enabled=True, default="fit tiny")
        steps.update(10)
        steps.close()
    assert out.getvalue() == "" and getattr(steps, "disable", False)


def test_on_a_terminal_the_line_is_redrawn_and_the_bar_carries_the_name():
    out, clock = Terminal(), Clock()
    with (
        console.progress_line(stream=out, clock=clock) as line,
        console.doing("regularize", 5, 6),
        console.doing("regulariser dropout", 2, 4),
    ):
        steps = console.bar(total=10, enabled=True, default="fit tiny")
        assert steps.desc.startswith("regularize: regulariser dropout (2/4)")
        assert line.status.desc == "[5/6] regularize: regulariser dropout (2/4) · 0s elapsed"
        clock.now += 75
        steps.update(1)  # a long fit keeps the line above it current
        assert line.status.desc == "[5/6] regularize: regulariser dropout (2/4) · 1m15s elapsed"
        steps.close()
    assert "\r" in out.getvalue()  # a terminal gets the line redrawn in place


def test_a_fit_on_its_own_off_a_terminal_is_quiet_until_the_interval(capsys):
    steps = console.bar(total=100, enabled=True, default="fit tiny")
    steps.update(50)
    steps.close()
    assert capsys.readouterr().err == ""  # a short fit adds nothing to a log


@pytest.mark.parametrize(("seconds", "shown"), [(0.4, "0s"), (59.6, "1m00s"), (3725, "1h02m")])
def test_durations_read_at_a_glance(seconds, shown):
    assert console._duration(seconds) == shown


def test_a_run_off_a_terminal_prints_its_stages_and_loops_and_a_quiet_one_nothing(tmp_path, capsys):
    config = {
        "overfit": {"steps": 60, "lr_steps": 30},
        "complexify": {"epochs": 2, "lr_steps": 30, "ladder": {"small": {}, "large": {}}},
    }
    stages = ["overfit", "complexify"]
    Recipe(tiny.classification(), run_dir=tmp_path / "a", stages=stages, device="cpu", config=config).run()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[1/2] overfit · ") and "\r" not in "".join(lines)
    assert any(line.startswith("[2/2] complexify · ") for line in lines)
    assert any(line.startswith("[2/2] complexify: rung small (1/2) · ") for line in lines), lines
    for quiet, progress in ((True, True), (False, False)):
        run_dir = tmp_path / f"quiet_{quiet}"
        Recipe(
            tiny.classification(), run_dir=run_dir, stages=["overfit"], config=config, quiet=quiet, progress=progress
        ).run()
        assert "[1/1]" not in capsys.readouterr().err


def test_fit_names_its_bar_after_what_trains():
    train = {"epochs": 2, "batch_size": 64, "lr": 1e-2, "device": "cpu", "log_every": 1}
    terminal = Terminal()
    with console.progress_line(stream=terminal), console.doing("overfit", 3, 6), console.doing("one batch"):
        fit(tiny.classification(), progress=True, **train)
    assert "overfit: one batch:" in terminal.getvalue() and "fit tiny" not in terminal.getvalue()
    log = io.StringIO()
    with console.progress_line(stream=log, interval=0.0), console.doing("tune", 6, 6), console.doing("trial", 3, 8):
        fit(tiny.classification(), progress=True, **train)
        fit(tiny.classification(), progress=False, **train)  # asked for no bar: no step lines
    steps = [line for line in log.getvalue().splitlines() if " step " in line]
    assert steps[-1].startswith("[6/6] tune: trial 3/8 · step 8/8, loss ") and len(steps) == 8, steps


def test_a_stage_table_is_flushed_when_the_stage_ends(monkeypatch):
    class Piped(io.StringIO):  # a pipe or a file: written only when flushed
        def __init__(self) -> None:
            super().__init__()
            self.flushed = ""

        def flush(self) -> None:
            self.flushed = self.getvalue()

    out = Piped()
    monkeypatch.setattr("sys.stdout", out)
    console.Console(quiet=False).stage("overfit", [Check("overfit_batch", "pass", message="memorised.")], 1.0)
    assert "overfit_batch" in out.flushed
