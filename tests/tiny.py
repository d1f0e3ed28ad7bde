"""Tiny tasks and planted-bug models for the diagnostics tests: each trains in well under a second on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task

FEATURES, CLASSES, VOCAB, LENGTH = 12, 4, 11, 12


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised Gaussian inputs; the label is the argmax of a fixed linear map (learnable, balanced)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    w = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(99))
    return x, (x @ w).argmax(1)


class MLP(nn.Module):
    def __init__(self, out: int = CLASSES, features: int = FEATURES):
        super().__init__()
        self.l1, self.l2, self.head = nn.Linear(features, 32), nn.Linear(32, 32), nn.Linear(32, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.l2(F.relu(self.l1(x)))))


def classification(model=MLP, n_train: int = 256, **task_kwargs) -> Task:
    return Task(
        train=blobs(n_train, 0), val=blobs(128, 1), model=model, num_classes=CLASSES, name="tiny", **task_kwargs
    )


def regression(model=None, offset: float = 0.0) -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, FEATURES, generator=g)
    y = (x[:, :3].sum(1, keepdim=True) / 3**0.5) + 0.1 * torch.randn(384, 1, generator=g) + offset
    return Task(
        train=(x[:256], y[:256]),
        val=(x[256:], y[256:]),
        model=model or (lambda: MLP(out=1)),
        loss="mse",
        name="tiny-regression",
    )


def token_stream(n: int, seed: int) -> torch.Tensor:
    """A learnable stream: mostly t -> t+1 (mod V), sometimes a random jump."""
    g = torch.Generator().manual_seed(seed)
    ids = [0]
    for _ in range(n - 1):
        ids.append(
            (ids[-1] + 1) % VOCAB if torch.rand(1, generator=g) < 0.8 else int(torch.randint(VOCAB, (1,), generator=g))
        )
    return torch.tensor(ids)


def sequence_pairs(n_windows: int, seed: int, shift: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = token_stream(n_windows * LENGTH + 2, seed)
    x = ids[: n_windows * LENGTH].reshape(n_windows, LENGTH)
    y = ids[shift : n_windows * LENGTH + shift].reshape(n_windows, LENGTH)
    return x, y


class CausalAttention(nn.Module):
    """One causal self-attention block over token embeddings; `causal=False` plants the missing mask."""

    def __init__(self, causal: bool = True, dim: int = 16):
        super().__init__()
        self.causal = causal
        self.tok, self.pos = nn.Embedding(VOCAB, dim), nn.Embedding(LENGTH, dim)
        self.qkv, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        return self.head(h + F.scaled_dot_product_attention(q, k, v, is_causal=self.causal))


def sequence(model=CausalAttention, shift: int = 1) -> Task:
    return Task(
        train=sequence_pairs(64, 0, shift),
        val=sequence_pairs(32, 1, shift),
        model=model,
        kind="sequence",
        num_classes=VOCAB,
        name="tiny-sequence",
    )
