"""`Check`: the record every diagnostic returns and every stage emits (contract: checks.json)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recipe.errors import ConfigError, NonFiniteError, StorageError

Status = Literal["pass", "warn", "fail", "skip", "error"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip", "error")
SEVERITY: tuple[Status, ...] = ("fail", "error", "warn", "pass")
"""A stage's status is the first of these its checks hold ("skip" counts as "pass"): a failed check outranks a check
that raised, which outranks a warning. An `error` is the recipe's own probe failing, not evidence against the
user's setup, so it never stops the recipe and never makes `RecipeResult.ok` False."""


@dataclass(frozen=True)
class Check:
    """One named verdict.

    Attributes:
        name: stable snake_case identifier (`"loss_at_init"`).
        status: `"pass"`, `"warn"`, `"fail"`, `"skip"`, or `"error"` (the check itself raised; the others still
            ran).
        value: the measured figure (number or small JSON-able object), when there is one.
        expected: what a healthy run shows (number, range or text).
        message: what was seen, the likely cause and the fix, in one or two sentences.
        stage: the stage that emitted it; filled in by the stage runner.
        seconds: wall time spent producing it; filled in by the stage runner when measured.
        artifacts: run-directory-relative paths of files that illustrate it (plots, tables); None items (a figure
            the run did not draw, `figures=False`) are left out.
    """

    name: str
    status: Status
    value: Any = None
    expected: Any = None
    message: str = ""
    stage: str = ""
    seconds: float | None = None
    artifacts: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Check.status must be one of {STATUSES}, got {self.status!r}")
        if None in self.artifacts:
            object.__setattr__(self, "artifacts", tuple(a for a in self.artifacts if a is not None))

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def replace(self, **changes: Any) -> Check:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "name": self.name,
            "status": self.status,
            "value": to_jsonable(self.value),
            "expected": to_jsonable(self.expected),
            "message": self.message,
            "seconds": None if self.seconds is None else round(self.seconds, 4),
            "artifacts": list(self.artifacts),
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Check:
        return cls(
            name=record["name"],
            status=record["status"],
            value=record.get("value"),
            expected=record.get("expected"),
            message=record.get("message", ""),
            stage=record.get("stage", ""),
            seconds=record.get("seconds"),
            artifacts=tuple(record.get("artifacts", ())),
        )


def passed(name: str, message: str, value: Any = None, expected: Any = None) -> Check:
    return Check(name, "pass", value, expected, message)


def warned(name: str, message: str, value: Any = None, expected: Any = None) -> Check:
    return Check(name, "warn", value, expected, message)


def failed(name: str, message: str, value: Any = None, expected: Any = None) -> Check:
    return Check(name, "fail", value, expected, message)


def skipped(name: str, message: str) -> Check:
    return Check(name, "skip", None, None, message)


PROPAGATED: tuple[type[Exception], ...] = (NonFiniteError, ConfigError, StorageError)
"""What containment lets through. `NonFiniteError` is a verdict: the stages record it as a failed `non_finite`
check. `ConfigError` and `StorageError` are about the run itself (its settings, its disk), not one check: nothing
more can run or be recorded until the user fixes them. Everything else a check raises, a `TaskError` from the
user's hooks included (raised mid-check it may come from a variant a probe built, so it is no evidence against the
user's setup), becomes that check's `error`, and the stage's other checks still run. `KeyboardInterrupt`,
`SystemExit` and `Terminated` are not `Exception`s and always end the run."""

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""An `OSError` with one of these (a full disk, a quota, a read-only file system) is let through like a
`StorageError`: the run directory refuses writes, which `recipe run` reports in one line naming the path."""


@contextlib.contextmanager
def containing(name: str, checks: list[Check], probing: str = "") -> Iterator[None]:
    """Run a block that computes check `name`: if it raises (anything but `PROPAGATED`), append the `error` check
    `errored` makes to `checks` and resume after the block. A later block that needs what this one made tests for
    it (the error already says why it is missing)."""
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        if ends_the_run(exc):
            raise
        checks.append(errored(name, exc, probing).replace(seconds=time.perf_counter() - start))


def ends_the_run(exc: BaseException) -> bool:
    """Whether containment lets `exc` through: a `PROPAGATED` error, or a disk that refuses writes."""
    return isinstance(exc, PROPAGATED) or (isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS)


def errored(name: str, exc: BaseException, probing: str = "", subject: str = "the check itself") -> Check:
    """The `error` verdict of check `name`, whose computation raised `exc`: the exception's type and first line,
    the innermost place outside torch where it was raised (the user's code or ours), and what the check probes."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    text = text if len(text) <= 300 else text[:297] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if f"{os.sep}torch{os.sep}" not in f.filename] or frames
    where = f"{Path(outside[-1].filename).name}:{outside[-1].lineno} in {outside[-1].name}" if outside else ""
    message = f"{subject} raised {text}" + (f" (at {where})" if where else "") + ", so it could not judge"
    message += f"; it probes: {probing.rstrip('.')}." if probing else "."
    message += " The other checks still ran. Fix it if that place is in your task or model, else report it."
    return Check(name, "error", {"exception": type(exc).__name__, "message": text, "where": where}, None, message)


def to_jsonable(value: Any, exact: bool = False) -> Any:
    """Numbers rounded to 6 significant digits (all of them with `exact`, for what a resume reads back), tensors and
    numpy scalars as Python values, NaN/Inf as strings."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return value if exact else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, exact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, exact) for v in value]
    if hasattr(value, "tolist"):  # torch tensors and numpy arrays / scalars
        return to_jsonable(value.tolist(), exact)
    return str(value)
