"""What a run shows while it runs and when it ends.

`Console`: a header, one compact table of checks per stage, and a summary that ends with each failure and its fix.
`doing`: a small stack that says what is being trained or checked now ("complexify", "rung w16", 2 of 4); fit's bar
takes its name from it (`bar`) and the run's `ProgressLine` shows it with the stage i/n, the time elapsed and, inside a
counted loop, the time its remaining items should take. On a terminal the line is redrawn in place above the bars;
elsewhere (CI logs, notebooks, a file) it is printed: a line when a stage or a loop (of rungs, trials, folds) starts,
and otherwise (the next item, a check, a fit's steps) at most one line per `interval` seconds, never a carriage
return.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from tqdm import tqdm

if TYPE_CHECKING:
    import torch

    from recipe.check import Check
    from recipe.runner import RecipeResult
    from recipe.task import Task


class Console:
    """The terminal output: a header, one compact table per stage, and a summary that ends with the failure."""

    MARKS: ClassVar[dict[str, str]] = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP", "error": "ERR!"}
    COLOURS: ClassVar[dict[str, str]] = {"warn": "33", "fail": "31", "error": "35"}  # ANSI: yellow, red, magenta

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def _mark(self, status: str) -> str:
        """The status's four-letter mark, in its colour on a terminal (an `error` in its own: it is not a fail)."""
        mark = self.MARKS.get(status, status.upper()[:4])
        code = self.COLOURS.get(status)
        return f"\033[{code}m{mark}\033[0m" if self.colour and code else mark

    def _print(self, text: str = "") -> None:
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()  # piped to a file or a CI log, a stage's table shows when the stage ends, not at exit

    def header(self, task: Task, device: torch.device, seed: int, path: Path) -> None:
        if not self.quiet:
            self._print(f"recipe · task {task.name} ({task.kind}) · device {device} · seed {seed} · run dir {path}")

    def stage(self, name: str, checks: list[Check], seconds: float) -> None:
        if self.quiet:
            return
        counts = ", ".join(f"{n} {s}" for s in ("fail", "error", "warn") if (n := sum(c.status == s for c in checks)))
        self._print(f"\n── {name} · {len(checks)} checks{' · ' + counts if counts else ''} · {seconds:.1f} s")
        width = max((len(c.name) for c in checks), default=10)
        for c in checks:
            message = c.message if len(c.message) <= 110 else c.message[:107] + "..."
            self._print(f"  {self._mark(c.status)}  {c.name:<{width}}  {message}")

    def note(self, text: str) -> None:
        if not self.quiet:
            self._print(f"\n{text}")

    def kept(self, name: str, status: str) -> None:
        if not self.quiet:
            self._print(f"\n── {name} · kept from the interrupted run ({status})")

    def summary(self, result: RecipeResult) -> None:
        counts = {s: sum(c.status == s for c in result.checks) for s in ("pass", "warn", "fail", "error", "skip")}
        line = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        self._print(f"\n{'OK' if result.ok else 'FAILED'}: {line} · report: {result.run_dir / 'report.html'}")
        for c in result.failures + result.errors:
            self._print(f"{self._mark(c.status)} {c.stage}.{c.name}: {c.message}")


# ---- what runs now ------------------------------------------------------------------------------------------------


@dataclass
class _Doing:
    """One level of the stack: what runs, its place k of n in a loop when it has one, when it started, and (for the
    loop below it) when that loop's first item started, that item's k, the latest k, and n."""

    label: str
    k: int | None = None
    n: int | None = None
    start: float = 0.0
    loop: tuple[float, int, int, int] | None = None

    def text(self) -> str:
        if self.n is None:
            return self.label
        count = f"{self.k}/{self.n}"
        return f"{self.label} ({count})" if " " in self.label else f"{self.label} {count}"


_DOING: ContextVar[tuple[_Doing, ...]] = ContextVar("recipe_doing", default=())
_LINE: ContextVar[ProgressLine | None] = ContextVar("recipe_progress_line", default=None)


@contextmanager
def doing(label: str, k: int | None = None, n: int | None = None) -> Iterator[None]:
    """Say what the block trains or checks: `doing("rung w16", 2, 4)` is item 2 of a loop of 4. Fit's bar is named
    after the stack ("complexify: rung w16 (2/4)") and the run's progress line shows it."""
    stack, line = _DOING.get(), _LINE.get()
    now = line.clock() if line is not None else time.monotonic()
    news = n is not None and not stack  # a stage starts
    if n is not None and k is not None and stack:
        parent = stack[-1]
        if parent.loop is None or parent.loop[3] != n or k < parent.loop[2]:
            parent.loop, news = (now, k, k, n), True  # a new loop starts: time it from here
        parent.loop = (*parent.loop[:2], k, n)  # an item again (a pruned trial replaced) keeps the pace counting
    token = _DOING.set((*stack, _Doing(label, k, n, now)))
    try:
        if line is not None:
            line.show(news)
        yield
    finally:
        _DOING.reset(token)


def describe(default: str) -> str:
    """What is being trained now, as a bar's name: the stage, then the steps inside it ("overfit: overfit_batch");
    `default` when nothing was said (a `fit` called on its own)."""
    texts = [d.text() for d in _DOING.get()]
    if not texts:
        return default
    texts[0] = _DOING.get()[0].label  # the stage's count is the progress line's, not the bar's
    inner = [t for i, t in enumerate(texts[1:], 1) if t != texts[i - 1]]  # a fit named after its check: once
    return f"{texts[0]}: {' · '.join(inner)}" if inner else texts[0]


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _time_left(stack: tuple[_Doing, ...], now: float) -> str:
    """The time the innermost counted loop with an item done should take for the rest, at the pace so far."""
    for parent, child in reversed(list(itertools.pairwise(stack))):
        if parent.loop is None or child.k is None or child.n is None or child.k <= parent.loop[1]:
            continue  # not a counted item, or the first of its loop: no pace yet, ask the loop around it
        start, first, _, _ = parent.loop
        pace = (child.start - start) / (child.k - first)
        left = max(pace * (child.n - child.k + 1) - (now - child.start), pace * (child.n - child.k))
        noun = child.label.split()[0]
        return f" · {noun}{'' if noun.endswith('s') else 's'} done in ~{_duration(left)}" if left >= 1 else ""
    return ""


class ProgressLine:
    """The run's progress line: "[4/6] complexify: rung w16 (2/4) · 1m05s elapsed · rungs done in ~2m10s".

    On a terminal it is one status line redrawn in place above fit's bars. Elsewhere it is printed to `stream`: a line
    when a stage or a loop starts, and anything else (the loop's next item, a check, a fit's steps) only when
    `interval` seconds passed since the last line. Disabled, it shows nothing and fit shows no bar.

    Args:
        enabled: show anything at all (False for a quiet run or `progress=False`).
        stream: where it goes (default: stderr when it is created).
        interval: seconds between two lines, off a terminal, unless a stage or a loop starts.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.enabled, self.interval, self.clock = enabled, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream)
        self.start, self.last = clock(), -math.inf
        self.name = "recipe"  # what the line says when nothing runs (a fit on its own: its own name)
        self.status: Any = None
        if enabled and self.tty:
            self.status = tqdm(bar_format="{desc}", file=self.stream, leave=False, position=0, dynamic_ncols=True)

    def text(self, extra: str = "") -> str:
        stack, now = _DOING.get(), self.clock()
        head = f"[{stack[0].k}/{stack[0].n}] " if stack and stack[0].n is not None else ""
        said = describe(self.name) + (f" · {extra}" if extra else "")
        return f"{head}{said} · {_duration(now - self.start)} elapsed{_time_left(stack, now)}"

    def show(self, news: bool = False, extra: str = "") -> None:
        """Show what runs now: redrawn on a terminal; printed elsewhere when it is `news` (a stage or a loop starts)
        or `interval` has passed since the last line."""
        if not self.enabled:
            return
        now = self.clock()
        if self.status is not None:
            self.last = now
            self.status.set_description_str(self.text(extra))
            return
        if news or now - self.last >= self.interval:
            self.last = now
            print(self.text(extra), file=self.stream, flush=True)

    def close(self) -> None:
        if self.status is not None:
            self.status.close()


@contextmanager
def progress_line(
    enabled: bool = True,
    stream: TextIO | None = None,
    interval: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[ProgressLine]:
    """Show the run's progress line while the block runs (`Recipe.run` wraps its stages in it); arguments as
    `ProgressLine`'s."""
    line = ProgressLine(enabled, stream, interval, clock)
    token = _LINE.set(line)
    try:
        yield line
    finally:
        _LINE.reset(token)
        line.close()


class _Steps:
    """fit's progress off a terminal: the step count on the progress line, at the line's rate."""

    def __init__(self, line: ProgressLine, total: int):
        self.line, self.total, self.n, self.postfix = line, total, 0, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        self.line.show(extra=f"step {self.n}/{self.total}{self.postfix}")

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = "".join(f", {k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass


class _Bar(tqdm):
    """fit's bar on a terminal; as it moves, the run's line above it keeps its elapsed time and time left current."""

    run_line: ProgressLine | None = None

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        if self.run_line is not None and self.run_line.clock() - self.run_line.last >= 1.0:
            self.run_line.show()  # redrawn at most once a second
        return shown


def bar(total: int, enabled: bool, default: str) -> Any:
    """fit's progress bar (`update`, `set_postfix`, `close`), named after what runs now (`describe(default)`): a tqdm
    bar on a terminal, else a step count on the run's progress line at its rate (a fit called on its own prints one
    only after `interval` seconds); nothing when `enabled` is False or the run shows no progress."""
    line = _LINE.get()
    stream = line.stream if line is not None else sys.stderr
    if not enabled or (line is not None and not line.enabled):
        return tqdm(disable=True)
    if _isatty(stream):
        steps = _Bar(total=total, desc=describe(default), unit="step", leave=False, dynamic_ncols=True, file=stream)
        steps.run_line = line
        return steps
    if line is None:
        line = ProgressLine(stream=stream)
        line.name, line.last = default, line.start  # on its own: a line only once the fit has run `interval` s
    return _Steps(line, total)


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
