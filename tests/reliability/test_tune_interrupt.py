"""Tune under interruption (issue 15, item 3): Ctrl-C or SIGTERM during a trial, with and without `--workers`; a
kill -9 that orphans the workers; a torn study journal. Each scenario (tests/reliability/scenarios.py, which
benchmarks/faults.py runs too) signals a real `recipe run` child mid-trial, then resumes: every planned trial
completes once, none is left RUNNING, and each completed trial has its rows in metrics.jsonl and trials.csv.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings

import optuna
import pytest

from recipe.errors import ConfigError, Terminated
from recipe.study_storage import WORKERS_LOCK, fence, interrupted, repair_journal, requeue
from tests.reliability import scenarios as sc

SIGNALS = [signal.SIGINT, signal.SIGTERM]


def assert_survived(out: sc.Outcome) -> None:
    assert out.survived, f"{out.name}: {out.detail} {out.facts}"
    assert out.rows_lost == out.trials_lost == 0


# ---- the scenarios: real signals to a real `recipe run` ------------------------------------------------------------


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_mid_trial_requeues_the_trial_and_resume_completes_the_study(tmp_path, sig):
    out = sc.signal_tune(tmp_path, sig)
    assert_survived(out)
    assert out.facts["states_at_stop"]["FAIL"] == 1 and out.facts["requeued_same_params"]
    assert out.facts["stderr"][0].startswith("recipe: ") and len(out.facts["stderr"]) == 1, out.facts["stderr"]


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_to_the_main_process_reaches_its_workers_and_it_returns_quickly(tmp_path, sig):
    out = sc.signal_tune_workers(tmp_path, sig)
    assert_survived(out)
    assert out.facts["workers_ended"] and out.facts["seconds"] < 10, out.facts
    assert out.facts["completed_after_signal"] == 0  # the worker stopped mid-trial instead of finishing the study
    assert len(out.facts["stderr"]) == 1, out.facts["stderr"]  # no trial's traceback, from the run or its worker


def test_after_a_kill_9_of_the_main_process_its_orphaned_worker_stops_and_resume_loses_nothing(tmp_path):
    out = sc.kill_tune_workers(tmp_path)
    assert_survived(out)
    assert out.facts["orphans_stopped"] and len(out.facts["trials_csv"]) == sc.TUNE_TRIALS
    assert out.facts["completed_after_kill"] == 0  # it stopped mid-trial instead of running on as an orphan


def test_a_torn_journal_is_cut_with_a_note_and_a_corrupted_one_refused_in_one_line(tmp_path):
    out = sc.torn_journal(tmp_path)
    assert_survived(out)
    assert out.facts["refused_exit"] == 2 and "journal.log" in out.facts["refused"]


# ---- the parts, on their own ---------------------------------------------------------------------------------------


def test_a_trial_is_queued_again_once_whoever_notices_it():
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    assert requeue(study, trial) and not requeue(study, trial)  # the second notice (sweep, or a second signal)
    interrupted(study, trial)  # left RUNNING by a signal outside the objective: failed, not queued a third time
    states = [(t.state.name, t.system_attrs.get("fixed_params"), t.user_attrs) for t in study.get_trials()]
    assert states == [("FAIL", {"x": 0.25}, {}), ("WAITING", {"x": 0.25}, {"retry_of": 0})]


def test_a_trial_interrupted_before_it_drew_its_values_is_requeued_with_its_queued_values():
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.5})
    trial = study.ask()  # no suggest yet: the values are still only the queued ones
    interrupted(study, trial)
    assert [t.system_attrs.get("fixed_params") for t in study.get_trials()] == [{"x": 0.5}, {"x": 0.5}]


def test_repair_journal_cuts_only_a_torn_tail(tmp_path):
    path = tmp_path / "journal.log"
    whole = b'{"op_code": 0}\n{"op_code": 1}\n'
    path.write_bytes(whole)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        repair_journal(path)  # whole records: untouched, silent
    assert path.read_bytes() == whole
    torn = b'{"op_code": 2, "user_attr": "' + b"x" * 200_000  # longer than one read-back chunk
    path.write_bytes(whole + torn)
    with pytest.warns(UserWarning, match="torn last record") as caught:
        repair_journal(path)
    assert path.read_bytes() == whole and str(path) in str(caught[0].message)
    path.write_bytes(torn)  # nothing whole at all: emptied, never left torn
    with pytest.warns(UserWarning):
        repair_journal(path)
    assert path.read_bytes() == b""


def test_fence_waits_for_a_live_worker_and_names_the_lock_when_it_outlives_the_timeout(tmp_path):
    lock = tmp_path / WORKERS_LOCK
    lock.parent.mkdir(parents=True)
    holder = (  # what every worker does for its lifetime: a shared lock the kernel drops when it ends
        "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_SH); print('held', flush=True); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as info:
            fence(tmp_path, timeout=0.2)
        assert str(lock) in str(info.value) and "\n" not in str(info.value)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the holder ends
        proc.wait()
    fence(tmp_path, timeout=5)  # nobody holds it now: returns at once


class _Recorded:
    """A stand-in worker process that records the signals sent to it."""

    def __init__(self):
        self.signals: list[int] = []

    def poll(self):
        return None

    def send_signal(self, sig):
        self.signals.append(sig)

    def wait(self, timeout=None):
        return 0


@pytest.mark.parametrize(("sig", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_the_workers_get_a_signal_the_moment_the_parent_does_and_only_once(tmp_path, sig, raised):
    """Passed on from the signal handler, before the parent unwinds: under load the parent's unwinding gave the
    workers time to finish two more trials (a CI failure of the scenario above). `stop` then sends nothing again."""
    from recipe.tune_workers import Workers

    workers = Workers(tmp_path / "worker.json", 0)
    worker = _Recorded()
    workers.procs = [worker]  # type: ignore[list-item]
    before = signal.getsignal(sig)
    with pytest.raises(raised), workers.passing_signals():
        os.kill(os.getpid(), sig)
        for _ in range(1000):  # the handler runs at the next bytecode; the loop only gives it one
            pass
    assert worker.signals == [sig]
    workers.stop(sig)
    assert worker.signals == [sig] and signal.getsignal(sig) is before
