"""Intra-op threads chosen for the work, the way `compile="auto"` chooses compiling: by measurement.

PyTorch runs each CPU op on `torch.get_num_threads()` threads, one per core by default. For the small models a
recipe trains handing work to other threads costs more than it saves, and on a machine shared with other work the
threads spin waiting for each other: the bundled digits run took 37 s on one thread and a median of 606 s on two, on
two cores shared with other processes. Yet a wider model gains from the cores when they are free (digits' 512-wide
MLP: 1.6 ms a step on one thread, 1.2 ms on two). So with `threads="auto"` `fit` times one training step of its model
(forward and backward on a copy, the RNG state restored, so training is unchanged):

- a step under `TINY_STEP` trains on one thread;
- a larger one trains on one thread while other processes keep the other cores busy (the kernel's count of runnable
  threads, read at each decision, so a machine that became busy is seen);
- otherwise it is timed on one thread and on the free cores, in alternating windows, and trains on the free cores
  only when that is clearly faster (`FASTER`).

A work's timing is kept for the process (`key`), the load is read again at every fit. The choice and its reason are
in `FitResult.setup["threads"]`.

The user's choice wins over the measurement: `OMP_NUM_THREADS` or `MKL_NUM_THREADS` in the environment, a
`torch.set_num_threads` call (a count other than the one recipe found at import or last set itself), or an explicit
`fit(threads=N)` / `train.threads: N`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recipe.errors import ConfigError
from recipe.reproducibility import rng_state_kept

if TYPE_CHECKING:
    from recipe.task import Task

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
"""The cores this process may run on."""

TINY_STEP = 0.001
"""A step under a millisecond trains on one thread, unmeasured: too little work to share (digits' 128-wide MLP, 0.5 ms:
0.51 ms on one thread, 0.49 ms on two), and timing it would cost more than sharing could save."""

SMALL_STEP = 0.01
"""Where the machine's load cannot be read (no Linux /proc), a step under this trains on one thread, unmeasured: on a
machine shared with other processes, threads that wait for each other lose far more than splitting so little work
gains (the digits MLP: 1.1 s on one thread, 30 s on two beside one busy process)."""

FASTER = 0.85
"""More threads are used only when their step takes at most this fraction of the one-thread step: a gain smaller than
timing noise is not worth occupying the cores."""

ROUNDS = 3
"""Steps are timed in alternating windows per thread count, ROUNDS of each."""

WINDOW = (0.01, 0.2)
"""A timing window lasts ten steps, but at least 10 ms and at most 0.2 s (a few of the scheduler's time slices)."""

LOAD_SAMPLES, LOAD_SPACING = 5, 0.001
"""The load is read LOAD_SAMPLES times, LOAD_SPACING seconds apart (a few milliseconds at each decision)."""


@dataclasses.dataclass(frozen=True)
class _Timing:
    """A work's step timed on one thread and, when that is worth measuring, on `count` threads."""

    one: float
    many: float | None = None
    count: int = 1

    @property
    def helps(self) -> bool:
        return self.many is not None and self.many <= FASTER * self.one

    def describe(self) -> str:
        if self.many is None:
            return f"{self.one * 1e3:.2f} ms a step"
        return f"{self.one * 1e3:.2f} ms a step on 1 thread, {self.many * 1e3:.2f} ms on {self.count}"


_AT_IMPORT = torch.get_num_threads()
_ours: list[int] = []  # the counts recipe has set and not yet restored (innermost last)
_timed: dict[tuple[Any, ...], _Timing] = {}


def users_choice() -> str | None:
    """How the user fixed the thread count, or None when it is still the default."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(name):
            return f"{name}={os.environ[name]}"
    now = torch.get_num_threads()
    if now != _AT_IMPORT and (not _ours or now != _ours[-1]):
        return f"torch.set_num_threads({now})"
    return None


@contextlib.contextmanager
def using(count: int) -> Iterator[None]:
    """Run the block on `count` intra-op threads, then restore the count that was set before."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    _ours.append(count)
    try:
        yield
    finally:
        _ours.pop()
        torch.set_num_threads(before)


def choose(
    threads: int | str, device: torch.device, make_step: Callable[[], Callable[[], Any]], key: tuple[Any, ...] = ()
) -> tuple[int, str]:
    """(thread count, reason) for training on `device`; `make_step()` builds a function running one training
    step's work (only when measuring). `key` identifies the work: its step is timed once per key and process, while
    the machine's load is read again at every decision that could use more than one thread."""
    unmeasured = _without_measuring(threads, device)
    if unmeasured is not None:
        return unmeasured
    timing = _timed.get(key) if key else None
    if timing is None:
        step = make_step()
        step()  # warm-up: allocations, first-call dispatch
        timing = _Timing(min(_per_step(step, 1, 0.0) for _ in range(3)))  # the least of three: no outlier
        if timing.one >= TINY_STEP:
            free, busy = _free_cores(timing.one)
            if free < 2:  # not remembered: the step is timed again once the cores are free
                return 1, f"auto: 1 ({timing.describe()}; {busy})"
            timing = _Timing(*_measure(step, free, timing.one), count=free)
        if key:
            _timed[key] = timing
    if timing.many is None:
        return 1, f"auto: 1 ({timing.describe()}: too little work to share between threads)"
    if not timing.helps:
        return 1, f"auto: 1 ({timing.describe()}: not clearly faster)"
    free, busy = _free_cores(timing.one)  # read at every decision: the machine may have become busy
    if free < 2:
        return 1, f"auto: 1 ({timing.describe()}, but {busy})"
    count = min(timing.count, free)
    return count, f"auto: {count} ({timing.describe()})"


def _free_cores(step_seconds: float) -> tuple[int, str]:
    """(the cores this run may use without taking them from other processes, what keeps the others busy): every core
    less those other processes' runnable threads keep busy. Where the load cannot be read, every core for a large
    step and one for a small step (see SMALL_STEP)."""
    others = others_running()
    if others is None:
        why = "the machine's load cannot be read, and a step this small is not worth sharing"
        return (CORES if step_seconds >= SMALL_STEP else 1), why
    return max(
        1, min(CORES, int(CORES - others + 0.25))
    ), f"other processes keep {others:.1f} of the {CORES} cores busy"


def others_running(samples: int = LOAD_SAMPLES, spacing: float = LOAD_SPACING) -> float | None:
    """How many threads of other processes are running or waiting for a core: the median of `samples` readings
    `spacing` seconds apart of the kernel's count of runnable threads (Linux `/proc/stat`) less this process's own.
    None where the kernel does not say."""
    readings = []
    try:
        for i in range(samples):
            if i:
                time.sleep(spacing)
            before = _own_running()
            with open("/proc/stat", "rb") as stat:
                running = int(stat.read().split(b"procs_running ", 1)[1].split(None, 1)[0])
            # this process's idle pool threads only fall asleep meanwhile (none starts work while this thread reads):
            # one running at either reading may have been counted
            readings.append(running - max(before, _own_running()))
    except (OSError, IndexError, ValueError):
        return None
    return max(0.0, float(statistics.median(readings)))  # the median: a reading caught mid-change is outvoted


def _own_running() -> int:
    """This process's threads that are running now (state R in /proc/self/task/*/stat)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as stat:
                count += stat.read().rsplit(b")", 1)[1].split(None, 1)[0] == b"R"
        except OSError:  # the thread ended meanwhile
            pass
    return count


def _without_measuring(threads: int | str, device: torch.device) -> tuple[int, str] | None:
    """The decision when nothing needs timing (a count given, the user's choice, a GPU, one core), else None."""
    if threads != "auto":
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads={threads!r}: use 'auto' or a positive number of intra-op CPU threads.")
        return threads, f"{threads} (set by threads={threads})"
    now = torch.get_num_threads()
    why = users_choice()
    if why is not None:
        return now, f"{now} (yours: {why})"
    if device.type != "cpu":
        return now, f"{now} (torch's default: the {device.type} device does the work)"
    if CORES == 1:
        return 1, "1 (one core)"
    return None


def _per_step(step: Callable[[], Any], count: int, window: float) -> float:
    """Seconds per call of `step` on `count` threads, over at least `window` seconds (one call at least)."""
    with using(count):
        calls, start = 0, time.perf_counter()
        while True:
            step()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window:
                return elapsed / calls


def _measure(step: Callable[[], Any], count: int, one: float) -> tuple[float, float]:
    """Median seconds per step on one thread and on `count` threads, timed in alternating windows (a machine's load
    changes from moment to moment) of about ten steps (`one`: a first timing of one step on one thread)."""
    window = min(max(10 * one, WINDOW[0]), WINDOW[1])
    times: dict[int, list[float]] = {1: [], count: []}
    for _ in range(ROUNDS):
        for n in times:
            times[n].append(_per_step(step, n, window))
    return statistics.median(times[1]), statistics.median(times[count])


def for_training(
    threads: int | str,
    task: Task,
    model: nn.Module | Callable[[], nn.Module],
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[int, str]:
    """`choose` for training `model` on `task` with batches of `batch_size`: the step timed is one forward and
    backward on a copy of the model and a fixed training batch; the model, its gradients and every global random
    generator (python, numpy, torch: dropout and a Dataset's random transforms draw from them) are left as they were,
    so a run that measured and one that remembered the decision train alike. `model` may be a factory: it is
    called only when the decision needs timing (a run on a GPU, or with the user's count, builds nothing)."""
    unmeasured = _without_measuring(threads, device)
    if unmeasured is not None:
        return unmeasured
    if not isinstance(model, nn.Module):
        model = model().to(device)

    def step() -> Callable[[], None]:
        twin = copy.deepcopy(model).train()
        with rng_state_kept():
            batch = task.sample_batch("train", min(batch_size, len(task.train)), seed, device)

        def run() -> None:
            with rng_state_kept():
                task.compute_loss(*task.outputs(twin, batch)).backward()
            twin.zero_grad(set_to_none=True)

        return run

    key = (task.name, type(model).__qualname__, sum(p.numel() for p in model.parameters()), batch_size, str(device))
    return choose(threads, device, step, key)
