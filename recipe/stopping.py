"""Signals during a run.

SIGTERM stops a run at a safe point: a `fit` in progress finishes its optimizer step, writes its checkpoint and
raises `Terminated`; outside training, `Terminated` is raised at once. `Recipe.run`, and `fit` given a checkpoint
directory, install the handler while they run (main thread only), and restore the previous one after. A checkpoint
write holds SIGINT and SIGTERM until it is done (`signals_deferred`).

A signal handler that raised wherever the signal landed could stop `fit` half-way through `optimizer.step()` and
leave weights that match no step; the flag below is read between steps instead.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from recipe.errors import Terminated

_state = {"fits": 0, "requested": False}


def requested() -> bool:
    """Whether SIGTERM arrived while a `fit` was running; that fit must checkpoint and raise `Terminated`."""
    return bool(_state["requested"])


def stop() -> None:
    """Raise `Terminated` for the pending request (and clear it)."""
    _state["requested"] = False
    raise Terminated("SIGTERM")


def _handler(signum: int, frame: Any) -> None:
    if _state["fits"]:
        _state["requested"] = True  # the running fit stops after its current step
    else:
        raise Terminated("SIGTERM")


@contextmanager
def handling_sigterm() -> Iterator[None]:
    """Turn SIGTERM into a safe stop while the block runs (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def fit_running() -> Iterator[None]:
    """Mark a `fit` as running: SIGTERM then waits for its next step boundary."""
    _state["fits"] = int(_state["fits"]) + 1
    try:
        yield
    finally:
        _state["fits"] = int(_state["fits"]) - 1
        if not _state["fits"] and _state["requested"]:
            stop()  # the request arrived too late for the fit to see it: honour it now


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (they are delivered then): a checkpoint write is never cut
    short. A no-op off the main thread, or where the platform cannot block signals."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
