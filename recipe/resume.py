"""Resuming an interrupted run (`recipe run CONFIG --resume RUN_DIR`): the stages that finished are kept, with
their checks, artifacts, metrics rows and what they handed over; the rest run again.

The manifest is written after every stage (status "running"), so a run killed with SIGKILL can resume too. A resume
with a different config is refused, naming the keys that changed, unless forced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from recipe.check import Check, to_jsonable
from recipe.config import TrainSettings
from recipe.errors import ConfigError
from recipe.rundir import METRICS, RunDir, write_atomic


@dataclass
class Resumed:
    """What the finished stages of an earlier run hand to the rest."""

    finished: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)
    train: TrainSettings | None = None
    train_after: dict[str, dict[str, Any]] = field(default_factory=dict)


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if json.dumps(old, default=str) == json.dumps(new, default=str) else [prefix.rstrip(".")]


def load(rundir: RunDir, planned: dict[str, Any], force: bool) -> Resumed:
    """The finished part of the run in `rundir`; checks that `planned` (this run's manifest) matches its config."""
    previous = rundir.read_manifest()
    if not previous:
        raise ConfigError(f"--resume {rundir.path}: no manifest.json there, so no run to resume.")
    if previous.get("status") == "complete":
        raise ConfigError(f"--resume {rundir.path}: that run completed; run again without --resume to start over.")
    keys = ("config", "seed", "stages_planned", "task")
    changed = [k for key in keys for k in changed_keys(previous.get(key), to_jsonable(planned[key]), f"{key}.")]
    if changed and not force:
        raise ConfigError(
            f"--resume {rundir.path}: the config differs from the interrupted run's in {', '.join(changed[:8])}; "
            "resume with the same config, or add --force to resume anyway."
        )
    after = previous.get("train_after", {})
    finished: list[str] = []
    for stage in previous.get("stages_planned", []):  # the leading run of stages that ended without a fail
        if stage not in after or previous.get("stages", {}).get(stage) == "fail":
            break
        finished.append(stage)
    out = Resumed(finished=finished, train_after={s: after[s] for s in finished})
    out.checks = [c for c in rundir.read_checks() if c.stage in finished]
    out.statuses = {s: previous["stages"][s] for s in finished}
    out.seconds = {s: previous.get("seconds", {}).get(s, 0.0) for s in finished}
    out.learned = {s: v for s, v in previous.get("learned", {}).items() if s in finished}
    out.fits = [f for f in previous.get("fits", []) if f.get("stage") in finished]
    if finished:
        out.train = TrainSettings(**after[finished[-1]])
    return out


def keep_metrics(rundir: RunDir, stages: list[str]) -> None:
    """Drop the metrics rows of every stage but `stages`: the unfinished ones write theirs again."""
    rows = [r for r in rundir.read_metrics() if r.get("stage") in stages]
    write_atomic(rundir.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())
