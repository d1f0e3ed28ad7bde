"""Digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), no download.

The base example: `make_task()` returns a Task; `python examples/digits.py` runs the recipe on it.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from recipe import Recipe, Task


def load_digits_split(seed: int = 0, val_fraction: float = 0.2) -> tuple[np.ndarray, ...]:
    """Stratified split of the digits, scaled with the training split's pixel mean and std (no leakage)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype(np.float32), y, test_size=val_fraction, random_state=seed, stratify=y
    )
    mean, std = x_train.mean(), x_train.std()  # one scale for every pixel, as for images
    return (x_train - mean) / std, (x_val - mean) / std, y_train, y_val


class MLP(nn.Module):
    def __init__(self, hidden: int = 128, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """A small ConvNet on (B, 1, 8, 8) images."""

    def __init__(self, channels: int = 16, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * channels * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def shift_by_one_pixel(x: torch.Tensor) -> torch.Tensor:
    """Training-time augmentation: each image moved by -1, 0 or +1 pixel along each axis (a digit stays that digit).
    Works on flat (B, 64) and image (B, 1, 8, 8) batches; the pixel that wraps around is the background's."""
    images = x.reshape(len(x), 8, 8)
    background = images.amin(dim=(1, 2), keepdim=True)
    shifts = torch.randint(-1, 2, (len(x), 2), device=x.device)
    out = images.clone()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
            if len(rows) and (dy or dx):
                moved = torch.roll(images[rows], shifts=(dy, dx), dims=(1, 2))
                edge = torch.zeros(8, 8, dtype=torch.bool, device=x.device)
                edge[0 if dy > 0 else 7, :] = dy != 0
                edge[:, 0 if dx > 0 else 7] |= dx != 0
                out[rows] = torch.where(edge, background[rows], moved)
    return out.reshape(x.shape)


def make_task(model: str = "mlp", seed: int = 0) -> Task:
    """The digits task with an MLP on 64 flat pixels (`model="mlp"`) or a CNN on 1x8x8 images (`model="cnn"`)."""
    x_train, x_val, y_train, y_val = load_digits_split(seed)
    if model == "cnn":
        x_train, x_val = x_train.reshape(-1, 1, 8, 8), x_val.reshape(-1, 1, 8, 8)
        factory: type[nn.Module] = CNN
        ladder = {"cnn-4": partial(CNN, channels=4), "cnn-16": CNN, "cnn-64": partial(CNN, channels=64)}
    elif model == "mlp":
        factory = MLP
        ladder = {"mlp-16": partial(MLP, hidden=16), "mlp-128": MLP, "mlp-512": partial(MLP, hidden=512)}
    else:
        raise ValueError(f"model={model!r}: use 'mlp' or 'cnn'")
    return Task(
        train=(x_train, y_train),
        val=(x_val, y_val),
        model=factory,
        models=ladder,  # for `complexify`: smallest first
        loss="cross_entropy",
        num_classes=10,
        name=f"digits-{model}",
        image_shape=(8, 8),  # shows the MLP's 64 flat pixels as pictures
        augment=shift_by_one_pixel,  # tried by `regularize`, kept only if validation improves
        invariances={"hflip": False, "vflip": False, "rot90": False, "rot180": False},  # a flipped 2 is no 2
    )


if __name__ == "__main__":
    result = Recipe(make_task(), run_dir="runs/digits").run()
    raise SystemExit(0 if result.ok else 1)
