"""Does the cost of `inspect` and of `fit` grow no worse than linearly with the data?

The digits (examples/digits.py: 1,437 train / 360 val images of 64 pixels) tiled 1x, 4x and 16x, every copy with
Gaussian noise added (sd 0.05, on pixels scaled to unit sd) so that no two rows are identical: `inspect`'s duplicates
check hashes rows and would otherwise see every copy as a duplicate. At each scale, the wall time of

  inspect  Recipe(task, stages=["inspect"], run_dir=..., progress=False, quiet=True).run(), default settings
           (the label-noise scan included); splits larger than inspect.max_samples (20,000) are sampled
  fit      recipe.fit(task, epochs=E, batch_size=64) on the digits MLP, a validation pass every epoch

The runs are interleaved (one untimed warm-up run of each at the smallest scale, then R rounds, each in a new
shuffled order, with F runs of fit per scale as they are quick and noisier) and the median is reported, with
time(kx) / time(1x) beside k and the cost per row.

    python benchmarks/scaling.py [--scales 1,4,16] [--epochs 3] [--repeats 2] [--fit-repeats 3] [--tolerance 0.25]
                                 [--threads 1] [--no-label-noise] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ lives next to recipe/, outside the package

import recipe
from examples.digits import MLP, load_digits_split

SEED = 0
NOISE = 0.05  # pixel sd is 1 after load_digits_split's scaling: the copies stay the same digits
BATCH_SIZE = 64


def tiled_task(k: int) -> recipe.Task:
    """The digits task with each split tiled `k` times, every copy with its own noise."""
    x_train, x_val, y_train, y_val = load_digits_split(SEED)
    rng = np.random.default_rng(SEED)

    def tile(x: np.ndarray) -> np.ndarray:
        copies = np.tile(x, (k, 1))
        return (copies + rng.normal(0.0, NOISE, copies.shape)).astype(np.float32)

    return recipe.Task(
        train=(tile(x_train), np.tile(y_train, k)),
        val=(tile(x_val), np.tile(y_val, k)),
        model=MLP,
        loss="cross_entropy",
        num_classes=10,
        name=f"digits-mlp-x{k}",
        image_shape=(8, 8),
    )


def run_inspect(task: recipe.Task, args: argparse.Namespace) -> float:
    config = {"inspect": {"label_noise": args.label_noise}}
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):  # its summary line
        t0 = time.perf_counter()
        recipe.Recipe(
            task, stages=["inspect"], run_dir=run_dir, device="cpu", config=config, progress=False, quiet=True
        ).run()
        return time.perf_counter() - t0


def run_fit(task: recipe.Task, args: argparse.Namespace) -> float:
    t0 = time.perf_counter()
    recipe.fit(task, epochs=args.epochs, batch_size=BATCH_SIZE, device="cpu", seed=SEED, progress=False)
    return time.perf_counter() - t0


STAGES = {"inspect": run_inspect, "fit": run_fit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,4,16", help="tiling factors, comma-separated (default: 1,4,16)")
    parser.add_argument("--epochs", type=int, default=3, help="fit's epochs at every scale")
    parser.add_argument("--repeats", type=int, default=2, help="recorded rounds (inspect's take ~1 min on 1 thread)")
    parser.add_argument(
        "--fit-repeats", type=int, default=3, help="fit runs per round and scale: quick, so more of them steady it"
    )
    parser.add_argument("--tolerance", type=float, default=0.25, help="linear means time(kx) <= k x time(1x) x (1+t)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument(
        "--label-noise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="inspect's label-noise scan, which trains quick models for fixed budgets (default: on)",
    )
    parser.add_argument("--quick", action="store_true", help="scales 1,4, one epoch, one round: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.scales, args.epochs, args.repeats, args.fit_repeats = "1,4", 1, 1, 1
    scales = sorted({int(s) for s in args.scales.split(",")})
    if scales[0] < 1 or len(scales) < 2:
        parser.error("--scales: two or more tiling factors, whole numbers >= 1")
    torch.set_num_threads(args.threads)

    tasks = {k: tiled_task(k) for k in scales}  # built outside the timers
    rows = {k: len(t.train) + len(t.val) for k, t in tasks.items()}
    limit = 20_000  # InspectSettings.max_samples
    print(
        f"digits tiled {', '.join(f'{k}x' for k in scales)} with N(0, {NOISE}) noise per copy: "
        + ", ".join(f"{k}x {len(tasks[k].train)} train / {len(tasks[k].val)} val" for k in scales)
    )
    print(
        f"the digits MLP trained by fit for {args.epochs} epoch(s), batch {BATCH_SIZE}, validation every epoch; "
        f"inspect with its defaults{'' if args.label_noise else ' but no label-noise scan'}; "
        f"cpu, torch {torch.__version__}, {args.threads} thread(s), {args.repeats} round(s) + warm-up, "
        f"interleaved, fit {args.fit_repeats}x per round"
    )
    sampled = [f"{k}x" for k in scales if max(len(tasks[k].train), len(tasks[k].val)) > limit]
    if sampled:
        print(f"note: at {', '.join(sampled)} inspect reads a sample of {limit:,} rows of the larger split(s) "
              "(inspect.max_samples); its NaN/Inf scan still reads every row.")  # fmt: skip

    for run in STAGES.values():  # warm-up: imports, allocator, first-call caches; not recorded
        run(tasks[scales[0]], args)
    times: dict[tuple[str, int], list[float]] = {(name, k): [] for name in STAGES for k in scales}
    order = [(name, k) for name, k in times for _ in range(args.fit_repeats if name == "fit" else 1)]
    rng = random.Random(SEED)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for name, k in order:
            torch.set_num_threads(args.threads)
            times[name, k].append(STAGES[name](tasks[k], args))

    base = scales[0]
    print()
    print(
        f"{'stage':<8} {'scale':>6} {'rows':>7} {'median s':>9} {'min s':>7} {f'vs {base}x':>7} {'linear':>7} "
        f"{'us/row':>8}"
    )
    verdicts = []
    for name in STAGES:
        first = statistics.median(times[name, base])
        worst = 0.0  # the largest time ratio / data ratio over the scales above the smallest
        for k in scales:
            med = statistics.median(times[name, k])
            ratio, linear = med / first, k / base
            worst = max(worst, ratio / linear) if k > base else worst
            print(
                f"{name:<8} {f'{k}x':>6} {rows[k]:>7} {med:>9.3f} {min(times[name, k]):>7.3f} {ratio:>6.2f}x "
                f"{linear:>6.0f}x {1e6 * med / rows[k]:>8.1f}"
            )
        ok = worst <= 1 + args.tolerance
        verdicts.append(
            f"{name}: {'grows no worse than linearly' if ok else 'grows faster than linearly'} "
            f"(worst time ratio / data ratio {worst:.2f}, limit {1 + args.tolerance:.2f})"
        )
    print(f"(vs {base}x: the median time over the smallest scale's; linear: the data ratio; us/row: per row.)")
    print()
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
