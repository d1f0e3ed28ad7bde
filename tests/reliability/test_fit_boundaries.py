"""A run killed at a fit boundary resumes to exactly the uninterrupted run (issue 15, item 2), and a run directory
never loses the user's files (item 1). The boundaries here are a spread over the stages that train: just after the
fit whose callback draws baseline's prediction dynamics, and the last of overfit, complexify and regularize;
`python benchmarks/faults.py` kills at every one of them (its kill_at_fit_<n> rows)."""

from __future__ import annotations

import pytest

from tests.reliability import fit_boundaries as fb

BOUNDARIES = (
    1,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    16,
)  # 16 fits in all: baseline 1-5, overfit 6-7, complexify 8-9, regularize 10-16


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = fb.reference(tmp_path_factory.mktemp("reference"))
    assert len(ref["fits"]) == fb.FITS, ref["fits"]
    return ref


@pytest.mark.parametrize("n", BOUNDARIES)
def test_a_run_killed_at_a_fit_boundary_resumes_to_the_uninterrupted_run(tmp_path, reference, n):
    out = fb.kill_at_fit(tmp_path, n, reference)
    assert out.survived, out.detail
    assert out.rows_lost == 0 and out.rows_duplicated == 0


def test_a_folder_of_user_files_is_refused_untouched(tmp_path):
    out = fb.user_files(tmp_path)
    assert out.survived, out.detail


def test_a_second_run_with_other_stages_keeps_the_first_runs_results(tmp_path):
    out = fb.other_stages(tmp_path)
    assert out.survived, out.detail
