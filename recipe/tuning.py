"""The trial loop every worker process runs (the worker processes of a local search are started and stopped by
`recipe.tune_workers`, the study's storage and leases are in `recipe.study_storage`, the search space in
`recipe.search_space`).

With the default sampler every trial's configuration is drawn up front from one scrambled Sobol sequence (one seed
for every worker) and queued in the study, so workers simply take the next queued configuration and the budget is
exact. `trials` counts finished trials: a pruned or diverged one is replaced by the next configuration of the same
sequence, up to `MAX_DRAWS` times the budget, so a study that prunes everything still ends. A trial stopped by
Ctrl-C or SIGTERM is failed and its configuration queued again, so a resume runs it. Local workers stop with the
process that started them: it passes a signal on, and a worker whose parent died (even by SIGKILL) stops at its next
step boundary; a resume waits for such workers (`study_storage.fence`) before it rewrites the files they append to.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recipe import checkpoint, stopping
from recipe.config import TrainSettings, settings_from_dict
from recipe.console import doing
from recipe.context import model_factory
from recipe.errors import NonFiniteError, Terminated
from recipe.evaluation import evaluate
from recipe.loop import fit
from recipe.rundir import RunDir
from recipe.search_space import TRAIN_KEYS, Param, parse_space, queued_configs
from recipe.study_storage import (
    LEASES,
    TRIALS,
    Lease,
    TrialStart,
    holding_workers_lock,
    interrupted,
    open_study,
    requeue,
    sweep_stale,
)
from recipe.task import Task
from recipe.tune_workers import STOP_SECONDS as STOP_SECONDS  # the public import paths of the moved names
from recipe.tune_workers import Workers as Workers
from recipe.tune_workers import spawn_worker as spawn_worker
from recipe.tune_workers import watch_parent, worker_task

SAMPLERS = ("sobol", "random", "tpe", "grid")
MAX_DRAWS = 2  # trials drawn at most, per trial of the budget: pruned and diverged trials are replaced up to this


def study_name(
    params: list[Param],
    base: TrainSettings,
    sampler: str,
    seeds: tuple[int, int],
    task: Task | None = None,
    scientific: tuple[str, int] | None = None,
) -> str:
    """One study per search space, starting setup, sampler, seeds (sampler, training) and task: re-running the
    same search resumes it. The task counts by name, split sizes and the parameter shapes of the model the setup
    trains, so a changed dataset or architecture starts a new study instead of resuming stale trials."""
    fingerprint = None
    if task is not None:
        model = model_factory(task, base.model, base.dropout, base.model_args)()
        shapes = [list(p.shape) for p in model.parameters()]
        fingerprint = [task.name, len(task.train), len(task.val), shapes]
    key = [[dataclasses.asdict(p) for p in params], dataclasses.asdict(base), sampler, seeds, fingerprint]
    if scientific is not None:  # another queue order: another study
        key.append(list(scientific))
    return "tune-" + hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:12]


# ---- the trial loop ----------------------------------------------------------------------------------------------


@dataclass
class Search:
    """Everything a worker needs to run trials of one study (it travels to worker processes as JSON).

    Attributes:
        base: the training settings the earlier stages chose; each trial overrides the searched ones.
        space: the raw search-space mapping (see `Param.parse`).
        trials: trials to finish (pruned and diverged ones are replaced, up to `MAX_DRAWS` times this in all).
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
        scientific: the parameter under study (the playbook's scientific parameter), or None; the others are
            nuisance parameters, searched at each of its values (`queued_configs`).
        levels: the values a numeric scientific parameter is studied at.
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
    scientific: str | None = None
    levels: int = 4

    @property
    def draw_seed(self) -> int:
        return self.seed if self.sampler_seed is None else self.sampler_seed

    def settings(self) -> TrainSettings:
        """`base` read back as a config's `train:` section is (`dataclasses.asdict` wrote it)."""
        return settings_from_dict(TrainSettings, self.base, "the tune worker spec: base")


def prepare(search: Search, task: Task) -> tuple[Any, list[Param], str]:
    """Open the study (queueing the Sobol configurations the first time) and sweep trials of dead workers."""
    params = parse_space(search.space, task, search.settings())
    seeds = (search.draw_seed, search.seed)
    studied = None if search.scientific is None else (search.scientific, search.levels)
    name = search.study or study_name(params, search.settings(), search.sampler, seeds, task, studied)
    run_dir = Path(search.run_dir)
    study = open_study(search, name, params)
    if search.sampler == "sobol" and "sobol_queued" not in study.user_attrs:
        _queue(study, params, search, search.trials)
    if search.storage is None:  # relational storages have Optuna's heartbeat; leases live in this run directory
        sweep_stale(study, run_dir / LEASES, search.lease_timeout)
    return study, params, name


def _queue(study: Any, params: list[Param], search: Search, upto: int) -> None:
    """Queue the Sobol configurations up to number `upto` (the same on every machine: duplicates are skipped)."""
    queued = study.user_attrs.get("sobol_queued", 0)
    configs = queued_configs(params, upto, search.draw_seed, search.scientific, search.levels)
    study.set_user_attr("sobol_queued", max(upto, queued))
    for config in configs[queued:]:
        study.enqueue_trial(config, skip_if_exists=True)


def trial_fits(study: Any) -> list[dict[str, Any]]:
    """One manifest.json `fits` entry per trial that ended (pruned and failed ones too): its wall time and setup."""
    return [
        {
            "stage": "tune",
            "run": f"trial_{t.number}",
            "state": t.state.name.lower(),
            "seconds": round(t.user_attrs.get("seconds") or (t.duration.total_seconds() if t.duration else 0.0), 3),
            **t.user_attrs.get("setup", {}),
        }
        for t in study.get_trials(deepcopy=False)
        if t.state.name in ("COMPLETE", "PRUNED", "FAIL")
    ]


def finished_trials(study: Any) -> list[Any]:
    """The study's completed trials that scored a value."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]


def write_finished_rows(rundir: RunDir, study: Any) -> None:
    """The metrics rows of trials that ended before this stage started (a resumed run, or a study run again): the
    run directory was cleared of them, and those trials do not run again."""
    from optuna.trial import TrialState

    logs: dict[str, Any] = {}
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    for trial in sorted(ended, key=lambda t: t.number):
        worker = trial.user_attrs.get("worker", 0)
        run = "trials" if worker == 0 else f"worker_{worker}"
        log = logs.setdefault(run, rundir.metrics_log("tune", run))
        for row in trial.user_attrs.get("rows", []):
            log(row)


def drawn(trials: list[Any]) -> int:
    """Trials that used up a draw of the budget: finished, pruned, or failed and not queued again."""
    # optuna (~0.4 s to import) is needed by tune alone: imported where used, here and below
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in trials}
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in ended and t.number not in retried for t in trials)


def work(search: Search, task: Task, log: Callable[[dict[str, Any]], None] | None = None, worker: int = 0) -> int:
    """Run trials until the study holds `trials` finished ones (pruned and diverged trials replaced, up to
    `MAX_DRAWS` times the budget in all), or the queue is empty, or time runs out; returns how many this worker ran."""
    from optuna.trial import TrialState

    study, params, _ = prepare(search, task)
    started, ran = time.time(), 0
    current: list[Any] = []  # the trial this process runs, for `interrupted`

    starting = TrialStart(Path(search.run_dir) if search.storage is None else None)

    def run_one(trial: Any) -> float:
        starting.release()  # the trial is RUNNING: the other processes count it from here
        current[:] = [trial]
        try:
            return objective(trial, search, task, params, log, worker)
        except KeyboardInterrupt as exc:  # past Optuna, which would log it as a failed trial with a traceback
            raise _CtrlC from exc

    while True:
        with starting:  # until the trial runs: no other process starts one on the same count
            trials = study.get_trials(deepcopy=False)
            states = [t.state for t in trials]
            finished = sum(s == TrialState.COMPLETE for s in states)
            running = sum(s == TrialState.RUNNING for s in states)
            waiting = sum(s == TrialState.WAITING for s in states)
            if finished >= search.trials or (search.timeout and time.time() - started > search.timeout):
                break
            if finished + running >= search.trials or drawn(trials) + running >= MAX_DRAWS * search.trials:
                break  # the trials running finish the budget, or the cap on draws is reached
            if search.sampler == "sobol" and waiting == 0:  # replace pruned and diverged trials: continue the sequence
                _queue(
                    study, params, search, study.user_attrs.get("sobol_queued", 0) + search.trials - finished - running
                )
                if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    break  # the queue has nothing new (a scientific parameter alone): never a draw off the sequence
            current.clear()
            try:
                with doing("trial", min(finished + 1, search.trials), search.trials):
                    study.optimize(
                        run_one,
                        n_trials=1,
                        catch=(NonFiniteError,),  # a diverged trial is marked failed; the search goes on
                        gc_after_trial=False,
                    )
            except (KeyboardInterrupt, _CtrlC, Terminated) as exc:
                if current:
                    interrupted(study, current[0])
                if isinstance(exc, _CtrlC):
                    raise KeyboardInterrupt from None
                raise
        ran += 1
    return ran


class _CtrlC(BaseException):
    """A Ctrl-C during a trial, carried out of `study.optimize` without Optuna's traceback."""


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
            progress=worker == 0,  # worker processes draw no bars over the run's
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
        trial.set_user_attr("setup", json.loads(json.dumps(result.setup, default=str)))  # manifest.json's fits
        folder = Path(search.run_dir) / TRIALS
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint.save_atomic(result.model.state_dict(), folder / f"trial_{trial.number}.pt")
        if not math.isfinite(val.loss):
            raise optuna.TrialPruned("non-finite validation loss")
        return val.loss
    except (KeyboardInterrupt, Terminated):
        requeue(trial.study, trial)  # before Optuna marks it failed: a kill -9 in between leaves it to sweep_stale
        raise
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
    factory = model_factory(task, settings.model, settings.dropout, settings.model_args)
    extra = {k: v for k, v in values.items() if k not in TRAIN_KEYS}
    if extra:
        factory = functools.partial(factory, **extra)
    return settings, task.replace(model=factory)


def worker_main(spec_path: str, worker: int, parent_pipe: int | None = None) -> int:
    """A worker process: rebuild the task from the config's `task:`, then run trials of the shared study. SIGTERM
    (or the parent's death) stops it at its next step boundary, SIGINT at once; its trial is queued again either
    way. Returns 0, or 143 / 130 when stopped."""
    torch.set_num_threads(1)
    spec = json.loads(Path(spec_path).read_text())
    search = Search(**spec["search"])
    rundir = RunDir(search.run_dir)
    try:
        with stopping.handling_sigterm(), holding_workers_lock(Path(search.run_dir)):
            if parent_pipe is not None:
                watch_parent(parent_pipe)
            task = worker_task(spec, spec_path)
            work(search, task, rundir.metrics_log("tune", f"worker_{worker}"), worker)
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    finally:
        rundir.close()
    return 0
