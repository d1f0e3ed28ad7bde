"""After the recipe: `load_model` returns the run's model in one call, `fit_arguments` maps a config onto `fit`, the
configs a run writes run again unchanged, and `recipe train` trains the final model (recipe.model_io)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from examples.tabular import make_task as tabular_task
from recipe import (
    CheckpointError,
    ConfigError,
    NoModelError,
    Recipe,
    checkpoint,
    evaluate,
    fit,
    fit_arguments,
    load_model,
)
from recipe.check import to_jsonable
from recipe.cli import main
from recipe.config import TrainSettings
from recipe.context import model_factory
from recipe.model_io import model_record, save_model, with_ladder, with_val_in_train
from recipe.rundir import RunDir
from recipe.tuning import worker_task
from tests.test_distillation import Pairs
from tests.tiny import CLASSES, FEATURES, MLP, classification

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]
SHORT = {  # every stage, shortened: the tests check the hand-over, not the diagnostics
    "device": "cpu",
    "inspect": {"label_noise": False},
    "baseline": {"steps": 100},
    "overfit": {"batch_size": 16, "steps": 200},
    "complexify": {"epochs": 3},
    "regularize": {"max_steps": 40, "data_fractions": [], "weight_decays": [0.1], "dropouts": [0.1]},
    "tune": {"trials": 2, "seeds": 0, "ensemble": 0, "epochs": 2},
}


def reported(run_dir, name="search", key="best_val_accuracy"):
    return next(c for c in json.loads((run_dir / "checks.json").read_text()) if c["name"] == name)["value"][key]


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    """The bundled tabular config, every stage, shortened, run by `recipe run`."""
    folder = tmp_path_factory.mktemp("tabular")
    config = yaml.safe_load((ROOT / "configs" / "tabular.yaml").read_text()) | SHORT | {"run_dir": str(folder / "run")}
    (folder / "tabular.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(folder / "tabular.yaml"), "--quiet"]) == 0
    return folder / "run"


@pytest.mark.slow
def test_bundled_config_model_in_one_call_reproduces_the_reported_metric(tabular_run):
    model = load_model(tabular_run)  # the task rebuilt from the config the run recorded
    assert isinstance(model, nn.Module) and not model.training
    assert all(p.device == CPU for p in model.parameters())
    task = tabular_task()
    val = evaluate(task, model, task.val, CPU)
    record = model_record(tabular_run / "06_tune" / "best.pt")
    assert val.metric == record["val"]["metric"] and val.loss == record["val"]["loss"]  # exactly
    assert to_jsonable(val.metric) == reported(tabular_run)  # checks.json keeps 6 digits
    regularized = tabular_run / "05_regularize" / "model.pt"  # one file of the run: regularize's choice
    assert evaluate(task, load_model(regularized), task.val, CPU).metric == model_record(regularized)["val"]["metric"]


@pytest.mark.slow
def test_recipe_train_writes_the_model_load_model_returns(tabular_run, tmp_path, capsys):
    run = shutil.copytree(tabular_run, tmp_path / "run")
    best_config = run / "06_tune" / "best_config.yaml"
    assert main(["train", str(best_config), "--run-dir", str(run), "--epochs", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    record = model_record(run / "final" / "model.pt")
    assert record["train"]["epochs"] == 2 and f"accuracy {record['val']['metric']:.4g}" in printed
    task = tabular_task()
    model = load_model(run)  # the final model now comes first
    assert evaluate(task, model, task.val, CPU).metric == record["val"]["metric"]
    assert record["train"]["model"] == yaml.safe_load(best_config.read_text())["train"]["model"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["final"]["val_held_out"] and manifest["stages"]  # the run's own entries are kept
    assert [f["run"] for f in manifest["fits"] if f["stage"] == "final"] == ["train"]
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "final" for r in rows)


def test_recipe_train_on_val_trains_on_both_splits_and_says_the_figure_is_not_held_out(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"task": "tests.tiny:classification", "train": {"epochs": 40, "lr": 1e-2}}))
    for flag, run in (([], "held"), (["--train-on-val"], "all")):
        assert main(["train", str(config), "--run-dir", str(tmp_path / run), "--quiet", "--device", "cpu", *flag]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "not held out" not in printed[0] and "not held out: the model trained on train+val" in printed[1]
    held, everything = (model_record(tmp_path / run / "final" / "model.pt")["val"] for run in ("held", "all"))
    assert everything["loss"] < held["loss"]  # it saw the validation samples
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["final"]["trained_on"] == "train+val" and not manifest["final"]["val_held_out"]
    steps = {
        run: json.loads((tmp_path / run / "manifest.json").read_text())["fits"][0]["steps_per_epoch"]
        for run in ("held", "all")
    }
    assert steps["all"] > steps["held"]  # 256 + 128 samples a epoch, not 256


def test_train_and_val_join_for_datasets_too():
    task = classification()
    joined = with_val_in_train(task.replace(train=Pairs(task.train.x, task.train.y)))  # a Dataset, val tensors
    assert len(joined.train) == len(task.train) + len(task.val) and len(joined.val) == len(task.val)
    x, y = joined.train.dataset[len(task.train)]
    assert torch.equal(x, task.val.x[0]) and int(y) == int(task.val.y[0])


@pytest.mark.slow
def test_readme_after_the_recipe_commands_run(tabular_run, tmp_path, capsys):
    """The README's "After the recipe" commands, on a copy of this file's bundled run: `recipe run` is the fixture's
    (shortened, tabular for speed), so `runs/digits` stands for its run directory."""
    section = (ROOT / "README.md").read_text().split("## After the recipe", 1)[1]
    lines = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1).splitlines()
    run = shutil.copytree(tabular_run, tmp_path / "run")
    commands = [shlex.split(line.split("#")[0].replace("runs/digits", str(run))) for line in lines]
    assert [c[:2] for c in commands] == [["recipe", "run"], ["recipe", "train"], ["python", "-c"]]
    # the copy's best_config.yaml names the fixture's run_dir; --epochs given twice: the last wins
    assert main([*commands[1][1:], "--run-dir", str(run), "--epochs", "1", "--quiet"]) == 0
    exec(commands[2][2], {})
    assert "Sequential" in capsys.readouterr().out and (run / "final" / "model.pt").exists()


def test_corrupted_checkpoint_is_refused_and_its_intact_twin_loads(tmp_path):
    task = classification(model=MLP)
    rundir = RunDir(tmp_path / "run")
    rundir.create()
    best = save_model(rundir, "06_tune/best.pt", MLP(), task, TrainSettings(), {"loss": 1.0, "metric": 0.5})
    rundir.close()
    load_model(tmp_path / "run", task=task)  # intact: loads
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF
    best.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"best\.pt is corrupted.*recipe train CONFIG") as caught:
        load_model(tmp_path / "run", task=task)
    assert "\n" not in str(caught.value)


def test_a_run_that_trained_no_model_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(NoModelError, match=r"holds no trained model.*recipe train CONFIG"):
        load_model(tmp_path / "run")
    with pytest.raises(NoModelError, match="does not exist"):
        load_model(tmp_path / "missing")


# ---- a Python `Recipe.run()` -------------------------------------------------------------------------------------

LADDER = {"linear": lambda: nn.Linear(FEATURES, CLASSES), "mlp": MLP}


def python_run(tmp_path):
    task = classification(models=LADDER)
    config = {k: v for k, v in SHORT.items() if k != "device"}
    result = Recipe(task, run_dir=tmp_path / "run", stages=["complexify", "regularize", "tune"], config=config).run()
    assert (result.run_dir / "06_tune" / "best.pt").exists()
    return result.run_dir


def test_python_recipe_run_model_in_one_call(tmp_path):
    run = python_run(tmp_path)
    task = classification(models=LADDER)
    model = load_model(run, task=task)
    assert not model.training
    val = evaluate(task, model, task.val, CPU)
    assert val.metric == model_record(run / "06_tune" / "best.pt")["val"]["metric"]
    assert to_jsonable(val.metric) == reported(run)
    with pytest.raises(ConfigError, match="pass its task"):
        load_model(run)  # nothing recorded to rebuild an in-memory task from
    for earlier in ("04_complexify", "05_regularize"):  # each training stage keeps its choice
        path = run / earlier / "model.pt"
        assert evaluate(task, load_model(path, task=task), task.val, CPU).metric == model_record(path)["val"]["metric"]


# ---- a ladder written in the config ----------------------------------------------------------------------------

TASK_MODULE = """
import torch
from torch import nn
from recipe import Task


class Net(nn.Module):
    def __init__(self, hidden=8, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)


def make_task(n=240):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 2
    y = torch.arange(n + 96) % 3
    x = centres[y] + torch.randn(len(y), 8, generator=g)
    return Task(train=(x[:n], y[:n]), val=(x[n:], y[n:]), model=Net, name="ladder-in-yaml")
"""


@pytest.fixture
def ladder_project(tmp_path, monkeypatch):
    module = "ladder_task_h3"
    (tmp_path / f"{module}.py").write_text(TASK_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, module, raising=False)
    config = {"task": f"{module}:make_task", "run_dir": "runs/first", "seed": 0, "train": {"batch_size": 32}, **SHORT}
    config["complexify"] = {"epochs": 3, "ladder": {"w4": {"hidden": 4}, "w16": {"hidden": 16}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    yield tmp_path
    sys.modules.pop(module, None)


@pytest.mark.slow
def test_configs_a_run_writes_run_again_unchanged(ladder_project):
    assert main(["run", "config.yaml", "--quiet"]) == 0
    run = ladder_project / "runs" / "first"
    best_config, regularize_config = run / "06_tune" / "best_config.yaml", run / "05_regularize" / "config.yaml"
    written = yaml.safe_load(best_config.read_text())
    assert written["train"]["model"] in ("w4", "w16")
    assert written["tune"] == SHORT["tune"] and written["run_dir"] == "runs/first"  # the user's sections are kept
    assert written["complexify"]["ladder"] == {"w4": {"hidden": 4}, "w16": {"hidden": 16}}
    model = load_model(run)  # the rung rebuilt from the ladder the config wrote
    assert model.net[0].out_features == {"w4": 4, "w16": 16}[written["train"]["model"]]

    assert main(["run", str(regularize_config), "--quiet"]) == 0  # tune again, into the same run: a rung from YAML
    assert main(["run", str(best_config), "--run-dir", "runs/again", "--quiet"]) == 0

    arguments = fit_arguments(best_config, epochs=1, progress=False)  # the task rebuilt from the config's `task:`
    out = fit(**arguments)
    assert [p.shape for p in out.model.parameters()] == [p.shape for p in model.parameters()]


def test_fit_arguments_resolves_rung_and_dropout_as_the_stages_do():
    task = classification(model=lambda hidden=8, dropout=0.0: MLP())
    arguments = fit_arguments({"lr": 1e-2, "epochs": 1, "dropout": 0.2, "model": "w2"}, with_ladder(task, {"w2": {}}))
    assert "dropout" not in arguments and "model" not in arguments and arguments["lr"] == 1e-2
    assert fit(**arguments, progress=False).history  # fit takes every key
    with pytest.raises(ConfigError, match="'w3' is not a rung"):
        fit_arguments({"model": "w3"}, task)
    with pytest.raises(ConfigError, match=r"complexify\.ladder\.big: the model factory .*does not take"):
        with_ladder(task, {"big": {"width": 64}})


def test_a_record_rebuilds_searched_model_arguments_and_refuses_bare_weights(tmp_path):
    """A tune space may search the factory's own arguments (here `out`): the record keeps them, so the model rebuilds;
    weights saved without a record (an older best.pt) are refused with the fix."""
    task = classification(model=MLP)
    model = MLP(out=CLASSES, features=FEATURES)
    rundir = RunDir(tmp_path / "run")
    rundir.create()
    save_model(rundir, "06_tune/best.pt", model, task, TrainSettings(), {"loss": 1.0, "metric": 0.5}, {}, {"out": 4})
    rundir.close()
    loaded = load_model(tmp_path / "run", task=task)
    assert loaded.head.out_features == 4 and torch.equal(loaded.head.weight, model.head.weight)
    checkpoint.save_atomic(model.state_dict(), tmp_path / "run" / "06_tune" / "best.pt")
    with pytest.raises(CheckpointError, match="without the record that rebuilds the model"):
        load_model(tmp_path / "run", task=task)


def test_a_tune_worker_rebuilds_the_ladder_the_config_wrote(ladder_project):
    config = yaml.safe_load((ladder_project / "config.yaml").read_text())
    spec = {"source": {"task": config["task"], "task_args": {}, "config": config}, "label_fix": None}
    task = worker_task(spec, str(ladder_project / "worker.json"))
    assert set(task.models) == {"w4", "w16"} and model_factory(task, "w16")().net[0].out_features == 16
