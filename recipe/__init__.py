"""recipe: Karpathy's "A Recipe for Training Neural Networks" as staged, gated checks that make silent bugs loud.

The public names load on first use (PEP 562): `import recipe` alone, or `recipe --help`, does not import torch
(seconds on a busy machine). `from recipe import Task` works as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # the same names, for type checkers and readers
    from recipe.check import Check
    from recipe.config import TrainSettings
    from recipe.context import Context
    from recipe.errors import (
        CheckpointError,
        ConfigError,
        NoBatchFitsError,
        NoModelError,
        NonFiniteError,
        RecipeError,
        StorageError,
        TaskError,
        Terminated,
    )
    from recipe.evaluation import Evaluation, evaluate
    from recipe.loop import FitResult, fit
    from recipe.model_io import fit_arguments, load_model
    from recipe.runner import Recipe, RecipeResult
    from recipe.stage import Stage
    from recipe.stages import STAGES, Baseline, Complexify, InspectData, OverfitOneBatch, Regularize, Tune
    from recipe.task import Task

_HOMES = {  # public name -> the module that defines it
    "Check": "recipe.check",
    "TrainSettings": "recipe.config",
    "Context": "recipe.context",
    **dict.fromkeys(
        [
            "CheckpointError",
            "ConfigError",
            "NoBatchFitsError",
            "NoModelError",
            "NonFiniteError",
            "RecipeError",
            "StorageError",
            "TaskError",
            "Terminated",
        ],
        "recipe.errors",
    ),
    "Evaluation": "recipe.evaluation",
    "evaluate": "recipe.evaluation",
    "FitResult": "recipe.loop",
    "fit": "recipe.loop",
    "fit_arguments": "recipe.model_io",
    "load_model": "recipe.model_io",
    "Recipe": "recipe.runner",
    "RecipeResult": "recipe.runner",
    "Stage": "recipe.stage",
    **dict.fromkeys(
        ["STAGES", "Baseline", "Complexify", "InspectData", "OverfitOneBatch", "Regularize", "Tune"], "recipe.stages"
    ),
    "Task": "recipe.task",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is asked for (PEP 562), then keep the name here."""
    if name not in _HOMES:
        raise AttributeError(f"module 'recipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "STAGES",
    "Baseline",
    "Check",
    "CheckpointError",
    "Complexify",
    "ConfigError",
    "Context",
    "Evaluation",
    "FitResult",
    "InspectData",
    "NoBatchFitsError",
    "NoModelError",
    "NonFiniteError",
    "OverfitOneBatch",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "Regularize",
    "Stage",
    "StorageError",
    "Task",
    "TaskError",
    "Terminated",
    "TrainSettings",
    "Tune",
    "__version__",
    "evaluate",
    "fit",
    "fit_arguments",
    "load_model",
]
