"""Shared tiny fixtures: every Task here validates and trains in well under a second on one CPU core.

Fixtures (each call builds a fresh Task, so a test may mutate or `replace` it freely):

- `classification_task`: 200 Gaussian points in 8 dimensions, label = argmax of the first 3 coordinates (a rule an
  MLP learns in a few dozen steps); 150 train / 50 val as in-memory tensors; model `TinyMLP` (8 -> 16 -> 3).
- `regression_task`: the same points, target = a fixed linear map of them plus 0.1 noise, shape (N, 1); loss "mse";
  model `TinyMLP(out=1)`.
- `sequence_task`: next-token prediction on a cycle: x[t] = (start + t) % 7, y[t] = x[t + 1]; 96 train / 32 val
  sequences of length 6; model `TinyLM` (embedding + linear, so position t sees only token t). `kind="sequence"` is
  passed explicitly (see test_task.py for inference).
- `dataset_task`: `classification_task`'s data served through a map-style `TinyDataset` (not a TensorDataset), so it
  takes the Dataset/DataLoader path of `fit`.

`TinyMLP`, `TinyLM` and `TinyDataset` are plain classes here for the fixtures; tests build their own variants with
`task.replace(model=...)`. Every torch op runs on one intra-op thread (see `_one_torch_thread`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from recipe import Task

N_FEATURES, N_CLASSES, VOCAB, SEQ_LEN = 8, 3, 7, 6


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: tiny models spend their time on thread hand-offs, 10-50x slower on a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinyMLP(nn.Module):
    def __init__(self, inputs: int = N_FEATURES, hidden: int = 16, out: int = N_CLASSES, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyLM(nn.Module):
    """Logits (B, T, VOCAB) from token ids (B, T); causal because each position only sees its own token."""

    def __init__(self, vocab: int = VOCAB, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))


class TinyDataset(Dataset):
    """A map-style Dataset yielding (x[i], y[i]): what a user's own Dataset looks like to `recipe`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def gaussian_points(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, labels): n standard Gaussian points in N_FEATURES dimensions, label = argmax of the first 3 coordinates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, N_FEATURES, generator=g)
    return x, x[:, :N_CLASSES].argmax(1)


@pytest.fixture
def classification_task() -> Task:
    x, y = gaussian_points()
    return Task((x[:150], y[:150]), (x[150:], y[150:]), TinyMLP, name="tiny-classification")


@pytest.fixture
def regression_task() -> Task:
    x, _ = gaussian_points()
    g = torch.Generator().manual_seed(1)
    y = x @ torch.randn(N_FEATURES, 1, generator=g) + 0.1 * torch.randn(len(x), 1, generator=g)
    return Task((x[:150], y[:150]), (x[150:], y[150:]), lambda: TinyMLP(out=1), loss="mse", name="tiny-regression")


@pytest.fixture
def sequence_task() -> Task:
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, VOCAB, (128, 1), generator=g)
    tokens = (starts + torch.arange(SEQ_LEN + 1)) % VOCAB
    x, y = tokens[:, :-1], tokens[:, 1:]
    return Task((x[:96], y[:96]), (x[96:], y[96:]), TinyLM, kind="sequence", name="tiny-sequence")


@pytest.fixture
def dataset_task() -> Task:
    x, y = gaussian_points()
    return Task(TinyDataset(x[:150], y[:150]), TinyDataset(x[150:], y[150:]), TinyMLP, name="tiny-dataset")
