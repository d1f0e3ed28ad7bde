"""YAML configs and settings dataclasses: one key, one field; unknown keys are errors that suggest the closest one.

A config file looks like::

    task: examples.digits:make_task     # the only import path: a function returning a Task
    task_args: {model: mlp}             # keyword arguments for it
    run_dir: runs/digits
    seed: 0
    device: auto
    stages: [baseline, overfit]         # default: every stage
    train: {batch_size: 64, lr: 3.0e-4} # training settings every stage starts from
    baseline: {steps: 300}              # one section per stage, mapping onto its settings dataclass
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from recipe.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class TrainSettings:
    """The training settings every stage starts from; stages refine them (the lr found, the batch size) in order.

    Args:
        batch_size: training batch size.
        lr: learning rate (AdamW; Karpathy's 3e-4 until `overfit`'s range test finds a better one).
        optimizer: "adamw", "adam" or "sgd".
        weight_decay: decoupled weight decay (forced to 0 in `baseline` and `overfit`).
        schedule: "constant", "cosine" or "linear".
        warmup_steps: linear warm-up steps.
        grad_clip: global gradient-norm clip, or None.
        precision: "auto", "fp32" or "bf16".
        compile: torch.compile the model: true, false, or "auto" (on CUDA when the run is long enough to repay it).
        threads: intra-op CPU threads: "auto" (measured per model: one thread for small models or a busy machine, the
            free cores when that is clearly faster; OMP_NUM_THREADS or torch.set_num_threads win) or a count.
        init_bias: set the final layer's bias to the log class priors / target mean ("init well").
        epochs: epochs for full training runs in later stages.
        model: the rung of the task's model ladder to train (`Task(models=...)`); None for `Task(model=...)`.
        dropout: passed to the model factory as `dropout=` when it takes that argument; None leaves its default.
        model_args: further keyword arguments for the model factory (what `tune` searched that is not a training
            setting, `{width: 128}`); each must be an argument the factory takes.
        augment: train on the task's augmented batches (`Task(augment=...)`).
        early_stopping: stop after this many epochs without a better validation loss and keep the best weights.
        checkpoint_seconds: a training run writes its resumable checkpoint at most this often (and when it ends);
            0 writes one at every epoch end and log point. `recipe run --resume` continues from the last one.
    """

    batch_size: int = 64
    lr: float = 3e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    precision: str = "auto"
    compile: bool | Literal["auto"] = "auto"
    threads: int | Literal["auto"] = "auto"
    init_bias: bool = True
    epochs: int = 10
    model: str | None = None
    dropout: float | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    augment: bool = False
    early_stopping: int | None = None
    checkpoint_seconds: float = 60.0

    def check(self) -> None:
        """Raise a `ConfigError` naming `train.<key>` for a value out of range (types were checked when read)."""
        from recipe.optim import check_settings  # optim imports torch, which `recipe --help` must not wait for

        try:
            check_settings(self.optimizer, self.schedule, self.precision, self.batch_size, self.lr, self.epochs, None)
        except ConfigError as exc:
            raise ConfigError(f"train.{exc}") from None
        for name in ("weight_decay", "warmup_steps", "checkpoint_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0.")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip={self.grad_clip} must be positive, or null for no clipping.")

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `fit` these settings fill (the rung, dropout and model arguments go into the model
        factory; the checkpoint interval goes to the run's `FitCheckpoints`)."""
        skip = ("model", "dropout", "model_args", "checkpoint_seconds")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class RunConfig:
    """The top level of a YAML config (stage sections are checked against each stage's settings).

    Args:
        task: the task as `module.path:function`, a function returning a `recipe.Task` (the only import path).
        task_args: keyword arguments for that function.
        run_dir: the run directory (default: runs/<task name>); `--run-dir` overrides it.
        device: "auto", "cpu", "cuda" or "cuda:N"; `--device` overrides it.
        seed: seeds every training run; `--seed` overrides it.
        stages: the stages to run, in order (default: all six); `--stages` overrides it.
        keep_going: run later stages after a failed check.
        figures: draw the stages' figures; false draws none (`--no-figures` too).
        loggers: tools the run directory is mirrored into after each stage: "tensorboard".
        train: the training settings every stage starts from (the `train` section below).
    """

    task: str = ""
    task_args: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    stages: list[str] | None = None
    keep_going: bool = False
    figures: bool = True
    loggers: list[str] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)


def settings_from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build the frozen dataclass `cls` from `data`, rejecting unknown keys and wrong types with a clear error."""
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, fields)}")
        values[key] = coerce(value, hints[key], f"{where}.{key}")
    return cls(**values)


def suggest(key: str, valid: typing.Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest valid key, else the list of valid keys (ends the sentence)."""
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}."


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint (int, float, bool, str, Optional, list, tuple, dict, Literal)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return coerce(value, option, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}.")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        inner = args[0] if args else Any
        items = [coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}.")
        return value
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}.") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    return value


MAX_ALIASES = 100
"""Aliases (`*name`) one config may use. An anchor may not hold an alias itself: nested aliases expand
exponentially ("billion laughs": nine levels of ten make 10^9 strings), so they are refused while the file is read."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load` that also refuses a key given twice in one mapping, and aliases nested in anchors or past
    `MAX_ALIASES`, before anything is built from them."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0
        self._open: list[str] = []  # anchors whose node is being read
        self._holding_aliases: set[str] = set()  # anchors whose node contains an alias

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            line = f"line {event.start_mark.line + 1}: " if event.start_mark else ""
            if event.anchor in self._open or event.anchor in self._holding_aliases:
                raise ConfigError(
                    f"{line}alias *{event.anchor} refers to an anchor that holds an alias itself; nested aliases "
                    "grow exponentially when expanded, so they are refused. Write the values out instead."
                )
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"{line}more than {MAX_ALIASES} aliases (*name); write the values out instead.")
            self._holding_aliases.update(self._open)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.pop()


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults`: construct_mapping merges it, and keys given here override it
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, typing.Hashable):
            continue  # construct_mapping below raises yaml's "found unhashable key" error, reported as a ConfigError
        if key in seen:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is given twice; keep one.")
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config safely (no python tags, no duplicate keys); errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist.")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "tag:yaml.org,2002:python/" in problem:  # safe_load refuses to build objects or run code
            tag = problem.rsplit("tag:yaml.org,2002:", 1)[1].rstrip("'")
            raise ConfigError(
                f"{path}{line}: not valid YAML for recipe: the tag !!{tag} is refused (configs are read with "
                "yaml.safe_load, which builds no Python objects); write a plain value instead."
            ) from None
        raise ConfigError(f"{path}{line}: not valid YAML for recipe ({problem}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping with at least a `task:` key.")
    return data


def split_config(data: dict[str, Any], stage_names: typing.Iterable[str], where: str) -> tuple[RunConfig, dict]:
    """Separate the top-level run settings from the per-stage sections, checking every key."""
    stage_names = list(stage_names)
    top = {f.name for f in dataclasses.fields(RunConfig)}
    run_values, sections = {}, {}
    for key, value in data.items():
        if key in top:
            run_values[key] = value
        elif key in stage_names:
            sections[key] = value
        else:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(key, [*top, *stage_names])}")
    run = settings_from_dict(RunConfig, run_values, where)
    settings_from_dict(TrainSettings, run.train, f"{where}: train")
    return run, sections


def effective_config(run: RunConfig, sections: dict[str, Any], stage_settings: dict[str, type], where: str) -> dict:
    """The config a run uses, every default filled: the top-level keys, `train`, and one section per stage in
    `stage_settings` (name -> settings dataclass). Plain YAML types; `recipe run` reads it back unchanged."""

    def plain(value: Any) -> Any:  # tuples (a stage's `skip`) as lists: YAML's safe dumper knows no tuple
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, list | tuple) else value

    out = dataclasses.asdict(run)
    out["stages"] = list(run.stages) if run.stages is not None else list(stage_settings)
    out["train"] = dataclasses.asdict(settings_from_dict(TrainSettings, run.train, f"{where}: train"))
    for name, cls in stage_settings.items():
        out[name] = dataclasses.asdict(settings_from_dict(cls, sections.get(name), f"{where}: {name}"))
    return plain(out)


MAX_SEED = 2**32 - 1  # a run's seed: numpy's range (torch's and python's take these too)


def check_seed(seed: Any, high: int = MAX_SEED) -> int:
    """The seed itself when it is an integer in 0..`high`; else a `ConfigError` saying so. `fit` takes up to torch's
    2**64-1, since stages derive seeds from the run's (seed + 1 + k)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= high:
        raise ConfigError(f"seed={seed!r} is not a valid seed; use an integer from 0 to {high}.")
    return seed


_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "counts": (lambda v: v >= 1, "an integer >= 1"),
    "positive": (lambda v: v > 0, "> 0"),
    "non_negative": (lambda v: v >= 0, ">= 0"),
    "fractions": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def require(settings: Any, section: str, **kinds: typing.Iterable[str]) -> None:
    """Raise a `ConfigError` naming `section.key` for the first value out of range. `kinds` maps a range in `_RANGES`
    ("counts", "positive", "non_negative", "fractions") to the keys that must lie in it. None (an optional setting
    left unset) passes; a list or tuple is checked item by item."""
    for kind, keys in kinds.items():
        inside, wanted = _RANGES[kind]
        for key in keys:
            value = getattr(settings, key)
            items = value if isinstance(value, list | tuple) else [value]
            if not all(v is None or inside(v) for v in items):
                each = " (each)" if items is value else ""
                raise ConfigError(
                    f"{section}.{key}={value!r} is out of range: it must be {wanted}{each}; fix it in the config's "
                    f"`{section}` section."
                )


def run_name(name: str) -> str:
    """`name` as one folder name under runs/: characters other than letters, digits, '.', '_' and '-' become '_'
    and leading dots are dropped, so a task named "../../etc" or "/abs" cannot place its run outside runs/."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in str(name)).lstrip(".")
    return safe[:100] or "task"


def check_run_dir(path: str | Path) -> None:
    """Fail early, creating nothing, when `path` cannot become a writable run directory: it or its nearest existing
    ancestor is a file, or that ancestor refuses writes. Called before any data is loaded or any model is built."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        reason = "it is a file" if existing == path else f"{existing} is a file"
    elif existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} refuses writes"
    else:
        return
    raise ConfigError(f"run_dir {path} is not writable ({reason}); choose another --run-dir.")
