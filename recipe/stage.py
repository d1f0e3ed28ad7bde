"""`Stage`: a name, a frozen settings dataclass and `run(ctx) -> list[Check]`.

A user customises a stage by subclassing it and extending `run`::

    class MyBaseline(Baseline):
        def run(self, ctx):
            checks = super().run(ctx)
            return [*checks, my_check(ctx.task)]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from recipe.check import Check
from recipe.config import settings_from_dict

if TYPE_CHECKING:
    from recipe.context import Context
    from recipe.task import Task


@dataclass(frozen=True)
class StageSettings:
    """Settings every stage has; each stage's settings dataclass extends it (`class OverfitSettings(StageSettings)`).

    A check named in `skip` still runs and is recorded, but as "skip", so it cannot stop the recipe: for a deliberate
    design, e.g. a model that couples samples on purpose.

    Args:
        skip: checks to report as "skip" (they still run).
    """

    skip: tuple[str, ...] = field(default=(), kw_only=True)  # keyword-only: the stage's own fields keep their places


class Stage:
    """Base class of every stage. Subclasses set `name` and `settings_cls` and implement `run`."""

    name: ClassVar[str] = "stage"
    settings_cls: ClassVar[type] = StageSettings

    def __init__(self, settings: Any = None, **overrides: Any):
        if settings is None or isinstance(settings, dict):
            settings = settings_from_dict(self.settings_cls, {**(settings or {}), **overrides}, self.name)
        elif overrides:
            settings = dataclasses.replace(settings, **overrides)
        self.settings = settings

    def run(self, ctx: Context) -> list[Check]:
        raise NotImplementedError(f"{type(self).__name__}.run(ctx) must return a list of Check")

    def validate(self, task: Task) -> None:
        """Raise a `ConfigError` for settings this task cannot take (say, a model argument its factory lacks); the
        recipe calls it for every stage after `Task.validate`, before any stage runs."""

    def restore(self, ctx: Context) -> None:
        """On a resumed run, instead of `run` for a stage that had finished: re-apply to `ctx` anything it set up
        besides what it `learn`ed (the context's learned values and training settings are restored already)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"
