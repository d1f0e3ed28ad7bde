"""`tune` against a real PostgreSQL server on loopback: two workers (one killed mid-trial) share one study through
Optuna's relational storage; no trial is lost or run twice, and the killed worker's trial is retried.

`.ci/run` installs Debian's postgresql, starts it, and sets RECIPE_TEST_POSTGRES to a database URL; elsewhere the
test is skipped (set the variable to run it against your own server).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import time
import uuid

import pytest

from recipe.search_space import parse_space
from recipe.tuning import Search, open_study, prepare, spawn_worker, work
from tests import tiny

URL = os.environ.get("RECIPE_TEST_POSTGRES")
pytestmark = [
    pytest.mark.skipif(
        not URL, reason="RECIPE_TEST_POSTGRES is not set (.ci/run starts a local PostgreSQL and sets it)"
    ),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),  # Optuna's heartbeat API
]
SOURCE = {"task": "tests.tiny:classification", "task_args": {}}


def heartbeats(study_name: str) -> int:
    """Heartbeats recorded for the study's trials, read from Optuna's tables."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(URL)
    try:
        with engine.connect() as connection:
            query = sqlalchemy.text(
                "SELECT count(*) FROM trial_heartbeats h JOIN trials t ON h.trial_id = t.trial_id "
                "JOIN studies s ON t.study_id = s.study_id WHERE s.study_name = :name"
            )
            return int(connection.execute(query, {"name": study_name}).scalar() or 0)
    finally:
        engine.dispose()


def test_two_workers_on_postgres_lose_nothing_and_retry_a_killed_trial(tmp_path):
    import optuna

    task = tiny.classification()
    search = Search(
        base={},
        space={"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        trials=4,
        sampler="sobol",
        epochs=300,
        max_steps=None,
        seed=0,
        pruning=False,
        storage=URL,
        study=f"test-{uuid.uuid4().hex[:8]}",
        run_dir=str(tmp_path),
        device="cpu",
        lease_timeout=4.0,
    )
    prepare(search, task)
    spec = tmp_path / "worker.json"
    spec.write_text(json.dumps({"search": dataclasses.asdict(search), "source": SOURCE}))
    proc = spawn_worker(spec, 1)
    study = open_study(search, search.study, parse_space(search.space, task, search.settings()))
    deadline = time.time() + 60
    while time.time() < deadline and not heartbeats(search.study):
        time.sleep(0.1)  # polling for the worker's first trial to start and beat: one killed before its first
        # heartbeat is never stale to Optuna (it skips trials without one) and would stay RUNNING
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and not study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        optuna.storages.fail_stale_trials(study)  # what every worker does before a trial; polled until it fires
        time.sleep(0.5)
    work(dataclasses.replace(search, epochs=2), task)
    trials = study.get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    assert states["FAIL"] == 1 and states["COMPLETE"] == 4, states
    failed = next(t for t in trials if t.state.name == "FAIL")
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retried) == 1 and retried[0].params == failed.params and retried[0].state.name == "COMPLETE"
    completed = [json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE"]
    assert len(set(completed)) == 4  # no configuration ran twice
