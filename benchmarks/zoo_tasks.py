"""The bug zoo's tasks of kinds the bundled examples lack, each clean by default and with its planted variants.

Every factory returns a small `Task` (a few hundred to 2,000 samples, a tiny model) whose keyword arguments plant one
bug reproduced from a public report (benchmarks/bugzoo.py cites the report beside each case; the siamese model's is an
original); the defaults are the fixed twin. Kinds: a Conv1d signal classifier (and a GRU over the same signals),
forecasting windows cut from one series, a padded GRU, a TransformerEncoder with a key-padding mask, a token tagger, a
BatchNorm ResNet, channels-last colour images, a Dataset with train-only augmentation, a Transformer language model and
a siamese model on digit pairs (two input tensors; the tabular tasks are in benchmarks/zoo_tabular.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils.data import Dataset

from examples import digits
from recipe import Task

PAD, VOCAB, LENGTH = 0, 13, 20  # token tasks: id 0 pads every sequence to LENGTH; real tokens are 1..12


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = int(n * (1 - val_fraction))
    return order[:cut], order[cut:]


# ---- signals: sine / square / sawtooth ------------------------------------------------------------------------------


def wave_data(n: int = 600, length: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy waves (B, 1, length) of random frequency, phase and amplitude; the label is the waveform."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    y = rng.integers(0, 3, n)
    cycles = rng.uniform(1.5, 4.0, (n, 1)) * t + rng.uniform(0, 1, (n, 1))
    shapes = np.stack([np.sin(2 * np.pi * cycles), np.sign(np.sin(2 * np.pi * cycles)), 2 * (cycles % 1) - 1], 1)
    x = shapes[np.arange(n), y] * rng.uniform(0.5, 1.5, (n, 1)) + rng.normal(0, 0.3, (n, length))
    return x[:, None, :].astype(np.float32), y


class WaveCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3),
            nn.ReLU(),
            nn.Conv1d(16, 16, 7, padding=3),
            nn.ReLU(),
            nn.AdaptiveMaxPool1d(1),
            nn.Flatten(),
            nn.Linear(16, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WaveGRU(nn.Module):
    """A GRU over the signal read as 16 steps of 4 values. `batch_first=False` plants the layout bug: the (B, T, C)
    batch is read as (T, B, C), so `out[:, -1]` mixes every sample's values at one step."""

    def __init__(self, batch_first: bool = True):
        super().__init__()
        self.gru = nn.GRU(4, 32, batch_first=batch_first)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.reshape(len(x), 16, 4))  # (B, 1, 64) -> (B, T=16, C=4)
        return self.head(out[:, -1])


def waves(model: type[nn.Module] = WaveCNN, **model_kwargs: Any) -> Task:
    x, y = wave_data()
    tr, va = _split(len(y), 0.25, seed=1)
    return Task(
        train=(x[tr], y[tr]), val=(x[va], y[va]), model=lambda: model(**model_kwargs), num_classes=3, name="waves"
    )


# ---- forecasting windows cut from one series ------------------------------------------------------------------------


def _series(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    noise = np.zeros(n)
    for i in range(1, n):  # AR(1) noise: the series is not a pure, perfectly predictable sine
        noise[i] = 0.8 * noise[i - 1] + rng.normal(0, 0.3)
    return np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 23) + noise


def _windows(s: np.ndarray, width: int = 32, horizon: int = 4, stride: int = 2) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, len(s) - width - horizon, stride)
    x = np.stack([s[i : i + width] for i in starts])
    return x.astype(np.float32), s[starts + width + horizon - 1, None].astype(np.float32)


def forecast(split: str = "time") -> Task:
    """Predict the value 4 steps past a window of 32. `split="time"`: the series is cut at 80% first, then each part
    into windows (the fix); `split="random"` plants the bug: overlapping windows cut first, then split at random."""
    s = _series()
    if split == "time":
        cut = int(0.8 * len(s))
        (x_tr, y_tr), (x_va, y_va) = _windows(s[:cut]), _windows(s[cut:])
    else:
        x, y = _windows(s)
        tr, va = _split(len(y), 0.2, seed=0)
        (x_tr, y_tr), (x_va, y_va) = (x[tr], y[tr]), (x[va], y[va])
    mean, std = s.mean(), s.std()  # one scale for the whole series: a window stays a piece of it
    scale = lambda a: ((a - mean) / std).astype(np.float32)
    return Task(
        train=(scale(x_tr), scale(y_tr)),
        val=(scale(x_va), scale(y_va)),
        model=lambda: nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)),
        loss="mse",
        name=f"forecast-{split}",
    )


# ---- padded token sequences -----------------------------------------------------------------------------------------


def token_data(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of 4..16 tokens in 1..12, padded with PAD to LENGTH (every one has padding); the label is which
    residue (token % 3) occurs most often."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 17, (n,), generator=g)
    x = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    real = torch.arange(LENGTH)[None, :] < lengths[:, None]
    x = torch.where(real, x, torch.full_like(x, PAD))
    counts = torch.stack([((x % 3 == r) & real).sum(1) for r in range(3)], 1)
    return x, counts.argmax(1)


class PaddedGRU(nn.Module):
    """Embedding + GRU; the last hidden state classifies. `pack=False` plants the bug: the GRU runs on over the
    padding, so the state it ends in depends on how much padding follows the sequence."""

    def __init__(self, pack: bool = True):
        super().__init__()
        self.pack = pack
        self.emb = nn.Embedding(VOCAB, 16, padding_idx=PAD)
        self.gru = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.emb(x)
        if self.pack:
            lengths = (x != PAD).sum(1).cpu()
            _, h = self.gru(pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False))
        else:
            _, h = self.gru(e)
        return self.head(h[-1])


class MaskedTransformer(nn.Module):
    """A TransformerEncoder classifier over padded tokens with a key-padding mask and a mean over real positions.
    Planted: `inverted=True` passes `x != PAD` (True marks what attention *ignores*, so real tokens are hidden and
    padding is attended); `pool_padding=True` averages over every position, padding included."""

    def __init__(self, inverted: bool = False, pool_padding: bool = False):
        super().__init__()
        self.inverted, self.pool_padding = inverted, pool_padding
        self.emb, self.pos = nn.Embedding(VOCAB, 32, padding_idx=PAD), nn.Embedding(LENGTH + 8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = x == PAD
        h = self.emb(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        h = self.encoder(h, src_key_padding_mask=~pad if self.inverted else pad)
        if self.pool_padding:
            return self.head(h.mean(1))
        real = (~pad).unsqueeze(-1).float()
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1))


def padded(model: type[nn.Module] = PaddedGRU, **model_kwargs: Any) -> Task:
    x, y = token_data()
    tr, va = _split(len(y), 0.25, seed=2)
    return Task(
        train=(x[tr], y[tr]),
        val=(x[va], y[va]),
        model=lambda: model(**model_kwargs),
        kind="classification",
        num_classes=3,
        pad_id=PAD,
        name=f"padded-{model.__name__.lower()}",
    )


# ---- token tagging --------------------------------------------------------------------------------------------------


class Tagger(nn.Module):
    """A bidirectional GRU tagger; logits (B, K, T), the layout cross-entropy takes for per-position classes."""

    def __init__(self, tags: int = 4):
        super().__init__()
        self.emb = nn.Embedding(12, 16)
        self.gru = nn.GRU(16, 24, batch_first=True, bidirectional=True)
        self.head = nn.Linear(48, tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.emb(x))
        return self.head(out).transpose(1, 2)


def tagging(n: int = 500, length: int = 16) -> Task:
    """Tag each token with (token + previous token) % 4: 4 tags over a 12-token vocabulary (not next-token)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 12, (n, length), generator=g)
    y = (x + F.pad(x, (1, 0))[:, :-1]) % 4
    cut = int(0.75 * n)
    return Task(
        train=(x[:cut], y[:cut]), val=(x[cut:], y[cut:]), model=Tagger, kind="classification", num_classes=4,
        name="tagging",
    )  # fmt: skip


# ---- images: a small BatchNorm ResNet on the 8x8 digits ------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        self.conv2, self.bn2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    def __init__(self, channels: int = 16):
        super().__init__()
        stem = [nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
        self.net = nn.Sequential(*stem, Block(channels), Block(channels), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


def resnet() -> Task:
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    images = (x_train.reshape(-1, 1, 8, 8), x_val.reshape(-1, 1, 8, 8))
    return Task(train=(images[0], y_train), val=(images[1], y_val), model=ResNet, num_classes=10, name="resnet")


class ColourCNN(nn.Module):
    """A CNN on channels-last (B, H, W, 3) images. The fix moves the channels with `permute(0, 3, 1, 2)`;
    `view=True` plants `x.view(B, 3, H, W)`, which keeps the memory order and scrambles pixels across channels."""

    def __init__(self, view: bool = False):
        super().__init__()
        self.view = view
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 16, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(len(x), 3, 8, 8) if self.view else x.permute(0, 3, 1, 2))


def colour_digits(view: bool = False) -> Task:
    """Digits drawn in a random colour each, stored channels-last (B, 8, 8, 3) as image libraries load them."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    rng = np.random.default_rng(0)

    def tint(x: np.ndarray) -> np.ndarray:
        return (x.reshape(-1, 8, 8, 1) * rng.uniform(0.3, 1.0, (len(x), 1, 1, 3))).astype(np.float32)

    return Task(
        train=(tint(x_train), y_train), val=(tint(x_val), y_val), model=lambda: ColourCNN(view), num_classes=10,
        name="colour-digits",
    )  # fmt: skip


# ---- a Dataset that reads, normalises and augments per sample -----------------------------------------------------


class DigitsDataset(Dataset):
    """Raw digits (0..16) normalised in `__getitem__`, optionally shifted by a random pixel (augmentation).
    Planted: `inplace=True` normalises the stored row in place (`x -= mean`), so every read changes the data."""

    def __init__(self, x: np.ndarray, y: np.ndarray, augment: bool, inplace: bool = False):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
        self.augment, self.inplace = augment, inplace
        self.mean, self.std = 4.88, 6.02  # the training split's pixel mean and std

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if self.inplace:
            x -= self.mean
            x /= self.std
        else:
            x = (x - self.mean) / self.std
        if self.augment:
            x = digits.shift_by_one_pixel(x[None])[0]
        return x, self.y[i]


def digits_dataset(val_augment: bool = False, inplace: bool = False) -> Task:
    """Train-only augmentation (the fix); `val_augment=True` plants random shifts on validation reads too."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x[:600], y[:600], test_size=0.25, random_state=0, stratify=y[:600])
    return Task(
        train=DigitsDataset(x_tr, y_tr, augment=True, inplace=inplace),
        val=DigitsDataset(x_va, y_va, augment=val_augment, inplace=inplace),
        model=digits.MLP,
        num_classes=10,
        name="digits-dataset",
    )


# ---- a Transformer language model ---------------------------------------------------------------------------------


class TransformerLM(nn.Module):
    """Token + position embeddings, one TransformerEncoder layer, a linear head. `causal=False` plants the missing
    causal mask (an encoder attends both ways unless told otherwise)."""

    def __init__(self, causal: bool = True, vocab: int = 11, length: int = 16):
        super().__init__()
        self.causal = causal
        self.tok, self.pos = nn.Embedding(vocab, 32), nn.Embedding(length, 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder, self.head = nn.TransformerEncoder(layer, 1), nn.Linear(32, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        if self.causal:
            mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
            h = self.encoder(h, mask=mask, is_causal=True)
        else:
            h = self.encoder(h)
        return self.head(h)


def language_model(causal: bool = True, windows: int = 400, length: int = 16) -> Task:
    """A learnable stream over 11 tokens (mostly t -> t+1, sometimes a random jump), in next-token windows."""
    rng = np.random.default_rng(0)
    n = windows * length + 1
    jumps, randoms = rng.random(n) < 0.2, rng.integers(0, 11, n)
    ids = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        ids[i] = randoms[i] if jumps[i] else (ids[i - 1] + 1) % 11
    x = torch.as_tensor(ids[:-1].reshape(windows, length))
    y = torch.as_tensor(ids[1:].reshape(windows, length))
    cut = int(0.8 * windows)
    return Task(
        train=(x[:cut], y[:cut]),
        val=(x[cut:], y[cut:]),
        model=lambda: TransformerLM(causal),
        kind="sequence",
        num_classes=11,
        name="transformer-lm",
    )


# ---- a siamese pair model: two input tensors -----------------------------------------------------------------------


class PairTask(Task):
    """Batches of (first, second, label): the model takes the pair as two arguments."""

    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        return (batch[0], batch[1]), batch[2]

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(*inputs)


class Siamese(nn.Module):
    """One encoder for both digits of a pair; the head reads |a - b| and a * b. `same_input=True` plants
    `enc(a)` where `enc(b)` was meant: the second digit never reaches the output."""

    def __init__(self, same_input: bool = False):
        super().__init__()
        self.same_input = same_input
        self.enc = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.head = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ea, eb = self.enc(a), self.enc(a if self.same_input else b)
        return self.head(torch.cat([(ea - eb).abs(), ea * eb], 1))


def digit_pairs(same_input: bool = False, pairs: tuple[int, int] = (2000, 600)) -> Task:
    """Is this the same digit? Pairs drawn from each split's own digits (each digit in several pairs), half of
    them of one class."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()

    def draw(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> torch.utils.data.TensorDataset:
        g = torch.Generator().manual_seed(seed)
        xs, ys = torch.tensor(x), torch.tensor(y)
        a, b = torch.randint(0, len(ys), (n,), generator=g), torch.randint(0, len(ys), (n,), generator=g)
        for i in (torch.rand(n, generator=g) < 0.5).nonzero().flatten().tolist():  # a partner of the same class
            same = (ys == ys[a[i]]).nonzero().flatten()
            b[i] = same[torch.randint(0, len(same), (1,), generator=g)]
        return torch.utils.data.TensorDataset(xs[a], xs[b], (ys[a] == ys[b]).long())

    return PairTask(
        draw(x_train, y_train, pairs[0], 0), draw(x_val, y_val, pairs[1], 1), lambda: Siamese(same_input),
        num_classes=2, name="digit-pairs",
    )  # fmt: skip
