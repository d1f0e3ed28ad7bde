"""The machinery behind `tune`: the study and its storage, leases for killed workers, and the trial loop every
worker process runs (the search space is in `recipe.search_space`).

A study lives in an Optuna storage: by default a journal file in the run directory (`study.journal`, which several
processes on one machine share safely; Optuna's docs advise against SQLite for parallel workers), or any Optuna
storage URL (`postgresql://...`) that workers on many machines join. With the default sampler every trial's
configuration is drawn up front from one scrambled Sobol sequence (one seed for every worker) and queued in the
study, so workers simply take the next queued configuration and the budget is exact.

A worker killed with SIGKILL leaves its trial RUNNING forever in a journal file (observed with Optuna 5.0). Each
running trial therefore holds a lease, a file whose modification time a background thread refreshes; a worker that
starts marks RUNNING trials with a stale lease as failed and queues their configuration again, so nothing is lost
and nothing is counted twice. Relational storages use Optuna's own heartbeat and retry callback instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recipe import checkpoint
from recipe.config import TrainSettings
from recipe.errors import NonFiniteError
from recipe.evaluation import evaluate
from recipe.fit import fit
from recipe.recipe import model_factory
from recipe.rundir import process_alive, write_atomic
from recipe.search_space import TRAIN_KEYS, Param, parse_space, sobol_configs
from recipe.task import Task

SAMPLERS = ("sobol", "random", "tpe", "grid")
# kept outside the stage folder, which a new run clears, so that running the search again resumes it
STUDY = "study"
STUDY_FILE, LEASES, TRIALS = f"{STUDY}/journal.log", f"{STUDY}/leases", f"{STUDY}/trials"


def study_name(
    params: list[Param], base: TrainSettings, sampler: str, seeds: tuple[int, int], task: Task | None = None
) -> str:
    """One study per search space, starting setup, sampler, seeds (sampler, training) and task: re-running the
    same search resumes it. The task counts by name, split sizes and the parameter shapes of the model the setup
    trains, so a changed dataset or architecture starts a new study instead of resuming stale trials."""
    fingerprint = None
    if task is not None:
        model = model_factory(task, base.model, base.dropout)()
        shapes = [list(p.shape) for p in model.parameters()]
        fingerprint = [task.name, len(task.train), len(task.val), shapes]
    key = [[dataclasses.asdict(p) for p in params], dataclasses.asdict(base), sampler, seeds, fingerprint]
    return "tune-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:12]


# ---- storage and leases ------------------------------------------------------------------------------------------


def open_study(search: Search, name: str, params: list[Param]) -> Any:
    """Create or load the study; the default storage is a journal file in the run directory.

    Pruning (when on) is the median rule, held back for the first quarter of the trials and the first half of
    each run's epochs: early epochs rank learning rates unfairly (a low rate starts slower and may end better).
    """
    storage, run_dir, sampler, seed = search.storage, Path(search.run_dir), search.sampler, search.draw_seed
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        (run_dir / STUDY).mkdir(parents=True, exist_ok=True)
        store: Any = JournalStorage(JournalFileBackend(str(run_dir / STUDY_FILE)))
    elif storage.startswith(("postgresql", "mysql", "sqlite")):
        import warnings

        from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():  # Optuna marks its heartbeat "experimental" since v2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            store = RDBStorage(
                storage,
                heartbeat_interval=max(1, round(search.lease_timeout / 4)),
                grace_period=max(1, round(search.lease_timeout)),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    else:
        store = storage
    chooser: Any = {
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "sobol": lambda: optuna.samplers.RandomSampler(seed=seed),  # every sobol trial is queued with its values
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler({p.name: p.grid(4) for p in params}, seed=seed),
    }[sampler]
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=max(5, search.trials // 4), n_warmup_steps=search.epochs // 2)
        if search.pruning
        else optuna.pruners.NopPruner()
    )
    return optuna.create_study(
        study_name=name, storage=store, sampler=chooser(), pruner=pruner, direction="minimize", load_if_exists=True
    )


class Lease:
    """A running trial's claim: a file under `folder` naming the worker's pid and host, touched every `interval`
    seconds by a daemon thread."""

    def __init__(self, folder: Path, number: int, interval: float = 2.0):
        self.path = folder / f"trial_{number}"
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.path.touch()

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


def sweep_stale(study: Any, folder: Path, timeout: float) -> list[int]:
    """Mark RUNNING trials as failed, and queue their configuration again, when their lease is older than `timeout`
    seconds (or missing), or names a process of this host that no longer runs (a worker killed a moment ago);
    returns the numbers of the trials swept."""
    from optuna.trial import TrialState

    swept = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lease = folder / f"trial_{trial.number}"
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = lease.stat().st_mtime if lease.exists() else started
        if now - last > timeout or _holder_died(lease):
            if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
                swept.append(trial.number)
            lease.unlink(missing_ok=True)
    return swept


def _holder_died(lease: Path) -> bool:
    try:
        holder = json.loads(lease.read_text())
    except (OSError, ValueError):
        return False
    return holder.get("host") == socket.gethostname() and not process_alive(holder.get("pid"))


# ---- the trial loop ----------------------------------------------------------------------------------------------


@dataclass
class Search:
    """Everything a worker needs to run trials of one study (it travels to worker processes as JSON).

    Attributes:
        base: the training settings the earlier stages chose; each trial overrides the searched ones.
        space: the raw search-space mapping (see `Param.parse`).
        trials: trials to complete (pruned ones count).
        sampler: "sobol", "random", "tpe" or "grid".
        epochs: epochs per trial.
        max_steps: optional cap on the steps per trial.
        seed: every trial's training seed, and the sampler's unless `sampler_seed` is given.
        pruning: stop hopeless trials by the median rule.
        storage: an Optuna storage URL, or None for the journal file in the run directory.
        study: the study name (None: derived from the space, setup, sampler and seed).
        run_dir: the run directory.
        device: the training device.
        timeout: stop starting new trials after this many seconds.
        lease_timeout: seconds without a lease refresh after which a running trial counts as dead.
    """

    base: dict[str, Any]
    space: dict[str, Any]
    trials: int
    sampler: str
    epochs: int
    max_steps: int | None
    seed: int
    pruning: bool
    storage: str | None
    study: str | None
    run_dir: str
    device: str
    timeout: float | None = None
    lease_timeout: float = 30.0
    sampler_seed: int | None = None

    @property
    def draw_seed(self) -> int:
        return self.seed if self.sampler_seed is None else self.sampler_seed

    def settings(self) -> TrainSettings:
        return TrainSettings(**self.base)


def prepare(search: Search, task: Task) -> tuple[Any, list[Param], str]:
    """Open the study (queueing the Sobol configurations the first time) and sweep trials of dead workers."""
    params = parse_space(search.space, task, search.settings())
    seeds = (search.draw_seed, search.seed)
    name = search.study or study_name(params, search.settings(), search.sampler, seeds, task)
    run_dir = Path(search.run_dir)
    study = open_study(search, name, params)
    if search.sampler == "sobol" and "sobol_queued" not in study.user_attrs:
        study.set_user_attr("sobol_queued", search.trials)
        for config in sobol_configs(params, search.trials, search.draw_seed):  # the same on every machine: dedup
            study.enqueue_trial(config, skip_if_exists=True)
    if search.storage is None:  # relational storages have Optuna's heartbeat; leases live in this run directory
        sweep_stale(study, run_dir / LEASES, search.lease_timeout)
    return study, params, name


def work(search: Search, task: Task, log: Callable[[dict[str, Any]], None] | None = None, worker: int = 0) -> int:
    """Run trials until the study holds `trials` finished ones (or the queue is empty, or time runs out); returns
    how many this worker ran."""
    from optuna.trial import TrialState

    study, params, _ = prepare(search, task)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    started, ran = time.time(), 0
    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = sum(s in done_states for s in states)
        waiting = sum(s == TrialState.WAITING for s in states)
        if finished >= search.trials or (search.timeout and time.time() - started > search.timeout):
            break
        if search.sampler == "sobol" and waiting == 0:
            break  # every queued configuration is taken; the workers holding them finish the budget
        if search.sampler != "sobol" and finished + sum(s == TrialState.RUNNING for s in states) >= search.trials:
            break
        study.optimize(
            lambda trial: objective(trial, search, task, params, log, worker),
            n_trials=1,
            catch=(NonFiniteError,),  # a diverged trial is marked failed; the search goes on
            gc_after_trial=False,
        )
        ran += 1
    return ran


def objective(
    trial: Any,
    search: Search,
    task: Task,
    params: list[Param],
    log: Callable[[dict[str, Any]], None] | None,
    worker: int,
) -> float:
    """Train one configuration through `fit`; report each epoch's validation loss to the pruner."""
    import optuna

    values = {
        p.name: trial.suggest_categorical(p.name, list(p.choices)) if p.choices else _suggest(trial, p) for p in params
    }
    lease = Lease(Path(search.run_dir) / LEASES, trial.number) if search.storage is None else None
    rows: list[dict[str, Any]] = []  # kept in the trial, so a resumed run writes a finished trial's rows again
    try:
        settings, trial_task = configure(search.settings(), task, values)
        trial.set_user_attr(
            "config", dataclasses.asdict(settings) | {k: v for k, v in values.items() if k not in TRAIN_KEYS}
        )
        trial.set_user_attr("worker", worker)

        def report(record: dict[str, Any]) -> None:
            trial.report(record["val_loss"], record["epoch"])
            if search.pruning and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (median rule)")

        def logged(record: dict[str, Any]) -> None:
            rows.append({**record, "trial": trial.number})
            if log is not None:
                log(rows[-1])

        run = {"epochs": search.epochs, "max_steps": search.max_steps, "device": search.device, "seed": search.seed}
        result = fit(
            trial_task,
            **{**settings.fit_kwargs(), **run, "batch_size": min(settings.batch_size, len(trial_task.train))},
            progress=False,
            log=logged,
            on_epoch=report,
        )
        val = evaluate(trial_task, result.model, trial_task.val, result.model.parameters().__next__().device)
        history = [
            {k: h.get(k) for k in ("epoch", "step", "train_loss", "val_loss", "val_loss_se")} for h in result.history
        ]
        trial.set_user_attr("history", history)
        trial.set_user_attr("step_losses", result.step_losses[:: max(1, len(result.step_losses) // 200)])
        trial.set_user_attr("val_metric", val.metric)
        trial.set_user_attr("val_loss_se", val.loss_se)
        trial.set_user_attr("seconds", result.seconds)
        folder = Path(search.run_dir) / TRIALS
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint.save_atomic(result.model.state_dict(), folder / f"trial_{trial.number}.pt")
        if not math.isfinite(val.loss):
            raise optuna.TrialPruned("non-finite validation loss")
        return val.loss
    finally:
        trial.set_user_attr("rows", rows)
        if lease is not None:
            lease.release()


def _suggest(trial: Any, p: Param) -> Any:
    if p.integer:
        return trial.suggest_int(p.name, int(p.low or 0), int(p.high or 0), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, log=p.log)


def configure(base: TrainSettings, task: Task, values: dict[str, Any]) -> tuple[TrainSettings, Task]:
    """The training settings and task (model factory with any searched arguments) for one configuration."""
    settings = dataclasses.replace(base, **{k: v for k, v in values.items() if k in TRAIN_KEYS})
    factory = model_factory(task, settings.model, settings.dropout)
    extra = {k: v for k, v in values.items() if k not in TRAIN_KEYS}
    if extra:
        import functools

        factory = functools.partial(factory, **extra)
    return settings, task.replace(model=factory)


def spawn_worker(spec_path: Path, worker: int) -> subprocess.Popen[bytes]:
    """Start worker process number `worker` on the study described in `spec_path` (one torch thread)."""
    code = "import sys; from recipe.tuning import worker_main; sys.exit(worker_main(sys.argv[1], int(sys.argv[2])))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(spec_path), str(worker)], env=env)


def worker_main(spec_path: str, worker: int) -> int:
    """A worker process: rebuild the task from the config's `task:`, then run trials of the shared study."""
    from recipe.cli import load_task
    from recipe.rundir import RunDir

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    search = Search(**spec["search"])
    source = spec["source"]
    task = load_task(source["task"], source.get("task_args") or {}, spec_path)
    rundir = RunDir(search.run_dir)
    try:
        work(search, task, rundir.metrics_log("tune", f"worker_{worker}"), worker)
    finally:
        rundir.close()
    return 0
