"""`Check`: the record every diagnostic returns and every stage emits (contract: checks.json)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skip")


@dataclass(frozen=True)
class Check:
    """One named verdict.

    Attributes:
        name: stable snake_case identifier (`"loss_at_init"`).
        status: `"pass"`, `"warn"`, `"fail"` or `"skip"`.
        value: the measured figure (number or small JSON-able object), when there is one.
        expected: what a healthy run shows (number, range or text).
        message: what was seen, the likely cause and the fix, in one or two sentences.
        stage: the stage that emitted it; filled in by the stage runner.
        seconds: wall time spent producing it; filled in by the stage runner when measured.
        artifacts: run-directory-relative paths of files that illustrate it (plots, tables).
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

    def _repr_html_(self) -> str:
        from recipe.report import checks_table_html

        return checks_table_html([self])


def passed(name: str, message: str, value: Any = None, expected: Any = None) -> Check:
    return Check(name, "pass", value, expected, message)


def warned(name: str, message: str, value: Any = None, expected: Any = None) -> Check:
    return Check(name, "warn", value, expected, message)


def failed(name: str, message: str, value: Any = None, expected: Any = None) -> Check:
    return Check(name, "fail", value, expected, message)


def skipped(name: str, message: str) -> Check:
    return Check(name, "skip", None, None, message)


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
