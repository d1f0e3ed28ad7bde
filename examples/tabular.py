"""Tabular classification on scikit-learn's bundled breast-cancer data (569 tumours, 30 features, 2 classes), no
download.

Adds one idea to digits.py: tabular features. Each of the 30 columns has its own unit (millimetres, a ratio, a
count), so each is standardised with its own training mean and std, where digits shares one scale across pixels.
With a float matrix of features and no `image_shape`, `inspect` draws per-feature histograms, and `regularize`'s
`feature_ablation` shuffles one column at a time on the validation split and names the features whose shuffling
costs nothing: candidates to remove ("decrease the input dimensionality"). Here it names most or all of them: the 30
columns are 10 measurements, each given as a mean, a standard error and a worst value, so shuffling one column
leaves its correlated twins to carry the same information. Remove candidates a group at a time and run again.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from recipe import Recipe, Task

FEATURES = 30


def load_breast_cancer_split(seed: int = 0, val_fraction: float = 0.25) -> tuple[np.ndarray, ...]:
    """Stratified split, each feature standardised with the training split's mean and std (no leakage)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype(np.float32), y, test_size=val_fraction, random_state=seed, stratify=y
    )
    mean, std = x_train.mean(0), x_train.std(0)  # per feature: the columns have different units
    return (x_train - mean) / std, (x_val - mean) / std, y_train, y_val


def feature_names() -> list[str]:
    """The 30 column names, in input order ("mean radius", ...), to read `feature_ablation`'s indices by."""
    from sklearn.datasets import load_breast_cancer

    return [str(name) for name in load_breast_cancer().feature_names]


class MLP(nn.Module):
    def __init__(self, features: int = FEATURES, hidden: int = 32, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_task(seed: int = 0) -> Task:
    """Malignant (0) or benign (1) from 30 standardised features, with a ladder of MLP widths for `complexify`."""
    x_train, x_val, y_train, y_val = load_breast_cancer_split(seed)
    ladder: dict[str, Callable[[], nn.Module]] = {
        "mlp-8": partial(MLP, hidden=8),
        "mlp-32": MLP,
        "mlp-128": partial(MLP, hidden=128),
    }
    return Task(
        train=(x_train, y_train),
        val=(x_val, y_val),
        model=MLP,
        models=ladder,  # smallest first
        loss="cross_entropy",
        num_classes=2,
        name="breast-cancer",
    )


if __name__ == "__main__":
    result = Recipe(make_task(), run_dir="runs/tabular").run()
    ablation = next((c for c in result.checks if c.name == "feature_ablation" and c.value), None)
    if ablation is not None:
        names = feature_names()
        print("features whose shuffling costs nothing:", ", ".join(names[j] for j in ablation.value["candidates"]))
    raise SystemExit(0 if result.ok else 1)
