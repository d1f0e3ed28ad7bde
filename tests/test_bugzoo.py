"""The public bug zoo as tests: every planted bug is flagged by a check built for it, with a message naming its
cause; every clean task and every fixed twin has no fail and no error, and the original clean tasks no warn either.
(benchmarks/bugzoo.py prints the same cases as a table.) The cases run without figures: the zoo's verdicts are the
same with them (`bugzoo.py` against `bugzoo.py --no-figures`, every row alike), and drawing them is a tenth of the
zoo's time, which is half of the suite's."""

from __future__ import annotations

import pytest

from benchmarks.bugzoo import BUGS, CLEAN, ORIGINAL_CLEAN, TWINS, Case, Outcome, run_case
from recipe.check import Check

CONTROLS = CLEAN + TWINS


KNOWN_MISS = [
    pytest.param(c, marks=pytest.mark.xfail(reason=c.known_miss, strict=True)) if c.known_miss else c for c in BUGS
]


@pytest.mark.filterwarnings("ignore:Using a target size")  # PyTorch's warning about the planted broadcast
@pytest.mark.parametrize("case", KNOWN_MISS, ids=[c.name for c in BUGS])
def test_bug_is_flagged_with_its_cause(case):
    out = run_case(case, figures=False)
    fired = [(c.name, c.status, c.message) for c in out.checks if c.status in ("fail", "warn", "error")]
    assert out.right_cause, f"{case.name}: expected {case.expect} from {case.catches} naming /{case.cause}/: {fired}"


@pytest.mark.parametrize("case", CONTROLS, ids=[c.name for c in CONTROLS])
def test_clean_task_and_twin_have_no_fail_and_no_error(case):
    out = run_case(case, figures=False)
    bad = [(c.name, c.status, c.message) for c in out.checks if c.status in ("fail", "error")]
    assert not bad, bad
    if case in ORIGINAL_CLEAN:
        assert not out.fired("warn"), out.fired("warn")


def test_every_bug_has_a_twin_that_runs_its_stages():
    controls = {c.name: c for c in CONTROLS}
    for bug in BUGS:
        twin = controls.get(bug.twin)
        assert twin is not None, f"{bug.name}: no twin named {bug.twin!r}"
        assert set(bug.stages) <= set(twin.stages), f"{bug.name}: twin {twin.name} skips {bug.stages}"


def _outcome(expect: str, *checks: Check) -> Outcome:
    case = Case("planted", lambda: None, expect, catches=("right",), cause="mechanism")  # type: ignore[arg-type,return-value]
    return Outcome(case, list(checks), 0.0)


@pytest.mark.parametrize(
    ("expect", "checks", "right"),
    [
        ("fail", [Check("right", "fail", message="names the mechanism")], True),
        ("fail", [Check("right", "fail", message="a symptom only")], False),  # the message must name the cause
        ("fail", [Check("other", "fail", message="the mechanism")], False),  # a check not built for it
        ("fail", [Check("right", "warn", message="the mechanism")], False),  # the wrong status
        ("warn", [Check("right", "warn", message="the mechanism")], True),
        ("warn", [Check("right", "warn", message="the mechanism"), Check("other", "fail")], False),  # unrelated fail
    ],
)
def test_right_cause_needs_the_built_check_its_status_and_the_mechanism(expect, checks, right):
    assert _outcome(expect, *checks).right_cause is right


def test_a_clean_case_verdict_counts_fails_errors_and_warns():
    assert _outcome("clean", Check("a", "fail")).verdict == "FALSE ALARM"
    assert _outcome("clean", Check("a", "error")).verdict == "ERROR"
    assert _outcome("clean", Check("a", "warn")).verdict == "clean (warns)"
    assert _outcome("clean", Check("a", "pass")).verdict == "clean"
