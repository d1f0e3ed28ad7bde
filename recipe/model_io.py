"""After the recipe: the trained model in one call, and the config that trains it again.

A run directory keeps the model each training stage chose as a *model record*: its weights with what rebuilds the
architecture (the ladder rung, its arguments, dropout and any searched model-factory arguments), the training
settings, where the task came from and the validation score it reached. From it:

- `load_model(run_dir)` returns the module, built by the task's own factory, weights loaded, in eval mode;
- `fit_arguments(config, task)` maps a config's training settings onto `fit`'s keyword arguments, the rung and
  dropout resolved into the task's model factory as every stage resolves them;
- `train_model` is `recipe train CONFIG`: the final, longer training run, whose weights `load_model` then returns;
- `runnable_config` is the config a stage writes (best_config.yaml, 05_regularize/config.yaml): the user's own,
  every section kept, with the settings the run chose, so `recipe run` and `recipe train` take it unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from recipe import checkpoint
from recipe.check import to_jsonable
from recipe.config import RunConfig, TrainSettings, load_yaml, settings_from_dict
from recipe.context import model_factory
from recipe.data import DatasetSplit, TensorSplit
from recipe.errors import CheckpointError, ConfigError, NoModelError
from recipe.evaluation import Evaluation, evaluate
from recipe.loading import load_task
from recipe.loop import FitResult, fit
from recipe.rundir import RunDir
from recipe.task import Task

FORMAT = "recipe.model/1"
MODEL_FILES = (
    "final/model.pt",
    "06_tune/distilled.pt",
    "06_tune/best.pt",
    "05_regularize/model.pt",
    "04_complexify/model.pt",
)
"""Where a run directory keeps its models, the one `load_model` returns first: `recipe train`'s, tune's distilled
model (written only when it beat the handed-on setup beyond seed noise), tune's best trial (written only when it beat
the setup tune started from), regularize's chosen setup, complexify's chosen rung (trained without regularisation)."""


def with_ladder(task: Task, ladder: Mapping[str, Any] | None) -> Task:
    """The task whose ladder (`Task.models`) is the config's `complexify.ladder`: each rung the task's own factory
    with those keyword arguments. A task that brings a ladder of its own, or no ladder given, is returned as is."""
    if not ladder or len(task.models) > 1:
        return task
    check_ladder(task, ladder)
    return task.replace(models={name: functools.partial(task.model, **kwargs) for name, kwargs in ladder.items()})


def check_ladder(task: Task, ladder: Any) -> None:
    """Each rung of a config's `complexify.ladder` must give arguments the task's model factory takes: refused
    before any training, naming the rung, the arguments the factory does not take and those it does."""
    if not isinstance(ladder, Mapping):
        raise ConfigError(f"complexify.ladder must map rung names to model arguments, got {ladder!r}.")
    for rung, kwargs in ladder.items():
        if not isinstance(kwargs, Mapping):
            raise ConfigError(f"complexify.ladder.{rung} must map model arguments to values, got {kwargs!r}.")
    try:
        signature = inspect.signature(task.model)
    except (TypeError, ValueError):
        return  # no inspectable signature: the rung's first build will tell
    for rung, kwargs in ladder.items():
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            names = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            unknown = [k for k in kwargs if k not in signature.parameters] or sorted(kwargs)
            raise ConfigError(
                f"complexify.ladder.{rung}: the model factory {getattr(task.model, '__name__', 'model')}"
                f"{signature} does not take {unknown} ({exc}); use its arguments ({', '.join(names)})."
            ) from None


def fit_arguments(config: str | Path | Mapping[str, Any] | TrainSettings, task: Task | None = None, **overrides: Any):
    """`fit`'s keyword arguments, `task` among them, for a config's training settings.

    `fit(**fit_arguments("runs/digits/06_tune/best_config.yaml", epochs=50))` trains what the config names. The rung
    (`train.model`: a rung of `Task(models=...)` or of the config's `complexify.ladder`), `train.dropout` and
    `train.model_args` (tune's searched model arguments) become the task's model factory, as in every stage; the
    other training settings are `fit` arguments of the same name; a whole config also gives its `seed` and `device`.

    Args:
        config: a YAML config (its path or mapping), its `train` mapping alone, or a `TrainSettings`.
        task: the task; None rebuilds it from the config's `task:` and `task_args`.
        overrides: `fit` arguments that win over the config's (epochs=50, device="cuda", progress=False).
    """
    data, settings, run = _read(config)
    if task is None:
        if run is None or not run.task:
            raise ConfigError("fit_arguments: pass task=, or a whole config whose `task:` names the task function.")
        task = load_task(run.task, run.task_args, str(config))
    task = with_ladder(task, _ladder(data))
    task = task.replace(model=model_factory(task, settings.model, settings.dropout, settings.model_args))
    placed = {"seed": run.seed, "device": run.device} if run is not None else {}
    size = min(settings.batch_size, len(task.train))
    return {**settings.fit_kwargs(), **placed, "batch_size": size, "task": task, **overrides}


def _read(config: Any) -> tuple[dict[str, Any], TrainSettings, RunConfig | None]:
    """(the config's mapping, its training settings, its top level when it is a whole config)."""
    if isinstance(config, TrainSettings):
        return {}, config, None
    data = load_yaml(config) if isinstance(config, str | Path) else dict(config)
    where = str(config) if isinstance(config, str | Path) else "config"
    whole = "train" in data or "task" in data
    settings = settings_from_dict(TrainSettings, data.get("train") if whole else data, f"{where}: train")
    settings.check()
    if not whole:
        return {}, settings, None
    top = {f.name for f in dataclasses.fields(RunConfig)}
    return data, settings, settings_from_dict(RunConfig, {k: v for k, v in data.items() if k in top}, where)


def runnable_config(source: Mapping[str, Any], train: TrainSettings, **changes: Any) -> dict[str, Any]:
    """The config a stage hands on: the user's own (every section kept: a ladder, tune settings, the stages) with the
    training settings the run chose (full precision) and `changes` (the run directory, the stages to run next).
    Without a `task` (a run started from Python) it lists the training settings only."""
    config = dict(source.get("config") or {k: source[k] for k in ("task", "task_args") if source.get(k)})
    config.update(train=to_jsonable(dataclasses.asdict(train), exact=True), **to_jsonable(changes, exact=True))
    return config


# ---- model records -------------------------------------------------------------------------------------------------


def save_model(
    rundir: RunDir,
    relative: str,
    weights: nn.Module | Mapping[str, torch.Tensor],
    task: Task,
    train: TrainSettings,
    scored: Evaluation | Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
    model_args: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model record at `rundir/relative` (atomically, with its sha256): the weights, what rebuilds the
    architecture (rung, its arguments, dropout, searched `model_args`), the settings, where the task came from, and
    the validation loss and metric it `scored`."""
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    if isinstance(scored, Evaluation):
        scored = {"loss": scored.loss, "metric": scored.metric}
    factory = task.models.get(train.model) if train.model is not None else None
    rung_args = None  # a rung built from the task's factory with arguments (a config's ladder): rebuildable anywhere
    if isinstance(factory, functools.partial) and factory.func is task.model and not factory.args:
        rung_args = to_jsonable(dict(factory.keywords), exact=True)
    record = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in state.items()},
        "train": to_jsonable(dataclasses.asdict(train), exact=True),
        "rung_args": rung_args,
        "model_args": to_jsonable(dict(model_args or {}), exact=True),
        "source": to_jsonable({k: v for k, v in (source or {}).items() if k in ("task", "task_args")}, exact=True),
        "task_name": task.name,
        "val": to_jsonable({**scored, "metric_name": task.metric_name}, exact=True),
    }
    for name in (relative, relative + ".sha256"):
        rundir.record(name)  # recipe's file: a later run may replace it, and nothing else is touched
    return checkpoint.save_atomic(record, rundir.path / relative)


def model_record(path: str | Path) -> dict[str, Any]:
    """Read a model record, verified against its recorded sha256; a `CheckpointError` names the file and the fix."""
    path = Path(path)
    try:
        record = checkpoint.load(path)
    except CheckpointError as exc:
        raise CheckpointError(f"load_model refuses it: {exc} Run that stage again, or `recipe train CONFIG`.") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} holds weights without the record that rebuilds the model (an older recipe wrote it); run that "
            "stage again, or `recipe train CONFIG`."
        )
    return record


def find_model(run_dir: str | Path) -> Path:
    """The model `load_model` returns: the first of `MODEL_FILES` the run directory holds."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    for name in MODEL_FILES:
        if (run_dir / name).exists():
            return run_dir / name
    where = "does not exist" if not run_dir.exists() else f"holds no trained model (none of {', '.join(MODEL_FILES)})"
    raise NoModelError(
        f"{run_dir} {where}: run the recipe through `complexify` or later there, or `recipe train CONFIG "
        f"--run-dir {run_dir}`."
    )


def load_model(run_dir: str | Path, task: Task | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The trained model of a finished run: built by the task's factory with the chosen rung and its arguments, the
    best weights loaded, in eval mode, on `device`.

    Args:
        run_dir: the run directory (or one model file in it); `recipe train`'s model first, else tune's distilled
            model, else tune's best trial, else regularize's choice, else complexify's (`MODEL_FILES`).
        task: the task, for a run started from Python; None rebuilds it from the `task:` of the config that ran.

    Raises:
        NoModelError: the run never trained a model.
        CheckpointError: the model file fails its integrity check, or does not fit the task's model.
    """
    path = find_model(run_dir)
    record = model_record(path)
    if task is None:
        source = record.get("source") or {}
        if not source.get("task"):
            raise ConfigError(
                f"{path} comes from a run started from Python: pass its task, load_model(..., task=task)."
            )
        task = load_task(source["task"], source.get("task_args") or {}, str(path))
    model = build_model(task, record)
    try:
        model.load_state_dict(record["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit the model the task builds ({checkpoint.one_line(exc)}); pass the task the run "
            "trained (load_model(..., task=task))."
        ) from exc
    return model.to(device).eval()


def build_model(task: Task, record: Mapping[str, Any]) -> nn.Module:
    """A fresh module of the architecture a model record names (the rung, its arguments, dropout, model_args)."""
    train = settings_from_dict(TrainSettings, dict(record["train"]), "model record: train")
    if train.model is not None and train.model not in task.models and record.get("rung_args") is not None:
        task = task.replace(models={**task.models, train.model: functools.partial(task.model, **record["rung_args"])})
    factory = model_factory(task, train.model, train.dropout, train.model_args)
    if record.get("model_args"):
        factory = functools.partial(factory, **record["model_args"])
    return task.replace(model=factory).make_model()


# ---- the final training run (`recipe train`) -------------------------------------------------------------------


def train_model(
    config: str | Path | Mapping[str, Any],
    task: Task,
    run_dir: str | Path,
    train_on_val: bool = False,
    **overrides: Any,
) -> tuple[Path, Evaluation]:
    """Train the config's settings (`overrides`: epochs, device, seed, progress), evaluate on validation and write
    `run_dir/final/model.pt`, which `load_model(run_dir)` returns from then on; the run's rows go to metrics.jsonl
    (stage `final`) and its entry to manifest.json (`final`, and one in `fits`).

    With `train_on_val`, the training split is the training and validation samples together (the usual last step,
    once the settings are chosen): the validation figures returned are then not held out, and early stopping, which
    would judge on samples it trains on, is off."""
    data, settings, run = _read(config)
    if train_on_val:
        overrides = {"early_stopping": None, **overrides}
    arguments = fit_arguments(config, task, **overrides)
    trained = arguments["task"]
    if train_on_val:
        arguments["task"] = with_val_in_train(trained)
    rundir = RunDir(run_dir)
    rundir.create()
    try:
        result = fit(**arguments, log=rundir.metrics_log("final", "train"))
        device = next(result.model.parameters()).device
        val = evaluate(trained, result.model, trained.val, device)
        settings = dataclasses.replace(settings, epochs=arguments["epochs"], early_stopping=arguments["early_stopping"])
        source = {"task": run.task, "task_args": run.task_args} if run is not None else {}
        laddered = with_ladder(task, _ladder(data))  # rung_args recorded: the model rebuilds from the record alone
        path = save_model(rundir, "final/model.pt", result.model, laddered, settings, val, source)
        _record_final(rundir, result, val, task.metric_name, settings, train_on_val)
    finally:
        rundir.close()
    return path, val


def _record_final(
    rundir: RunDir, result: FitResult, val: Evaluation, metric: str, settings: TrainSettings, train_on_val: bool
) -> None:
    """manifest.json's `final` entry (what trained on what, and whether its validation figure is held out) and its
    `fits` entry, replacing an earlier final run's."""
    final = {
        "model": "final/model.pt",
        "trained_on": "train+val" if train_on_val else "train",
        "val_held_out": not train_on_val,
        "val_loss": val.loss,
        f"val_{metric}": val.metric,
        "train": dataclasses.asdict(settings),
    }
    manifest = rundir.read_manifest()
    fits = [f for f in manifest.get("fits", []) if f.get("stage") != "final"]
    fits.append({"stage": "final", "run": "train", "seconds": round(result.seconds, 3), **result.setup})
    rundir.write_manifest({**manifest, "final": final, "fits": fits})


def with_val_in_train(task: Task) -> Task:
    """The task whose training split holds its training and validation samples together (validation unchanged)."""
    a, b = task.train, task.val
    if isinstance(a, TensorSplit) and isinstance(b, TensorSplit):
        return task.replace(train=(torch.cat([a.x, b.x.to(a.x.device)]), torch.cat([a.y, b.y.to(a.y.device)])))
    parts = [s.dataset if isinstance(s, DatasetSplit) else TensorDataset(s.x, s.y) for s in (a, b)]
    like = a if isinstance(a, DatasetSplit) else b
    assert isinstance(like, DatasetSplit)
    joined = DatasetSplit(ConcatDataset(parts), "train", like.collate_fn, like.num_workers, like.worker_init_fn)
    return task.replace(train=joined)


def _ladder(data: Mapping[str, Any]) -> Any:
    return (data.get("complexify") or {}).get("ladder")
