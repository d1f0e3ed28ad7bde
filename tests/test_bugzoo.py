"""The public bug zoo as tests: every planted bug is flagged by the check built for it; clean tasks neither fail nor
warn. (benchmarks/bugzoo.py prints the same cases as a table.)"""

from __future__ import annotations

import pytest

from benchmarks.bugzoo import BUGS, CLEAN, run_case


@pytest.mark.parametrize("case", BUGS, ids=[c.name for c in BUGS])
def test_bug_is_flagged(case):
    out = run_case(case)
    assert out.flagged, f"{case.name}: expected {case.expect} from {case.catches}, got {out.fired}"


@pytest.mark.parametrize("case", CLEAN, ids=[c.name for c in CLEAN])
def test_clean_task_has_no_fail_and_no_warn(case):
    out = run_case(case)
    assert out.fired == {"fail": [], "warn": []}, out.fired
