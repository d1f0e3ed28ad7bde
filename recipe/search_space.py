"""The search space of `tune`: hyperparameters declared in the config (a range or choices), the default space
centred on what the earlier stages found, and quasi-random configurations drawn from it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from recipe.config import TrainSettings
from recipe.context import accepts, model_factory
from recipe.errors import ConfigError
from recipe.task import Task

TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainSettings)}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: a range (`low`..`high`, optionally log-scaled or integer) or `choices`."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, name: str, spec: Any) -> Param:
        where = f"tune.space.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(
                f"{where} must be a mapping like {{low: 1e-4, high: 1e-1, log: true}} or {{choices: [...]}}."
            )
        unknown = set(spec) - {"low", "high", "log", "int", "choices"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; use low, high, log, int or choices.")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"{where}.choices must be a non-empty list.")
            return cls(name, choices=tuple(spec["choices"]))
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where} needs numeric low and high (or choices).") from exc
        log = bool(spec.get("log", False))
        if not low < high or (log and low <= 0):
            raise ConfigError(
                f"{where}: need low < high{' and low > 0 on a log scale' if log else ''}, got {low}..{high}."
            )
        return cls(name, low, high, log, bool(spec.get("int", False)))

    def from_unit(self, u: float) -> Any:
        """The value at position u in [0, 1) of the range (log-uniform when `log`), or the choice it falls on."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        assert self.low is not None and self.high is not None
        if self.log:
            value = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + u * (self.high - self.low)
        value = min(max(value, self.low), self.high)  # exp(log(x)) may land a hair outside the range
        return round(value) if self.integer else value

    def to_unit(self, value: Any) -> float:
        """Where `value` lies in the range, in [0, 1] (the search-space boundary check reads this)."""
        if self.choices:
            return self.choices.index(value) / max(len(self.choices) - 1, 1)
        assert self.low is not None and self.high is not None
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def grid(self, points: int) -> list[Any]:
        if self.choices:
            return list(self.choices)
        values = [self.from_unit(i / (points - 1)) for i in range(points)]
        return list(dict.fromkeys(values))


def parse_space(space: dict[str, Any], task: Task, base: TrainSettings) -> list[Param]:
    """The searched hyperparameters; a name that is not a training setting must be an argument of the model factory."""
    params = [Param.parse(name, spec) for name, spec in space.items()]
    factory = model_factory(task, base.model)
    for p in params:
        if p.name not in TRAIN_KEYS and not accepts(factory, p.name):
            raise ConfigError(
                f"tune.space.{p.name}: neither a training setting ({', '.join(sorted(TRAIN_KEYS))}) nor an argument "
                "of the model factory; name one of those."
            )
    return params


def default_space(task: Task, base: TrainSettings) -> dict[str, Any]:
    """Ranges centred on what the earlier stages found: the rate x/÷10, weight decay x/÷100 around the kept value
    (1e-6..1e-2 when none was kept), dropout 0..0.5 when the model takes it. Weight decay stops where the highest
    rate would shrink the weights by a tenth a step (lr x wd = 0.1; past 1 a step flips their sign), the kept value
    always inside: a rate of 0.8 with a decay of 28 diverges in a few steps, a trial spent for nothing."""
    lr_high = base.lr * 10
    space: dict[str, Any] = {"lr": {"low": base.lr / 10, "high": lr_high, "log": True}}
    wd, cap = base.weight_decay, 0.1 / lr_high
    low, high = (wd / 100, max(min(wd * 100, cap), wd)) if wd > 0 else (min(1e-6, cap / 100), min(1e-2, cap))
    space["weight_decay"] = {"low": low, "high": high, "log": True}
    if accepts(model_factory(task, base.model), "dropout"):
        space["dropout"] = {"low": 0.0, "high": 0.5}
    return space


def sobol_configs(params: list[Param], n: int, seed: int) -> list[dict[str, Any]]:
    """`n` configurations from one scrambled Sobol sequence (the same for the same seed on every worker)."""
    engine = torch.quasirandom.SobolEngine(len(params), scramble=True, seed=seed)
    points = engine.draw(n).tolist()
    return [{p.name: p.from_unit(u) for p, u in zip(params, row, strict=True)} for row in points]


def scientific_values(param: Param, levels: int) -> list[Any]:
    """The values a scientific parameter is studied at: its choices, or `levels` points spread over its range."""
    return param.grid(levels)


def queued_configs(
    params: list[Param], n: int, seed: int, scientific: str | None = None, levels: int = 4
) -> list[dict[str, Any]]:
    """The first `n` configurations of the quasi-random queue (a prefix of a longer queue: replacements continue it).

    Without a scientific parameter, one scrambled Sobol sequence over every parameter. With one (the playbook's
    parameter under study), its values take turns and the other (nuisance) parameters follow one Sobol sequence of
    their own, each nuisance point tried at every scientific value: an inner search per value, compared fairly.
    """
    if scientific is None:
        return sobol_configs(params, n, seed)
    (studied,) = [p for p in params if p.name == scientific]
    values = scientific_values(studied, levels)
    nuisance = [p for p in params if p.name != scientific]
    if not nuisance:  # nothing to optimise per value: each value once
        return [{scientific: v} for v in values[:n]]
    points = sobol_configs(nuisance, math.ceil(n / len(values)), seed)
    return [{**points[i // len(values)], scientific: values[i % len(values)]} for i in range(n)]
