"""The stages, in recipe order. `STAGES` is the only registry: a literal dict from name to class."""

from recipe.stages.baseline import Baseline, BaselineSettings
from recipe.stages.complexify import Complexify, ComplexifySettings
from recipe.stages.inspect import InspectData, InspectSettings
from recipe.stages.overfit import OverfitOneBatch, OverfitSettings
from recipe.stages.regularize import Regularize, RegularizeSettings
from recipe.stages.tune import Tune, TuneSettings

STAGES = {
    "inspect": InspectData,
    "baseline": Baseline,
    "overfit": OverfitOneBatch,
    "complexify": Complexify,
    "regularize": Regularize,
    "tune": Tune,
}

__all__ = [
    "STAGES",
    "Baseline",
    "BaselineSettings",
    "Complexify",
    "ComplexifySettings",
    "InspectData",
    "InspectSettings",
    "OverfitOneBatch",
    "OverfitSettings",
    "Regularize",
    "RegularizeSettings",
    "Tune",
    "TuneSettings",
]
