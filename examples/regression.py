"""Regression on scikit-learn's bundled diabetes data (442 patients, 10 features), no download.

Adds one idea to digits.py: a regression task (`loss="mse"`), with inputs and targets standardised on the
training split.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recipe import Recipe, Task


def load_diabetes_split(seed: int = 0) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    x, y = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y.reshape(-1, 1), test_size=0.2, random_state=seed)
    x_mean, x_std = x_train.mean(0), x_train.std(0)
    y_mean, y_std = y_train.mean(), y_train.std()
    return ((x_train - x_mean) / x_std, (x_val - x_mean) / x_std, (y_train - y_mean) / y_std, (y_val - y_mean) / y_std)


class MLP(nn.Module):
    def __init__(self, features: int = 10, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_task(seed: int = 0) -> Task:
    """Standardised diabetes progression (targets shaped (N, 1), like the model's output)."""
    x_train, x_val, y_train, y_val = load_diabetes_split(seed)
    return Task(train=(x_train, y_train), val=(x_val, y_val), model=MLP, loss="mse", kind="regression", name="diabetes")


if __name__ == "__main__":
    result = Recipe(make_task(), run_dir="runs/diabetes").run()
    raise SystemExit(0 if result.ok else 1)
