"""`Context`: everything a stage may read, and the one place stages hand results on to later stages; the model a
training-settings record names (`model_factory`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from recipe import resume as resuming
from recipe.check import Check, containing
from recipe.config import TrainSettings, suggest
from recipe.console import doing
from recipe.errors import ConfigError
from recipe.loop import FitResult, fit
from recipe.rundir import RunDir
from recipe.task import Task

REGULARISATION_OFF: dict[str, Any] = {"weight_decay": 0.0, "augment": False, "early_stopping": None}
"""`fit` overrides for the stages that must see the model unregularised (`baseline`, `overfit`)."""


@dataclass
class Context:
    """Everything a stage may read, and the one place stages hand results to later stages.

    Attributes:
        task: the user's task.
        device: the resolved training device.
        seed: the run's seed.
        rundir: the run directory (write through `save_json` / `save_figure` / `save_text`).
        train: the current training settings; earlier stages refine them with `learn` (lr found, batch size).
        learned: what each stage learned, by stage name: recorded in manifest.json.
        stage: the name of the stage now running.
        progress: whether training runs show progress bars.
        source: where the task came from when the run was started from a config (`task`, `task_args`), so a
            stage can write a config the command line can run again.
        checkpoints: where `fit` runs keep their checkpoints, so a resumed run continues the interrupted stage.
        figures: whether `save_figure` draws and writes figures (False: none is drawn).
    """

    task: Task
    device: torch.device
    seed: int
    rundir: RunDir
    train: TrainSettings = field(default_factory=TrainSettings)
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)
    stage: str = ""
    progress: bool = True
    fits: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    checkpoints: resuming.FitCheckpoints | None = None
    figures: bool = True

    def learn(self, train: Any = None, **found: Any) -> None:
        """Record what the running stage learned (manifest.json's `learned`): `train` holds the training settings it
        hands on to the stages after it, a dict by their `TrainSettings` names (`train={"lr": 3e-3}`); the keywords
        hold what it found besides (`lr_rule="range test"`), which changes no setting. (`train` is typed `Any` so that
        a stage may spread a dict of findings, `**{f"val_{metric}": ...}`, without the type checker fearing its keys.)
        """
        known = {f.name for f in dataclasses.fields(TrainSettings)}
        named = sorted(set(found) & known)
        if named:  # a finding is never routed into the settings by its name: the stage says which are settings
            raise TypeError(f"ctx.learn({named[0]}=...) is a training setting: pass train={{{named[0]!r}: ...}}")
        unknown = sorted(set(train or {}) - known)
        if unknown:
            raise TypeError(f"ctx.learn(train=...): {unknown[0]!r} is no training setting{suggest(unknown[0], known)}")
        if train:
            self.train = dataclasses.replace(self.train, **train)
        self.learned.setdefault(self.stage, {}).update({**(train or {}), **found})

    def training_task(self, task: Task | None = None, **changes: Any) -> Task:
        """The task with the model the training settings name: the ladder rung `model`, its `dropout` and
        `model_args`."""
        s = dataclasses.replace(self.train, **changes) if changes else self.train
        task = task or self.task
        factory = model_factory(task, s.model, s.dropout, s.model_args)
        return task if factory is task.model else task.replace(model=factory)

    def fit(self, run: str, task: Task | None = None, **overrides: Any) -> FitResult:
        """`fit` with the current training settings, this run's device and seed, logging to metrics.jsonl.

        `task` defaults to the context's task with the rung and dropout the settings name (`training_task`).
        """
        s = self.train
        task = task or self.training_task()
        settings: dict[str, Any] = {
            **s.fit_kwargs(),
            "batch_size": s.batch_size,
            "device": self.device,
            "seed": self.seed,
            "progress": self.progress,
            "log": self.rundir.metrics_log(self.stage, run),
        }
        settings.update(overrides)
        settings["batch_size"] = min(settings["batch_size"], len(task.train))  # a trial may ask for more
        with doing(run):  # the bar says which run of the stage trains
            if self.checkpoints is not None:  # resumable: continued or replayed when the run is resumed
                result = self.checkpoints.fit(self.stage, run, task, settings)
            else:
                result = fit(task, **settings)
        self.fits.append({"stage": self.stage, "run": run, "seconds": round(result.seconds, 3), **result.setup})
        return result

    def check(self, fn: Callable[..., Check], *args: Any, name: str | None = None, **kwargs: Any) -> Check:
        """Call a check function and record how long it took; if it raises, an `error` check named `name` (default:
        the function's name without its leading underscore) takes its place and the stage goes on (`containing`)."""
        start, out = time.perf_counter(), list[Check]()
        name = name or getattr(fn, "__name__", type(fn).__name__).lstrip("_")
        with containing(name, out, (inspect.getdoc(fn) or "").split("\n")[0]), doing(name):
            out.append(fn(*args, **kwargs))
        return out[0].replace(seconds=time.perf_counter() - start)

    @contextmanager
    def contained(self, name: str, checks: list[Check], probing: str = "") -> Iterator[None]:
        """A block that computes check `name` (or what later checks need): if it raises, an `error` check named
        `name` is appended to `checks` and the stage goes on after the block (`recipe.check.containing`). The block's
        time goes to the checks it appended: the first without `seconds` gets what the others do not carry."""
        start, before = time.perf_counter(), len(checks)
        with containing(name, checks, probing):
            yield
        left = time.perf_counter() - start - sum(c.seconds or 0.0 for c in checks[before:])
        for i in range(before, len(checks)):
            if checks[i].seconds is None:
                checks[i], left = checks[i].replace(seconds=max(left, 0.0)), 0.0

    def save_json(self, name: str, obj: Any) -> str:
        return self.rundir.save_json(self.stage, name, obj)

    def save_text(self, name: str, text: str) -> str:
        return self.rundir.save_text(self.stage, name, text)

    def save_figure(self, name: str, fig: Any) -> str | None:
        """Write a matplotlib figure, or the figure a function of no arguments draws (`lambda: plots.x(...)`, drawn
        only when figures are on), and return its path; None when the run draws no figures (`figures=False`), which
        a check's `artifacts` leave out."""
        if not self.figures:
            if not callable(fig):
                import matplotlib.pyplot as plt  # already imported: the caller drew `fig`

                plt.close(fig)
            return None
        return self.rundir.save_figure(self.stage, name, fig() if callable(fig) else fig)


def model_factory(
    task: Task, rung: str | None = None, dropout: float | None = None, model_args: dict[str, Any] | None = None
) -> Callable[[], Any]:
    """The factory for ladder rung `rung` (None: the task's model), with `dropout=` (when not None) and `model_args`
    bound; an argument the factory does not take is a `ConfigError` naming it."""
    if rung is not None and rung not in task.models:
        raise ConfigError(f"train.model={rung!r} is not a rung of the task's ladder{suggest(rung, task.models)}")
    factory = cast(Callable[..., Any], task.model if rung is None else task.models[rung])
    if dropout is not None and not accepts(factory, "dropout"):
        raise ConfigError(f"train.dropout={dropout} but the model factory takes no `dropout` argument.")
    for name in model_args or {}:
        if not accepts(factory, name):
            raise ConfigError(f"train.model_args.{name}: the model factory takes no {name!r} argument.")
    bound = {**({"dropout": dropout} if dropout is not None else {}), **(model_args or {})}
    return functools.partial(factory, **bound) if bound else factory


def accepts(factory: Callable[..., Any], argument: str) -> bool:
    """Whether `factory` (a class or function) takes a keyword `argument`."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
