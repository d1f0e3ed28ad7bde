"""Does `fit`'s own thread choice (`threads: auto`) keep up with the best fixed thread count, quiet and loaded?

    python benchmarks/threads.py [--repeats R] [--stages inspect,baseline,overfit] [--cap SECONDS]

Two workloads, each in a fresh process:

  loop   `fit` on the digits MLP for 20 epochs (the loop of benchmarks/loop_speed.py)
  job    the bundled main job, `recipe run configs/digits.yaml` (`--stages` to run part of it)

with three thread choices: `auto` (no setting: what a user gets), `1` (OMP_NUM_THREADS=1) and `all` (OMP_NUM_THREADS
= the cores), on a quiet machine and with a competing CPU-bound process the benchmark starts itself (one busy Python
loop, as a browser tab, a compiler or a second recipe would be). The three choices run interleaved in each round, and
the median of R rounds is reported with `auto`'s ratio to the best fixed choice (goal: at most 1.05 in every row). A
run longer than `--cap` seconds is stopped and shown as "> cap".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
LOOP = """
import sys; sys.path.insert(0, {root!r})
from examples.digits import make_task
from recipe import fit
fit(make_task("mlp"), epochs=20, batch_size=64, progress=False, device="cpu")
"""


def command(workload: str, stages: str, folder: Path) -> list[str]:
    if workload == "loop":
        return [sys.executable, "-c", LOOP.format(root=str(ROOT))]
    run = [sys.executable, "-m", "recipe.cli", "run", "configs/digits.yaml", "--device", "cpu", "--quiet"]
    return [*run, "--run-dir", str(folder / f"run-{time.monotonic_ns()}"), *(["--stages", stages] if stages else [])]


def timed(argv: list[str], choice: str, cap: float) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if choice != "auto":
        env["OMP_NUM_THREADS"] = "1" if choice == "1" else str(CORES)
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=cap)
    except subprocess.TimeoutExpired:
        return float("inf")
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{argv} failed: {done.stderr[-400:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stages", default="", help="the job's stages (default: all six)")
    parser.add_argument("--cap", type=float, default=900.0, help="seconds after which a run is stopped")
    parser.add_argument("--workloads", default="loop,job")
    args = parser.parse_args(argv)
    choices = ("auto", "1", "all")
    print(f"{CORES} cores; {args.repeats} rounds; job stages: {args.stages or 'all'}; cap {args.cap:.0f} s")
    print(f"{'workload':<8} {'machine':<8} " + " ".join(f"{c:>9}" for c in choices) + "  auto / best fixed")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.workloads.split(","):
            for load in ("quiet", "loaded"):
                hog = None
                if load == "loaded":
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    times: dict[str, list[float]] = {c: [] for c in choices}
                    for _ in range(args.repeats):
                        for choice in choices:
                            times[choice].append(timed(command(workload, args.stages, Path(tmp)), choice, args.cap))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
                median = {c: statistics.median(t) for c, t in times.items()}
                best = min(median["1"], median["all"])
                ratio = median["auto"] / best
                worst = max(worst, ratio)
                cells = " ".join(f"{m:>8.2f}s" if m != float("inf") else f"{'>cap':>9}" for m in median.values())
                print(f"{workload:<8} {load:<8} {cells}  {ratio:.3f}", flush=True)
    print(f"auto within {100 * (worst - 1):+.1f}% of the best fixed choice in every row (goal: within +5%)")
    return 0 if worst <= 1.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
