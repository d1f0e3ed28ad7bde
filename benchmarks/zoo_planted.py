"""The bug zoo's original planted models and tasks: digits MLP/CNN, a causal character model, diabetes regression
(benchmarks/bugzoo.py runs them; benchmarks/zoo_tasks.py holds the tasks of other kinds)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from examples import charlm, digits, regression
from recipe import Task

# ---- planted models ------------------------------------------------------------------------------------------------


class SoftmaxMLP(digits.MLP):
    """Bug: returns probabilities, and the loss (cross-entropy) applies log-softmax again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class LoudHeadMLP(digits.MLP):
    """Bug: the final layer's weights are 100x their default init."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.net[-1].weight.mul_(100)


class RowGRU(nn.Module):
    """Reads each 8x8 digit as 8 rows of 8 pixels with a GRU that expects (T, B, C).

    The bug: `x.view(8, B, 8)` where `x.view(B, 8, 8).permute(1, 0, 2)` was meant, which mixes samples.
    """

    def __init__(self, planted: bool):
        super().__init__()
        self.planted = planted
        self.rnn = nn.GRU(8, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        rows = x.view(8, b, 8) if self.planted else x.view(b, 8, 8).permute(1, 0, 2)
        _, h = self.rnn(rows)
        return self.head(h[-1])


class ListMLP(nn.Module):
    """Bug: the hidden layers live in a plain Python list, so they are never registered or trained."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = [nn.Linear(64, 128), nn.Linear(128, 128)]
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class ConstantInitMLP(digits.MLP):
    """Bug: every weight starts at one constant, so the hidden units of a layer compute the same function."""

    def __init__(self) -> None:
        super().__init__()
        for module in self.net:
            if isinstance(module, nn.Linear):
                nn.init.constant_(module.weight, 0.05)
                nn.init.zeros_(module.bias)


class BatchSoftmaxMLP(digits.MLP):
    """Bug: log-softmax over dim 0, the batch, instead of the classes: each output depends on the other samples."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x), dim=0)


class PeekingConvLM(charlm.ConvLM):
    """Bug: each convolution is padded on both sides, so position t sees tokens t+1 and t+2."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx).transpose(1, 2)
        for conv in self.convs:
            h = h + F.gelu(conv(F.pad(h, (self.kernel // 2, self.kernel // 2))))
        return self.head(h.transpose(1, 2))


# ---- tasks ---------------------------------------------------------------------------------------------------------


def digits_task(
    model: Callable[[], nn.Module], shuffle_labels: bool = False, offset_labels: bool = False, name: str = "digits"
) -> Task:
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    if shuffle_labels:
        y_train = np.random.default_rng(0).permutation(y_train)
    if offset_labels:  # class ids 1..10, as the data set's documentation numbers them
        y_train, y_val = y_train + 1, y_val + 1
    return Task(train=(x_train, y_train), val=(x_val, y_val), model=model, num_classes=10, name=name)


def imbalanced_digits() -> Task:
    """Is it a zero? Positives subsampled to exactly 1:10; the MLP keeps PyTorch's default init."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    splits = []
    for x, y in ((x_train, y_train), (x_val, y_val)):
        pos, neg = np.flatnonzero(y == 0), np.flatnonzero(y != 0)
        keep = np.concatenate([pos[: len(neg) // 10], neg])
        splits.append((x[keep], (y[keep] == 0).astype(np.int64)))

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    return Task(train=splits[0], val=splits[1], model=model, num_classes=2, name="digits-imbalanced")


def offset_regression() -> Task:
    x_train, x_val, y_train, y_val = regression.load_diabetes_split()
    return Task(
        train=(x_train, y_train + 1000.0),
        val=(x_val, y_val + 1000.0),
        model=regression.MLP,
        loss="mse",
        name="diabetes-offset",
    )


def _digits_data(x_train: np.ndarray, x_val: np.ndarray, y_train: np.ndarray, y_val: np.ndarray, name: str) -> Task:
    return Task(
        train=(x_train, y_train), val=(x_val, y_val), model=digits.MLP, num_classes=10, name=name, image_shape=(8, 8)
    )


def _raw_digits(scale: float = 255 / 16) -> tuple[np.ndarray, ...]:
    """The same stratified split as `digits.load_digits_split`, left in raw pixel units (0..16) times `scale`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype(np.float32), y, test_size=0.2, random_state=0, stratify=y
    )
    return x_train * scale, x_val * scale, y_train, y_val


def planted_data(bug: str) -> Task:
    """Data bugs, each a mutation of the clean, standardised digits split (an unknown `bug` leaves it clean)."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    rng = np.random.default_rng(0)
    if bug == "nan":  # a missing-value marker that became NaN in 1% of training rows
        rows = rng.choice(len(x_train), len(x_train) // 100, replace=False)
        x_train[rows, rng.integers(0, 64, len(rows))] = np.nan
    elif bug == "raw":
        x_train, x_val, y_train, y_val = _raw_digits()
    elif bug == "leak":  # 5% of validation rows are copies of training rows
        rows = rng.choice(len(x_val), len(x_val) // 20, replace=False)
        source = rng.choice(len(x_train), len(rows), replace=False)
        x_val[rows], y_val[rows] = x_train[source], y_train[source]
    elif bug == "noise":  # 20% of training labels flipped to another class
        rows = rng.choice(len(y_train), len(y_train) // 5, replace=False)
        y_train = y_train.copy()
        y_train[rows] = (y_train[rows] + rng.integers(1, 10, len(rows))) % 10
    elif bug == "missing_class":  # class 3 never reaches the training split
        keep = y_train != 3
        x_train, y_train = x_train[keep], y_train[keep]
    elif bug == "scrambled_class":  # 70% of class 3's training labels replaced by random other classes
        rows = rng.permutation(np.flatnonzero(y_train == 3))[: int(0.7 * (y_train == 3).sum())]
        y_train = y_train.copy()
        y_train[rows] = (3 + rng.integers(1, 10, len(rows))) % 10
    elif bug == "outliers":  # five samples in different units (x100)
        rows = rng.choice(len(x_train), 5, replace=False)
        x_train[rows] *= 100
    elif bug == "val_own_scaling":  # validation standardised with its own statistics, training left raw
        x_train, x_val, y_train, y_val = _raw_digits(1.0)
        x_val = (x_val - x_val.mean(0)) / np.where(x_val.std(0) > 0, x_val.std(0), 1)
    return _digits_data(x_train, x_val, y_train, y_val, f"digits-{bug}")


def charlm_task(model: Callable[[], nn.Module], name: str, chars: int = 200_000) -> Task:
    ids = charlm.encode(charlm.stdlib_text(chars))
    cut = int(0.9 * len(ids))
    return Task(
        train=charlm.windows(ids[:cut], 64),
        val=charlm.windows(ids[cut:], 64),
        model=model,
        kind="sequence",
        num_classes=len(charlm.VOCAB),
        name=name,
        decoder=charlm.decode,
    )
