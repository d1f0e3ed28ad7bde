"""Resuming an interrupted run (`recipe run CONFIG --resume RUN_DIR`): the stages that finished are kept, with
their checks, artifacts, metrics rows and what they handed over; the interrupted one runs again with its training
runs continued from their checkpoints (`FitCheckpoints`); the rest run as usual.

The manifest is written after every stage (status "running"), so a run killed with SIGKILL can resume too. A resume
with a different config is refused, naming the keys that changed, unless forced.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe import checkpoint
from recipe.check import Check, to_jsonable
from recipe.config import TrainSettings
from recipe.errors import ConfigError
from recipe.loop import FitResult
from recipe.loop import fit as run_fit
from recipe.reproducibility import resolve_device, rng_state, set_rng_state
from recipe.rundir import LEDGER, METRICS, STAGE_ORDER, TEMPORARY, RunDir, remove_files, write_atomic
from recipe.task import Task


@dataclass
class Resumed:
    """What the stages kept from earlier runs in the directory hand to the ones that run now."""

    finished: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)
    fits: list[dict[str, Any]] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # `finished` plus the stages this run does not plan
    train: TrainSettings | None = None
    train_from: str = ""  # the kept stage whose training settings this run starts from
    train_after: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, list[str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # every stage the run directory has folders for, in order
    config: dict[str, Any] = field(default_factory=dict)  # the kept stages' settings
    runs: list[dict[str, Any]] = field(default_factory=list)  # earlier invocations on this directory
    rows: list[dict[str, Any]] = field(default_factory=list)  # the kept stages' metrics rows


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if json.dumps(old, default=str) == json.dumps(new, default=str) else [prefix.rstrip(".")]


def earlier(rundir: RunDir, planned: dict[str, Any], resume: bool, force: bool) -> Resumed:
    """What this run keeps of the results already in `rundir`, whose manifest `planned` will replace.

    Always: the stages this run does not plan, as an earlier run left them (running some stages again never loses
    the others). With `resume`: also the leading planned stages that the interrupted run finished without a fail,
    after checking that this run's config, seed, stages and task source match the interrupted one's. A stage counts
    only while every file it wrote is still there (a stage folder deleted by hand runs again)."""
    previous = rundir.read_manifest() if (rundir.path / LEDGER).is_file() else {}
    names = list(planned["stages_planned"])
    if resume:
        _check_resumable(rundir, previous, planned, force)
    after = previous.get("train_after", {})
    files = previous.get("files", {})

    def intact(stage: str) -> bool:
        return stage in after and all((rundir.path / p).is_file() for p in files.get(stage, ()))

    finished: list[str] = []
    for stage in names if resume else ():  # the leading run of stages that ended without a fail
        if not intact(stage) or previous.get("stages", {}).get(stage) == "fail":
            break
        finished.append(stage)
    order = previous.get("stages_order") or previous.get("stages_planned") or []
    kept = [s for s in order if s not in names and intact(s)] + finished
    out = Resumed(finished=finished, kept=kept, train_after={s: after[s] for s in kept})
    out.checks = [c for c in rundir.read_checks() if c.stage in kept] if kept else []
    out.statuses = {s: previous["stages"][s] for s in kept if s in previous.get("stages", {})}
    out.seconds = {s: previous.get("seconds", {}).get(s, 0.0) for s in kept}
    out.learned = {s: v for s, v in previous.get("learned", {}).items() if s in kept}
    out.fits = [f for f in previous.get("fits", []) if f.get("stage") in kept]
    out.files = {s: list(files.get(s, [])) for s in kept}
    out.order = list(dict.fromkeys([*order, *names]))
    out.config = {k: v for k, v in previous.get("config", {}).items() if k in kept}
    out.runs = list(previous.get("runs", []))
    out.rows = [r for r in rundir.read_metrics() if r.get("stage") in kept]  # read (and checked) before any write
    todo = [s for s in names if s not in finished]
    before = [s for s in kept if _position(s) < _position(todo[0])] if todo else kept
    if before:
        start = max(before, key=_position)
        train = dict(after[start])
        for key in changed_keys(previous.get("config", {}).get("train"), planned["config"]["train"]):
            if key in train:  # a training setting the config changed since that run: the config wins
                train[key] = planned["config"]["train"][key]
        out.train, out.train_from = TrainSettings(**train), start
    return out


def _position(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _check_resumable(rundir: RunDir, previous: dict[str, Any], planned: dict[str, Any], force: bool) -> None:
    if not previous:
        raise ConfigError(f"--resume {rundir.path}: no manifest.json there, so no run to resume.")
    if previous.get("status") == "complete":
        raise ConfigError(f"--resume {rundir.path}: that run completed; run again without --resume to start over.")
    old = {
        "config": {k: v for k, v in previous.get("config", {}).items() if k in planned["config"]},
        **{k: previous.get(k) for k in ("seed", "stages_planned", "task", "source")},
    }
    changed = [k for key in old for k in changed_keys(old[key], to_jsonable(planned.get(key)), f"{key}.")]
    if changed and not force:
        raise ConfigError(
            f"--resume {rundir.path}: the config differs from the interrupted run's in {', '.join(changed[:8])}; "
            "resume with the same config, or add --force to resume anyway."
        )


def keep_metrics(rundir: RunDir, rows: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl with the kept stages' rows only: the stages that run now write theirs again."""
    rundir.record(METRICS)
    write_atomic(rundir.path / METRICS, "".join(json.dumps(r) + "\n" for r in rows).encode())


class FitCheckpoints:
    """Checkpoints for every `Context.fit` of a run, so a resumed run continues an interrupted stage instead of
    restarting it.

    Fit number k of run name R in stage S trains with `checkpoint_dir=<run_dir>/checkpoints/S/R-k`. When it ends,
    its weights, history, metrics rows and the RNG state it left are kept there as `done.pt` and its training
    state is dropped. On resume the stage runs again from its start: its fits that had ended replay from `done.pt`
    (the same model and rows, no training), and the one that was interrupted continues from its last checkpoint.
    A stage's folder is removed when the stage ends; a run started afresh removes them all.

    A fit writes its training state at most every `checkpoint_seconds` (the config's `train.checkpoint_seconds`)
    and when it ends: the overfit stage's one-batch epochs would otherwise write a checkpoint per step.
    """

    DONE = "done.pt"

    def __init__(self, root: Path, replace: Iterable[str] = (), checkpoint_seconds: float = 60.0):
        self.root, self.checkpoint_seconds = root, checkpoint_seconds
        self.counts: dict[tuple[str, str], int] = {}
        for stage in replace:  # stages that run afresh: an interrupted fit of theirs is not continued
            self._remove(root / stage)

    def fit(self, stage: str, run: str, task: Task, settings: dict[str, Any]) -> FitResult:
        """`fit(task, **settings)`, resumed or replayed from this fit's checkpoints when they match its settings."""
        k = self.counts[stage, run] = self.counts.get((stage, run), -1) + 1
        folder = self.root / stage / f"{run}-{k}"
        fingerprint = _fingerprint(settings)
        if (folder / self.DONE).exists():
            try:
                done = checkpoint.load_keys(folder / self.DONE, DONE_KEYS)
            except checkpoint.CheckpointError:
                done = {}  # unreadable or incomplete: this fit runs again
            if done.get("fingerprint") == fingerprint:
                return _replay(done, task, settings)
        if _read_fingerprint(folder) != fingerprint:
            self._remove(folder)  # another fit's state (a forced resume changed settings)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "settings.json", json.dumps({"fingerprint": fingerprint}).encode())
        rows: list[dict[str, Any]] = []
        log = settings.get("log")

        def keep(row: dict[str, Any]) -> None:
            rows.append(row)
            if log is not None:
                log(row)

        resumable = {"checkpoint_dir": folder, "resume": True, "checkpoint_seconds": self.checkpoint_seconds}
        result = run_fit(task, **{**settings, "log": keep, **resumable})
        checkpoint.save_atomic(
            {
                "fingerprint": fingerprint,
                "model": result.model.state_dict(),
                "history": result.history,
                "step_losses": result.step_losses,
                "log_values": result.log_values,
                "steps": result.steps,
                "seconds": result.seconds,
                "setup": to_jsonable(result.setup, exact=True),
                "rows": rows,
                "rng": rng_state(),
            },
            folder / self.DONE,
        )
        for name in ("last.pt", "last.1.pt", "best.pt"):
            for path in (folder / name, checkpoint.sidecar(folder / name)):
                path.unlink(missing_ok=True)
        return result

    def finish(self, stage: str) -> None:
        """The stage ended: its fits will never be resumed."""
        self._remove(self.root / stage)

    def _remove(self, folder: Path) -> None:
        """Delete what fits wrote under `folder` (checkpoints, their .sha256 records, unrenamed temporaries); any
        other file stays, and so do the folders holding one."""
        if not folder.is_dir():
            return
        names = (self.DONE, "settings.json", "last.pt", "last.1.pt", "best.pt")
        ours = [p for p in folder.rglob("*") if p.name.removesuffix(".sha256") in names or TEMPORARY.match(p.name)]
        remove_files(self.root.parent, ours)


DONE_KEYS = ("fingerprint", "model", "history", "step_losses", "steps", "seconds", "setup", "rows", "rng")
"""What a `done.pt` must hold to be replayed (`log_values` is optional: older ones lack it)."""


def _fingerprint(settings: dict[str, Any]) -> str:
    """The settings that decide a fit's result, as text (the log sink and a passed-in module excluded)."""
    kept = {k: v for k, v in settings.items() if k not in ("log", "progress", "model", "on_log", "on_epoch")}
    return json.dumps(to_jsonable({k: _describe(v) for k, v in kept.items()}, exact=True), sort_keys=True)


def _describe(value: Any) -> Any:
    """A callable setting (a schedule) as its name and the values it closes over, the same in every process."""
    if not callable(value):
        return value
    cells = [c.cell_contents for c in getattr(value, "__closure__", None) or ()]
    return [
        getattr(value, "__qualname__", type(value).__name__),
        *[c if isinstance(c, int | float | str) else repr(c) for c in cells],
    ]


def _read_fingerprint(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "settings.json").read_text())["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None


def _replay(done: dict[str, Any], task: Task, settings: dict[str, Any]) -> FitResult:
    """The result of a fit that had ended before the interruption: its weights, curves and rows, as it left them."""
    device = resolve_device(settings.get("device", "auto"))
    model = settings.get("model") or task.make_model()
    model = model.to(device)
    try:
        model.load_state_dict(done["model"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise checkpoint.CheckpointError(f"{checkpoint.one_line(exc)} (replaying a finished training run)") from exc
    log = settings.get("log")
    for row in done["rows"]:
        if log is not None:
            log(row)
    set_rng_state(done["rng"])
    return FitResult(
        model=model,
        history=done["history"],
        step_losses=done["step_losses"],
        steps=done["steps"],
        seconds=done["seconds"],
        setup={**done["setup"], "replayed": True},
        log_values=list(done.get("log_values", [])),
    )
