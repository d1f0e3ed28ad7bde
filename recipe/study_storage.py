"""Where a search's trials live: the Optuna storage behind `tune`, leases of running trials, and the trials that did
not finish (their worker was killed, or a signal stopped them), which are failed and queued again exactly once.

A study lives in an Optuna storage: by default a journal file in the run directory (`study/journal.log`, which several
processes on one machine share safely; Optuna's docs advise against SQLite for parallel workers), or any Optuna
storage URL (`postgresql://...`) that workers on many machines join.

A worker killed with SIGKILL leaves its trial RUNNING forever in a journal file (observed with Optuna 5.0). Each
running trial therefore holds a lease, a file whose modification time a background thread refreshes; a worker that
starts marks RUNNING trials with a stale lease as failed and queues their configuration again, so nothing is lost
and nothing is counted twice. Relational storages use Optuna's own heartbeat and retry callback instead. A process
that dies in the middle of appending to the journal leaves a torn last line, which `repair_journal` cuts off before
the next append would corrupt the record after it. Every worker process holds study/workers.lock (shared) while it
lives, so a resume can wait until the workers of a killed run are gone (`fence`) before it rewrites their files.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe.errors import ConfigError, NonFiniteError, StorageError
from recipe.rundir import process_alive, write_atomic
from recipe.search_space import Param

if TYPE_CHECKING:
    from recipe.tuning import Search

try:
    import fcntl
except ImportError:  # Windows: no fencing of a dead run's workers
    fcntl = None  # type: ignore[assignment]

# kept outside the stage folder, which a new run clears, so that running the search again resumes it
STUDY = "study"
STUDY_FILE, LEASES, TRIALS = f"{STUDY}/journal.log", f"{STUDY}/leases", f"{STUDY}/trials"
WORKERS_LOCK = f"{STUDY}/workers.lock"  # held (shared) by every live worker process: see `fence`
START_LOCK = f"{STUDY}/start.lock"  # held (exclusive) from a look at the study until the next trial runs: `TrialStart`


class DivergedTrialLog(logging.Filter):
    """A trial whose loss went non-finite is marked failed and the search goes on: an expected outcome of searching
    learning rates. Optuna reports it with the error's traceback and a second line ("failed with value None");
    the error's own message, which names the step, the parameter and the learning rate, is kept as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], NonFiniteError):
            record.exc_info, record.exc_text = None, None
            return True
        return not record.getMessage().endswith("failed with value None.")


def open_study(search: Search, name: str, params: list[Param]) -> Any:
    """Create or load the study; the default storage is a journal file in the run directory.

    Pruning (when on) is the median rule, held back for the first quarter of the trials and the first half of
    each run's epochs: early epochs rank learning rates unfairly (a low rate starts slower and may end better).
    """
    storage, run_dir, sampler, seed = search.storage, Path(search.run_dir), search.sampler, search.draw_seed
    import optuna  # optuna (~0.4 s to import) is needed by tune alone: imported where used, here and below

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial_log = logging.getLogger("optuna.study._optimize")  # where Optuna reports a trial its `catch` marked failed
    if not any(isinstance(f, DivergedTrialLog) for f in trial_log.filters):
        trial_log.addFilter(DivergedTrialLog())
    if storage is None:
        (run_dir / STUDY).mkdir(parents=True, exist_ok=True)
        store: Any = open_journal(run_dir / STUDY_FILE)
    elif storage.startswith(("postgresql", "mysql", "sqlite")):
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
                requeue(study, trial)
                swept.append(trial.number)
            lease.unlink(missing_ok=True)
    return swept


def requeue(study: Any, trial: Any) -> bool:
    """Queue the configuration of a trial that did not finish (interrupted, or its worker died) again, once: a
    trial already retried is not queued twice, whoever notices it second. Returns whether it was queued."""
    frozen = study._storage.get_trial(trial._trial_id)
    params = {**frozen.system_attrs.get("fixed_params", {}), **frozen.params}
    if not params or any(t.user_attrs.get("retry_of") == frozen.number for t in study.get_trials(deepcopy=False)):
        return False  # nothing was drawn yet (a new draw replaces it), or it is queued already
    study.enqueue_trial(params, user_attrs={"retry_of": frozen.number}, skip_if_exists=False)
    return True


def interrupted(study: Any, trial: Any) -> None:
    """This process's trial when a signal stopped it: failed (Optuna leaves it RUNNING when the signal lands outside
    the objective) and queued again, so a resume runs it and counts it once."""
    from optuna.trial import TrialState

    state = study._storage.get_trial(trial._trial_id).state
    if state == TrialState.RUNNING:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    if state in (TrialState.RUNNING, TrialState.FAIL):
        requeue(study, trial)


def _holder_died(lease: Path) -> bool:
    try:
        holder = json.loads(lease.read_text())
    except (OSError, ValueError):
        return False
    return holder.get("host") == socket.gethostname() and not process_alive(holder.get("pid"))


def open_journal(path: Path) -> Any:
    """The journal storage in `path`, its torn last record cut first (`repair_journal`); a corrupted record before
    the last is a one-line `StorageError` naming the file."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    repair_journal(path)
    try:
        return JournalStorage(JournalFileBackend(str(path)))  # reads every record
    except ValueError as exc:  # Optuna's reader: a record that is not JSON, or not a whole line
        raise StorageError(
            f"{path}: a record before the last is corrupted ({type(exc).__name__}); move the file away to start the "
            "search afresh, or restore it from a copy."
        ) from exc


def repair_journal(path: Path) -> None:
    """Cut a torn last record (a crash mid-append) off the study journal, with a warning naming it. Optuna skips a
    torn last line when it reads, but appends the next record onto it, which corrupts that record too."""
    if not path.exists() or path.stat().st_size == 0:
        return
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's appends take
    lock.acquire()
    try:
        with open(path, "r+b") as handle:
            size = cut = handle.seek(0, os.SEEK_END)
            while cut > 0:  # back to the newline that ends the last whole record
                start = max(0, cut - (1 << 16))
                handle.seek(start)
                chunk = handle.read(cut - start)
                if cut == size and chunk.endswith(b"\n"):
                    return
                if b"\n" in chunk:
                    cut = start + chunk.rfind(b"\n") + 1
                    break
                cut = start
            handle.truncate(cut)
            os.fsync(handle.fileno())
    finally:
        lock.release()
    warnings.warn(
        f"{path}: cut its torn last record ({size - cut} bytes, written by a process that died mid-write); the "
        "search goes on from the records before it.",
        stacklevel=2,
    )


# ---- fencing a dead run's workers --------------------------------------------------------------------------------


@contextmanager
def holding_workers_lock(run_dir: Path) -> Iterator[None]:
    """Hold a shared lock on study/workers.lock while this worker runs (the kernel drops it when the process ends,
    however it ends): `fence` waits on it."""
    if fcntl is None:
        yield
        return
    path = run_dir / WORKERS_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def fence(run_dir: Path, timeout: float) -> None:
    """Wait until no worker of an earlier run on this run directory is alive, before a resume rewrites the files
    they append to (metrics.jsonl); after `timeout` seconds, a one-line `ConfigError` naming them."""
    path = run_dir / WORKERS_LOCK
    if fcntl is None or not path.exists():
        return
    deadline = time.monotonic() + timeout
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # the orphans stop at their next step boundary; nothing else tells us when
    raise ConfigError(
        f"{path}: worker processes of an earlier run of this search still run after {timeout:g} s; stop them "
        f"(their pids are in {run_dir / LEASES}) or wait, then resume."
    )


# ---- starting trials one process at a time -------------------------------------------------------------------------


class TrialStart:
    """An exclusive lock on study/start.lock, held from a process's look at the study (how many trials are finished
    and running) until its next trial is RUNNING: two processes that both saw one trial left would otherwise both
    start one, a ninth trial of eight. `with` takes it; `release` may end it early (the trial has started) and is
    idempotent. Without `run_dir` (a remote storage, whose workers may run on other machines) or `fcntl` it does
    nothing."""

    def __init__(self, run_dir: Path | None):
        self.path = None if run_dir is None or fcntl is None else run_dir / START_LOCK
        self.handle: Any = None

    def __enter__(self) -> TrialStart:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a")  # closed by release
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file drops the lock
            self.handle = None
