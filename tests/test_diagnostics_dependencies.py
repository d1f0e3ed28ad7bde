"""batch_independence and causal: exact in eval mode; each planted coupling is caught, each clean model passes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe.diagnostics.causal import causal
from recipe.diagnostics.dependencies import batch_independence
from tests import tiny


class ViewMix(tiny.MLP):
    """`view` where `t()` was meant: hidden rows of different samples get mixed."""

    def forward(self, x):
        h = F.relu(self.l1(x))
        h = h.reshape(h.shape[1], h.shape[0]).t()
        return self.head(F.relu(self.l2(h)))


class SoftmaxOverBatch(tiny.MLP):
    def forward(self, x):
        h = F.relu(self.l1(x))
        return self.head(h * torch.softmax(h, dim=0))


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(tiny.CLASSES))

    def forward(self, x):
        return self.bias.expand(len(x), -1)


class BatchNormMLP(tiny.MLP):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(32)

    def forward(self, x):
        return self.head(F.relu(self.bn(self.l1(x))))


class GRUBatchFirstMissing(nn.Module):
    """A GRU left at batch_first=False but fed (B, T, C): the batch is read as time."""

    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.head = nn.Embedding(tiny.VOCAB, 8), nn.GRU(8, 16), nn.Linear(16, tiny.VOCAB)

    def forward(self, idx):
        return self.head(self.rnn(self.emb(idx))[0])


class Binned(nn.Module):
    """Each feature cut into 8 bins by fixed edges and embedded (a tabular model of binned numbers): no gradient
    reaches the float inputs. `mix`: the embeddings are centred over the batch, which mixes samples."""

    def __init__(self, mix: bool = False):
        super().__init__()
        self.mix = mix
        self.register_buffer("edges", torch.linspace(-1.5, 1.5, 7))
        self.emb, self.head = nn.Embedding(8 * tiny.FEATURES, 16), nn.Linear(16, tiny.CLASSES)

    def forward(self, x):
        ids = torch.bucketize(x, self.edges) + 8 * torch.arange(tiny.FEATURES)
        h = self.emb(ids).mean(1)
        return self.head(torch.relu(h - h.mean(0) if self.mix else h))


def zero_head() -> nn.Module:
    """A zero-initialised output layer (a common choice): the output is constant at init, yet reads its input."""
    model = tiny.MLP()
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


def all_zero() -> nn.Module:
    """Every parameter zero: a real bug, but init_symmetry's; which inputs an output reads is still per sample."""
    model = tiny.MLP()
    for p in model.parameters():
        nn.init.zeros_(p)
    return model


class ZeroHeadBatchMean(tiny.MLP):
    def forward(self, x):
        h = F.relu(self.l1(x))
        return self.head(h - h.mean(0))


def zero_head_batch_mean() -> nn.Module:
    model = ZeroHeadBatchMean()
    nn.init.zeros_(model.head.weight)
    return model


@pytest.mark.parametrize(
    ("make_task", "status", "words"),
    [
        (lambda: tiny.classification(), "pass", "own sample only"),
        (lambda: tiny.classification(zero_head), "pass", "at zero they make the output constant"),
        (lambda: tiny.classification(all_zero), "pass", "own sample only"),
        (lambda: tiny.classification(zero_head_batch_mean), "fail", "mixes samples"),
        (lambda: tiny.classification(Binned), "pass", "read by exchanging inputs"),  # no gradient to the inputs
        (lambda: tiny.classification(lambda: Binned(mix=True)), "fail", "mixes samples"),
        (lambda: tiny.classification(BatchNormMLP), "pass", "own sample only"),  # eval mode: no coupling
        (lambda: tiny.classification(ViewMix), "fail", "mixes samples"),
        (lambda: tiny.classification(SoftmaxOverBatch), "fail", "mixes samples"),
        (lambda: tiny.classification(Constant), "fail", "ignores x"),  # its bias is zero, redrawn: still constant
        (lambda: tiny.sequence(), "pass", "own sample only"),
        (lambda: tiny.sequence(GRUBatchFirstMissing), "fail", "mixes samples"),
    ],
)
def test_batch_independence(make_task, status, words):
    task = make_task()
    inputs, _ = task.split_batch(task.sample_batch("train", 7, seed=0))
    model = task.make_model()
    before = [p.detach().clone() for p in model.parameters()]
    check = batch_independence(model, task, inputs)
    assert check.status == status, check.message
    assert words in check.message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # the model is left as given


class PeekingConv(nn.Module):
    """A convolution padded on both sides: position t sees t+1."""

    def __init__(self, left_only: bool):
        super().__init__()
        self.left_only = left_only
        self.emb, self.conv, self.head = nn.Embedding(tiny.VOCAB, 8), nn.Conv1d(8, 8, 3), nn.Linear(8, tiny.VOCAB)

    def forward(self, idx):
        h = self.emb(idx).transpose(1, 2)
        h = self.conv(F.pad(h, (2, 0) if self.left_only else (1, 1)))
        return self.head(h.transpose(1, 2))


class OneHotConv(PeekingConv):
    """The same convolution over one-hot vectors (F.one_hot: no nn.Embedding, no gradient to the ids)."""

    def forward(self, idx):
        h = (F.one_hot(idx, tiny.VOCAB).float() @ self.emb.weight).transpose(1, 2)
        h = self.conv(F.pad(h, (2, 0) if self.left_only else (1, 1)))
        return self.head(h.transpose(1, 2))


class OverShifted(tiny.CausalAttention):
    """Shifts its input right once more, so position t no longer sees token t."""

    def forward(self, idx):
        return super().forward(torch.cat([torch.zeros_like(idx[:, :1]), idx[:, :-1]], dim=1))


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        (tiny.CausalAttention, "pass", "at or before"),
        (lambda: tiny.CausalAttention(causal=False), "fail", "sees the future"),
        (lambda: PeekingConv(left_only=True), "pass", "at or before"),
        (lambda: PeekingConv(left_only=False), "fail", "sees the future"),
        (OverShifted, "warn", "shifted twice"),
        (lambda: OneHotConv(left_only=True), "pass", "at or before"),  # no gradient reaches the ids: perturbed
        (lambda: OneHotConv(left_only=False), "fail", "sees the future"),
    ],
)
def test_causal(model, status, words):
    task = tiny.sequence(model)
    inputs, _ = task.split_batch(task.sample_batch("train", 7, seed=0))
    check = causal(task.make_model(), task, inputs)
    assert check.status == status, check.message
    assert words in check.message


def test_causal_skips_non_sequence_tasks():
    task = tiny.classification()
    inputs, _ = task.split_batch(task.sample_batch("train", 7, seed=0))
    assert causal(task.make_model(), task, inputs).status == "skip"


class ForcesBatchNormTrain(nn.Module):
    """A BatchNorm the forward pass puts back into training mode: evaluation normalises by the batch."""

    def __init__(self, forced: bool):
        super().__init__()
        self.forced = forced
        self.body, self.norm, self.head = nn.Linear(tiny.FEATURES, 16), nn.BatchNorm1d(16), nn.Linear(16, tiny.CLASSES)

    def forward(self, x):
        if self.forced:
            self.norm.train()
        return self.head(torch.relu(self.norm(self.body(x))))


def test_batch_independence_names_a_batch_norm_left_in_training_mode():
    """The cause given was a view/reshape, a softmax over dim 0 or an RNN without batch_first."""
    x = torch.randn(16, tiny.FEATURES, generator=torch.Generator().manual_seed(0))
    check = batch_independence(ForcesBatchNormTrain(forced=True), tiny.classification(), x)
    assert check.status == "fail" and "BatchNorm layers ['norm']" in check.message, check.message
    assert batch_independence(ForcesBatchNormTrain(forced=False), tiny.classification(), x).status == "pass"
