"""Transfer learning, offline: an MLP pretrained on the first half of scikit-learn's digits (900 clean images),
fine-tuned on noisy images by other writers, the second half, from five labelled images per class.

Adds one idea to digits.py: a pretrained rung. `pretrain()` trains the MLP on the first half (pixels scaled to 0-1)
in a few seconds and saves its body's weights with the mean and std of the inputs it saw, in a cache folder (nothing
is downloaded). `make_task()` puts a `recipe.transfer.Pretrained` rung on the ladder beside the same MLP trained from
scratch: `complexify` sizes the scratch rungs, `regularize` checks the new task's inputs against the recorded mean
and std (`pretrained_inputs`), fine-tunes the pretrained rung (the new head with the body frozen, then every layer
at a tenth of the rate) and keeps it only when it beats training from scratch beyond noise.

`make_task(pixel_scale=16)` is the mis-normalised twin, the recipe's "initialized from a pretrained checkpoint but
didn't use the original mean": the pixels arrive as stored, 0-16, where the weights saw 0-1. It trains, but
`pretrained_inputs` fails.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recipe import Recipe, Task, fit
from recipe.transfer import Pretrained

CACHE = Path(tempfile.gettempdir()) / "recipe-examples-transfer"
FIRST_HALF, SECOND_HALF = slice(0, 900), slice(900, None)  # the rows come roughly by writer


class MLP(nn.Module):
    """A body that learns pixel features, and a head that names the classes (replaced when transferring)."""

    def __init__(self, hidden: int = 128, classes: int = 10, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def digits(part: slice, pixel_scale: float = 1.0, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The digits of rows `part`, pixels in 0-`pixel_scale` (stored: 0-16), with Gaussian noise of std `noise`."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x[part] / 16 + noise * np.random.default_rng(seed).standard_normal(x[part].shape)
    return (x * pixel_scale).astype(np.float32), y[part]


def pretrain(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Weights of the MLP trained on the first half of the digits, with the pixel mean and std it saw; cached."""
    path = Path(cache_dir or CACHE) / f"digits-first-half_mlp_seed{seed}.pt"
    if path.exists():
        return path
    from sklearn.model_selection import train_test_split

    x, y = digits(FIRST_HALF)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    task = Task(train=(x_train, y_train), val=(x_val, y_val), model=MLP, num_classes=10, name="digits-first-half")
    out = fit(task, epochs=20, batch_size=64, lr=1e-3, device="cpu", seed=seed, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"body": out.model.body.state_dict(), "mean": float(x_train.mean()), "std": float(x_train.std())}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(record, tmp)
    tmp.replace(path)  # atomic: a concurrent reader sees the whole file or none
    return path


def load_pretrained(path: Path) -> MLP:
    """A fresh MLP whose body holds the pretrained weights and whose head is new, to be fitted to the new data."""
    model = MLP()
    model.body.load_state_dict(torch.load(path, weights_only=True)["body"])
    return model


def make_task(
    labels_per_class: int = 5, noise: float = 0.2, pixel_scale: float = 1.0, cache_dir: str | None = None, seed: int = 0
) -> Task:
    """The second half of the digits with pixel noise of std `noise`, from `labels_per_class` training images per
    class; the rest of that half validates.

    `pixel_scale` is the range the pixels arrive in: 1.0 as in pretraining; 16 is the mis-normalised twin.
    """
    path = pretrain(cache_dir, seed)
    record = torch.load(path, weights_only=True)
    x, y = digits(SECOND_HALF, pixel_scale, noise, seed)
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:labels_per_class] for c in range(10)])
    val = np.setdiff1d(np.arange(len(y)), train)
    pretrained = Pretrained(partial(load_pretrained, path), mean=record["mean"], std=record["std"], head="head")
    return Task(
        train=(x[train], y[train]),
        val=(x[val], y[val]),
        model=MLP,
        models={"mlp-32": partial(MLP, hidden=32), "mlp-128": MLP, "pretrained": pretrained},
        num_classes=10,
        name="digits-transfer" if pixel_scale == 1 else f"digits-transfer-pixels0-{pixel_scale:g}",
        image_shape=(8, 8),
    )


if __name__ == "__main__":  # as `recipe run configs/transfer.yaml`
    config = {
        "inspect": {"folds": 3},
        "train": {"batch_size": 50},
        "complexify": {"epochs": 100},
        "regularize": {"max_steps": 300},
        "tune": {"trials": 8, "seeds": 2},
    }
    result = Recipe(make_task(), run_dir="runs/transfer", config=config).run()
    raise SystemExit(0 if result.ok else 1)
