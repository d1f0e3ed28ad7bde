"""The exceptions users need to catch: every one is a `RecipeError`.

Each message says what was seen, what was expected and what to do, in one or two sentences.
"""

from __future__ import annotations


class RecipeError(Exception):
    """Base class of every error `recipe` raises on purpose."""


class TaskError(RecipeError, ValueError):
    """The Task is malformed: a split, the model factory, the loss or the targets (raised before training)."""


class ConfigError(RecipeError, ValueError):
    """A setting or YAML config is invalid: unknown key, wrong type, bad value."""


class CheckpointError(RecipeError):
    """A checkpoint could not be read: truncated, corrupted, or carrying a pickled payload."""


class NoModelError(RecipeError):
    """A run directory holds no trained model for `load_model` (no stage that trains one ran there)."""


class NoBatchFitsError(RecipeError, MemoryError):
    """Even a batch of one sample does not fit in memory for a training step and an evaluation step."""


class StorageError(RecipeError, OSError):
    """The disk refused a write during a run (full, over quota, read-only, not permitted); the message names the path.

    The `OSError` it stands for is its `__cause__`.
    """


class NonFiniteError(RecipeError, FloatingPointError):
    """Training produced a non-finite loss; the message names the step, parameter and module.

    Attributes:
        step: the first optimizer step (0-based) whose loss was not finite.
        parameter: name of the first parameter holding non-finite values after that step, if any.
        module: name of the first module whose output was non-finite when the batch was replayed, if found.
        losses: the finite training losses of the steps before it.
        indices: the training-split indices of the samples in that step's batch (empty when not known).
    """

    def __init__(
        self,
        message: str,
        step: int,
        parameter: str | None = None,
        module: str | None = None,
        losses: list[float] | None = None,
        indices: list[int] | None = None,
    ):
        super().__init__(message)
        self.step = step
        self.parameter = parameter
        self.module = module
        self.losses = losses or []
        self.indices = indices or []


class Terminated(BaseException):
    """The process received SIGTERM during a run; the run directory holds a report marked interrupted.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
    """
