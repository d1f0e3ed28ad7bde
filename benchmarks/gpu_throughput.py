"""How many tokens per second does `recipe.fit` train on a GPU-sized model, next to the hand-written loop?

The charlm GPT (examples/charlm.py) at GPT-2-small size (12 layers, 12 heads, dim 768, block 1024: 86M parameters
with the 96-character vocabulary), batch 16 x 1024 tokens of Python standard-library source, the training windows
resident on the device, AdamW at lr 3e-4 without weight decay (fit's defaults), no evaluation. Four contenders:

  hand matched  a hand loop: bf16 autocast, torch.compile(model), AdamW(fused=True), no per-step .item()
  fit matched   recipe.fit(task, precision="bf16", compile=True, ...): the same settings
  hand fp32     the loop as first written: fp32 (TF32 matmuls allowed), eager, AdamW's default kernel
  fit defaults  recipe.fit(task, ...) with no precision or compile flag: what its automatic choices give

Each run builds a fresh model and trains W warm-up steps (compilation happens there; timed apart) and then N timed
steps, the device synchronised at both ends. Contenders are interleaved (one warm-up round, then R rounds in a new
shuffled order each) and the median is reported. On CUDA, MFU is tokens/s x FLOPs per token / the device's bf16 peak;
`--profile` adds the kernel time by category for the matched pair. On a CPU, `--size tiny` exercises the same code.

    python benchmarks/gpu_throughput.py [--size gpt2|tiny] [--device cuda|cpu] [--steps N] [--warmup-steps W]
                                        [--repeats R] [--batch-size B] [--compile on|off] [--profile] [--threads T]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ lives next to recipe/, outside the package

import recipe
from examples.charlm import GPT, VOCAB, encode, stdlib_text, windows

LR = 3e-4
WEIGHT_DECAY = 0.0  # fit's default; AdamW's own is 0.01, so the hand loops pass it to run the same update
SEED = 0
LOG_EVERY = 10  # fit's default: it reads the losses (one host sync) every 10 steps, where the window is marked
SIZES: dict[str, dict[str, int]] = {
    "gpt2": {"layers": 12, "heads": 12, "dim": 768, "block_size": 1024},  # GPT-2 small
    "tiny": {"layers": 2, "heads": 4, "dim": 64, "block_size": 64},  # a few ms a step on one CPU thread
}
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched in order against the lower-cased
# device name: the first fragment found wins, so the more specific names come first.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h200", 989e12),  # H200 and GH200
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
    ("a10", 125e12),
)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU named as `torch.cuda.get_device_name` names it; None when not in the table."""
    return next((peak for key, peak in PEAK_BF16 if key in device_name.lower()), None)


def flops_per_token(model: GPT, layers: int, dim: int, block_size: int) -> tuple[int, float]:
    """(N, FLOPs per token) as nanoGPT's `estimate_mfu` counts them: 6N for the matmuls forward and backward, plus
    12 L d T for attention's scores and weighted sum. N leaves out the token and position embeddings (lookups, no
    matmul) and keeps the untied output head, the parameters nanoGPT's tied embedding stands for."""
    n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("tok.", "pos.")))
    return n, 6 * n + 12 * layers * dim * block_size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Window:
    """The clock between steps `start` and `stop`, the device synchronised at both, and a profiler over it if given."""

    def __init__(self, start: int, stop: int, device: torch.device, profiler: Any = None):
        self.start, self.stop, self.device, self.profiler = start, stop, device, profiler
        self.begin = time.perf_counter()
        self.t0 = self.t1 = float("nan")

    def at(self, step: int) -> None:
        if step == self.start:
            sync(self.device)
            self.t0 = time.perf_counter()
            if self.profiler is not None:
                self.profiler.start()
        elif step == self.stop:
            sync(self.device)
            self.t1 = time.perf_counter()
            if self.profiler is not None:
                self.profiler.stop()

    @property
    def warmup_seconds(self) -> float:
        """From the run's start (model built, compiled on the first step) to the first timed step."""
        return self.t0 - self.begin

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


@dataclass
class Bench:
    """What every contender trains on: the task for fit, the same windows on the device for the hand loops."""

    task: recipe.Task
    make_model: Callable[[], nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    batch_size: int
    bf16: bool  # the matched pair's precision: bf16 autocast on CUDA, fp32 on a CPU
    compile: bool  # the matched pair's torch.compile


# ---- the contenders: each trains a fresh model to window.stop and returns (final training loss, fit's setup) ------


def hand_loop(b: Bench, window: Window, bf16: bool, compile: bool, fused: bool) -> tuple[float, dict[str, Any]]:
    torch.manual_seed(SEED)
    model = b.make_model().to(b.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, **({"fused": True} if fused else {}))
    forward = torch.compile(model) if compile else model
    n, step = len(b.x), 0
    model.train()
    while step < window.stop:
        perm = torch.randperm(n, device=b.device)  # one shuffled epoch, indexed on the device like fit's fast path
        for i in range(0, n, b.batch_size):
            idx = perm[i : i + b.batch_size]
            with torch.autocast(b.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = forward(b.x[idx])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b.y[idx].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            window.at(step)
            if step == window.stop:
                break
    return loss.item(), {}


def fit_run(b: Bench, window: Window, **flags: Any) -> tuple[float, dict[str, Any]]:
    result = recipe.fit(
        b.task,
        epochs=None,
        max_steps=window.stop,
        batch_size=b.batch_size,
        lr=LR,
        device=b.device,
        seed=SEED,
        progress=False,
        evaluate_every_epoch=False,
        log_every=LOG_EVERY,
        on_log=lambda step, _model: window.at(step),
        **flags,
    )
    return result.step_losses[-1], result.setup


def contenders(b: Bench) -> dict[str, Callable[[Bench, Window], tuple[float, dict[str, Any]]]]:
    return {
        "hand matched": partial(hand_loop, bf16=b.bf16, compile=b.compile, fused=True),
        "fit matched": partial(fit_run, precision="bf16" if b.bf16 else "fp32", compile=b.compile),
        "hand fp32": partial(hand_loop, bf16=False, compile=False, fused=False),
        "fit defaults": fit_run,
    }


# ---- the profile: where the matched pair's step time goes ---------------------------------------------------------

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (  # the first category whose fragment is in the name wins
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matmul/gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk", "aten::mm", "aten::addmm", "aten::bmm")),
    ("memcpy/memset", ("memcpy", "memset")),
    ("elementwise/fused", ("triton", "elementwise", "vectorized", "reduce", "norm", "softmax", "gelu", "entropy")),
    ("elementwise/fused", ("nll", "cat", "copy", "fill", "index", "embedding", "add", "mul", "div", "where", "sum")),
)


def category(name: str) -> str:
    lowered = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in lowered for k in keys)), "other")


def kernel_time_by_category(profiler: Any, device: torch.device) -> dict[str, float]:
    """Seconds per category: CUDA kernels' time on a GPU; on a CPU, the self time of the aten operators."""
    from torch.autograd import DeviceType

    totals: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        if device.type == "cuda":
            if event.device_type != DeviceType.CUDA:
                continue
            micros = event.self_device_time_total
        else:
            if not event.key.startswith("aten::"):
                continue
            micros = event.self_cpu_time_total
        totals[category(event.key)] += micros / 1e6
    return dict(totals)


def print_profile(name: str, profiler: Any, window: Window, steps: int) -> None:
    totals = kernel_time_by_category(profiler, window.device)
    busy = sum(totals.values())
    what = "CUDA kernel time" if window.device.type == "cuda" else "CPU operator self time"
    print(f"\nprofile of {name}, {steps} steps: {what} by category, ms per step and share")
    for cat, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:<18} {1e3 * seconds / steps:>9.2f} ms {seconds / busy:>6.1%}")
    rest = "the GPU busy; the rest it waits for the host" if window.device.type == "cuda" else "in operators"
    print(
        f"  {'total':<18} {1e3 * busy / steps:>9.2f} ms of {1e3 * window.seconds / steps:.2f} ms wall per step "
        f"({busy / window.seconds:.0%} {rest})"
    )


# ---- the harness -------------------------------------------------------------------------------------------------


def build_bench(args: argparse.Namespace, device: torch.device) -> tuple[Bench, dict[str, int]]:
    size = SIZES[args.size]
    ids = encode(stdlib_text(args.max_chars))
    cut = int(0.9 * len(ids))
    x, y = windows(ids[:cut], size["block_size"])
    # Whole batches only: a last, smaller batch would give torch.compile a second shape and recompile mid-epoch.
    keep = len(x) // args.batch_size * args.batch_size
    if keep == 0:
        raise SystemExit(f"--max-chars {args.max_chars}: fewer than one batch of {size['block_size']}-token windows")
    x, y = x[:keep], y[:keep]
    make_model = partial(GPT, vocab=len(VOCAB), **size)
    task = recipe.Task(
        train=(x, y),
        val=windows(ids[cut:], size["block_size"]),
        model=make_model,
        loss="cross_entropy",
        kind="sequence",
        num_classes=len(VOCAB),
        name=f"charlm-gpt-{args.size}",
    )
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    compile = {"on": True, "off": False, "auto": device.type == "cuda"}[args.compile]
    bench = Bench(task, make_model, x.to(device), y.to(device), device, args.batch_size, bf16, compile)
    return bench, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--size", choices=list(SIZES), help="model size (default: gpt2 on cuda, tiny on cpu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, help="timed steps per run, a multiple of 10 (default: 50 cuda, 20 cpu)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="untimed steps per run, a multiple of 10")
    parser.add_argument("--repeats", type=int, default=3, help="recorded rounds after the warm-up round")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on for cuda only")
    parser.add_argument("--max-chars", type=int, default=400_000, help="standard-library source to read")
    parser.add_argument("--profile", action="store_true", help="profile the matched pair over --profile-steps")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on a CPU (default: 1)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    args.size = args.size or ("gpt2" if args.device == "cuda" else "tiny")
    args.steps = args.steps or (50 if args.device == "cuda" else 20)
    for flag in ("steps", "warmup_steps", "profile_steps"):
        if getattr(args, flag) < LOG_EVERY or getattr(args, flag) % LOG_EVERY:
            parser.error(f"--{flag.replace('_', '-')} must be a positive multiple of {LOG_EVERY} (fit's log_every)")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":  # what fit sets for fp32 work; set for every contender, whichever ran before
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    bench, size = build_bench(args, device)
    n_params = sum(p.numel() for p in bench.make_model().parameters())
    n_flop, per_token = flops_per_token(bench.make_model(), size["layers"], size["dim"], size["block_size"])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = peak_flops(device_name) if device.type == "cuda" else None
    tokens = args.steps * args.batch_size * size["block_size"]
    print(
        f"charlm GPT {args.size}: {size['layers']} layers, {size['heads']} heads, dim {size['dim']}, block "
        f"{size['block_size']}, {n_params / 1e6:.2f}M parameters ({n_flop / 1e6:.2f}M non-embedding), batch "
        f"{args.batch_size} x {size['block_size']} tokens, {len(bench.x)} training windows on {device}"
    )
    print(
        f"{device_name}, torch {torch.__version__}, TF32 matmuls {'on' if device.type == 'cuda' else 'n/a'}, "
        f"{args.threads} thread(s); {args.warmup_steps} warm-up + {args.steps} timed steps per run, "
        f"{args.repeats} rounds + 1 warm-up round, interleaved; AdamW lr {LR}, no evaluation"
    )
    matched = ", ".join(
        ("bf16 autocast" if bench.bf16 else "fp32", "torch.compile" if bench.compile else "eager", "AdamW fused")
    )
    print(f"matched pair: {matched}" + (" (--compile on to compile on a CPU)" if not bench.compile else ""))

    runs = contenders(bench)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    warmups: dict[str, list[float]] = {name: [] for name in runs}
    final: dict[str, tuple[float, dict[str, Any]]] = {}
    order = list(runs)
    rng = random.Random(SEED)
    for round_ in range(args.repeats + 1):  # round 0 compiles and warms caches; its timings are not recorded
        rng.shuffle(order)
        for name in order:
            torch.set_num_threads(args.threads)
            window = Window(args.warmup_steps, args.warmup_steps + args.steps, device)
            final[name] = runs[name](bench, window)
            warmups[name].append(window.warmup_seconds)
            if round_ > 0:
                seconds[name].append(window.seconds)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    rate = {name: tokens / statistics.median(s) for name, s in seconds.items()}
    print()
    print(
        f"{'contender':<20} {'tokens/s':>10} {'median s':>9} {'min s':>7} {'MFU':>6} {'warm-up s':>10} "
        f"{'(later)':>8}   final loss"
    )
    for name in runs:
        mfu = f"{rate[name] * per_token / peak:.1%}" if peak else "n/a"
        print(
            f"{name:<20} {rate[name]:>10.0f} {statistics.median(seconds[name]):>9.3f} {min(seconds[name]):>7.3f} "
            f"{mfu:>6} {warmups[name][0]:>10.1f} {statistics.median(warmups[name][1:] or [0.0]):>8.1f}   "
            f"{final[name][0]:.3f}"
        )
    if device.type == "cpu":
        mfu_note = "MFU: n/a on CPU"
    elif peak is None:
        mfu_note = f"MFU: peak unknown for {device_name!r} (add it to PEAK_BF16)"
    else:
        mfu_note = f"MFU: tokens/s x {per_token / 1e6:.0f}M FLOPs/token / {peak / 1e12:.0f} TFLOP/s (dense bf16 peak)"
    print(
        f"({mfu_note}. warm-up s: the first run's time to its first timed step, compilation included; (later): the "
        "median of the other runs'.)"
    )
    hand, fit_matched = "hand matched", "fit matched"
    defaults = final["fit defaults"][1]
    print(
        f"fit defaults chose: {defaults['precision']}, compile {defaults['compile']}, "
        f"AdamW kernel {defaults['optimizer_kernel']}, data {defaults['data_path']}"
    )
    matched_ratio = rate[fit_matched] / rate[hand]
    print()
    print(
        f"ratio {fit_matched} / {hand} (tokens/s): {matched_ratio:.3f} "
        f"(goal >= 0.97: {'yes' if matched_ratio >= 0.97 else 'no'})"
    )
    print(f"ratio fit defaults / hand fp32 (tokens/s): {rate['fit defaults'] / rate['hand fp32']:.3f}")
    if peak is not None:
        above = {name: "yes" if rate[name] * per_token / peak > 0.40 else "no" for name in (hand, fit_matched)}
        print(f"MFU > 40%: {hand} {above[hand]}, {fit_matched} {above[fit_matched]}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for name in (hand, fit_matched):
            profiler = profile(activities=activities)
            window = Window(args.warmup_steps, args.warmup_steps + args.profile_steps, device, profiler)
            runs[name](bench, window)
            print_profile(name, profiler, window, args.profile_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
