"""padding_invariance: outputs at real positions must not move with the amount of padding that follows."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recipe import Task
from recipe.diagnostics.padding import padding_invariance
from tests import tiny
from tests.new_kinds import NEW_KINDS

PAD, VOCAB, LENGTH, DIM = 0, 12, 10, 16
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")


def padded_tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of 2..LENGTH real tokens (ids 1..VOCAB-1) then padding; the label is the first token's parity."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    x[torch.arange(LENGTH) >= lengths[:, None]] = PAD
    return x, x[:, 0] % 2


class Encoder(nn.Module):
    """A TransformerEncoder classifier; `inverted` plants `x != pad` as the mask, `pool_all` a mean over padding."""

    def __init__(self, inverted: bool = False, pool_all: bool = False):
        super().__init__()
        self.inverted, self.pool_all = inverted, pool_all
        self.tok, self.pos = nn.Embedding(VOCAB, DIM), nn.Embedding(2 * LENGTH, DIM)
        layer = nn.TransformerEncoderLayer(DIM, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = nn.Linear(DIM, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = x == PAD
        h = self.tok(x) + self.pos(((~pad).cumsum(1) - 1).clamp_min(0))  # positions count real tokens only
        h = self.encoder(h, src_key_padding_mask=~pad if self.inverted else pad)
        h = torch.nan_to_num(h)  # a fully masked row comes back as NaN or zeros depending on the kernel
        if self.pool_all:
            return self.head(h.mean(1))
        real = (~pad).unsqueeze(-1).float()
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1))


class GRUClassifier(nn.Module):
    """The last hidden state of a GRU; `packed=False` plants the GRU run over the padding."""

    def __init__(self, packed: bool = True):
        super().__init__()
        self.packed = packed
        self.tok, self.gru, self.head = nn.Embedding(VOCAB, DIM, padding_idx=PAD), nn.GRU(DIM, DIM), nn.Linear(DIM, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x).transpose(0, 1)
        if self.packed:
            lengths = (x != PAD).sum(1).clamp_min(1).cpu()
            _, last = self.gru(pack_padded_sequence(h, lengths, enforce_sorted=False))
        else:
            _, last = self.gru(h)
        return self.head(last[-1])


class Tagger(nn.Module):
    """A per-token tagger (outputs (B, T, tags)); `leaky` plants a sequence-wide mean mixed into every position."""

    def __init__(self, leaky: bool = False):
        super().__init__()
        self.leaky = leaky
        self.tok, self.head = nn.Embedding(VOCAB, DIM), nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x)
        if self.leaky:
            h = h + h.mean(1, keepdim=True)
        return self.head(h)


class FixedLength(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.head = nn.Embedding(VOCAB, 4), nn.Linear(4 * LENGTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tok(x).flatten(1))


def padded_task(model, pad_id: int | None = PAD, left: bool = False) -> Task:
    train, val = padded_tokens(64, 0), padded_tokens(32, 1)
    if left:  # the same rows padded on the left: real tokens last
        train, val = [(torch.stack([r.roll(int((r == PAD).sum())) for r in x]), y) for x, y in (train, val)]
    return Task(train=train, val=val, model=model, num_classes=2, kind="classification", pad_id=pad_id)


@pytest.mark.parametrize(
    ("factory", "status"),
    [
        (Encoder, "pass"),  # the fixed twin of both planted encoders
        (lambda: Encoder(inverted=True), "fail"),
        (lambda: Encoder(pool_all=True), "fail"),
        (GRUClassifier, "pass"),
        (lambda: GRUClassifier(packed=False), "fail"),
        (Tagger, "pass"),
        (lambda: Tagger(leaky=True), "fail"),
        (FixedLength, "skip"),
    ],
)
def test_padding_invariance(factory, status):
    torch.manual_seed(0)
    task = padded_task(factory)
    inputs, _ = task.split_batch(task.sample_batch("val", 16, seed=0))
    check = padding_invariance(task.make_model(), task, inputs)
    assert check.status == status, check.message
    if status == "fail":
        assert "pad" in check.message and check.value["relative_change"] > 1e-2


class AbsolutePositions(Encoder):
    """Positions counted from the start of the padded row: left padding shifts every real token's position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = x == PAD
        h = self.encoder(self.tok(x) + self.pos(torch.arange(x.shape[1])), src_key_padding_mask=pad)
        real = (~pad).unsqueeze(-1).float()
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1))


@pytest.mark.parametrize(
    ("factory", "status"), [(Encoder, "pass"), (lambda: Encoder(pool_all=True), "fail"), (AbsolutePositions, "fail")]
)
def test_left_padding_is_probed_on_the_left(factory, status):
    torch.manual_seed(0)
    task = padded_task(factory, left=True)
    inputs, _ = task.split_batch(task.sample_batch("val", 16, seed=0))
    assert (inputs[:, -1] != PAD).all() and (inputs[:, 0] == PAD).any()
    check = padding_invariance(task.make_model(), task, inputs)
    assert check.status == status, check.message
    assert status == "pass" or ("prepending" in check.message and "position ids" in check.message)


def test_padding_invariance_needs_a_declared_pad_and_tokens():
    task = padded_task(Encoder, pad_id=None)
    inputs, _ = task.split_batch(task.sample_batch("val", 8, seed=0))
    check = padding_invariance(task.make_model(), task, inputs)
    assert check.status == "skip" and "pad_id" in check.message
    floats = tiny.classification(pad_id=0)
    x, _ = floats.split_batch(floats.sample_batch("val", 8, seed=0))
    assert padding_invariance(floats.make_model(), floats, x).status == "skip"


def test_padding_invariance_on_a_causal_language_model():
    """A causal model never sees what follows a position: trailing padding cannot change it."""
    task = tiny.sequence()
    task.pad_id = 0
    inputs, _ = task.split_batch(task.sample_batch("val", 8, seed=0))
    assert padding_invariance(task.make_model(), task, inputs).status == "pass"


@pytest.mark.parametrize("name", list(NEW_KINDS))
def test_shared_new_kinds_pass(name):
    """The padded GRU, the token tagger and the masked TransformerEncoder of tests/new_kinds.py are clean."""
    task = NEW_KINDS[name]()
    inputs, _ = task.split_batch(task.sample_batch("val", 16, seed=0))
    check = padding_invariance(task.make_model(), task, inputs)
    assert check.status == "pass" and check.value["relative_change"] < 1e-4, check.message


class MaskedEncoder(Encoder):
    """The Hugging Face calling convention: model(input_ids=..., attention_mask=...), the mask 1 at real tokens and
    0 at padding. `ignore_mask` plants a model that never reads it (no key-padding mask, a mean over every position)."""

    def __init__(self, inverted: bool = False, ignore_mask: bool = False):
        super().__init__(inverted=inverted)
        self.ignore_mask = ignore_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros_like(attention_mask, dtype=torch.bool) if self.ignore_mask else attention_mask == 0
        h = self.tok(input_ids) + self.pos(((~pad).cumsum(1) - 1).clamp_min(0))
        h = torch.nan_to_num(self.encoder(h, src_key_padding_mask=~pad if self.inverted else pad))
        real = (~pad).unsqueeze(-1).float()
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1))


class MaskedTask(Task):
    def split_batch(self, batch):
        ids, mask, y = batch
        return {"input_ids": ids, "attention_mask": mask}, y

    def forward(self, model, inputs):
        return model(**inputs)


def masked_task(model, pad_id: int | None = None, pad_token: int = PAD) -> MaskedTask:
    def split(n: int, seed: int) -> torch.utils.data.TensorDataset:
        x, y = padded_tokens(n, seed)
        mask = (x != PAD).long()
        return torch.utils.data.TensorDataset(x.masked_fill(mask == 0, pad_token), mask, y)

    return MaskedTask(split(64, 0), split(32, 1), model, num_classes=2, kind="classification", pad_id=pad_id)


@pytest.mark.parametrize(
    ("factory", "status"),
    [
        (MaskedEncoder, "pass"),
        (lambda: MaskedEncoder(ignore_mask=True), "fail"),
        (lambda: MaskedEncoder(inverted=True), "fail"),
    ],
)
@pytest.mark.parametrize("pad_token", [PAD, 7])  # the pad id is read from the ids under the mask's zeros
def test_padding_invariance_reads_an_attention_mask_beside_the_ids(factory, status, pad_token):
    torch.manual_seed(0)
    task = masked_task(factory, pad_token=pad_token)
    inputs, _ = task.split_batch(task.sample_batch("val", 16, seed=0))
    check = padding_invariance(task.make_model(), task, inputs)
    assert check.status == status, check.message
    assert check.value is None or check.value["pad_id"] == pad_token
    if status == "fail":
        assert "attention mask 0" in check.message and "attention mask that does not reach" in check.message


class BatchMixing(MaskedEncoder):
    """Subtracts the batch's mean embedding: every sample's output depends on the others."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pad = attention_mask == 0
        h = self.tok(input_ids)
        h = torch.nan_to_num(self.encoder(h - h.mean(0, keepdim=True), src_key_padding_mask=pad))
        return self.head(h.mean(1))


@pytest.mark.parametrize(("factory", "status"), [(MaskedEncoder, "pass"), (BatchMixing, "fail")])
def test_batch_independence_differentiates_through_the_embedding_of_ids_beside_their_mask(factory, status):
    from recipe.diagnostics.dependencies import batch_independence

    torch.manual_seed(0)
    task = masked_task(factory)
    inputs, _ = task.split_batch(task.sample_batch("val", 16, seed=0))
    check = batch_independence(task.make_model(), task, inputs)
    assert check.status == status, check.message
