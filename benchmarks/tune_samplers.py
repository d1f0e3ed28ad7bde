"""Samplers side by side on digits: best validation loss at an equal budget, and trials per minute with 1 and 2
local worker processes, in one run.

    python benchmarks/tune_samplers.py [--trials 16] [--seeds 8] [--epochs 5] [--throughput-trials 32]

Quasi-random (scrambled Sobol), random, TPE and grid each get the same trials on the same search space (learning
rate, weight decay, dropout of the digits MLP); each (sampler, seed) pair is its own study. The throughput part runs
one Sobol study with one worker and again with two (`tune.workers`), timing the whole search.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples import digits
from recipe import Recipe, Tune

SPACE = {
    "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
    "dropout": {"low": 0.0, "high": 0.5},
}
SOURCE = {"task": "examples.digits:make_task", "task_args": {"model": "mlp"}}


def search(sampler: str, seed: int, trials: int, epochs: int, workers: int = 1) -> tuple[float, float]:
    """Best validation loss of one study, and its wall time in seconds. Pruning is off: the samplers are compared
    on the same finished trials, not on what the median rule happened to stop. `seed` is the sampler's; every trial
    trains with seed 0, so two samplers proposing the same configuration get the same loss."""
    with tempfile.TemporaryDirectory() as tmp:
        stage = Tune(
            trials=trials,
            sampler=sampler,
            sampler_seed=seed,
            space=SPACE,
            epochs=epochs,
            seeds=0,
            ensemble=0,
            workers=workers,
            pruning="off",
        )
        start = time.perf_counter()
        result = Recipe(
            digits.make_task(),
            run_dir=tmp,
            stages=[stage],
            device="cpu",
            seed=0,
            progress=False,
            quiet=True,
            source=SOURCE,
        ).run()
        seconds = time.perf_counter() - start
        return result.checks[0].value["best_val_loss"], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--throughput-trials", type=int, default=32)
    parser.add_argument("--throughput-epochs", type=int, default=40)
    args = parser.parse_args(argv)

    rows = []
    for sampler in ("sobol", "random", "tpe", "grid"):
        best = [search(sampler, seed, args.trials, args.epochs)[0] for seed in range(args.seeds)]
        rows.append((sampler, statistics.fmean(best), statistics.pstdev(best), min(best)))
        print(f"  {sampler}: {best}", file=sys.stderr)
    print(
        f"best validation loss after {args.trials} trials, {args.seeds} seeds (digits MLP, {args.epochs} epochs/trial)"
    )
    print(f"{'sampler':<8} | {'mean':>8} | {'std':>7} | {'min':>8}")
    for sampler, mean, std, low in rows:
        print(f"{sampler:<8} | {mean:8.4f} | {std:7.4f} | {low:8.4f}")
    sobol, random = rows[0][1], rows[1][1]
    print(f"quasi-random vs random (mean best loss): {sobol:.4f} vs {random:.4f} ({'<=' if sobol <= random else '>'})")

    threads = torch.get_num_threads()
    n = args.throughput_trials
    _, one = search("sobol", 0, n, args.throughput_epochs, workers=1)
    _, two = search("sobol", 0, n, args.throughput_epochs, workers=2)
    torch.set_num_threads(threads)
    print(f"\nthroughput, {n} trials of {args.throughput_epochs} epochs (whole search, worker start-up included)")
    print(f"1 worker : {60 * n / one:6.1f} trials/min ({one:.1f} s)")
    print(f"2 workers: {60 * n / two:6.1f} trials/min ({two:.1f} s), {one / two:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
