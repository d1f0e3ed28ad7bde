"""Distillation: a student trained on an ensemble's soft targets is kept only when it beats the single model beyond
noise; planted (noisy labels, a strong ensemble) and clean (a teacher no better than the student) cases."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from recipe import NoModelError, Recipe, Tune, evaluate, load_model
from recipe.config import TrainSettings
from recipe.context import Context
from recipe.diagnostics.search import distillation
from recipe.distillation import compare, distillable, with_soft_targets
from recipe.loop import fit
from recipe.rundir import RunDir
from recipe.stages import top_trials
from tests import tiny

CPU = torch.device("cpu")
SETTINGS = {"epochs": 40, "batch_size": 32, "lr": 3e-3, "device": "cpu", "progress": False}


def noisy_labels(share: float) -> tiny.Task:
    """tiny.classification with `share` of the training labels replaced by random classes (validation clean)."""
    task = tiny.classification(n_train=128)
    x, y = task.train.x, task.train.y.clone()
    g = torch.Generator().manual_seed(5)
    flip = torch.rand(len(y), generator=g) < share
    y[flip] = torch.randint(tiny.CLASSES, (int(flip.sum()),), generator=g)
    return task.replace(train=(x, y))


def oracle() -> torch.nn.Module:
    """A strong teacher: the linear map that generates the labels (what a large ensemble approaches)."""
    model = torch.nn.Linear(tiny.FEATURES, tiny.CLASSES, bias=False)
    w = torch.randn(tiny.FEATURES, tiny.CLASSES, generator=torch.Generator().manual_seed(99))
    model.weight.data = 2 * w.T
    return model


def judged(task, members, seed_losses=None):
    student = fit(with_soft_targets(task, members, CPU), seed=0, **SETTINGS).model
    single = fit(task, seed=0, **SETTINGS).model
    gain, noise, mine, theirs = compare(task, student, single, CPU, seed_losses)
    return distillation(gain, noise, {"val_loss": mine.loss, "val_metric": mine.metric},
                        {"val_loss": theirs.loss, "val_metric": theirs.metric}, "accuracy")  # fmt: skip


def test_a_strong_ensemble_distilled_into_a_small_student_is_kept():
    check = judged(noisy_labels(0.4), [oracle(), oracle()])
    assert check.status == "pass" and check.value["kept"], check.message
    assert check.value["student"]["val_metric"] > check.value["single"]["val_metric"]


def test_a_teacher_worse_than_the_student_is_not_kept_and_never_fails():
    task = tiny.classification(n_train=128)
    weak = {**SETTINGS, "epochs": 1, "lr": 1e-4}  # barely trained: soft targets close to uniform
    members = [fit(task, seed=s, **weak).model for s in (1, 2)]
    check = judged(task, members)
    assert check.status == "pass" and not check.value["kept"], check.message
    assert check.value["gain"] < 2 * check.value["noise"]


class Pairs(Dataset):
    """A plain map-style Dataset of (x, y) pairs: the DataLoader path, not the in-memory tensors."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_soft_targets_ride_with_a_dataset_split_too():
    task = tiny.classification(n_train=64)
    as_dataset = task.replace(train=Pairs(task.train.x, task.train.y), val=Pairs(task.val.x, task.val.y))
    student_task = with_soft_targets(as_dataset, [oracle()], CPU)
    _, row = student_task.train.dataset[0]
    assert row.shape == (tiny.CLASSES,) and int(row.argmax()) == int(task.train.y[0])
    assert fit(student_task, seed=0, **{**SETTINGS, "epochs": 2}).model is not None


def test_distillation_skips_where_soft_targets_do_not_apply(tmp_path):
    assert "classification" in distillable(tiny.regression())
    assert "one class per sample" not in (distillable(tiny.classification()) or "")
    result = Recipe(
        tiny.regression(), run_dir=tmp_path, stages=[Tune(trials=4, epochs=2, seeds=0)], device="cpu",
        progress=False, quiet=True,
    ).run()  # fmt: skip
    check = next(c for c in result.checks if c.name == "distillation")
    assert check.status == "skip" and "classification" in check.message


def distilled_in_a_run(tmp_path, task, members):
    """`top_trials.distil` in a tune stage of its own run directory, the handed-on setup being the incoming one."""
    rundir = RunDir(tmp_path)
    rundir.create()
    ctx = Context(task, CPU, 0, rundir, TrainSettings(batch_size=32, lr=3e-3), stage="tune", progress=False)
    search = Tune(epochs=40)._search(ctx)
    single = fit(task, seed=0, **SETTINGS).model
    try:
        return top_trials.distil(ctx, search, {}, single, None, members, 2.0)
    finally:
        rundir.close()


def test_a_kept_distilled_model_is_what_load_model_returns(tmp_path):
    task = noisy_labels(0.4)
    check = distilled_in_a_run(tmp_path, task, [oracle(), oracle()])
    assert check.value["kept"], check.message
    model = load_model(tmp_path, task=task)  # 06_tune/distilled.pt, a model record like best.pt
    assert evaluate(task, model, task.val, CPU).loss == pytest.approx(check.value["student"]["val_loss"], rel=1e-6)


def test_a_distilled_model_not_kept_is_not_written(tmp_path):
    task = tiny.classification(n_train=128)
    weak = {**SETTINGS, "epochs": 1, "lr": 1e-4}
    check = distilled_in_a_run(tmp_path, task, [fit(task, seed=s, **weak).model for s in (1, 2)])
    assert not check.value["kept"] and not (tmp_path / "06_tune" / "distilled.pt").exists()
    with pytest.raises(NoModelError):
        load_model(tmp_path, task=task)
