"""The stages, in recipe order. `STAGES` is the only registry: a dict from name to class, its order and names from
`recipe.rundir.STAGE_ORDER` (the run directory numbers the stage folders by it, and sits below the stages)."""

from recipe.rundir import STAGE_ORDER
from recipe.stage import Stage
from recipe.stages.baseline import Baseline, BaselineSettings
from recipe.stages.complexify import Complexify, ComplexifySettings
from recipe.stages.inspect import InspectData, InspectSettings
from recipe.stages.overfit import OverfitOneBatch, OverfitSettings
from recipe.stages.regularize import Regularize, RegularizeSettings
from recipe.stages.tune import Tune, TuneSettings

STAGES: dict[str, type[Stage]] = dict(  # name -> class, in recipe order: the order is rundir.STAGE_ORDER's, named once
    zip(STAGE_ORDER, (InspectData, Baseline, OverfitOneBatch, Complexify, Regularize, Tune), strict=True)
)

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
