"""The terminal output of a run: a header, one compact table of checks per stage, and a summary that ends with
each failure and its fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
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
        from tqdm import tqdm

        tqdm.write(text, file=sys.stdout)

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
