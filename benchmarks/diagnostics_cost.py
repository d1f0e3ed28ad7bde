"""What do the diagnostic stages cost next to training? inspect + baseline + overfit on digits against one fit.

    python benchmarks/diagnostics_cost.py [--rounds R] [--top N]

Each round, in one process on one intra-op thread, times (CPU seconds, so a busy machine moves both alike):

  fit          `fit(make_task("mlp"), epochs=20, batch_size=64)`: one 20-epoch training run of the main job's model
  diagnostics  `Recipe(..., stages=["inspect", "baseline", "overfit"])` with the main job's settings
               (configs/digits.yaml), writing its run directory (figures, tables) like a user's run
  no figures   the same with `figures=False` (`--no-figures`): the checks and tables without the dozen PNG plots

and prints the medians over R rounds after one warm-up round (imports, font caches and torch's first optimizer are
one-time costs outside all three), their ratios (issue 19's goal: at most 6x), and where the diagnostics' time went: the
checks' own `seconds` (a check's figure included), largest first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ lives next to recipe/, outside the package

from examples.digits import make_task
from recipe import Recipe, fit

ROOT = Path(__file__).resolve().parents[1]

STAGES = ["inspect", "baseline", "overfit"]


def cpu_seconds(work) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=12, help="how many of the costliest checks to list")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())
    config = {k: v for k, v in config.items() if k in ("train", *STAGES)}
    fits, diagnostics, bare, per_check = [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds + 1):
            run_dir = Path(tmp) / f"run-{round_}"
            one_fit = cpu_seconds(lambda: fit(make_task("mlp"), epochs=20, batch_size=64, progress=False, device="cpu"))
            recipe = Recipe(
                make_task("mlp"), stages=STAGES, config=config, run_dir=run_dir, progress=False, quiet=True,
                device="cpu",
            )  # fmt: skip
            stages = cpu_seconds(recipe.run)
            recipe = Recipe(
                make_task("mlp"), stages=STAGES, config=config, run_dir=Path(tmp) / f"bare-{round_}", progress=False,
                quiet=True, device="cpu", figures=False,
            )  # fmt: skip
            without = cpu_seconds(recipe.run)
            if round_ == 0:
                continue  # warm-up: one-time costs
            fits.append(one_fit)
            diagnostics.append(stages)
            bare.append(without)
            for check in json.loads((run_dir / "checks.json").read_text()):
                per_check.setdefault(f"{check['stage']}.{check['name']}", []).append(check.get("seconds") or 0.0)
    fit_s, diag_s, bare_s = statistics.median(fits), statistics.median(diagnostics), statistics.median(bare)
    print(
        f"one 20-epoch fit: {fit_s:.2f} s CPU; inspect + baseline + overfit: {diag_s:.2f} s CPU, "
        f"{bare_s:.2f} s without figures"
    )
    print(
        f"ratio: {diag_s / fit_s:.1f}x, {bare_s / fit_s:.1f}x without figures (goal: at most 6x); "
        f"medians of {args.rounds} rounds, one thread"
    )
    costly = sorted(per_check.items(), key=lambda item: -statistics.median(item[1]))[: args.top]
    accounted = sum(statistics.median(v) for v in per_check.values())
    print(f"checks' own seconds, {accounted:.2f} s in all (wall), the costliest:")
    for name, seconds in costly:
        print(f"  {name:34s} {statistics.median(seconds):6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
