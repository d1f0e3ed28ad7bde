"""The worker processes of a local search: started, waited for and stopped together (`Workers`), each watching the
process that started it, and the task each rebuilds from the config (`worker_task`). What a worker runs is
`recipe.tuning.worker_main`: the trial loop over the shared study.

Each worker runs in its own session, so a Ctrl-C at the terminal reaches the first process only, which passes it on;
each holds the read end of a pipe only the first process can write, so when that process dies (even by SIGKILL) the
workers stop at their next step boundary instead of running on as orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recipe.diagnostics.suspect_labels import apply_label_fix
from recipe.errors import Terminated
from recipe.loading import load_task
from recipe.model_io import with_ladder
from recipe.task import Task

STOP_SECONDS = 10.0  # how long a stopped run waits for its workers to reach a step boundary before killing them


class Workers:
    """`count` worker processes on the study described in `spec_path`, started, waited for and stopped together.

    Each runs in its own session, so a Ctrl-C at the terminal reaches this process only, which passes it on once
    (`stop`). Each also holds the read end of a pipe whose write end only this process has: when this process dies,
    even by SIGKILL, the pipe closes and the workers stop at their next step boundary instead of running on as
    orphans that append to files a resume rewrites.
    """

    def __init__(self, spec_path: Path, count: int):
        self.procs: list[subprocess.Popen[bytes]] = []
        self._pipe: int | None = None
        self._passed: set[int] = set()  # the signals already passed on to the workers
        if count > 0 and os.name != "posix":  # no passing a pipe on: the workers run until the study is done
            self.procs = [spawn_worker(spec_path, k + 1) for k in range(count)]
        elif count > 0:
            read, self._pipe = os.pipe()
            try:
                self.procs = [spawn_worker(spec_path, k + 1, read) for k in range(count)]
            finally:
                os.close(read)

    def wait(self) -> None:
        for proc in self.procs:
            proc.wait()
        self._close()

    @contextmanager
    def passing_signals(self) -> Iterator[None]:
        """While the block runs, pass SIGINT and SIGTERM on to the workers the moment this process receives them,
        then handle them as before (KeyboardInterrupt, or recipe's safe stop). Passing them on only once this
        process has unwound to `stop` would leave the workers training meanwhile: a busy machine gave them time to
        finish two more trials. A no-op off the main thread."""
        if not self.procs or threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            self._pass_on(signum)
            before = previous[signum]
            if callable(before):
                before(signum, frame)
            elif before == signal.SIG_DFL and signum == signal.SIGINT:
                raise KeyboardInterrupt
            elif before == signal.SIG_DFL:
                raise Terminated("SIGTERM")

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before)

    def _pass_on(self, sig: int) -> None:
        """Send `sig` to the workers still running, once per signal: a second one could cut their clean-up short."""
        if sig in self._passed:
            return
        self._passed.add(sig)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def stop(self, sig: int, grace: float = STOP_SECONDS) -> None:
        """Pass `sig` on (unless `passing_signals` already did); a worker still running after `grace` seconds, or
        after a second interrupt, is killed (its trial is then swept: `sweep_stale`)."""
        self._pass_on(sig)
        deadline = time.monotonic() + grace
        try:
            for proc in self.procs:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt, Terminated):
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
            for proc in self.procs:
                proc.wait()
        self._close()

    def _close(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None


def spawn_worker(spec_path: Path, worker: int, parent_pipe: int | None = None) -> subprocess.Popen[bytes]:
    """Start worker process number `worker` on the study described in `spec_path` (one torch thread); given the read
    end of a pipe (`parent_pipe`), the worker stops when the pipe closes."""
    code = (
        "import sys; from recipe.tuning import worker_main; "
        "sys.exit(worker_main(sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fds = () if parent_pipe is None else (parent_pipe,)
    argv = [sys.executable, "-c", code, str(spec_path), str(worker), *map(str, fds)]
    return subprocess.Popen(argv, env=env, pass_fds=fds, start_new_session=parent_pipe is not None)


def worker_task(spec: dict[str, Any], spec_path: str) -> Task:
    """The task a worker process trains: rebuilt from the config's `task:` and its ladder, with the label fix
    regularize kept (the suspect labels dropped or relabelled) so every worker trains on the same split as the
    first."""
    source = spec["source"]
    task = load_task(source["task"], source.get("task_args") or {}, spec_path)
    ladder = ((source.get("config") or {}).get("complexify") or {}).get("ladder")
    task = with_ladder(task, ladder)  # the rungs a config's ladder names, as the first process has them
    return apply_label_fix(task, spec["label_fix"]) if spec.get("label_fix") else task


def watch_parent(pipe: int) -> None:
    """SIGTERM this process when `pipe` closes: the process that started it died or gave up on it."""

    def watch() -> None:
        while os.read(pipe, 1):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
