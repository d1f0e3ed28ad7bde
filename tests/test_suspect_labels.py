"""`regularize` acting on inspect's suspect labels: trained without them (and relabelled), kept only when validation
improves beyond noise; planted 15% label noise is dropped, the clean twin keeps its labels."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Dataset

from examples import digits
from recipe import InspectData, Recipe, Task
from recipe.context import Context
from recipe.diagnostics.suspect_labels import apply_label_fix, label_fixes
from recipe.rundir import RunDir
from recipe.stages.regularize import Regularize
from recipe.tuning import worker_task
from tests import tiny

QUICK = {"max_steps": 150, "weight_decays": (), "dropouts": (), "data_fractions": (), "patience": None}


class PlantedInspect(InspectData):
    """Stands in for inspect's label scan (tested in test_diagnostics_label_noise, seconds on digits): hands on the
    samples whose labels were moved plus as many clean ones wrongly doubted, under the name inspect uses."""

    def __init__(self, moved: list[int], given: torch.Tensor):
        super().__init__()
        self.moved, self.given = moved, given

    def run(self, ctx: Context) -> list:
        doubted = [i for i in range(0, len(self.given), 97) if i not in self.moved][:5]  # false suspects
        indices = self.moved + doubted
        predicted = [int(self.given[i]) for i in self.moved] + [(int(self.given[i]) + 1) % 10 for i in doubted]
        ctx.learn(label_issues={"indices": indices, "predicted": predicted})
        return []


def noisy(task: Task, rate: float, seed: int = 0) -> tuple[Task, list[int]]:
    """The planted bug: `rate` of the training labels moved to another class at random; and the rows moved."""
    y = task.train.y.clone()
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(y), generator=g)[: int(rate * len(y))]
    y[rows] = (y[rows] + torch.randint(1, 10, (len(rows),), generator=g)) % 10
    return task.replace(train=(task.train.x, y)), rows.tolist()


def run(task: Task, tmp_path, stages):
    config = {"train": {"lr": 1e-3}}
    return Recipe(task, run_dir=tmp_path, stages=stages, device="cpu", config=config, progress=False, quiet=True).run()


@pytest.mark.parametrize("rate", [0.15, 0.0])
def test_planted_label_noise_is_dropped_and_the_clean_twin_is_left_alone(tmp_path, rate):
    clean = digits.make_task().replace(augmentation=None)  # its checks are regularize's others, not these
    task, moved = noisy(clean, rate)
    result = run(task, tmp_path / "run", [PlantedInspect(moved, clean.train.y), Regularize(**QUICK)])
    checks = {c.name: c for c in result.checks}
    check = checks["suspect_labels"]
    assert result.ok and check.status == "pass", check.message
    learned = json.loads((tmp_path / "run" / "manifest.json").read_text())["learned"]["regularize"]
    if rate:
        assert check.value["kept"].endswith("suspect labels") and "Validation accuracy" in check.message
        assert learned["label_fix"]["action"] in ("drop", "relabel") and learned["kept"] == [check.value["kept"]]
        gain = check.value["reference_val_loss"] - check.value["trials"][check.value["kept"]]
        assert gain > 0.05  # measured: 0.39 -> 0.17
    else:
        assert check.value["kept"] is None and "label_fix" not in learned
    table = json.loads((tmp_path / "run" / "05_regularize" / "trials.table.json").read_text())
    assert any(str(row[0]).startswith("drop ") for row in table["rows"])  # the report's trials table shows them


def test_without_inspect_there_is_nothing_to_act_on(tmp_path):
    result = run(tiny.classification(), tmp_path / "run", [Regularize(**QUICK)])
    check = next(c for c in result.checks if c.name == "suspect_labels")
    assert check.status == "skip" and "no suspect labels" in check.message


class Pairs(Dataset):
    """Another kind of task: a Dataset of pairs, which can drop samples but is not relabelled in place."""

    def __init__(self, n: int, seed: int):
        self.x, self.y = tiny.blobs(n, seed)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def test_label_fixes_drop_or_relabel_and_a_kept_fix_is_restored(tmp_path):
    tensors = tiny.classification()
    suspects = {"indices": [3, 0, 7], "predicted": [1, 2, 3]}
    fixes = label_fixes(tensors, suspects)
    dropped, relabelled = fixes["drop 3 suspect labels"], fixes["relabel 3 suspect labels"]
    assert len(dropped.train) == len(tensors.train) - 3 and len(dropped.val) == len(tensors.val)
    assert relabelled.train.y[[3, 0, 7]].tolist() == [1, 2, 3] and len(relabelled.train) == len(tensors.train)
    changed = (relabelled.train.y != tensors.train.y).nonzero().flatten().tolist()
    assert set(changed) <= {0, 3, 7}
    dataset = Task(train=Pairs(64, 0), val=Pairs(32, 1), model=tiny.MLP, num_classes=tiny.CLASSES)
    assert list(label_fixes(dataset, suspects)) == ["drop 3 suspect labels"]
    ctx = Context(tensors, torch.device("cpu"), 0, RunDir(tmp_path), stage="regularize")
    ctx.learn(label_fix={"action": "relabel", **suspects})
    Regularize().restore(ctx)  # a resumed run trains the later stages on the same changed split
    assert torch.equal(ctx.task.train.y, apply_label_fix(tensors, {"action": "relabel", **suspects}).train.y)
    assert ctx.task.train.y[[3, 0, 7]].tolist() == [1, 2, 3]


def test_tune_workers_train_on_the_split_regularize_kept(tmp_path):
    spec = {"source": {"task": "tests.tiny:classification"}, "label_fix": {"action": "drop", "indices": [0, 5, 9]}}
    assert len(worker_task(spec, str(tmp_path / "spec.json")).train) == len(tiny.classification().train) - 3
    assert len(worker_task({**spec, "label_fix": None}, "spec.json").train) == len(tiny.classification().train)
