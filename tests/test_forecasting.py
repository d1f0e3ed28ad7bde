"""Forecasters of values: float inputs (B, T) or (B, T, F) whose later values are the earlier targets. `causal`
probes them as it probes a language model, since an output that reads a later input reads its own target; a model
free to read the whole series (an autoencoder, a smoother) is not held to it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.zoo_kinds import ConvForecaster  # the zoo's forecaster: left-padded, or both sides
from recipe import Recipe, Task
from recipe.diagnostics.causal import causal
from recipe.diagnostics.inputs import holds_targets_ahead

T = 32


def waves(n: int, seed: int, channels: int = 1) -> torch.Tensor:
    """Noisy sine waves of random phase and frequency, (n, T + 1, channels)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(T + 1).float()[None, :, None]
    phase = torch.rand(n, 1, channels, generator=g) * 6.28
    frequency = 0.2 + 0.2 * torch.rand(n, 1, channels, generator=g)
    return torch.sin(frequency * t + phase) + 0.1 * torch.randn(n, T + 1, channels, generator=g)


class GRUForecaster(nn.Module):
    """(B, T, F) -> (B, T, out): a GRU, one direction or (a bug for forecasting) both."""

    def __init__(self, features: int = 1, out: int = 1, bidirectional: bool = False):
        super().__init__()
        self.gru = nn.GRU(features, 16, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(32 if bidirectional else 16, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])


def conv_task(sees_future: bool = False) -> Task:
    train, val = waves(400, 0)[..., 0], waves(100, 1)[..., 0]
    split = lambda s: (s[:, :-1], s[:, 1:])
    return Task(split(train), split(val), lambda: ConvForecaster(sees_future), loss="mse")


def covariate_task(bidirectional: bool = False) -> Task:
    """Three channels in, the first channel's next value out: target (B, T)."""
    train, val = waves(400, 0, 3), waves(100, 1, 3)
    split = lambda s: (s[:, :-1], s[:, 1:, 0])
    return Task(
        split(train), split(val), lambda: Squeezed(GRUForecaster(3, 1, bidirectional)), loss="mse", kind="regression"
    )


class Squeezed(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[..., 0]


def probe(task: Task):
    return task.split_batch(task.sample_batch("train", 16, seed=0))


@pytest.mark.parametrize(
    ("make_task", "status"),
    [
        (lambda: conv_task(), "pass"),
        (lambda: conv_task(sees_future=True), "fail"),
        (lambda: covariate_task(), "pass"),
        (lambda: covariate_task(bidirectional=True), "fail"),
    ],
)
def test_causal_probes_a_forecaster_of_values(make_task, status):
    task = make_task()
    inputs, target = probe(task)
    torch.manual_seed(0)
    check = causal(task.make_model(), task, inputs, target=target)
    assert check.status == status, check.message
    assert "hold the targets a step ahead" in check.message


class BinnedForecaster(ConvForecaster):
    """The values cut into 16 bins and embedded (no gradient reaches them), then the same convolution."""

    def __init__(self, sees_future: bool = False):
        super().__init__(sees_future)
        self.register_buffer("edges", torch.linspace(-1.2, 1.2, 15))
        self.emb = nn.Embedding(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.emb(torch.bucketize(x, self.edges))[..., 0])


@pytest.mark.parametrize(("sees_future", "status"), [(False, "pass"), (True, "fail")])
def test_causal_perturbs_values_that_no_gradient_reaches(sees_future, status):
    task = conv_task()
    inputs, target = probe(task)
    torch.manual_seed(0)
    assert causal(BinnedForecaster(sees_future), task, inputs, target=target).status == status


def test_a_model_free_to_read_the_whole_series_is_not_held_to_causality():
    """An autoencoder (target = input) and a smoother (target = the clean wave, input noisy) may read every
    position: their inputs do not hold the targets ahead, so a bidirectional GRU skips."""
    clean = waves(200, 0)
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    steps = torch.repeat_interleave(torch.randint(0, 5, (200, 4)).float(), 10, dim=1)[:, :T, None]  # repeats values
    for x, y in ((clean, clean), (noisy, clean), (steps, steps)):
        task = Task((x[:150], y[:150]), (x[150:], y[150:]), lambda: GRUForecaster(bidirectional=True), loss="mse")
        inputs, target = probe(task)
        assert not holds_targets_ahead(inputs, target)
        assert causal(task.make_model(), task, inputs, target=target).status == "skip"


def test_holds_targets_ahead_reads_shifts_of_one_to_three_steps():
    s = waves(8, 0)[..., 0]
    assert holds_targets_ahead(s[:, :-1], s[:, 1:]) and holds_targets_ahead(s[:, :-3], s[:, 3:])
    assert not holds_targets_ahead(s[:, 1:], s[:, :-1])  # the targets lag the inputs: the past, not the future
    assert not holds_targets_ahead(s[:, :-1].long(), s[:, 1:].long())  # token ids are the sequence path's


def test_a_forecaster_that_sees_the_future_fails_the_recipe_and_its_twin_runs_clean(tmp_path):
    for sees_future in (False, True):
        result = Recipe(
            conv_task(sees_future), run_dir=tmp_path / str(sees_future), stages=["inspect", "baseline"],
            device="cpu", progress=False, quiet=True, keep_going=True,
        ).run()  # fmt: skip
        statuses = {c.name: c.status for c in result.checks}
        if sees_future:
            assert statuses["causal"] == statuses["causal_after_training"] == "fail"
        else:
            assert statuses["causal"] == statuses["causal_after_training"] == "pass"
            assert not [c for c in result.checks if c.status in ("fail", "error")], result.checks
