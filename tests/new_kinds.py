"""Tasks of kinds the recipe does not ship, built to break probes that assume float inputs and plain tensor outputs.

Each is small (a few hundred samples, a tiny model) and learnable, so a clean run has no `fail` and no `error`:

- `padded_gru`: token ids padded at the end with `pad_id` 0, classified by a GRU that packs each sequence with
  `pack_padded_sequence` at the lengths the pad id gives; an all-pad input raises (a length of 0).
- `token_tagging`: embedding + per-token MLP head, targets (B, T) of tags (not the vocabulary), padding not scored
  (`IGNORE_INDEX`); the kind is given explicitly as "sequence" (the output is (B, T, tags)) though it is not
  next-token prediction, or left to the Task to infer.
- `transformer_classifier`: a `TransformerEncoder` with a `src_key_padding_mask` built from the pad id, mean-pooled
  over real positions; in eval mode PyTorch's fast path turns the padded activations into a nested tensor.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from recipe import Task
from recipe.task import IGNORE_INDEX

PAD, VOCAB, LENGTH, TAGS = 0, 16, 12, 3


def padded_tokens(n: int, seed: int, min_length: int = 3) -> torch.Tensor:
    """(n, LENGTH) token ids in 1..VOCAB-1, each row padded at the end with PAD to a random length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(min_length, LENGTH + 1, (n,), generator=g)
    return ids.masked_fill(torch.arange(LENGTH) >= lengths[:, None], PAD)


def _count_label(ids: torch.Tensor) -> torch.Tensor:
    """Class 1 when the sequence holds more "high" tokens (> VOCAB/2) than low ones: needs the whole sequence."""
    real = ids != PAD
    high = ((ids > VOCAB // 2) & real).sum(1)
    return (2 * high > real.sum(1)).long()


class PackedGRU(nn.Module):
    """Embedding -> GRU over `pack_padded_sequence` at the true lengths -> the last hidden state -> 2 classes."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=PAD)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != PAD).sum(1).cpu()  # a length of 0 (an all-pad row) makes pack_padded_sequence raise
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.head(h[-1])


def _count_task(model: type[nn.Module], seed: int, name: str) -> Task:
    """Padded token rows labelled by `_count_label`, classified by `model`."""
    x_train, x_val = padded_tokens(384, seed), padded_tokens(160, seed + 1)
    return Task(
        train=(x_train, _count_label(x_train)),
        val=(x_val, _count_label(x_val)),
        model=model,
        kind="classification",
        num_classes=2,
        pad_id=PAD,
        name=name,
    )


def padded_gru() -> Task:
    return _count_task(PackedGRU, 0, "padded-gru")


def _tags(ids: torch.Tensor) -> torch.Tensor:
    """A tag per token from the token itself (low / middle / high), IGNORE_INDEX at padding."""
    tags = torch.bucketize(ids, torch.tensor([VOCAB // 3, 2 * VOCAB // 3]))
    return tags.masked_fill(ids == PAD, IGNORE_INDEX)


class Tagger(nn.Module):
    """Embedding + a per-token MLP head: (B, T) ids -> (B, T, TAGS) logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=PAD)
        self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, TAGS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def token_tagging(kind: str | None = "sequence") -> Task:
    """`kind` "sequence" (given explicitly: the output is (B, T, tags)), or None to let the Task infer it."""
    x_train, x_val = padded_tokens(384, 2), padded_tokens(160, 3)
    return Task(
        train=(x_train, _tags(x_train)),
        val=(x_val, _tags(x_val)),
        model=Tagger,
        kind=kind,  # type: ignore[arg-type]
        num_classes=TAGS,
        pad_id=PAD,
        name="token-tagging",
    )


class PaddedTransformer(nn.Module):
    """TransformerEncoder with `src_key_padding_mask` from the pad id, mean over real positions -> 2 classes."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(LENGTH, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.head = nn.Linear(width, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == PAD
        h = self.encoder(self.embed(ids) + self.position[: ids.shape[1]], src_key_padding_mask=pad)
        real = (~pad).unsqueeze(-1).float()
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1))


def transformer_classifier() -> Task:
    return _count_task(PaddedTransformer, 4, "padded-transformer")


NEW_KINDS = {"padded_gru": padded_gru, "token_tagging": token_tagging, "transformer_classifier": transformer_classifier}
