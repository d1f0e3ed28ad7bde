"""Issue 8's faults, each injected into real work (the scenarios are in scenarios.py, which benchmarks/faults.py runs
too): kill -9 at chosen points of `fit` and of `tune`, SIGTERM and SIGINT, a full disk and a kill between a write and
its rename (through tests/reliability/faults.py), corrupted and hostile files, two runs on one directory. After each the
run resumes to what an uninterrupted run gives (weights bit for bit on CPU, history, metrics rows: none lost, none
twice), or the bad file is refused with a one-line error naming it.
"""

from __future__ import annotations

import errno
import signal

import pytest

from recipe import rundir
from recipe.rundir import write_atomic
from tests.reliability import faults
from tests.reliability import scenarios as sc


@pytest.fixture(scope="module")
def ref_fit(tmp_path_factory):
    return sc.reference_fit(tmp_path_factory.mktemp("reference_fit"))


@pytest.fixture(scope="module")
def ref_rows(tmp_path_factory):
    return sc.reference_run(tmp_path_factory.mktemp("reference_run"))


def assert_survived(out: sc.Outcome) -> None:
    assert out.survived, f"{out.name}: {out.detail} {out.facts}"
    assert out.rows_lost == out.rows_duplicated == out.trials_lost == out.hostile_executed == 0


# ---- kill -9 and signals in `fit` ----------------------------------------------------------------------------------


@pytest.mark.parametrize("point", list(sc.FIT_POINTS))
def test_kill_9_in_fit_resumes_to_the_uninterrupted_run(tmp_path, ref_fit, point):
    out = sc.kill_fit(tmp_path, point, ref_fit)
    assert_survived(out)
    assert out.facts["rows_before"] > 0  # the kill came after rows were written, and they agreed with the reference


def test_sigterm_in_fit_checkpoints_the_step_it_reached(tmp_path, ref_fit):
    out = sc.signal_fit(tmp_path, signal.SIGTERM, ref_fit)
    assert_survived(out)
    assert out.facts["last_pt_steps"] == 11 and "Terminated" in out.facts["raised"]  # not the step-9 checkpoint


def test_sigint_in_fit_stops_and_resumes_from_the_last_checkpoint(tmp_path, ref_fit):
    out = sc.signal_fit(tmp_path, signal.SIGINT, ref_fit)
    assert_survived(out)
    assert out.facts["last_pt_steps"] == 9


# ---- the fault hook: a kill between a write and its rename, a full disk --------------------------------------------


@pytest.mark.parametrize(
    ("target", "nth"),
    [("last.pt", 3), ("last.pt.sha256", 3), ("last.pt.sha256", 4)],
    ids=["before-checkpoint-rename", "before-record-rename", "between-checkpoint-and-record"],
)
def test_a_kill_between_write_and_rename_leaves_a_verified_checkpoint(tmp_path, ref_fit, target, nth):
    out = sc.kill_in_write(tmp_path, target, nth, ref_fit)
    assert out.facts["exit"] == -signal.SIGKILL
    assert_survived(out)
    # the partial file stays behind, hidden: dot-prefixed, not *.pt, so nothing takes it for a checkpoint
    assert out.facts["stray"] and all(n.startswith(".") and n.endswith(".tmp") for n in out.facts["stray"])


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, ref_fit):
    out = sc.enospc_fit(tmp_path, ref_fit)
    assert_survived(out)
    assert out.facts["last_pt_steps"] == 6 and out.facts["stray"] == []  # the third write (step 8) failed cleanly


def test_a_full_disk_during_recipe_run_is_one_line_and_resumable(tmp_path):
    assert_survived(sc.enospc_run(tmp_path))


def test_the_hook_parses_its_forms_and_is_off_when_unset(tmp_path):
    assert faults.parse(None) is None and faults.parse("") is None
    assert faults.parse("enospc:*.pt") == faults.Fault("enospc", 1, "*.pt")
    assert faults.parse("kill_after:3:last.pt") == faults.Fault("kill", 3, "last.pt")
    assert faults.parse("kill_before_rename:last.pt.sha256") == faults.Fault("kill", 1, "last.pt.sha256")
    for bad in ("enospc", "explode:*.pt", "enospc:0:*.pt"):
        with pytest.raises(ValueError, match="expected enospc"):
            faults.parse(bad)
    assert faults.matches(tmp_path / "run" / "last.pt", "run/last.pt") and not faults.matches(
        tmp_path / "other" / "last.pt", "run/last.pt"
    )
    assert rundir.before_replace is None  # production: the seam is off
    write_atomic(tmp_path / "a.json", b"1")
    faults.inject("enospc:2:*.json")
    try:
        write_atomic(tmp_path / "b.txt", b"x")  # not matching
        write_atomic(tmp_path / "a.json", b"2")  # first match: let through
        with pytest.raises(OSError) as info:
            write_atomic(tmp_path / "a.json", b"3")
        write_atomic(tmp_path / "a.json", b"4")  # the fault fires once
    finally:
        faults.inject(None)
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "a.json").read_bytes() == b"4" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.json",
        "b.txt",
    ]


# ---- `recipe run`: signals, two runs, tune -------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_a_signal_to_recipe_run_mid_stage_resumes_with_the_rows_of_an_uninterrupted_run(tmp_path, ref_rows, sig):
    out = sc.signal_run(tmp_path, sig, ref_rows)
    assert_survived(out)
    if sig == signal.SIGTERM:  # the interrupted fit wrote where it stopped, for the resume to continue from
        assert any(p.endswith("/last.pt") for p in out.facts["checkpoints"]), out.facts["checkpoints"]


def test_a_second_run_into_a_live_runs_directory_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    assert_survived(sc.two_runs(tmp_path))


@pytest.fixture(scope="module")
def killed_search(tmp_path_factory):
    return sc.kill_tune(tmp_path_factory.mktemp("tune"))


def test_kill_9_in_tune_keeps_the_finished_trials_and_counts_none_twice(killed_search):
    facts = killed_search.facts
    assert facts["resume_exit"] in (0, 1), facts
    assert facts["states_at_kill"]["COMPLETE"] == 2 and facts["states_at_kill"]["RUNNING"] == 1
    assert facts["counted_twice"] == 0 and facts["states_after"]["COMPLETE"] >= sc.TUNE_TRIALS - 1


def test_kill_9_in_tune_loses_no_trial_and_leaves_none_running(killed_search):
    assert killed_search.facts["left_running"] == 0 and killed_search.facts["lost"] == 0


def test_kill_9_in_tune_loses_no_metrics_row(killed_search):
    assert killed_search.facts["trials_without_rows"] == [] and killed_search.rows_lost == 0


# ---- checkpoints gone bad ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", sc.CORRUPTIONS)
def test_a_corrupted_checkpoint_falls_back_to_the_previous_one_or_is_a_one_line_error(tmp_path, how):
    out = sc.corrupted_checkpoint(tmp_path, how)
    assert out.facts.get("load_ok", True), out.facts["load"]
    assert out.survived, out.facts["resume"]


def test_a_flipped_byte_loads_silently_without_the_sha256_record(tmp_path):
    """Why the `.sha256` record exists: torch checks no CRC, so the flip below is only caught by it."""
    import torch

    from recipe import checkpoint

    ckpt = sc.good_checkpoints(tmp_path)
    sc.corrupt(ckpt, "flipped_byte", tmp_path / "other")
    checkpoint.sidecar(ckpt / "last.pt").unlink()
    torch.load(ckpt / "last.pt", weights_only=True)


def test_resume_falls_back_to_the_newest_verified_checkpoint(tmp_path, ref_fit):
    sc.train(tmp_path, "none", "rows_first.jsonl")  # a whole run: last.pt at its end, earlier ones overwritten
    sc.corrupt(tmp_path / "ckpt", "truncated", tmp_path / "other")
    assert sc.train(tmp_path, "none", "rows.jsonl") == 0  # falls back to last.1.pt
    assert sc.read_fit(tmp_path, "rows.jsonl").rows == ref_fit.rows


# ---- hostile files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("through", ["load", "fit"])
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, through):
    assert_survived(sc.hostile_checkpoint(tmp_path, through))


def test_a_malicious_yaml_is_refused_and_runs_nothing(tmp_path):
    assert_survived(sc.hostile_yaml(tmp_path))
