"""`Recipe` runs stages in order through one explicit `Context`, stops at the first failed check, and writes the run
directory (checks.json, metrics.jsonl, manifest.json, report.html)."""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipe import __version__, stopping, threads
from recipe import resume as resuming
from recipe.check import SEVERITY, STATUSES, Check, ends_the_run, errored
from recipe.checkpoint import digest
from recipe.config import TrainSettings, check_run_dir, check_seed, run_name, settings_from_dict, suggest
from recipe.console import Console, doing, progress_line
from recipe.context import Context
from recipe.diagnostics.numerics import non_finite
from recipe.errors import ConfigError, NonFiniteError
from recipe.loggers import LOGGERS, make_loggers
from recipe.report import build_report, result_html
from recipe.reproducibility import resolve_device, seed_everything
from recipe.rundir import RunDir, check_owned
from recipe.stage import Stage
from recipe.stages import STAGES
from recipe.task import Task
from recipe.validation import check_batch_fits


@dataclass
class RecipeResult:
    """What `Recipe.run()` returns.

    Attributes:
        ok: True when no check failed (a check that raised, status "error", is not a failure of the setup).
        checks: every Check, in the order they ran.
        run_dir: the run directory.
        stages: stage name -> "pass" | "warn" | "error" | "fail" (stages not reached are absent).
    """

    ok: bool
    checks: list[Check]
    run_dir: Path
    stages: dict[str, str]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def errors(self) -> list[Check]:
        """The checks that raised instead of judging (each message names the exception and where it was raised)."""
        return [c for c in self.checks if c.status == "error"]

    def __repr__(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        return f"RecipeResult(ok={self.ok}, {counts}, run_dir='{self.run_dir}')"

    def _repr_html_(self) -> str:
        return result_html(self)


class Recipe:
    """Karpathy's recipe as a staged run: each stage emits checks, and a failed check stops the run.

    Args:
        task: the problem to train.
        run_dir: where the run's files go (created if missing); default `runs/<task.name>`.
        stages: None for every stage in order, or a list of stage names and/or `Stage` instances.
        device: "auto" | "cpu" | "cuda" | "cuda:N" | torch.device.
        seed: seeds python, numpy and torch for every training run.
        keep_going: run later stages even after a failed check.
        config: per-stage settings by stage name (as in a YAML config), plus `train` for the training settings.
        progress: show progress: on a terminal a run line (stage i/n, what trains, time left) above fit's bars;
            elsewhere (CI logs, notebooks) a printed line when a stage or a loop starts, others at most every 10 s.
        quiet: print only the final summary.
        source: where the task came from, when started from a config ({"task": "module:function", "task_args":
            {...}}); stages use it to write configs the command line can run again.
        loggers: tools the run directory is mirrored into after each stage: "tensorboard".
        resume: continue the interrupted run in `run_dir`: its finished stages are kept, the rest run again.
        force: resume even when the config differs from the interrupted run's.
        figures: draw the stages' figures (PNG plots); False draws none, for runs where only the checks matter (CI,
            many runs): each figure costs about 0.1 s, a dozen of them a third of the first three stages on digits.
    """

    def __init__(
        self,
        task: Task,
        run_dir: str | Path | None = None,
        stages: Sequence[str | Stage] | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        keep_going: bool = False,
        config: dict[str, Any] | None = None,
        progress: bool = True,
        quiet: bool = False,
        source: dict[str, Any] | None = None,
        loggers: Sequence[str] = (),
        resume: bool = False,
        force: bool = False,
        figures: bool = True,
    ):
        if not isinstance(task, Task):
            raise ConfigError(f"Recipe needs a recipe.Task, got {type(task).__name__}.")
        config = dict(config or {})
        for key in config:
            if key != "train" and key not in STAGES:
                raise ConfigError(f"config: unknown section {key!r}{suggest(key, ['train', *STAGES])}")
        self.task = task
        self.device = resolve_device(device)
        self.seed = check_seed(seed)
        self.keep_going = keep_going
        if not isinstance(figures, bool):
            raise ConfigError(f"figures must be True or False, got {figures!r}.")
        self.figures = figures
        self.progress = progress
        self.quiet = quiet
        self.train = settings_from_dict(TrainSettings, config.get("train"), "config: train")
        self.train.check()
        if stages is not None and not list(stages):
            raise ConfigError("stages: the list is empty; name at least one stage, or leave it out to run all six.")
        self.stages: list[Stage] = []
        for item in stages if stages is not None else list(STAGES):
            if isinstance(item, Stage):
                self.stages.append(item)
            elif isinstance(item, str) and item in STAGES:
                self.stages.append(STAGES[item](config.get(item)))
            else:
                raise ConfigError(f"stages: unknown stage {item!r}{suggest(str(item), STAGES)}")
        self.run_dir = Path(run_dir) if run_dir is not None else Path("runs") / run_name(task.name)
        self.config = config
        self.source = dict(source or {})
        self.loggers = list(loggers)
        self.resume, self.force = resume, force
        unknown = [n for n in self.loggers if n not in LOGGERS]
        if unknown:
            raise ConfigError(f"loggers: unknown {unknown}{suggest(unknown[0], LOGGERS)}")

    def run(self) -> RecipeResult:
        """Run the stages in order; write the run directory; return the result."""
        check_run_dir(self.run_dir)  # before any compute; creates nothing
        check_owned(self.run_dir)  # a folder recipe did not create is refused before anything is read or written
        if "batch_size" in (self.config.get("train") or {}):  # a batch size left at its default is clamped instead
            check_batch_fits(self.task, self.train.batch_size)
        self.task.validate(self.device)  # bad input fails here, before anything is written
        for stage in self.stages:
            stage.validate(self.task)  # settings this task cannot take
        n_threads, threads_reason = threads.for_training(
            self.train.threads, self.task, self.task.make_model, self.train.batch_size, self.seed,
            self.device,
        )  # fmt: skip
        planned = [s.name for s in self.stages]
        manifest = self._manifest(threads_reason)
        done = resuming.earlier(RunDir(self.run_dir), manifest, self.resume, self.force)
        rundir = RunDir(self.run_dir, done.order)
        todo = [name for name in planned if name not in done.finished]
        ctx = Context(
            self.task, self.device, self.seed, rundir, done.train or self.train, progress=self.progress,
            learned=done.learned, fits=done.fits, source=self.source, figures=self.figures,
        )  # fmt: skip
        console = Console(self.quiet)
        console.header(self.task, self.device, self.seed, rundir.path)
        self._restore_earlier(ctx, done, console)  # before any write: a kept stage's settings may be refused
        checks, statuses, timings, train_after = done.checks, done.statuses, done.seconds, done.train_after
        files = rundir.written = done.files
        status = "interrupted"  # until the loop ends on its own
        manifest.update(
            stages_order=done.order,
            config=done.config | manifest["config"],
            runs=[*done.runs, {"start": manifest["start"], "stages": planned, "resume": self.resume}],
        )
        manifest.update(status="running", stages=statuses, seconds=timings, learned=ctx.learned, files=files)
        rundir.create(replace=todo)  # only what recipe wrote for the stages that run now is replaced
        try:
            resuming.keep_metrics(rundir, done.rows)
            loggers = make_loggers(self.loggers, rundir.path)
            replace = () if self.resume else planned
            ctx.checkpoints = resuming.FitCheckpoints(
                rundir.path / "checkpoints", replace, ctx.train.checkpoint_seconds
            )
            rundir.write_manifest(manifest | {"train_after": train_after, "fits": ctx.fits})  # resumable from here
        except BaseException:
            rundir.close()  # the lock goes with the run that could not start
            raise
        try:
            with (
                stopping.handling_sigterm(),  # SIGTERM: fits checkpoint, the run ends
                threads.using(n_threads),
                progress_line(self.progress and not self.quiet),  # stage i/n, what runs, time left
            ):
                for i, stage in enumerate(self.stages, 1):
                    ctx.stage = stage.name
                    if stage.name in done.finished:
                        stage.restore(ctx)
                        console.kept(stage.name, statuses[stage.name])
                        continue
                    start = time.perf_counter()
                    seed_everything(self.seed)  # each stage starts alike, resumed or not, whatever ran before it
                    with doing(stage.name, i, len(self.stages)):
                        stage_checks = _run_stage(stage, ctx)
                    timings[stage.name] = round(time.perf_counter() - start, 3)
                    checks = _in_order([*checks, *stage_checks], done.order)
                    statuses[stage.name] = _worst(stage_checks)
                    rundir.write_checks(checks)
                    console.stage(stage.name, stage_checks, timings[stage.name])
                    for logger in loggers:
                        logger.stage(rundir, stage.name, done.order)
                    train_after[stage.name] = dataclasses.asdict(ctx.train)
                    manifest.update(
                        status="running", stages=statuses, seconds=timings, learned=ctx.learned, files=files
                    )
                    rundir.write_manifest(manifest | {"train_after": train_after, "fits": ctx.fits})  # resumable now
                    ctx.checkpoints.finish(stage.name)
                    if statuses[stage.name] == "fail" and not self.keep_going:
                        break
            status = "complete"
        finally:
            manifest.update(
                status=status,
                end=_now(),
                checkpoints=_checkpoints(rundir.path),
                stages=statuses,
                seconds=timings,
                learned=ctx.learned,
                files=files,
                fits=ctx.fits,
                train_final=dataclasses.asdict(ctx.train),
                train_after=train_after,
            )
            rundir.write_checks(checks)
            rundir.write_manifest(manifest)
            rundir.close()
            for logger in loggers:
                logger.close()
            build_report(rundir.path)
        result = RecipeResult(not any(c.failed for c in checks), checks, rundir.path, statuses)
        console.summary(result)
        return result

    def _restore_earlier(self, ctx: Context, done: resuming.Resumed, console: Console) -> None:
        """Kept stages of earlier runs that come before this run's first stage hand on what they set up: their
        training settings (already in `done.train`) and whatever `Stage.restore` re-applies (complexify's ladder)."""
        if done.train is not None and done.train_from not in done.finished:
            console.note(f"training settings from the run's earlier {done.train_from!r} stage: lr={done.train.lr:g}")
        for name in done.kept:
            if name in STAGES and name not in done.finished and name in done.train_after:
                ctx.stage = name
                STAGES[name](self.config.get(name)).restore(ctx)

    def _manifest(self, threads_reason: str = "") -> dict[str, Any]:
        return {
            "task": {
                "name": self.task.name,
                "kind": self.task.kind,
                "num_classes": self.task.num_classes,
                "loss": self.task.loss if isinstance(self.task.loss, str) else repr(self.task.loss),
                "train_size": len(self.task.train),
                "val_size": len(self.task.val),
            },
            "config": {
                "train": dataclasses.asdict(self.train),
                **{s.name: dataclasses.asdict(s.settings) for s in self.stages},
            },
            "stages_planned": [s.name for s in self.stages],
            "source": self.source,
            "threads": threads_reason,
            "seed": self.seed,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor() or platform.machine(),
            "keep_going": self.keep_going,
            "figures": self.figures,
            "versions": {
                "recipe": __version__,
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "numpy": np.__version__,
                "platform": platform.platform(),
            },
            "start": _now(),
        }


def _run_stage(stage: Stage, ctx: Context) -> list[Check]:
    """Run one stage; a non-finite loss becomes a failed `non_finite` check, any other exception escaping the stage
    (a custom stage, or a step outside its checks) one `error` check named after the stage; skipped names are
    marked."""
    try:
        checks = list(stage.run(ctx))
    except NonFiniteError as exc:
        checks = [non_finite(exc)]
    except Exception as exc:
        if ends_the_run(exc):
            raise
        checks = [errored(stage.name, exc, "the whole stage, whose checks are lost", f"stage {stage.name!r}")]
    skip = set(getattr(stage.settings, "skip", ()))
    out = []
    for c in checks:
        c = c.replace(stage=stage.name)
        if c.name in skip and c.status != "skip":
            c = c.replace(status="skip", message=f"skipped by config ({stage.name}.skip); it measured: {c.message}")
        out.append(c)
    return out


def _checkpoints(path: Path) -> dict[str, Any]:
    """Size and sha256 of every checkpoint in the run directory (each also has a `.sha256` file that loading
    verifies)."""
    return {p.relative_to(path).as_posix(): digest(p) for p in sorted(path.rglob("*.pt"))}


def _in_order(checks: list[Check], order: list[str]) -> list[Check]:
    """Checks grouped by stage in the run directory's stage order (a stage run again replaces its place)."""
    position = {stage: i for i, stage in enumerate(order)}
    return sorted(checks, key=lambda c: position.get(c.stage, len(order)))


def _worst(checks: list[Check]) -> str:
    """The stage's status: fail > error > warn > pass (a stage of skipped checks passes)."""
    statuses = {c.status for c in checks}
    return next((s for s in SEVERITY if s in statuses), "pass")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
