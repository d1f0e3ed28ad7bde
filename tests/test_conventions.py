"""The conventions a PyTorch user expects (issue 17 item 6): a DataLoader where a Dataset goes, class weights that
keep the baseline checks meaningful, extra metrics beside the loss, and a command line that starts fast, tells its
version and prints the config it would run."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn.metrics import f1_score
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, WeightedRandomSampler

from recipe import Recipe, TaskError, __version__, cli, fit
from recipe.data import DatasetSplit, TensorSplit
from recipe.diagnostics.baselines import trivial_baselines
from recipe.diagnostics.init import init_bias, loss_at_init
from recipe.evaluation import constant_loss, evaluate
from recipe.loop import FitResult
from recipe.loss_log import LossLog
from recipe.report import validation_table
from recipe.stages import STAGES
from recipe.task import IGNORE_INDEX, Task
from tests import new_kinds as nk
from tests import tiny

CPU = torch.device("cpu")

# ---- a DataLoader where a Dataset goes ------------------------------------------------------------------------------


class Sentences(Dataset):
    """Token sequences of varying length (1..9); the label is whether token 3 occurs. default_collate cannot stack
    them: only the user's padding collate_fn can."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            tokens = torch.randint(1, 6, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g)
            self.items.append((tokens, int((tokens == 3).any())))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def pad(samples):
    tokens = nn.utils.rnn.pad_sequence([s[0] for s in samples], batch_first=True, padding_value=0)
    return tokens, torch.tensor([s[1] for s in samples])


class BagOfTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(6, 8, padding_idx=0), nn.Linear(8, 2)

    def forward(self, tokens):  # the max over real tokens only: padding never reaches the output
        hidden = self.embed(tokens).masked_fill((tokens == 0).unsqueeze(-1), -1e4)
        return self.head(hidden.max(1).values)


def test_a_dataloader_over_tensors_keeps_the_in_memory_path():
    x, y = tiny.blobs(64, 0)
    task = Task(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), DataLoader(TensorDataset(x, y)), tiny.MLP)
    assert isinstance(task.train, TensorSplit) and isinstance(task.val, TensorSplit)
    assert torch.equal(task.batch("train", [3, 5])[1], y[[3, 5]])


def test_a_dataloader_keeps_its_collate_fn_and_workers_through_training_and_subsets():
    train = DataLoader(Sentences(96, 0), batch_size=16, collate_fn=pad, num_workers=2)
    task = Task(train, DataLoader(Sentences(48, 1), collate_fn=pad), BagOfTokens, pad_id=0)
    assert isinstance(task.train, DatasetSplit) and task.train.num_workers == 2 and task.val.collate_fn is pad
    assert task.subset("train", [0, 1, 2], held=True).train.collate_fn is pad  # the diagnostics' fixed batches
    out = fit(task, epochs=None, max_steps=6, batch_size=16, num_workers=0, progress=False, device="cpu")
    assert math.isfinite(out.history[-1]["val_loss"])


def test_a_dataloader_over_an_iterable_dataset_is_refused_with_the_one_line_alternative():
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(*tiny.blobs(32, 0), strict=True))

    loader = DataLoader(Stream(), batch_size=8)
    with pytest.raises(TaskError, match=r"IterableDataset.*`train=list\(loader.dataset\)`"):
        Task(loader, tiny.blobs(32, 1), tiny.MLP)
    task = Task(list(loader.dataset), tiny.blobs(32, 1), tiny.MLP)  # the alternative, as the message writes it
    assert len(task.train) == 32 and task.kind == "classification"


def test_a_dataloader_whose_sampler_the_recipe_would_drop_is_refused():
    x, y = tiny.blobs(32, 0)
    sampler = WeightedRandomSampler(torch.ones(32), 32)
    with pytest.raises(TaskError, match=r"WeightedRandomSampler.*`train=loader.dataset`.*class_weights"):
        Task(DataLoader(TensorDataset(x, y), sampler=sampler), tiny.blobs(32, 1), tiny.MLP)


# ---- class weights ---------------------------------------------------------------------------------------------------


def imbalanced(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blobs with graded class shares, about 62/25/9/4% (class c kept at rate KEEP[c]); still a function of x."""
    x, y = tiny.blobs(n, seed)
    keep = torch.rand(len(y), generator=torch.Generator().manual_seed(seed)) < torch.tensor(KEEP)[y]
    return x[keep], y[keep]


KEEP = [1.0, 0.4, 0.15, 0.06]


def weighted_task(weights="balanced", **kwargs) -> Task:
    return Task(imbalanced(2000, 0), imbalanced(800, 1), tiny.MLP, class_weights=weights, **kwargs)


def test_balanced_weights_match_scikit_learn():
    task = weighted_task()
    y = task.targets("train").numpy()
    reference = compute_class_weight("balanced", classes=np.arange(tiny.CLASSES), y=y)
    assert torch.allclose(task.class_weights, torch.tensor(reference, dtype=torch.float32), rtol=1e-5)


def test_weighted_loss_is_pytorchs_weighted_cross_entropy_over_the_whole_split():
    task = weighted_task()
    model = tiny.MLP().eval()
    x, y = task.val.x, task.val.y
    with torch.no_grad():
        reference = F.cross_entropy(model(x), y, weight=task.class_weights)
        assert float(task.compute_loss(model(x), y)) == pytest.approx(float(reference), rel=1e-5)
    ev = evaluate(task, model, task.val, CPU, batch_size=7)  # batches of 7: the split's mean, not a batch mean
    assert ev.loss == pytest.approx(float(reference), rel=1e-5)
    assert float(ev.per_sample_loss.mean()) == pytest.approx(ev.loss, rel=1e-5)
    unweighted = evaluate(task.replace(class_weights=None), model, task.val, CPU)
    assert abs(unweighted.loss - ev.loss) > 1e-3 and unweighted.metric == ev.metric  # the metric stays unweighted


def test_weighted_constant_loss_is_the_best_constant_found_by_descent():
    task = weighted_task([1.0, 3.0, 0.5, 2.0])
    y = task.targets("train")
    logits = torch.zeros(tiny.CLASSES, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = task.compute_loss(logits.expand(len(y), -1), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert constant_loss(task, y) == pytest.approx(float(closure().detach()), abs=1e-4)


def test_weighted_task_keeps_the_baseline_checks_that_need_the_loss_form():
    task = weighted_task()
    batch = task.sample_batch("train", 64, seed=0)
    torch.manual_seed(0)
    at_init = loss_at_init(task.make_model(), task, batch)
    assert at_init.status == "pass" and at_init.expected == pytest.approx(math.log(tiny.CLASSES), rel=1e-5)
    check, figures = trivial_baselines(task)
    assert check.status == "pass"
    # balanced weights make the weighted prior uniform: the constant's weighted loss is ln C (up to smoothing)
    assert figures["prior_loss"] == pytest.approx(math.log(tiny.CLASSES), abs=0.05)
    yva, w = task.targets("val"), task.class_weights
    counts = (torch.bincount(task.targets("train"), minlength=tiny.CLASSES).float() + 1) * w
    by_hand = -(w[yva] * (counts / counts.sum()).log()[yva]).sum() / w[yva].sum()
    assert figures["prior_loss"] == pytest.approx(float(by_hand), rel=1e-5)
    assert init_bias(task, task.make_model, batch, CPU).status == "pass"


def test_class_weights_on_a_padded_tagger_weigh_only_scored_positions():
    task = nk.token_tagging()  # a kind we do not ship: (B, T) tags with padding left unscored
    task = Task(
        task.train, task.val, nk.Tagger, kind="sequence", num_classes=nk.TAGS, pad_id=nk.PAD, class_weights=[0.5, 1, 3]
    )
    model = nk.Tagger().eval()
    with torch.no_grad():
        out, y = model(task.val.x), task.val.y
        reference = F.cross_entropy(out.transpose(1, 2), y, weight=task.class_weights, ignore_index=IGNORE_INDEX)
        assert float(task.compute_loss(out, y)) == pytest.approx(float(reference), rel=1e-5)
    at_init = loss_at_init(model, task, task.sample_batch("train", 32, seed=0))
    assert at_init.expected == pytest.approx(math.log(nk.TAGS), rel=1e-5) and at_init.status == "pass"
    assert trivial_baselines(task)[0].status == "pass"


@pytest.mark.parametrize(
    ("weights", "status"),
    [
        ("balanced", "pass"),  # the fixed twin
        ("reversed", "warn"),  # planted: balanced weights listed in the reverse class order
    ],
)
def test_class_weights_in_the_wrong_order_are_caught_by_init_bias(weights, status):
    balanced = weighted_task().class_weights
    task = weighted_task(balanced.flip(0).tolist() if weights == "reversed" else "balanced")
    check = init_bias(task, task.make_model, task.sample_batch("train", 64, seed=0), CPU)
    assert check.status == status, check.message
    if status == "warn":
        assert "class-id order" in check.message


def test_class_weights_on_balanced_labels_are_left_alone():
    x, y = tiny.blobs(600, 0)  # balanced: any weights are a cost choice, not an inversion
    task = Task((x[:500], y[:500]), (x[500:], y[500:]), tiny.MLP, class_weights=[1.0, 4.0, 1.0, 1.0])
    check = init_bias(task, task.make_model, task.sample_batch("train", 64, seed=0), CPU)
    assert "class-id order" not in check.message and check.value["label_prior_gap_nats"] < 0.1


def test_a_weighted_imbalanced_task_passes_the_baseline_stage(tmp_path):
    task = weighted_task(name="weighted")
    result = Recipe(task, run_dir=tmp_path / "run", stages=["baseline"], config={"baseline": {"steps": 150}}).run()
    status = {c.name: c.status for c in result.checks}
    for name in ("loss_at_init", "init_bias", "trivial_baselines", "simple_model", "input_independent"):
        assert status[name] == "pass", (name, [c.message for c in result.checks if c.name == name])
    assert result.ok


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"class_weights": [1.0, 2.0]}, "4 finite, non-negative weights"),
        ({"class_weights": [1.0, -1.0, 1.0, 1.0]}, "non-negative"),
        ({"class_weights": "inverse"}, "'balanced'"),
        ({"class_weights": "balanced", "loss": lambda o, t: F.cross_entropy(o, t)}, "weight the samples inside"),
        ({"metrics": {"loss": lambda o, t: 0.0}}, "cannot name an extra metric"),
        ({"metrics": {"f1": 0.5}}, "must be a callable"),
    ],
)
def test_bad_class_weights_and_metrics_name_the_field(kwargs, words):
    with pytest.raises(TaskError, match=re.escape(words)):
        tiny.classification(**kwargs)


# ---- extra metrics ---------------------------------------------------------------------------------------------------


def macro_f1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(f1_score(targets.numpy(), outputs.argmax(1).numpy(), average="macro"))


def test_extra_metrics_are_computed_over_the_whole_split_beside_the_primary_metric():
    task = weighted_task(metrics={"f1": macro_f1})
    model = tiny.MLP().eval()
    ev = evaluate(task, model, task.val, CPU, batch_size=7)
    with torch.no_grad():
        reference = f1_score(task.val.y.numpy(), model(task.val.x).argmax(1).numpy(), average="macro")
    assert ev.metrics == {"f1": pytest.approx(reference)}
    assert ev.record("accuracy")["val_f1"] == ev.metrics["f1"] and "val_accuracy" in ev.record("accuracy")
    assert evaluate(weighted_task(), model, task.val, CPU).metrics == {}


def test_extra_metrics_reach_the_metrics_rows_the_progress_bar_and_the_report_table():
    task = weighted_task(metrics={"f1": macro_f1})
    ev = evaluate(task, tiny.MLP(), task.val, CPU)
    rows: list[dict] = []
    shown: dict = {}
    bar = SimpleNamespace(set_postfix=lambda refresh=False, **values: shown.update(values))
    log = LossLog(FitResult(model=tiny.MLP()), tiny.MLP(), task, 1e-3, rows.append, bar)
    log.log_epoch({"epoch": 1, "step": 10, "train_loss": 1.0, **ev.record(task.metric_name)})
    assert [(r["metric"], r["value"]) for r in rows if r["split"] == "val"] == [
        ("loss", ev.loss),
        ("accuracy", ev.metric),
        ("f1", ev.metrics["f1"]),
    ]
    assert shown["val_f1"] == f"{ev.metrics['f1']:.4g}"
    table = validation_table([{"stage": "tune", "run": "trial 0", **r} for r in rows], "tune")
    assert "<th>val f1</th>" in table and f"{ev.metrics['f1']:.4g}" in table
    plain = [{"stage": "tune", "run": "trial 0", **r} for r in rows if r["metric"] != "f1"]
    assert validation_table(plain, "tune") == ""  # loss and the one metric: the checks already show them


def test_fit_history_and_metrics_rows_carry_the_extra_metrics():
    task = weighted_task(metrics={"f1": macro_f1})
    rows: list[dict] = []
    result = fit(task, epochs=2, batch_size=16, progress=False, device="cpu", log=rows.append)
    final = result.history[-1]
    assert final["val_f1"] == pytest.approx(evaluate(task, result.model, task.val, CPU).metrics["f1"])
    assert [r["value"] for r in rows if r["split"] == "val" and r["metric"] == "f1"][-1] == final["val_f1"]


# ---- the command line ------------------------------------------------------------------------------------------------


def test_help_does_not_import_torch():
    code = (
        "import runpy, sys\n"
        "sys.argv = ['recipe', '--help']\n"
        "try:\n    runpy.run_module('recipe.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "usage: recipe" in out.stdout and out.stdout.strip().endswith("no torch"), out.stdout[-300:]


def test_every_public_name_loads_on_first_use():
    import recipe

    for name in recipe.__all__:  # a name in __all__ without a home in recipe._HOMES raises here
        assert getattr(recipe, name) is not None, name
    assert set(recipe.__all__) <= set(dir(recipe))
    with pytest.raises(AttributeError, match="no attribute 'Tsk'"):
        recipe.Tsk  # noqa: B018


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"recipe {__version__}"


def test_print_config_resolves_every_default_and_reads_back(tmp_path, capsys):
    config = tmp_path / "c.yaml"  # the task module does not exist: printing the config loads nothing
    config.write_text("task: not_a_module:make_task\nseed: 1\ntrain: {lr: 0.01}\noverfit: {steps: 7}\n")
    assert cli.main(["run", str(config), "--print-config", "--seed", "5", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)
    assert resolved["seed"] == 5 and resolved["train"]["lr"] == 0.01 and resolved["train"]["batch_size"] == 64
    assert resolved["overfit"]["steps"] == 7 and resolved["tune"]["workers"] == 2
    assert resolved["stages"] == list(STAGES) and all(name in resolved for name in STAGES)
    again = tmp_path / "resolved.yaml"
    again.write_text(printed)
    assert cli.main(["run", str(again), "--print-config"]) == 0
    assert capsys.readouterr().out == printed  # a fixed point: the printed config is a config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "resolved.yaml"]  # no run directory made


def test_print_config_of_every_bundled_config(capsys):
    configs = sorted(Path("configs").glob("**/*.yaml"))
    assert configs
    for path in configs:
        assert cli.main(["run", str(path), "--print-config"]) == 0, path
        assert yaml.safe_load(capsys.readouterr().out)["task"]
