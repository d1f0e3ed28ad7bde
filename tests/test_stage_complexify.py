"""The `complexify` stage end to end: a ladder trained with one budget, the hand-over to later stages, a broken
big rung, and a run set to diverge."""

from __future__ import annotations

import json
from functools import partial

import torch
from torch import nn

from recipe import Complexify, Recipe, Task
from tests import tiny


class Wide(nn.Module):
    def __init__(self, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(tiny.FEATURES, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, tiny.CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BrokenBig(Wide):
    """The planted bug: the big rung's hidden layer is detached, so only its head ever trains."""

    def __init__(self) -> None:
        super().__init__(hidden=256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[3](self.net[1](self.net[0](x)).detach() * 0.0)


def ladder_task(big=None) -> Task:
    return Task(
        train=tiny.blobs(256, 0),
        val=tiny.blobs(128, 1),
        models={"small": partial(Wide, hidden=4), "big": big or partial(Wide, hidden=128)},
        num_classes=tiny.CLASSES,
        name="ladder",
    )


def run(task: Task, tmp_path, **settings):
    stage = Complexify(epochs=8, lr_steps=40, **settings)
    return Recipe(task, run_dir=tmp_path / "run", stages=[stage], device="cpu", progress=False, quiet=True).run()


def test_a_healthy_ladder_passes_and_hands_the_choice_over(tmp_path):
    result = run(ladder_task(), tmp_path)
    by_name = {c.name: c for c in result.checks}
    assert result.ok and by_name["capacity"].status == "pass", by_name["capacity"].message
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    learned = manifest["learned"]["complexify"]
    assert learned["model"] == by_name["capacity"].value["chosen"]
    assert manifest["train_final"]["model"] == learned["model"] and manifest["train_final"]["lr"] == learned["lr"]
    rungs = [f["seconds"] for f in manifest["fits"] if f["run"].startswith(("rung_", "lr_range_"))]
    assert len(rungs) >= 2 and by_name["capacity"].seconds >= sum(rungs)  # the ladder's training is what it judged
    folder = result.run_dir / "04_complexify"
    for name in ("rungs.table.json", "rungs_train.png", "rungs_val.png", "chosen_run.png"):
        assert (folder / name).exists(), name
    for name in ("lr_schedule", "loss_spikes", "step_noise", "still_improving", "overfitting_onset"):
        assert name in by_name


def test_a_broken_big_rung_warns_capacity(tmp_path):
    result = run(ladder_task(big=BrokenBig), tmp_path)
    capacity = next(c for c in result.checks if c.name == "capacity")
    assert capacity.status == "warn" and "big" in capacity.message
    assert capacity.value["chosen"] == "small"


def test_a_run_set_to_diverge_fails(tmp_path):
    result = run(tiny.classification(), tmp_path, lr=1e4)
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["capacity"] == "fail" and statuses["loss_spikes"] == "fail"
    assert not result.ok


def test_a_ladder_from_the_config_calls_the_factory_with_each_size(tmp_path):
    task = Task(train=tiny.blobs(256, 0), val=tiny.blobs(128, 1), model=Wide, num_classes=tiny.CLASSES)
    result = run(task, tmp_path, ladder={"w4": {"hidden": 4}, "w64": {"hidden": 64}})
    rungs = next(c for c in result.checks if c.name == "capacity").value["rungs"]
    assert [r["rung"] for r in rungs] == ["w4", "w64"] and rungs[0]["params"] < rungs[1]["params"]


def test_later_stages_train_the_chosen_rung(tmp_path):
    from recipe.context import model_factory

    task = ladder_task()
    rung = model_factory(task, "big", dropout=0.3)
    assert rung().net[2].p == 0.3


class CountModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def test_step_noise_counts_the_batches_own_spread_under_a_callable_loss(tmp_path):
    """Poisson counts under a callable loss (no per-sample values): the batches' mean loss moves by about 0.5 with
    their samples alone, more than five epochs of progress (0.33), which warned 'use a larger batch'. The trained
    model's loss over random batches measures that spread for any loss, and the check passes, saying so."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g)
    y = torch.poisson((0.3 * x[:, 0] - 0.5 * x[:, 1] + 0.2 * x[:, 2] + 1).exp(), generator=g)
    task = Task((x[:2400], y[:2400]), (x[2400:], y[2400:]), CountModel, loss=nn.PoissonNLLLoss(), kind="regression")
    config = {"train": {"epochs": 5}}
    result = Recipe(task, run_dir=tmp_path / "run", stages=["complexify"], device="cpu", config=config).run()
    noise = next(c for c in result.checks if c.name == "step_noise")
    assert noise.status == "pass" and "by their samples alone" in noise.message, noise.message
    assert noise.value["noise"] > noise.value["progress"] and noise.value["sampling_noise"] > 0.6 * noise.value["noise"]


def test_a_ladder_that_diverges_on_nan_inputs_says_so_instead_of_blaming_the_rate(tmp_path):
    """NaN in the inputs with keep_going: capacity and loss_spikes said 'lower the learning rate, add warm-up'; they
    now carry the fit's own account, which names the non-finite samples and the data as the cause."""
    x, y = tiny.blobs(400, 0)
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.05] = float("nan")
    task = Task((x[:300], y[:300]), (x[300:], y[300:]), tiny.MLP, num_classes=tiny.CLASSES)
    result = Recipe(task, run_dir=tmp_path / "run", stages=["complexify"], device="cpu", keep_going=True).run()
    fired = {c.name: c for c in result.checks if c.status == "fail"}
    for name in ("capacity", "loss_spikes"):
        assert "non-finite inputs in training samples" in fired[name].message, fired[name].message
        assert "the data, not the rate" in fired[name].message
