"""recipe: Karpathy's "A Recipe for Training Neural Networks" as staged, gated checks that make silent bugs loud."""

__version__ = "0.1.0"

from recipe.check import Check
from recipe.config import TrainSettings
from recipe.errors import ConfigError, NonFiniteError, RecipeError, TaskError
from recipe.evaluation import Evaluation, evaluate
from recipe.fit import FitResult, fit
from recipe.recipe import Context, Recipe, RecipeResult
from recipe.stage import Stage
from recipe.stages import STAGES, Baseline, Complexify, InspectData, OverfitOneBatch, Regularize, Tune
from recipe.task import Task

__all__ = [
    "STAGES",
    "Baseline",
    "Check",
    "Complexify",
    "ConfigError",
    "Context",
    "Evaluation",
    "FitResult",
    "InspectData",
    "NonFiniteError",
    "OverfitOneBatch",
    "Recipe",
    "RecipeError",
    "RecipeResult",
    "Regularize",
    "Stage",
    "Task",
    "TaskError",
    "TrainSettings",
    "Tune",
    "__version__",
    "evaluate",
    "fit",
]
