"""Transfer learning: the `Pretrained` rung, `fine_tune` (frozen, then unfrozen), the check `pretrained_inputs`, the
`regularize` trial against training from scratch, and the bundled example with its mis-normalised twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from examples import transfer
from recipe import Recipe, Task, fit
from recipe.config import load_yaml
from recipe.diagnostics.pretrained import pretrained_inputs
from recipe.errors import TaskError
from recipe.transfer import Pretrained, fine_tune
from tests.tiny import MLP, blobs


def images(n: int, mean: float, std: float, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return mean + std * torch.randn(n, channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def pixels01(n: int = 400, seed: int = 0) -> torch.Tensor:
    """Flat 'pixels' in 0-1 with mean about 0.3 and std about 0.38, like digits / 16."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 64, generator=g) < 0.3).float() * torch.rand(n, 64, generator=g).clamp_min(0.5)


def rung(mean, std) -> Pretrained:
    return Pretrained(MLP, mean=mean, std=std)


def recorded(x: torch.Tensor) -> tuple[float, float]:
    return float(x.mean()), float(x.std())


# (inputs as fed, what the weights recorded) -> status; the stats of the clean cases come from other samples of the
# same distribution, as they would from the pretraining data
CASES = {
    "clean pixels 0-1": (pixels01(), recorded(pixels01(seed=1)), "pass"),
    "pixels 0-16 where the weights saw 0-1": (16 * pixels01(), recorded(pixels01(seed=1)), "fail"),
    "pixels 0-255 where the weights saw 0-1": (255 * pixels01(), recorded(pixels01(seed=1)), "fail"),
    "the original mean not subtracted": (images(200, 0.45, 0.25), ([0.0] * 3, [1.0] * 3), "fail"),
    "standardised per channel, as recorded": (images(200, 0.0, 1.0), ([0.0] * 3, [1.0] * 3), "pass"),
    "per-channel stats recorded, channels matched": (
        torch.cat([images(200, m, s, 1, i) for i, (m, s) in enumerate([(0.5, 0.2), (0.4, 0.3), (0.3, 0.1)])], 1),
        ([0.5, 0.4, 0.3], [0.2, 0.3, 0.1]),
        "pass",
    ),
    "a new domain moving a few features": (
        torch.cat([torch.randn(300, 3) + 3.0, torch.randn(300, 9)], 1),
        ([0.0] * 12, [1.0] * 12),
        "pass",
    ),
    "a moderate shift of every feature": (torch.randn(300, 12) * 1.1 + 0.7, ([0.0] * 12, [1.0] * 12), "warn"),
}


@pytest.mark.parametrize("case", CASES)
def test_pretrained_inputs(case):
    inputs, (mean, std), status = CASES[case]
    check = pretrained_inputs(inputs, rung(mean, std), "pretrained")
    assert check.status == status, check.message


@pytest.mark.parametrize(
    ("inputs", "record", "reason"),
    [
        (pixels01(), (None, None), "records no input mean/std"),
        (torch.randint(0, 10, (100, 12)), (0.0, 1.0), "not a float tensor"),
        (images(200, 0.0, 1.0), ([0.0] * 4, [1.0] * 4), "cannot match"),
        (pixels01(10), (0.3, 0.38), "at least 30"),
    ],
    ids=["nothing-recorded", "token-ids", "channel-count", "too-few"],
)
def test_pretrained_inputs_skips_when_it_cannot_judge(inputs, record, reason):
    check = pretrained_inputs(inputs, rung(*record))
    assert check.status == "skip" and reason in check.message


def test_pretrained_is_validated():
    with pytest.raises(TaskError, match="both mean"):
        Pretrained(MLP, mean=0.3)
    with pytest.raises(TaskError, match="same length"):
        Pretrained(MLP, mean=[0.1, 0.2], std=[1.0])
    with pytest.raises(TaskError, match="factory"):
        Pretrained(MLP())  # type: ignore[arg-type]
    with pytest.raises(TaskError, match="no such submodule"):
        Pretrained(MLP, head="classifier").head_parameters(MLP())


def test_the_default_head_is_the_last_module_with_parameters():
    model = MLP()
    assert Pretrained(MLP).head_parameters(model) == list(model.head.parameters())
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Softmax(1))
    assert Pretrained(lambda: seq).head_parameters(seq) == list(seq[2].parameters())


def test_fine_tune_trains_the_head_alone_then_every_layer_at_a_lower_rate():
    task = Task(train=blobs(128, 0), val=blobs(64, 1), model=MLP)
    start = MLP()
    weights = {k: v.clone() for k, v in start.state_dict().items()}
    pretrained = Pretrained(lambda: _copy(start, weights), head="head", lr_factor=0.1)
    seen: list[tuple[str, float, set[str]]] = []

    def fit_phase(phase, **settings):
        out = fit(**settings, batch_size=32, device="cpu", progress=False)
        moved = {k for k, v in out.model.state_dict().items() if not torch.equal(v, weights[k])}
        seen.append((phase, settings["lr"], moved))
        return out

    head, last = fine_tune(fit_phase, pretrained, 1e-2, 20, task=task)
    (p1, lr1, moved1), (p2, lr2, moved2) = seen
    assert (p1, p2) == ("head", "all") and lr2 == pytest.approx(0.1 * lr1)
    assert moved1 == {"head.weight", "head.bias"}, moved1  # the body stayed as pretrained
    assert moved2 >= {"l1.weight", "l2.weight", "head.weight"}
    assert head.steps == last.steps == 10  # the two phases share one run's budget
    assert all(p.requires_grad for p in last.model.parameters())


def _copy(model: nn.Module, weights: dict) -> nn.Module:
    fresh = type(model)()
    fresh.load_state_dict(weights)
    return fresh


# ---- the bundled example, end to end ---------------------------------------------------------------------------

CONFIG = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "transfer.yaml")
SMALL = {  # the shipped config's budgets, with fewer regularisers tried before the pretrained rung
    "train": CONFIG["train"],
    "complexify": CONFIG["complexify"],
    "regularize": {
        **CONFIG["regularize"],
        "data_fractions": [],
        "weight_decays": [1.0],
        "dropouts": [],
        "patience": None,
    },
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pretrained"))


def test_the_example_pretrains_once_and_records_its_input_normalisation(cache):
    path = transfer.pretrain(cache)
    stamp = path.stat().st_mtime_ns
    task = transfer.make_task(cache_dir=cache)
    assert transfer.pretrain(cache).stat().st_mtime_ns == stamp  # cached, not trained again
    pretrained = task.models["pretrained"]
    assert isinstance(pretrained, Pretrained) and 0.2 < float(pretrained.stats()[0]) < 0.4
    first, second = pretrained(), pretrained()
    assert first is not second and torch.equal(first.body[0].weight, second.body[0].weight)
    assert not torch.equal(first.body[0].weight, transfer.MLP().body[0].weight)  # the weights are pretrained


def test_the_example_keeps_the_pretrained_rung_beyond_noise(cache, tmp_path):
    task = transfer.make_task(cache_dir=cache)
    stages = ["complexify", "regularize"]
    result = Recipe(task, tmp_path, stages=stages, device="cpu", config=SMALL, progress=False, quiet=True).run()
    checks = {(c.stage, c.name): c for c in result.checks}
    assert checks["complexify", "capacity"].value["chosen"] != "pretrained"  # pretrained rungs are not sized there
    assert [r["rung"] for r in checks["complexify", "capacity"].value["rungs"]] == ["mlp-32", "mlp-128"]
    assert checks["regularize", "pretrained_inputs"].status == "pass"
    kept = checks["regularize", "pretrained"]
    assert kept.status == "pass" and kept.value["kept"] == "model=pretrained, fine-tuned", kept.message
    assert result.ok, [(c.name, c.message) for c in result.failures]


def test_the_mis_normalised_twin_fails_pretrained_inputs(cache, tmp_path):
    twin = transfer.make_task(pixel_scale=16, cache_dir=cache)
    inputs, _ = twin.split_batch(twin.batch("train", list(range(len(twin.train)))))
    assert pretrained_inputs(inputs, twin.models["pretrained"]).status == "fail"
    config = {**SMALL, "complexify": {"epochs": 5, "lr": 3e-3, "rungs": ["mlp-32", "pretrained"]}}
    stages = ["complexify", "regularize"]
    result = Recipe(twin, tmp_path, stages=stages, device="cpu", config=config, progress=False, quiet=True).run()
    failed = [(c.stage, c.name) for c in result.failures]
    assert failed == [("regularize", "pretrained_inputs")], failed
    assert not any(c.name == "pretrained" and c.value and c.value["trials"] for c in result.checks)
