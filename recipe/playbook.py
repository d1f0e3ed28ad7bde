"""What a finished search says about each hyperparameter, as the Deep Learning Tuning Playbook reads a study:
isolation plots (the best validation loss at each value of one parameter, the others optimised away, with the
standard error of that best trial's loss over validation samples) and parameter importances (Optuna's default
evaluator, PED-ANOVA).

Why: the playbook, "scientific, nuisance and fixed hyperparameters" and "isolation plots": a comparison between values
of the parameter under study is fair only when the nuisance parameters were optimised at each value.
"""

from __future__ import annotations

from typing import Any

from recipe.search_space import Param, scientific_values

BINS = 4  # a numeric parameter not under study is read in this many equal bins of its (log) range


def isolation(finished: list[Any], param: Param, studied: bool = False, levels: int = 4) -> dict[str, list[Any]]:
    """For each value of `param` (its choices; its studied levels; else bins of its range): the value (a bin's
    centre), the best validation loss among the trials there, that trial's standard error and how many trials."""
    if param.choices or studied:
        values = scientific_values(param, levels)
        groups = [[t for t in finished if t.params[param.name] == v] for v in values]
    else:
        values = [param.from_unit((b + 0.5) / BINS) for b in range(BINS)]
        units = [min(param.to_unit(t.params[param.name]), 1 - 1e-9) for t in finished]
        groups = [[t for t, u in zip(finished, units, strict=True) if int(u * BINS) == b] for b in range(BINS)]
    out: dict[str, list[Any]] = {"values": [], "best": [], "se": [], "trials": []}
    for value, group in zip(values, groups, strict=True):
        if group:
            top = min(group, key=lambda t: t.value)
            out["values"].append(value)
            out["best"].append(top.value)
            out["se"].append(top.user_attrs.get("val_loss_se") or 0.0)
            out["trials"].append(len(group))
    return out


def importances(study: Any, finished: list[Any], names: list[str]) -> dict[str, float]:
    """Each varied parameter's share of the variation in validation loss (Optuna's default evaluator); empty with
    fewer than four finished trials or nothing varied."""
    import optuna  # ~0.4 s to import, and only a finished study needs it

    varied = [n for n in names if len({repr(t.params.get(n)) for t in finished}) > 1]
    if len(finished) < 4 or not varied:
        return {}
    return dict(optuna.importance.get_param_importances(study, params=varied))
