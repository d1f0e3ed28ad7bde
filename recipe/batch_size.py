"""The batch-size finder: the largest batch whose training and evaluation steps fit in GPU memory, and the size past
which throughput stops scaling.

    "... the largest batch size supported by the hardware" — Karpathy, A Recipe for Training Neural Networks.

The search doubles the batch (1, 2, 4, ...) until a step runs out of memory or the cap, refines between the last
size that fit and the first that did not, keeps a safety margin below the memory limit, and stops earlier where
throughput stops scaling (the Deep Learning Tuning Playbook: while the accelerator is under-used, doubling the batch
nearly doubles examples per second). The size picked is then re-verified with a fresh model and optimizer, because
finders that measure once report sizes the real run cannot hold (its memory state and fragmentation differ).

The search itself (`search_batch_size`) takes any `try_batch(batch_size) -> examples_per_second` that raises
`torch.OutOfMemoryError` when a size does not fit; `find_batch_size` builds that function for a task on a CUDA device.
"""

from __future__ import annotations

import gc
import itertools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from recipe.check import Check, failed, passed
from recipe.data import fixed_indices, place, to_device
from recipe.errors import ConfigError, NoBatchFitsError
from recipe.reproducibility import resolve_device
from recipe.step import StepSettings, build_step
from recipe.task import Task

SCALING = 1.6
"""A doubling "still scales" when examples/s grow at least this much: 80% of the ideal 2x. Below it the GPU is busy
already, and a bigger batch buys little speed while costing optimizer steps per epoch."""
MARGIN = 0.1
"""Kept below the largest size that fit when memory is the limit: the real run's allocator state differs from the
finder's (Lightning users report finder sizes that then run out of memory)."""
MIN_STEPS_PER_EPOCH = 8
"""The cap keeps at least this many optimizer steps per epoch, so a small dataset is not trained full-batch."""

Limit = Literal["throughput", "memory", "cap"]
_OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED")  # allocation failures some kernels raise as RuntimeError


@dataclass
class BatchSizeResult:
    """What the finder measured and chose.

    Attributes:
        batch_size: the size chosen (re-verified with a fresh model and optimizer).
        limited_by: what decided it: "throughput" (the knee), "memory" (the largest fit, less the margin) or "cap".
        message: the choice and its reason, in one sentence.
        curve: examples/s of the training step for every size that fit, by batch size.
        out_of_memory: the sizes that ran out of memory, in the order tried.
        knee: the largest power of two whose doubling from half its size still gave `SCALING`x examples/s.
        largest_fit: the largest size that fit during the search.
        cap: the largest size the search could try: the largest power of two not above the cap it was given.
        cap_reason: how the cap was set.
    """

    batch_size: int
    limited_by: Limit
    message: str
    curve: dict[int, float] = field(default_factory=dict)
    out_of_memory: list[int] = field(default_factory=list)
    knee: int = 1
    largest_fit: int = 1
    cap: int = 1
    cap_reason: str = ""

    @property
    def rule(self) -> str:
        """How the batch size was set, for `Context.learn(batch_size_rule=...)`."""
        return {
            "throughput": "finder: throughput knee",
            "memory": f"finder: memory limit less {MARGIN:.0%}",
            "cap": f"finder: cap ({self.cap_reason})",
        }[self.limited_by]

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "limited_by": self.limited_by,
            "rule": self.rule,
            "message": self.message,
            "curve": [{"batch_size": b, "examples_per_second": v} for b, v in sorted(self.curve.items())],
            "out_of_memory": self.out_of_memory,
            "knee": self.knee,
            "largest_fit": self.largest_fit,
            "cap": self.cap,
            "cap_reason": self.cap_reason,
            "scaling_threshold": SCALING,
            "margin": MARGIN,
        }


def search_batch_size(
    try_batch: Callable[[int], float], cap: int, cap_reason: str = "", progress: bool = False
) -> BatchSizeResult:
    """Search batch sizes with `try_batch(batch_size) -> examples_per_second`, which raises `torch.OutOfMemoryError`
    when the size does not fit (and leaves nothing allocated behind it: a fresh model and optimizer every call).

    Doubling from 1 up to the largest power of two not above `cap`, then a binary search between the last fit and
    the first OOM, then `MARGIN` off the memory limit. The choice is the throughput knee unless memory limits it
    first, re-verified with `try_batch` (stepping down to the next lower power of two while that runs out of memory).

    Raises:
        NoBatchFitsError: even batch size 1 runs out of memory.

    Example::

        import torch
        from recipe.batch_size import search_batch_size

        def fake_step(batch_size):  # memory for 600 samples; throughput saturates past 128
            if batch_size > 600:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return 1000.0 * min(batch_size, 128)

        result = search_batch_size(fake_step, cap=4096)
        assert result.batch_size == 128 and result.limited_by == "throughput"
    """
    if cap < 1:
        raise ConfigError(f"the batch-size cap must be at least 1, got {cap}.")
    cap = 2 ** math.floor(math.log2(cap))
    curve: dict[int, float] = {}
    oom: list[int] = []
    last_error = ""
    bar = tqdm(desc="batch size", unit="size", leave=False, disable=not progress or not sys.stderr.isatty())

    def fits(size: int) -> bool:
        nonlocal last_error
        bar.set_postfix(batch=size, refresh=False)
        bar.update()
        ran_out = False
        try:
            curve.setdefault(size, try_batch(size))  # a re-verification keeps the search's measurement
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if not is_out_of_memory(exc):
                raise
            ran_out, last_error = True, ". ".join(str(exc).split(". ")[:2])  # CUDA's message goes on for lines
        if ran_out:  # freed here, once the exception is gone: collected, as its frames may form cycles
            oom.append(size)
            gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # each size starts from an empty cache, as a fresh run would
        return not ran_out

    try:
        size, largest = 1, 0
        while size <= cap and fits(size):
            largest, size = size, size * 2
        if largest == 0:
            raise NoBatchFitsError(_nothing_fits_message(last_error))
        knee, ratio = _knee(curve)
        first_oom = size if oom else None
        limit: Limit
        if first_oom is not None and knee == largest:  # still scaling when memory ran out: find the real edge
            low, high = largest, first_oom
            while (mid := _round_down((low + high) // 2)) > low and high - low > max(1, low // 8):
                low, high = (mid, high) if fits(mid) else (low, mid)
            largest, first_oom = low, high
            chosen, limit = max(1, _round_down(int(largest * (1 - MARGIN)))), "memory"
        elif knee < largest:
            chosen, limit = knee, "throughput"
        else:
            chosen, limit = largest, "cap"
        proposed = chosen
        while not fits(chosen):  # re-verify from a fresh model and optimizer
            if chosen == 1:
                raise NoBatchFitsError(_nothing_fits_message(last_error))
            chosen = 2 ** math.floor(math.log2(chosen - 1))  # the next lower power of two
    finally:
        bar.close()
    result = BatchSizeResult(chosen, limit, "", curve, oom, knee, largest, cap, cap_reason)
    result.message = _message(result, ratio, first_oom, proposed)
    return result


def find_batch_size(
    task: Task,
    device: str | torch.device = "cuda",
    *,
    optimizer: str = "adamw",
    lr: float = 3e-4,
    precision: str = "auto",
    grad_clip: float | None = None,
    channels_last: bool | None = None,
    eval_batch_size: int = 1024,
    max_batch_size: int | None = None,
    steps: int = 5,
    warmup: int = 2,
    seed: int = 0,
    progress: bool = True,
) -> BatchSizeResult:
    """The largest batch whose training and evaluation steps fit on a CUDA device, stopped at the throughput knee.

    Every size is tried on a fresh model from the task's factory (the user's models are never touched) with the real
    optimizer (its state allocated), with the training split resident where `fit` would keep it; a training step is
    `fit`'s own (`recipe.step.build_step`: precision, channels_last, clipping, optimizer step), an evaluation step is
    a forward pass at `eval_batch_size` as `fit` evaluates. `warmup` steps, then `steps` timed ones give examples/s.
    The model is not compiled: a compiled step would recompile for every size.

    Args:
        task: the problem; its training split bounds the batch.
        device: a CUDA device ("cuda", "cuda:N" or a torch.device).
        optimizer: "adamw", "adam" or "sgd", as `fit` will train.
        lr: the optimizer's learning rate (irrelevant to memory, used only to build it).
        precision: "auto" (bf16 autocast where supported), "fp32" or "bf16", as `fit` will train.
        grad_clip: the gradient-norm clip `fit` will apply (clipping reads every gradient), or None.
        channels_last: as `fit`'s: None picks channels_last for conv nets on CUDA.
        eval_batch_size: the batch size of `fit`'s evaluation passes.
        max_batch_size: never try above this; default len(train) // `MIN_STEPS_PER_EPOCH`, as a power of two.
        steps: timed training steps per size.
        warmup: untimed steps first (the optimizer state is allocated, kernels are chosen).
        seed: seeds the models and the batches drawn; the caller's random state is restored afterwards.
        progress: a progress bar over the sizes tried (only on a terminal).

    Raises:
        ConfigError: the device is not a CUDA device.
        NoBatchFitsError: even batch size 1 does not fit.

    Example::

        from recipe.batch_size import find_batch_size
        from examples.digits import make_task

        result = find_batch_size(make_task(), "cuda", progress=False)
        print(result.message)  # e.g. "throughput stops scaling at 64 (doubling to 128 gave 1.21x); using 64."
    """
    dev = resolve_device(device)
    if dev.type != "cuda":
        raise ConfigError(
            f"the batch-size finder measures CUDA memory and device={str(dev)!r} is not a CUDA device; "
            "pass device='cuda' or choose batch_size yourself."
        )
    task.validate(dev)
    limit, reason = _cap(len(task.train), max_batch_size)
    settings = StepSettings(optimizer, lr, precision=precision, grad_clip=grad_clip, channels_last=channels_last)
    trial = _trial(task, dev, settings, min(eval_batch_size, len(task.val)), steps, warmup, seed)
    with torch.random.fork_rng(devices=[dev.index if dev.index is not None else torch.cuda.current_device()]):
        return search_batch_size(trial, limit, reason, progress)


def batch_size_check(result: BatchSizeResult, previous: int) -> Check:
    """A batch size far from what the hardware holds (runs out of memory, or leaves the GPU idle): the size later
    stages train with, and why.

    Why: the recipe trains at "the largest batch size supported by the hardware"; the tuning playbook stops where
    doubling the batch no longer nearly doubles throughput.
    """
    message = f"{result.message} Later stages train with batch_size={result.batch_size} (was {previous})."
    return passed("batch_size", message, result.batch_size, f"<= {result.cap}, re-verified with a real step")


def no_batch_fits(error: NoBatchFitsError) -> Check:
    """The `batch_size` check when even one sample runs out of memory: no later stage could train."""
    return failed("batch_size", str(error), 0, ">= 1")


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA allocation failure (recoverable: free and retry smaller), as opposed to a bug."""
    return isinstance(exc, torch.OutOfMemoryError) or any(m in str(exc) for m in _OOM_MARKERS)


def _cap(n_train: int, max_batch_size: int | None) -> tuple[int, str]:
    """The largest size worth trying, and why: never the whole split, and a handful of steps per epoch."""
    if max_batch_size is not None:
        return min(max_batch_size, n_train), f"max_batch_size={max_batch_size}, training split {n_train}"
    limit = max(1, n_train // MIN_STEPS_PER_EPOCH)
    return limit, f"len(train)//{MIN_STEPS_PER_EPOCH} = {limit}, keeping {MIN_STEPS_PER_EPOCH}+ steps per epoch"


def _trial(
    task: Task,
    dev: torch.device,
    settings: StepSettings,
    eval_size: int,
    steps: int,
    warmup: int,
    seed: int,
) -> Callable[[int], float]:
    """`try_batch` for the task: fresh model and optimizer, `warmup` + `steps` of `fit`'s training step, one
    evaluation step."""
    train, _ = place(task.train, dev)  # resident on the GPU when fit would keep it there: that memory is taken
    eval_batch = to_device(task.val.batch(range(eval_size)), dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    def try_batch(batch_size: int) -> float:
        torch.manual_seed(seed)
        model = task.make_model().to(dev).train()
        train_step = build_step(task, model, dev, settings, batch_size=batch_size, total_steps=warmup + steps)
        batch = to_device(train.batch(fixed_indices(len(train), batch_size, seed)), dev)
        try:
            for _ in range(warmup):
                train_step(batch)
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(f"training step at batch {batch_size}: {exc}") from None
        model.eval()
        try:
            with torch.inference_mode(), train_step.autocast():
                output, target = task.outputs(model, eval_batch)
                task.loss_per_sample(output.float(), target)
        except torch.OutOfMemoryError as exc:
            raise torch.OutOfMemoryError(f"evaluation step at batch {eval_size}: {exc}") from None
        model.train()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            train_step(batch)
        sync()
        return batch_size * steps / max(time.perf_counter() - start, 1e-9)

    return try_batch


def _knee(curve: dict[int, float]) -> tuple[int, float | None]:
    """The last power of two whose doubling from half its size gave `SCALING`x, and the ratio of the doubling
    after it (None when there is none: throughput was still scaling at the largest size tried)."""
    sizes = sorted(b for b in curve if b & (b - 1) == 0)
    knee = sizes[0]
    for small, big in itertools.pairwise(sizes):
        if big == 2 * small and curve[big] >= SCALING * curve[small]:
            knee = big
    after = 2 * knee
    return knee, (curve[after] / curve[knee] if after in curve else None)


def _round_down(size: int) -> int:
    """Multiples of 8 from 8 up (tensor-core friendly shapes)."""
    return size - size % 8 if size >= 8 else size


def _nothing_fits_message(error: str) -> str:
    return (
        f"even batch size 1 runs out of GPU memory ({error}); the model, its gradients and optimizer state, or an "
        "evaluation batch do not fit: use a smaller model, bf16 precision, or a GPU with more memory."
    )


def _message(result: BatchSizeResult, ratio: float | None, first_oom: int | None, proposed: int) -> str:
    if result.limited_by == "memory":
        why = (
            f"memory limits the batch to {proposed} (OOM at {first_oom}; largest fit {result.largest_fit}, "
            f"less a {MARGIN:.0%} margin)"
        )
    elif result.limited_by == "throughput":
        why = f"throughput stops scaling at {result.knee} (doubling to {2 * result.knee} gave {ratio:.2f}x)"
    else:
        why = f"throughput still scales at the cap, {result.cap} ({result.cap_reason})"
    if proposed != result.batch_size:
        why += f"; {proposed} ran out of memory when re-verified from a fresh model, so stepped down"
    return f"{why}; using {result.batch_size}."
