"""output_kind's verdicts on the outputs' sign stand only where the head cannot cross zero: the cosine similarity of
two fresh ReLU embeddings starts positive on every initialisation (0.14-0.41 at its lowest), which failed a correct
pair-similarity regression as "a ReLU on the output"; heads that clip still fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
from recipe.diagnostics.init import loss_at_init, output_kind_at_init
from recipe.diagnostics.reach import crosses_zero

DIM = 16


class PairSimilarity(nn.Module):
    """Embeds both members of a pair (B, 2, DIM) with one ReLU encoder; `head` acts on their cosine similarity."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = head

    def forward(self, pairs):
        a, b = self.encoder(pairs[:, 0]), self.encoder(pairs[:, 1])
        return self.head(F.cosine_similarity(a, b, dim=1))


class Exp(nn.Module):
    def forward(self, x):
        return x.exp()


class Abs(nn.Module):
    def forward(self, x):
        return x.abs()


def pairs_task(head_factory) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 2, DIM, generator=g)
    y = F.cosine_similarity(x[:, 0, :4], x[:, 1, :4], dim=1)  # in [-1, 1], half of it negative
    return Task((x[:500], y[:500]), (x[500:], y[500:]), lambda: PairSimilarity(head_factory()), loss="mse")


def _verdict(task: Task) -> str:
    batch = task.sample_batch("val", 64, 0)
    return output_kind_at_init(task.make_model, task, batch).status


def test_a_cosine_similarity_head_that_starts_positive_passes():
    task = pairs_task(nn.Identity)
    batch = task.sample_batch("val", 64, 0)
    torch.manual_seed(0)
    assert all(bool((task.make_model()(batch[0]) >= 0).all()) for _ in range(5))  # the premise: positive at init
    assert _verdict(task) == "pass"


@pytest.mark.parametrize("head", [nn.ReLU, nn.Softplus, nn.Sigmoid, Exp, Abs])
def test_a_head_that_clips_at_zero_still_fails(head):
    task = pairs_task(head)
    assert not crosses_zero(task.make_model, task, task.sample_batch("val", 64, 0))
    assert _verdict(task) == "fail"


class Scaled(nn.Module):
    def forward(self, x):
        return 10 * x


@pytest.mark.parametrize(("head", "status"), [(nn.Identity, "pass"), (Scaled, "fail")])
def test_loss_at_init_reads_the_outputs_spread_not_where_their_mean_starts(head, status):
    """A cosine head starts near 0.8 for targets of mean 0: twice an all-zero output's loss, all of it offset (old
    code failed it as a mis-scaled layer); ten times the cosine is a spread too wide, and still fails."""
    task = pairs_task(head)
    torch.manual_seed(0)
    check = loss_at_init(task.make_model(), task, task.sample_batch("train", 64, 0))
    assert check.status == status, check.message
    if status == "pass":
        assert check.value["ratio"] > 1.5 and "where their mean starts" in check.message
