"""The `regularize` stage end to end: its tables, plots and config on digits, and the planted cases it must catch."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import yaml
from torch import nn

from examples import digits
from recipe import Recipe, Task
from recipe.config import TrainSettings, settings_from_dict, split_config
from recipe.stages.regularize import Regularize
from recipe.task import TRANSFORMS
from tests import tiny

QUICK = {"max_steps": 100, "weight_decays": (), "dropouts": (), "data_fractions": (), "patience": None}


def run(task: Task, tmp_path, train=None, source=None, **settings):
    return Recipe(
        task,
        run_dir=tmp_path / "run",
        stages=[Regularize(**settings)],
        device="cpu",
        config={"train": train} if train else None,
        progress=False,
        quiet=True,
        source=source,
    ).run()


def by_name(result):
    return {c.name: c for c in result.checks}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    source = {"task": "examples.digits:make_task", "task_args": {"model": "mlp"}}
    settings = {"max_steps": 150, "weight_decays": (0.01, 0.1), "dropouts": (0.1,)}
    return run(digits.make_task(), tmp_path_factory.mktemp("regularize"), {"lr": 1e-3}, source, **settings)


def test_clean_digits_neither_fails_nor_warns(digits_run):
    assert digits_run.ok
    checks = by_name(digits_run)
    assert {c.status for c in digits_run.checks} <= {"pass", "skip"}, [(c.name, c.message) for c in checks.values()]
    passing = ("more_data", "weight_decay", "dropout", "early_stopping", "first_layer", "chosen_regularization")
    augmenting = ("augmentation_invariances", "augmentation_overfit", "augmentation")  # digits' one-pixel shift
    for name in passing + augmenting:
        assert checks[name].status == "pass", (name, checks[name].message)
    assert checks["smaller_model"].status == "skip"  # complexify did not run, so no rung is chosen to step down from
    assert checks["feature_ablation"].status == "skip"  # pixels are declared an image, not tabular features


def test_digits_run_writes_the_table_the_plots_and_a_config_tune_can_run(digits_run):
    folder = digits_run.run_dir / "05_regularize"
    for name in ("train_val_gap.png", "learning_curve.png", "first_layer.png"):
        assert (folder / name).stat().st_size > 1000, name
    table = json.loads((folder / "trials.table.json").read_text())
    labels = [row[0] for row in table["rows"]]
    assert labels[:2] == ["reference", "weight_decay=0.01"] and "dropout=0.1" in labels and "early_stopping=3" in labels
    report = (digits_run.run_dir / "report.html").read_text()
    assert "<caption>trials</caption>" in report and "train_val_gap.png" in report

    config = yaml.safe_load((folder / "config.yaml").read_text())
    top, sections = split_config(config, ["tune"], "config.yaml")
    train = settings_from_dict(TrainSettings, top.train, "config.yaml: train")
    assert top.task == "examples.digits:make_task" and top.task_args == {"model": "mlp"} and top.stages == ["tune"]
    assert train.lr == pytest.approx(1e-3) and not sections
    manifest = json.loads((digits_run.run_dir / "manifest.json").read_text())
    assert manifest["train_final"] == {**manifest["train_final"], **vars(train)}
    learned = manifest["learned"]["regularize"]
    assert 0.9 < learned["val_accuracy"] <= 1 and isinstance(learned["kept"], list)


class InputIgnoringMLP(nn.Module):
    """A broken big rung: it never sees its input."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.mlp = digits.MLP(dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.zeros_like(x))


def test_smaller_rung_is_kept_when_the_big_rung_is_broken(tmp_path):
    base = digits.make_task()
    ladder = Task(
        train=(base.train.x, base.train.y),
        val=(base.val.x, base.val.y),
        models={"small": functools.partial(digits.MLP, hidden=32), "big": InputIgnoringMLP},
        image_shape=(8, 8),
    )
    result = run(ladder, tmp_path, {"model": "big", "lr": 1e-3}, **QUICK)
    check = by_name(result)["smaller_model"]
    assert check.status == "pass" and check.value["kept"] == "model=small", check.message
    assert json.loads((result.run_dir / "manifest.json").read_text())["train_final"]["model"] == "small"


def test_early_stopping_is_kept_when_long_training_overfits(tmp_path):
    overfits = {"lr": 1e-2, "epochs": 100}  # 48 samples, 100 epochs: the validation loss climbs after a few
    result = run(tiny.classification(n_train=48), tmp_path, overfits, max_steps=None, weight_decays=())
    check = by_name(result)["early_stopping"]
    assert check.value["kept"] == "early_stopping=3", check.message
    assert json.loads((result.run_dir / "manifest.json").read_text())["train_final"]["early_stopping"] == 3


@pytest.mark.parametrize("weight_decay", [300.0, 1e4])  # collapses the weights / diverges
def test_absurd_weight_decay_is_not_kept(tmp_path, weight_decay):
    result = run(digits.make_task(), tmp_path, {"lr": 1e-3}, **{**QUICK, "weight_decays": (weight_decay,)})
    check = by_name(result)["weight_decay"]
    assert result.ok and check.status == "pass" and check.value["kept"] is None, check.message
    assert json.loads((result.run_dir / "manifest.json").read_text())["train_final"]["weight_decay"] == 0.0


def on_images(transform):
    def augment(x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(-1, 1, 8, 8)
        chosen = (torch.rand(len(x), device=x.device) < 0.5).reshape(-1, 1, 1, 1)
        return torch.where(chosen, transform(images), images).reshape(len(x), -1)

    return augment


def shift_one_pixel(x: torch.Tensor) -> torch.Tensor:
    dy, dx = torch.randint(-1, 2, (2,)).tolist()
    return torch.roll(x.reshape(-1, 1, 8, 8), (dy, dx), (-2, -1)).reshape(len(x), -1)


@pytest.mark.parametrize(
    ("augment", "invariances", "failing"),
    [
        (shift_one_pixel, {"hflip": False}, None),
        (on_images(TRANSFORMS["hflip"]), {"hflip": False}, "augmentation_invariances"),
        (lambda x: torch.randn_like(x), {}, "augmentation_overfit"),
    ],
)
def test_augmentation_that_changes_labels_or_destroys_inputs_fails(tmp_path, augment, invariances, failing):
    task = digits.make_task().replace(augmentation=augment, invariances=invariances)
    result = run(task, tmp_path, {"lr": 1e-3}, **QUICK)
    checks = by_name(result)
    assert (result.run_dir / "05_regularize" / "augmentation.png").stat().st_size > 1000
    if failing is None:
        assert result.ok and checks["augmentation"].status == "pass", [c.message for c in result.failures]
    else:
        assert [c.name for c in result.failures] == [failing], [c.message for c in result.checks]
        assert checks["augmentation"].status == "skip"  # a broken augmentation is not trained with


def test_a_setup_that_diverges_fails_the_stage(tmp_path):
    result = run(tiny.classification(), tmp_path, {"lr": 1e6, "optimizer": "sgd"}, **QUICK)
    assert [c.name for c in result.failures] == ["non_finite"]


def test_sequence_task_runs_and_skips_what_does_not_apply(tmp_path):
    result = run(tiny.sequence(), tmp_path, epochs=2, max_steps=None)
    checks = by_name(result)
    assert result.ok and checks["feature_ablation"].status == "skip" and checks["first_layer"].status == "skip"
    assert checks["chosen_regularization"].status == "pass"
    table = json.loads((result.run_dir / "05_regularize" / "trials.table.json").read_text())
    assert table["rows"][0][:3] == ["reference", 2, 2]  # regularize.epochs overrides train.epochs: 2 epochs of 1 step
