"""The `tune` stage end to end: a search on a tiny task, its artifacts and hand-over, resuming, several worker
processes on one study, and a killed worker whose trial is retried."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml

from recipe import Recipe, Tune
from recipe.config import TrainSettings, settings_from_dict, split_config
from recipe.search_space import parse_space
from recipe.stages import STAGES
from recipe.tuning import LEASES, Search, open_study, prepare, spawn_worker, work
from tests import tiny

SOURCE = {"task": "tests.tiny:classification", "task_args": {}}


def run(tmp_path, stages=None, **settings):
    settings = {"trials": 8, "epochs": 3, "seeds": 2, **settings}
    return Recipe(
        tiny.classification(),
        run_dir=tmp_path / "run",
        stages=stages or [Tune(**settings)],
        device="cpu",
        progress=False,
        quiet=True,
        source=SOURCE,
    ).run()


def trials_of(run_dir: Path) -> list:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(run_dir / "study" / "journal.log")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_a_search_runs_writes_its_artifacts_and_hands_over_the_best(tmp_path):
    result = run(tmp_path)
    names = [c.name for c in result.checks if c.name != "prediction_errors"]  # H6's check, tested in its own file
    assert names == [
        "search",
        "search_space_boundary",
        "enough_trials",
        "seed_variance",
        "beats_incoming",
        "training_length",
        "ensemble",
        "distillation",
    ]
    assert result.ok and result.checks[4].value["handed_on"] == "tuned"  # 3e-4 over 36 steps: the search beats it
    folder = result.run_dir / "06_tune"
    for name in ("trials.csv", "trials.table.json", "axes.png", "best_so_far.png", "best.pt", "best_config.yaml"):
        assert (folder / name).exists(), name
    config = yaml.safe_load((folder / "best_config.yaml").read_text())
    run_config, _ = split_config(config, STAGES, "best_config.yaml")
    settings = settings_from_dict(TrainSettings, run_config.train, "train")
    best = result.checks[0].value["best_params"]
    assert settings.lr == pytest.approx(best["lr"]) and run_config.task == SOURCE["task"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["train_final"]["lr"] == pytest.approx(best["lr"], rel=1e-5)  # JSON keeps 6 digits
    assert len([r for r in result.run_dir.joinpath("metrics.jsonl").read_text().splitlines() if '"trial"' in r]) > 0
    trials = [f for f in manifest["fits"] if f["stage"] == "tune" and "state" in f]  # the study's, not re-runs
    ended = [t for t in trials_of(result.run_dir) if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    assert len(trials) == len(ended) > 0 and all(f["seconds"] > 0 for f in trials)
    assert all("steps_per_epoch" in f for f in trials if f["state"] == "complete")  # each trial's fit setup
    assert result.checks[0].seconds >= sum(f["seconds"] for f in trials)  # the search check carries the study's time


def test_running_the_search_again_resumes_the_study(tmp_path):
    run(tmp_path)
    before = trials_of(tmp_path / "run")
    run(tmp_path)
    assert len(trials_of(tmp_path / "run")) == len(before)
    assert sum(t.state.name == "COMPLETE" for t in before) == 8  # `trials` counts finished ones


@pytest.mark.parametrize("sampler", ["random", "tpe", "grid"])
def test_other_samplers_by_name(tmp_path, sampler):
    result = run(tmp_path, sampler=sampler, trials=6, seeds=0, space={"lr": {"low": 1e-3, "high": 1e-1, "log": True}})
    assert result.checks[0].status == "pass" and result.checks[0].value["states"]["complete"] >= 1


def test_a_range_whose_best_is_at_the_edge_warns(tmp_path):
    result = run(tmp_path, trials=8, seeds=0, space={"lr": {"low": 1e-6, "high": 1e-5, "log": True}})
    boundary = next(c for c in result.checks if c.name == "search_space_boundary")
    assert boundary.status == "warn" and boundary.value["crowded"] == {"lr": "upper"}


def test_two_worker_processes_share_one_study_and_lose_nothing(tmp_path):
    result = run(tmp_path, workers=2, trials=8, epochs=150, seeds=0, pruning="off")  # ~1 s trials: both take some
    assert result.checks[0].status == "pass"
    trials = trials_of(tmp_path / "run")
    states = collections.Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == 8 and len(trials) == 8
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8  # every queued configuration ran once
    assert {t.user_attrs.get("worker") for t in trials} == {0, 1}


def test_workers_need_a_config_to_rebuild_the_task(tmp_path):
    from recipe.errors import ConfigError

    with pytest.raises(ConfigError, match="--workers"):
        Recipe(tiny.classification(), run_dir=tmp_path, stages=[Tune(workers=2)], progress=False, quiet=True).run()


def test_a_killed_workers_trial_is_retried_and_counted_once(tmp_path):
    task = tiny.classification()
    search = Search(
        base={},
        space={"lr": {"low": 1e-3, "high": 1e-2, "log": True}},
        trials=4,
        sampler="sobol",
        epochs=400,
        max_steps=None,
        seed=0,
        pruning=False,
        storage=None,
        study="killed",
        run_dir=str(tmp_path),
        device="cpu",
        lease_timeout=2.0,
    )
    spec = tmp_path / "worker.json"
    import dataclasses

    prepare(search, task)
    spec.write_text(json.dumps({"search": dataclasses.asdict(search), "source": SOURCE}))
    proc = spawn_worker(spec, 1)
    leases = tmp_path / LEASES
    deadline = time.time() + 60
    while time.time() < deadline and not (leases.exists() and any(leases.iterdir())):
        time.sleep(0.1)  # polling for the worker's first lease: the event this test waits on
    assert leases.exists() and any(leases.iterdir()), "the worker never started a trial"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for lease in leases.iterdir():  # the dead worker's lease, aged past lease_timeout (no waiting on a clock)
        os.utime(lease, (time.time() - 60, time.time() - 60))
    fast = dataclasses.replace(search, epochs=2)
    work(fast, task)
    trials = open_study(fast, "killed", parse_space(fast.space, task, fast.settings())).get_trials(deepcopy=False)
    states = collections.Counter(t.state.name for t in trials)
    assert states["FAIL"] == 1 and states["COMPLETE"] == 4
    retried = [t for t in trials if "retry_of" in t.user_attrs]
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert len(retried) == 1 and retried[0].params == failed.params


def test_a_model_argument_is_searched_and_gets_isolation_plots(tmp_path):
    space = {"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "out": {"choices": [tiny.CLASSES]}}
    result = run(tmp_path, trials=4, seeds=0, space=space)
    assert result.checks[0].value["best_params"]["out"] == tiny.CLASSES
    assert (result.run_dir / "06_tune" / "isolation.png").exists()
    text = (result.run_dir / "06_tune" / "best_config.yaml").read_text()
    assert f'# searched model-factory arguments, in train.model_args: {{"out": {tiny.CLASSES}}}' in text
    run_config, _ = split_config(yaml.safe_load(text), STAGES, "best_config.yaml")  # a config `recipe run` takes
    assert run_config.train["model_args"] == {"out": tiny.CLASSES}


def test_a_diverging_trial_is_marked_failed_and_the_search_goes_on(tmp_path):
    space = {"lr": {"low": 1e-3, "high": 1e9, "log": True}, "optimizer": {"choices": ["sgd"]}}
    records: list[logging.LogRecord] = []
    seen = logging.Handler()
    seen.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("optuna").addHandler(seen)  # Optuna's loggers do not propagate to the root logger
    try:
        result = run(tmp_path, trials=8, seeds=0, space=space, pruning="off")
    finally:
        logging.getLogger("optuna").removeHandler(seen)
    states = collections.Counter(t.state.name for t in trials_of(tmp_path / "run"))
    assert states["FAIL"] >= 1 and states["COMPLETE"] >= 1, states
    assert result.checks[0].status == "pass"
    failed = [r for r in records if "failed" in r.getMessage()]  # one line each: the error's message
    assert len(failed) == states["FAIL"] and all("NonFiniteError" in r.getMessage() for r in failed)
    assert not any(r.exc_info for r in failed)  # no traceback for an expected outcome of the search


def test_a_changed_architecture_starts_a_new_study(tmp_path):
    from functools import partial

    from recipe.config import TrainSettings
    from recipe.search_space import Param
    from recipe.tuning import study_name

    params = [Param.parse("lr", {"low": 1e-3, "high": 1e-1, "log": True})]
    same = [study_name(params, TrainSettings(), "sobol", (0, 0), tiny.classification()) for _ in range(2)]
    wider = tiny.classification().replace(model=partial(tiny.MLP, features=tiny.FEATURES))
    assert same[0] == same[1]
    assert study_name(params, TrainSettings(), "sobol", (0, 0), wider) == same[0]  # same shapes: same study
    other = tiny.classification().replace(model=lambda: torch.nn.Linear(tiny.FEATURES, tiny.CLASSES))
    assert study_name(params, TrainSettings(), "sobol", (0, 0), other) != same[0]


def held(path: Path) -> bool:
    """Whether some open file holds an exclusive or shared flock on `path` (probed without waiting)."""
    import fcntl

    with open(path, "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(probe, fcntl.LOCK_UN)
        return False


def test_trial_start_is_exclusive_until_released(tmp_path):
    from recipe.study_storage import START_LOCK, TrialStart

    with TrialStart(tmp_path) as starting:
        assert held(tmp_path / START_LOCK)
        starting.release()
        assert not held(tmp_path / START_LOCK)
        starting.release()  # idempotent
    assert not held(tmp_path / START_LOCK)
    with TrialStart(None):  # a remote storage: nothing to lock here
        assert not (tmp_path / "study" / "other.lock").exists()


def test_a_process_looks_at_the_study_and_starts_its_trial_under_one_lock(tmp_path, monkeypatch):
    """Two processes that both see one trial left must not both start one (a ninth trial of eight, seen in CI): the
    look at the study (finished, running, draws) and the trial turning RUNNING happen under study/start.lock, which
    the trial lets go as it starts."""
    from recipe import tuning
    from recipe.study_storage import START_LOCK

    lock, seen = tmp_path / "run" / START_LOCK, []
    counting, objective = tuning.drawn, tuning.objective
    monkeypatch.setattr(tuning, "drawn", lambda trials: seen.append(("look", held(lock))) or counting(trials))
    monkeypatch.setattr(
        tuning, "objective", lambda trial, *args: seen.append(("trial", held(lock))) or objective(trial, *args)
    )
    run(tmp_path, trials=3, seeds=0)
    assert ("look", True) in seen and ("trial", False) in seen
    assert all(held_now for step, held_now in seen if step == "look")
    assert not any(held_now for step, held_now in seen if step == "trial")
