"""The input ladder: `complexify` trains the chosen rung on each smaller input the task declares and reports the
smallest that does as well as the full input (check `input_ladder`, in recipe/diagnostics/input_size.py)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Recipe, Task
from recipe.diagnostics.input_size import input_ladder
from recipe.errors import TaskError
from recipe.evaluation import Evaluation
from tests.tiny import MLP

FEATURES = 16


def keep_first(k: int):
    """A feature-subset level: features k.. set to 0, their training mean (the inputs are standardised)."""

    def shrink(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :k], torch.zeros_like(x[:, k:])], 1)

    return shrink


def subset_task(informative: int) -> Task:
    """Binary labels from the sign of the sum of the first `informative` of 16 standardised features."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, FEATURES, generator=g)
    y = (x[:, :informative].sum(1) > 0).long()
    return Task(
        train=(x[:600], y[:600]),
        val=(x[600:], y[600:]),
        model=lambda: MLP(out=2, features=FEATURES),
        name=f"label-from-{informative}-features",
        input_ladder={"2 features": keep_first(2), "8 features": keep_first(8)},
    )


def run_complexify(task: Task, tmp_path) -> dict:
    config = {"train": {"batch_size": 100}, "complexify": {"epochs": 15, "lr": 0.01}}
    result = Recipe(task, tmp_path, stages=["complexify"], device="cpu", config=config, progress=False, quiet=True)
    check = next(c for c in result.run().checks if c.name == "input_ladder")
    assert check.status == "pass", check.message
    return check.value


def test_a_label_from_two_features_is_learned_as_well_from_those_two(tmp_path):
    value = run_complexify(subset_task(informative=2), tmp_path)
    assert value["smallest"] == "2 features", value


def test_a_label_from_every_feature_keeps_the_full_input(tmp_path):
    value = run_complexify(subset_task(informative=FEATURES), tmp_path)
    assert value["smallest"] == "full", value
    increase, se = value["loss_increase"], value["se"]
    assert increase["2 features"] > 2 * se["2 features"] and increase["8 features"] > 2 * se["8 features"]


# ---- another modality: image size ---------------------------------------------------------------------------------


def image_task(label: str, model) -> Task:
    """8x8 images; the label is coarse (top half brighter than the bottom) or fine (the signed contrast inside the
    top-left 2x2 block, which averaging each 2x2 block erases)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 1, 8, 8, generator=g)
    if label == "coarse":
        y = x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))
        shrink = partial(F.avg_pool2d, kernel_size=2)  # a 4x4 image: the model pools adaptively
    else:
        y = x[:, 0, 0, 0] - x[:, 0, 0, 1] - x[:, 0, 1, 0] + x[:, 0, 1, 1] > 0
        shrink = lambda x: F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0)  # 4x4, shown at 8x8
    return Task(
        train=(x[:600], y[:600].long()), val=(x[600:], y[600:].long()), model=model, input_ladder={"4x4": shrink}
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 2)
    )


def flat_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), MLP(out=2, features=64))


def test_an_image_label_seen_at_half_size_is_learned_as_well_at_half_size(tmp_path):
    assert run_complexify(image_task("coarse", cnn), tmp_path)["smallest"] == "4x4"


def test_an_image_label_in_fine_detail_keeps_the_full_size(tmp_path):
    assert run_complexify(image_task("fine", flat_mlp), tmp_path)["smallest"] == "full"


def _evaluation(losses: list[float]) -> Evaluation:
    per_sample = torch.tensor(losses)
    se = float(per_sample.std() / len(losses) ** 0.5)
    return Evaluation(float(per_sample.mean()), se, 0.0, None, len(losses), per_sample)


@pytest.mark.parametrize(
    ("levels", "smallest"),
    [
        ({"small": 0.004, "medium": 0.0}, "small"),  # within noise (SE 0.005): the smallest wins
        ({"small": 0.5, "medium": 0.0}, "medium"),
        ({"small": 0.5, "medium": 0.4}, "full"),
        ({"small": None, "medium": 0.0}, "medium"),  # a level that diverged is left out
    ],
    ids=["smallest-within-noise", "medium-within-noise", "none-within-noise", "one-diverged"],
)
def test_input_ladder_reports_the_smallest_level_within_noise(levels, smallest):
    g = torch.Generator().manual_seed(0)
    base = (torch.rand(400, generator=g) + 0.5).tolist()
    full = _evaluation(base)
    noise = 0.1 * torch.randn(400, generator=g)
    noise = (noise - noise.mean()).tolist()  # the paired SE is 0.005 and the mean difference the shift itself
    evaluations = {
        name: None if shift is None else _evaluation([b + shift + e for b, e in zip(base, noise, strict=True)])
        for name, shift in levels.items()
    }
    check = input_ladder(full, evaluations)
    assert check.status == "pass" and check.value["smallest"] == smallest, check.message


def test_input_ladder_skips_without_a_ladder_a_full_run_or_anything_learned():
    full = _evaluation([1.0, 2.0, 3.0])
    assert input_ladder(full, {}).status == "skip"
    assert input_ladder(None, {"small": full}).status == "skip"
    check = input_ladder(full, {"small": _evaluation([2.0, 2.0, 3.0])}, constant=2.0)  # no better than a constant
    assert check.status == "skip" and "constant" in check.message
    assert input_ladder(full, {"small": full}, constant=4.0).status == "pass"


def test_input_ladder_levels_must_be_callables():
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(TaskError, match="input_ladder"):
        Task(train=(x, y), val=(x, y), model=lambda: MLP(2, 4), input_ladder={"half": 2})
