"""How well does `label_noise` find planted wrong labels, next to cleanlab?

A share of the training labels (5%, 10%, 20% by default) is flipped, each to another class drawn at random
(`--pattern pair`: every class flips to one fixed other class, the confusable-pair noise of Northcutt et al.
2021). Each run scores the suspects against the flipped indices (precision, recall, F1) for:

  ours      recipe.diagnostics.label_noise.find_label_issues(task, seed=seed) on the task as the recipe sees it
            (digits: examples/digits.py's MLP; wine and breast_cancer: a 64-64 MLP on standardised features;
            waves, not in the default list: noisy sine / square / sawtooth signals and a small Conv1d net, where
            a linear probe is at chance and only the task's model can judge), with the verdict of the `label_noise`
            check
  cleanlab  cleanlab.filter.find_label_issues on 5-fold out-of-fold probabilities of scikit-learn's
            LogisticRegression (the catalog's anchor), when cleanlab is installed

Both see the same split, the same flipped labels and the same standardised inputs. Each seed draws a new
train/validation split and new flips; the table shows the mean over seeds, times on this machine's CPU.

    python benchmarks/label_noise.py [--datasets digits,wine,breast_cancer] [--noise 0,0.05,0.1,0.2]
                                     [--seeds 0,1,2] [--pattern uniform|pair] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ lives next to recipe/, outside the package

from examples.digits import MLP, load_digits_split
from recipe import Task
from recipe.diagnostics.label_noise import find_label_issues, label_noise


def load(dataset: str, seed: int) -> tuple[np.ndarray, ...]:
    """(x_train, x_val, y_train, y_val), stratified 80/20, standardised with training statistics."""
    if dataset == "digits":
        return load_digits_split(seed)
    if dataset == "waves":
        return waves(seed)
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    x, y = getattr(datasets, f"load_{dataset}")(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype(np.float32), y, test_size=0.2, random_state=seed, stratify=y
    )
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    return (x_train - mean) / std, (x_val - mean) / std, y_train, y_val


def waves(seed: int, n: int = 600, length: int = 64) -> tuple[np.ndarray, ...]:
    """Sine, square and sawtooth waves (n, 1, length) of random frequency, phase and amplitude in Gaussian noise;
    the label is the waveform. Every class averages to zero at every position: a linear probe is at chance."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    cycles = rng.uniform(1.5, 4.0, (n, 1)) * np.arange(length) / length + rng.uniform(0, 1, (n, 1))
    shapes = np.stack([np.sin(2 * np.pi * cycles), np.sign(np.sin(2 * np.pi * cycles)), 2 * (cycles % 1) - 1], 1)
    x = (shapes[np.arange(n), y] * rng.uniform(0.5, 1.5, (n, 1)) + rng.normal(0, 0.3, (n, length)))[:, None]
    cut = int(0.75 * n)
    return x[:cut].astype(np.float32), x[cut:].astype(np.float32), y[:cut], y[cut:]


class WaveCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        convs = [nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.Conv1d(16, 16, 7, padding=3), nn.ReLU()]
        self.net = nn.Sequential(*convs, nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def flip(y: np.ndarray, rate: float, seed: int, pattern: str) -> tuple[np.ndarray, set[int]]:
    """Flip round(rate * n) labels chosen at random: to a random other class, or ("pair") to one fixed other class."""
    rng = np.random.default_rng(seed + 1000)
    classes = int(y.max()) + 1
    idx = rng.choice(len(y), round(rate * len(y)), replace=False)
    noisy = y.copy()
    if pattern == "uniform":
        noisy[idx] = (y[idx] + rng.integers(1, classes, len(idx))) % classes
    else:
        order = rng.permutation(classes)
        partner = np.empty(classes, dtype=np.int64)
        partner[order] = np.roll(order, 1)
        noisy[idx] = partner[y[idx]]
    return noisy, set(idx.tolist())


def make_task(dataset: str, x_train, x_val, y_train, y_val) -> Task:
    classes, features = int(y_val.max()) + 1, x_train.shape[1]

    def mlp() -> nn.Module:
        return nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes))

    model = MLP if dataset == "digits" else WaveCNN if dataset == "waves" else mlp
    return Task(train=(x_train, y_train), val=(x_val, y_val), model=model, num_classes=classes, name=dataset)


def score(found: list[int], flipped: set[int]) -> tuple[float, float, float]:
    hits = len(set(found) & flipped)
    precision = hits / len(found) if found else 0.0
    recall = hits / len(flipped) if flipped else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def run_ours(task: Task, seed: int) -> tuple[list[int], float, str]:
    start = time.perf_counter()
    issues = find_label_issues(task, seed=seed)
    seconds = time.perf_counter() - start
    assert issues is not None
    return issues.indices, seconds, label_noise(issues, task).status


def run_cleanlab(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[list[int], float]:
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    start = time.perf_counter()
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    x = x.reshape(len(x), -1)
    probs = cross_val_predict(LogisticRegression(max_iter=1000), x, y, cv=folds, method="predict_proba")
    mask = cleanlab_find_label_issues(y, probs, n_jobs=1)
    return np.flatnonzero(mask).tolist(), time.perf_counter() - start


def cells(mean: np.ndarray, rate: float, width: int) -> str:
    """Mean precision, recall, F1 and seconds; on clean labels, the number of suspects instead."""
    if not rate:
        return f"{mean[4]:>{width}.1f} {'suspects':>11s} {mean[3]:5.2f}"
    return f"{mean[0]:{width}.2f} {mean[1]:5.2f} {mean[2]:5.3f} {mean[3]:5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,wine,breast_cancer")
    parser.add_argument("--noise", default="0,0.05,0.1,0.2", help="comma-separated shares of labels to flip")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (split, flips, folds)")
    parser.add_argument("--pattern", default="uniform", choices=("uniform", "pair"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # one-time costs outside both timings: torch.optim imports torch._dynamo on a first optimizer (~1 s), which
    # every training process pays once whatever trains first
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    warnings.filterwarnings("ignore")
    try:
        import cleanlab.filter  # noqa: F401  (imported here: its import time is not its pipeline's)
        import sklearn.linear_model
        import sklearn.model_selection  # noqa: F401

        have_cleanlab = True
    except ImportError:
        have_cleanlab = False
        print("cleanlab is not installed: its columns are left out (pip install cleanlab).")
    # scikit-learn's BLAS (OpenBLAS) and OpenMP pools use every core unless told: pin them to the same count, or the
    # cleanlab contender's seconds measure thread contention, not its work (130x on a shared 2-core machine). After
    # the imports: threadpoolctl limits only the pools already loaded (before, scikit-learn's ran on 2 threads).
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(args.threads)
    assert all(pool["num_threads"] == args.threads for pool in threadpool_info()), threadpool_info()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.pattern} flips, mean over seeds {seeds}; P/R/F1 of the suspects against the flipped indices\n")
    head = f"{'dataset':14s}{'noise':>6s}{'flipped':>8s} | {'ours P':>6s} {'R':>5s} {'F1':>5s} {'s':>5s}  verdicts"
    print(head + (f"{'':10s} | {'cleanlab P':>10s} {'R':>5s} {'F1':>5s} {'s':>5s}" if have_cleanlab else ""))
    wins = []
    for dataset in args.datasets.split(","):
        for rate in [float(r) for r in args.noise.split(",")]:
            ours, theirs, verdicts = [], [], Counter()
            for seed in seeds:
                x_train, x_val, y_train, y_val = load(dataset, seed)
                noisy, flipped = flip(y_train, rate, seed, args.pattern)
                found, seconds, status = run_ours(make_task(dataset, x_train, x_val, noisy, y_val), seed)
                ours.append((*score(found, flipped), seconds, len(found)))
                verdicts[status] += 1
                if have_cleanlab:
                    found, seconds = run_cleanlab(x_train, noisy, seed)
                    theirs.append((*score(found, flipped), seconds, len(found)))
            mean = np.mean(ours, axis=0)
            verdict = " ".join(f"{k} {v}/{len(seeds)}" for k, v in sorted(verdicts.items()))
            line = f"{dataset:14s}{rate:6.0%}{len(flipped):8d} | {cells(mean, rate, 6)}  {verdict:18s}"
            if have_cleanlab:
                other = np.mean(theirs, axis=0)
                line += f" | {cells(other, rate, 10)}"
                if rate:
                    wins.append(mean[2] > other[2])
            print(line, flush=True)
    if wins:
        print(f"\nours has the higher F1 in {sum(wins)} of {len(wins)} (dataset, noise) cells.")


if __name__ == "__main__":
    main()
