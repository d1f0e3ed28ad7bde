"""Intra-op threads chosen for the work, the way `compile="auto"` chooses compiling: by measurement.

PyTorch runs each CPU op on `torch.get_num_threads()` threads, one per core by default. For the small models a
recipe trains (digits' MLP takes well under a millisecond a step) handing work to other threads costs more than it
saves, and on a machine shared with other work the threads spin waiting for each other: the bundled digits run took
37 s on one thread and a median of 606 s on two, on two cores shared with other processes. So with `threads="auto"`
`fit` times one training step of its model (forward and backward on a copy, the RNG state restored, so training is
unchanged): a step under `SMALL_STEP` trains on one thread; a larger one is timed on one thread and on every core, in
alternating windows, and trains on every core only when that is clearly faster (one thread leaves the other cores
to the rest of the machine). The choice and its reason are in `FitResult.setup["threads"]`.

The user's choice wins over the measurement: `OMP_NUM_THREADS` or `MKL_NUM_THREADS` in the environment, a
`torch.set_num_threads` call (a count other than the one recipe found at import or last set itself), or an explicit
`fit(threads=N)` / `train.threads: N`.
"""

from __future__ import annotations

import contextlib
import copy
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

SMALL_STEP = 0.01
"""A step that takes less than this on one thread trains on one thread, unmeasured: splitting so little work gains a
millisecond at best, while on a machine shared with other processes threads that wait for each other lose far more
(the digits MLP: 1.1 s on one thread, 30 s on two beside one busy process, though a few timed steps said two were
faster: short timings miss the waits that the scheduler's time slices cause)."""

FASTER = 0.85
"""Every core is used only when its step takes at most this fraction of the one-thread step: a gain smaller than
timing noise is not worth occupying the whole machine."""

ROUNDS, WINDOW = 3, 0.2
"""Larger steps are timed in alternating windows of at least WINDOW seconds (several of the scheduler's time slices)
per thread count, ROUNDS of each."""

_AT_IMPORT = torch.get_num_threads()
_ours: list[int] = []  # the counts recipe has set and not yet restored (innermost last)
_decided: dict[tuple[Any, ...], tuple[int, str]] = {}


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
    step's work (only when measuring). `key` identifies the work: it is measured once per key and process."""
    unmeasured = _without_measuring(threads, device)
    if unmeasured is not None:
        return unmeasured
    if key and key in _decided:
        return _decided[key]
    step = make_step()
    step()  # warm-up: allocations, first-call dispatch
    one = _per_step(step, 1, 0.0)
    if one < SMALL_STEP:
        decided = 1, f"auto: 1 ({one * 1e3:.2f} ms a step: too little work to share between threads)"
    else:
        one, every = _measure(step)
        count = CORES if every <= FASTER * one else 1
        decided = count, f"auto: {count} ({one * 1e3:.1f} ms a step on 1 thread, {every * 1e3:.1f} ms on {CORES})"
    if key:
        _decided[key] = decided
    return decided


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


def _measure(step: Callable[[], Any]) -> tuple[float, float]:
    """Median seconds per step on one thread and on every core, timed in alternating windows (a machine's load
    changes from moment to moment)."""
    times: dict[int, list[float]] = {1: [], CORES: []}
    for _ in range(ROUNDS):
        for count in times:
            times[count].append(_per_step(step, count, WINDOW))
    return statistics.median(times[1]), statistics.median(times[CORES])


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
