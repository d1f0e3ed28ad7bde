"""dropout_rates: every dropout rate read from the model the factory builds; keep-probability confusion warns.
eval_deterministic: a dropout mask at evaluation fails, other sampling at evaluation warns, changed buffers fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from examples import charlm, digits
from recipe import Task
from recipe.diagnostics.dropout import dropout_modules, dropout_rates, eval_deterministic
from tests import tiny


def dropout_mlp(p: float = 0.1, alpha: bool = False) -> nn.Module:
    drop = nn.AlphaDropout(p) if alpha else nn.Dropout(p)
    return nn.Sequential(nn.Linear(tiny.FEATURES, 32), nn.ReLU(), drop, nn.Linear(32, tiny.CLASSES))


class AttentionTagger(nn.Module):
    """A token model with dropout only inside attention and a GRU (no dropout modules of its own)."""

    def __init__(self, p: float):
        super().__init__()
        self.tok = nn.Embedding(tiny.VOCAB, 16)
        self.attn = nn.MultiheadAttention(16, 2, dropout=p, batch_first=True)
        self.gru = nn.GRU(16, 16, num_layers=2, dropout=p, batch_first=True)
        self.head = nn.Linear(16, tiny.VOCAB)

    def forward(self, x):
        h = self.tok(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.gru(h)[0])


@pytest.mark.parametrize(
    ("factory", "status"),
    [
        (tiny.MLP, "pass"),  # no dropout
        (lambda: dropout_mlp(0.1), "pass"),  # the fixed twin of the two below
        (lambda: dropout_mlp(0.5), "pass"),  # Srivastava et al.'s hidden-unit rate
        (lambda: dropout_mlp(0.9), "warn"),  # "keep 90%" written as p
        (lambda: dropout_mlp(0.8, alpha=True), "warn"),
        (lambda: dropout_mlp(1.0), "fail"),
    ],
)
def test_dropout_rates(factory, status):
    task = tiny.classification(factory)
    check = dropout_rates(task.make_model(), task, task.sample_batch("train", 64, seed=0))
    assert check.status == status, check.message
    if status != "pass":
        assert "drop" in check.message and "training mode" in check.message  # the loss gap, as evidence


@pytest.mark.parametrize(("p", "status"), [(0.1, "pass"), (0.9, "warn")])
def test_dropout_inside_attention_and_rnn_is_read(p, status):
    task = tiny.sequence(lambda: AttentionTagger(p))
    model = task.make_model()
    assert set(dropout_modules(model)) == {"attn.dropout", "gru.dropout"}
    check = dropout_rates(model, task, task.sample_batch("train", 8, seed=0))
    assert check.status == status, check.message


def test_bundled_examples_pass():
    for task in (digits.make_task(), charlm.make_task(max_chars=20_000)):
        check = dropout_rates(task.make_model(), task, task.sample_batch("train", 8, seed=0))
        assert check.status == "pass", check.message
    assert dropout_modules(digits.MLP(dropout=0.3)) == {"net.2": 0.3, "net.5": 0.3}


class FunctionalDropout(tiny.MLP):
    def forward(self, x):
        return self.head(F.dropout(F.relu(self.l1(x)), 0.3))  # training=True by default


class ModuleDropout(tiny.MLP):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        return self.head(self.drop(F.relu(self.l1(x))))


class DropoutBuiltInForward(tiny.MLP):
    def forward(self, x):
        return self.head(nn.Dropout(0.3)(F.relu(self.l1(x))))  # a fresh module starts in training mode


class DropoutOnOutput(tiny.MLP):
    def forward(self, x):
        return F.dropout(super().forward(x), 0.2)


class SampledLatent(tiny.MLP):
    """A VAE-style layer that samples at evaluation too, as PyTorch's own VAE example does: a correct model."""

    def forward(self, x):
        h = F.relu(self.l1(x))
        return self.head(h + 0.5 * torch.randn_like(h))


class DropPathAlways(tiny.MLP):
    """Stochastic depth without a `self.training` gate: a residual branch kept or dropped per sample."""

    def forward(self, x):
        h = F.relu(self.l1(x))
        keep = (torch.rand(len(h), 1) > 0.2).float() / 0.8
        return self.head(h + F.relu(h) * keep)


class NoisyInputs(tiny.MLP):
    def forward(self, x):
        return super().forward(x + 0.1 * torch.randn_like(x))


class ForcedBatchNorm(tiny.MLP):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(32)

    def forward(self, x):
        h = self.l1(x)
        h = F.batch_norm(h, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, training=True)
        return self.head(F.relu(h))


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        (tiny.MLP, "pass", "deterministic"),
        (ModuleDropout, "pass", "deterministic"),
        (FunctionalDropout, "fail", "a dropout mask"),
        (DropoutBuiltInForward, "fail", "a Dropout built inside forward"),
        (DropoutOnOutput, "fail", "a dropout mask"),
        (SampledLatent, "warn", "the model samples at evaluation"),
        (DropPathAlways, "warn", "drop-path"),
        (NoisyInputs, "warn", "not a dropout mask"),
        (ForcedBatchNorm, "fail", "changed buffers"),
    ],
)
def test_eval_deterministic(model, status, words):
    task = tiny.classification(model)
    inputs, _ = task.split_batch(task.sample_batch("val", 16, seed=0))
    check = eval_deterministic(task.make_model(), task, inputs)
    assert check.status == status, check.message
    assert words in check.message


class PaddedEncoderDropout(nn.Module):
    """A TransformerEncoder run with a key-padding mask (eval mode takes the nested-tensor fast path inside), then
    F.dropout without the training flag on the pooled output."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(tiny.VOCAB, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder, self.head = nn.TransformerEncoder(layer, 1), nn.Linear(16, tiny.CLASSES)

    def forward(self, idx):
        pad = idx == 0
        h = self.encoder(self.emb(idx), src_key_padding_mask=pad)
        return self.head(F.dropout(h.mean(1), 0.3))


def test_eval_deterministic_traces_past_nested_tensors():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, tiny.VOCAB, (16, 12), generator=g)
    ids[:, 8:] = 0  # padding at the end of every row
    task = Task((ids, torch.arange(16) % tiny.CLASSES), (ids, torch.arange(16) % tiny.CLASSES), PaddedEncoderDropout)
    model = task.make_model()
    check = eval_deterministic(model, task, ids)
    assert check.status == "fail" and "a dropout mask" in check.message, check.message


class Standardised(nn.Module):
    """Standardises its input first, in place on the argument (`copy=False`, the bug) or on a copy."""

    def __init__(self, copy: bool, nested: bool = False):
        super().__init__()
        self.copy, self.nested = copy, nested
        self.norm = nn.Identity()
        self.net = tiny.MLP()

    def standardise(self, x):
        x = x.clone() if self.copy else x
        return x.sub_(0.5).div_(2.0)

    def forward(self, x):
        if self.nested:
            x = self.norm(x)
        return self.net(self.standardise(x))


class InPlaceNorm(nn.Module):
    def forward(self, x):
        return x.sub_(0.5).div_(2.0)


def test_eval_deterministic_fails_a_forward_that_rewrites_its_input_and_puts_the_batch_back():
    """The bug read as sampling at evaluation ("noise first seen at the input of the model"): the first pass had
    rewritten the batch, so the second saw it standardised twice. Every evaluation of a stored validation split
    standardised it once more."""
    x = torch.randn(32, tiny.FEATURES, generator=torch.Generator().manual_seed(0))
    kept = x.clone()
    check = eval_deterministic(Standardised(copy=False), tiny.classification(), x)
    assert check.status == "fail" and "changes its input in place" in check.message, check.message
    assert "the model's own forward" in check.message
    assert torch.equal(x, kept)  # the caller's batch is as it was


def test_eval_deterministic_names_the_module_that_rewrites_its_input():
    model = Standardised(copy=True, nested=True)
    model.norm = InPlaceNorm()
    check = eval_deterministic(model, tiny.classification(), torch.randn(8, tiny.FEATURES))
    assert check.status == "fail" and "rewritten by norm" in check.message, check.message


def test_eval_deterministic_passes_a_forward_that_standardises_a_copy():
    x = torch.randn(32, tiny.FEATURES)
    assert eval_deterministic(Standardised(copy=True), tiny.classification(), x).status == "pass"
    nan = x.clone()
    nan[0, 0] = float("nan")  # NaN where NaN was is no change
    assert eval_deterministic(Standardised(copy=True), tiny.classification(), nan).status != "fail"


def test_the_gradient_probes_read_a_model_that_writes_into_its_argument():
    """batch_independence handed the model its gradient leaf, and the in-place write raised "a leaf Variable that
    requires grad is being used in an in-place operation": an error instead of a reading."""
    from recipe.diagnostics.dependencies import batch_independence

    x = torch.randn(16, tiny.FEATURES, generator=torch.Generator().manual_seed(0))
    assert batch_independence(Standardised(copy=False), tiny.classification(), x).status == "pass"


class ImputesInPlace(nn.Module):
    """Sets missing inputs to 0 in the argument itself: idempotent, so a second pass gives the same outputs."""

    def __init__(self):
        super().__init__()
        self.net = tiny.MLP()

    def forward(self, x):
        x[x.isnan()] = 0.0
        return self.net(x)


def test_eval_deterministic_warns_an_idempotent_rewrite_of_the_input():
    """NaN set to 0 in place changes the caller's tensors once; every later pass reads the same batch, so the
    figures hold: a warn naming it, not a fail that stops the recipe."""
    x = torch.randn(16, tiny.FEATURES, generator=torch.Generator().manual_seed(0))
    x[::3, 2] = float("nan")
    kept = x.clone()
    check = eval_deterministic(ImputesInPlace(), tiny.classification(), x)
    assert check.status == "warn" and "same outputs" in check.message, check.message
    assert torch.equal(x.isnan(), kept.isnan())  # put back, NaN and all
