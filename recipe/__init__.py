"""recipe: Karpathy's "A Recipe for Training Neural Networks" as staged, gated checks that make silent bugs loud."""

__version__ = "0.1.0"

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
