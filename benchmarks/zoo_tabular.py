"""The bug zoo's tabular tasks (benchmarks/zoo_tasks.py holds the other kinds): patients with several rows each, a
target-encoded id-like column, BCE-with-logits and a custom MSE. Defaults are the fixed twins; the keyword arguments
plant one bug each (benchmarks/bugzoo.py cites the report behind each)."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from examples import regression
from recipe import Task


def _standardise(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-8  # training statistics only
    return ((train - mean) / std).astype(np.float32), ((val - mean) / std).astype(np.float32)


# ---- tabular: patients with several rows each -----------------------------------------------------------------------


def _mlp(features: int, out: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, out))


def patients(split: str = "group", n_patients: int = 120, rows: int = 4) -> Task:
    """Breast-cancer rows as 120 "patients" of 4 correlated visits each (a base row plus noise; the label is the
    patient's). `split="group"` splits patients (GroupShuffleSplit); `split="random"` plants the bug: rows split at
    random, so most patients have visits on both sides. The groups are declared either way."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    x0, y0 = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    base = rng.choice(len(y0), n_patients, replace=False)
    x0 = (x0 - x0.mean(0)) / x0.std(0)
    x = np.repeat(x0[base], rows, 0) + rng.normal(0, 0.3, (n_patients * rows, x0.shape[1]))
    y, groups = np.repeat(y0[base], rows), np.repeat(np.arange(n_patients), rows)
    if split == "group":
        tr, va = next(GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=0).split(x, y, groups))
    else:
        tr, va = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)
    x_tr, x_va = _standardise(x[tr], x[va])
    return Task(
        train=(x_tr, y[tr]),
        val=(x_va, y[va]),
        model=lambda: _mlp(x.shape[1]),
        num_classes=2,
        groups=(groups[tr].tolist(), groups[va].tolist()),
        name=f"patients-{split}",
    )


def target_encoded(encoding: str = "out_of_fold", levels: int = 300) -> Task:
    """Breast cancer plus a high-cardinality category (an id-like "site", ~2 rows per level, unrelated to the label)
    replaced by its mean label. `encoding="out_of_fold"`: each training row is encoded from the other folds (the fix);
    `encoding="in_sample"` plants the bug: each row's own label enters its encoding."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import KFold, train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    site = np.random.default_rng(0).integers(0, levels, len(y))
    tr, va = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)

    def encode(fit_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        sums = np.bincount(site[fit_rows], y[fit_rows], levels)
        counts = np.bincount(site[fit_rows], minlength=levels)
        prior = y[fit_rows].mean()
        return np.where(counts[site[rows]] > 0, sums[site[rows]] / np.maximum(counts[site[rows]], 1), prior)

    enc_tr = np.empty(len(tr))
    if encoding == "in_sample":
        enc_tr[:] = encode(tr, tr)
    else:
        for fit, held in KFold(5, shuffle=True, random_state=0).split(tr):
            enc_tr[held] = encode(tr[fit], tr[held])
    x_tr, x_va = _standardise(np.c_[x[tr], enc_tr], np.c_[x[va], encode(tr, va)])
    return Task(
        train=(x_tr, y[tr]), val=(x_va, y[va]), model=lambda: _mlp(31), num_classes=2, name=f"encoded-{encoding}"
    )


def breast_cancer_bce(sigmoid: bool = False) -> Task:
    """Binary breast cancer with BCE-with-logits on (B, 1) float targets; `sigmoid=True` plants a final Sigmoid."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    tr, va = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)
    x_tr, x_va = _standardise(x[tr], x[va])
    target = y[:, None].astype(np.float32)

    def model() -> nn.Module:
        return nn.Sequential(_mlp(30, 1), nn.Sigmoid()) if sigmoid else _mlp(30, 1)

    return Task(
        train=(x_tr, target[tr]), val=(x_va, target[va]), model=model, loss="bce_with_logits", name="cancer-bce"
    )


def diabetes_custom_mse(broadcast: bool = False) -> Task:
    """Diabetes with a custom MSE loss and flat (B,) targets; the fix flattens the model's (B, 1) output, and
    `broadcast=True` plants the (B, 1) output against (B,) targets, which `F.mse_loss` broadcasts to (B, B) (PyTorch
    only warns)."""
    x_train, x_val, y_train, y_val = regression.load_diabetes_split()

    def model() -> nn.Module:
        return regression.MLP() if broadcast else nn.Sequential(regression.MLP(), nn.Flatten(0))

    return Task(
        train=(x_train, y_train.reshape(-1)),
        val=(x_val, y_val.reshape(-1)),
        model=model,
        loss=lambda output, target: F.mse_loss(output, target),
        kind="regression",
        name="diabetes-custom-mse",
    )
