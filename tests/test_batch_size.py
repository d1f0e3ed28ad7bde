"""The batch-size finder: its search on fake step functions (OOM above a memory limit, synthetic throughput curves),
its real step function on the CPU, the `batch_size` check in `baseline`, and the real thing on CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from recipe import ConfigError, Recipe, fit
from recipe.batch_size import (
    MARGIN,
    BatchSizeResult,
    NoBatchFitsError,
    _cap,
    _trial,
    find_batch_size,
    is_out_of_memory,
    search_batch_size,
)
from recipe.context import Context
from recipe.rundir import RunDir
from recipe.stages import Baseline
from recipe.step import StepSettings, build_step
from tests import tiny


class FakeStep:
    """`try_batch` with `memory` samples of room (less after `shrink_after` calls) and examples/s from `speed`."""

    def __init__(self, memory: float = float("inf"), speed=float, shrink_after: int | None = None, shrunk: int = 0):
        self.memory, self.speed, self.shrink_after, self.shrunk = memory, speed, shrink_after, shrunk
        self.calls: list[int] = []

    def __call__(self, batch_size: int) -> float:
        self.calls.append(batch_size)
        room = self.shrunk if self.shrink_after is not None and len(self.calls) > self.shrink_after else self.memory
        if batch_size > room:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch_size} samples")
        return float(self.speed(batch_size))


def docstring_example(fn) -> str:
    block = fn.__doc__.split("Example::", 1)[1]
    return "\n".join(line[8:] for line in block.splitlines())


def test_out_of_memory_error_exists_on_cpu_builds():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


@pytest.mark.parametrize(
    ("memory", "largest", "chosen"),
    [(1, 1, 1), (3, 3, 2), (100, 96, 80), (1000, 960, 864), (5000, 4608, 4144)],
)
def test_memory_limit_is_refined_then_kept_under_a_margin(memory, largest, chosen):
    step = FakeStep(memory)  # perfect scaling: only memory can stop it
    result = search_batch_size(step, cap=1 << 20)
    assert (result.largest_fit, result.batch_size, result.limited_by) == (largest, chosen, "memory")
    assert result.batch_size <= max(1, result.largest_fit * (1 - MARGIN))
    assert all(b <= memory for b in result.curve) and all(b > memory for b in result.out_of_memory)
    assert step.calls[-1] == chosen  # re-verified last
    first_oom = min(result.out_of_memory)
    assert f"memory limits the batch to {chosen} (OOM at {first_oom}" in result.message


def test_reverification_out_of_memory_steps_down_to_the_next_power_of_two():
    step = FakeStep(memory=1000, shrink_after=14, shrunk=700)  # 10 sizes fit, 1024 OOMs, 3 refinements; less room
    result = search_batch_size(step, cap=4096)
    assert step.calls[-2:] == [864, 512]
    assert result.batch_size == 512
    assert 864 in result.out_of_memory
    assert "864 ran out of memory when re-verified from a fresh model, so stepped down; using 512." in result.message


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(NoBatchFitsError, match="even batch size 1 runs out of GPU memory"):
        search_batch_size(FakeStep(memory=0), cap=64)
    step = FakeStep(shrink_after=3, shrunk=0)  # 1, 2, 4 fit during the search; nothing fits when re-verified
    with pytest.raises(NoBatchFitsError):
        search_batch_size(step, cap=4)
    assert step.calls == [1, 2, 4, 4, 2, 1]


def test_errors_other_than_out_of_memory_propagate():
    def broken(batch_size: int) -> float:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        search_batch_size(broken, cap=64)


def _noisy_start(b: int) -> float:  # batch 2 barely faster than 1 (launch overhead), then linear to 64, then flat
    return {1: 100.0, 2: 130.0}.get(b, 65.0 * min(b, 64))


@pytest.mark.parametrize(
    ("speed", "knee", "next_ratio"),
    [
        (lambda b: min(b, 128), 128, "1.00"),  # linear, then flat
        (lambda b: b / (1 + b / 256), 128, "1.50"),  # smooth saturation: 64 -> 128 is the last 1.6x doubling
        (_noisy_start, 64, "1.00"),  # a weak early doubling does not end the walk
    ],
)
def test_knee_is_the_last_doubling_that_still_scales(speed, knee, next_ratio):
    result = search_batch_size(FakeStep(speed=speed), cap=4096)
    assert (result.knee, result.batch_size, result.limited_by) == (knee, knee, "throughput")
    assert result.message == (
        f"throughput stops scaling at {knee} (doubling to {2 * knee} gave {next_ratio}x); using {knee}."
    )


def test_knee_wins_over_memory_when_it_comes_first():
    result = search_batch_size(FakeStep(memory=1000, speed=lambda b: min(b, 64)), cap=4096)
    assert result.batch_size == 64 and result.limited_by == "throughput"
    assert result.out_of_memory == [1024] and result.largest_fit == 512  # no refinement: memory was not the limit


@pytest.mark.parametrize(
    ("n_train", "max_batch_size", "cap"),
    [(1437, None, 128), (256, None, 32), (5, None, 1), (50, 100, 32), (5000, 300, 256)],
)
def test_cap_keeps_steps_per_epoch_and_never_exceeds_the_split(n_train, max_batch_size, cap):
    limit, reason = _cap(n_train, max_batch_size)
    step = FakeStep()
    result = search_batch_size(step, limit, reason)
    assert result.batch_size == result.cap == cap and result.limited_by == "cap"
    assert max(step.calls) == cap <= n_train
    assert f"throughput still scales at the cap, {cap} ({reason})" in result.message
    if max_batch_size is None:
        assert n_train // cap >= 8 or cap == 1


def test_result_is_json_ready_and_names_its_rule():
    result = search_batch_size(FakeStep(memory=100), cap=4096)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["batch_size"] == 80 and record["out_of_memory"][0] == 128
    assert [row["batch_size"] for row in record["curve"]][:3] == [1, 2, 4]
    assert result.rule == "finder: memory limit less 10%"


def test_search_docstring_example_runs():
    exec(docstring_example(search_batch_size), {})


# ---- the real step function, on the CPU -----------------------------------------------------------------------


class GreedyMLP(tiny.MLP):
    """Raises CUDA's out-of-memory error above 8 samples, as a model too large for bigger batches would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(x)


@pytest.mark.parametrize("task", [tiny.classification(), tiny.sequence()], ids=["classification", "sequence"])
def test_real_trial_measures_examples_per_second(task):
    trial = _trial(task, torch.device("cpu"), StepSettings(precision="auto"), eval_size=32, steps=2, warmup=1, seed=0)
    assert trial(4) > 0
    result = search_batch_size(trial, *_cap(len(task.train), None))
    assert 1 <= result.batch_size <= result.cap and set(result.curve) >= {1, 2}


def test_real_trial_recovers_from_out_of_memory():
    task = tiny.classification(model=GreedyMLP)
    trial = _trial(task, torch.device("cpu"), StepSettings(precision="fp32"), eval_size=8, steps=1, warmup=1, seed=0)
    result = search_batch_size(trial, cap=32)
    assert result.out_of_memory[0] == 16 and all(b > 8 for b in result.out_of_memory)
    assert result.largest_fit == 8 and set(result.curve) == {1, 2, 4, 8, *([7] if result.batch_size == 7 else [])}
    assert result.batch_size == 7 if result.limited_by == "memory" else result.batch_size <= 4  # CPU timings vary


def test_the_trial_trains_with_fits_own_step(monkeypatch):
    built = []

    def spy(task, model, device, settings, **kwargs):
        built.append((settings, kwargs))
        return build_step(task, model, device, settings, **kwargs)

    monkeypatch.setattr("recipe.batch_size.build_step", spy)
    settings = StepSettings("sgd", precision="fp32", grad_clip=0.5, channels_last=False)
    trial = _trial(tiny.classification(), torch.device("cpu"), settings, eval_size=8, steps=2, warmup=1, seed=0)
    assert trial(4) > 0
    assert built == [(settings, {"batch_size": 4, "total_steps": 3})]  # a fresh step (model, optimizer) per size


def test_eval_step_that_runs_out_of_memory_fails_even_batch_one():
    task = tiny.classification(model=GreedyMLP)  # evaluation at 32 samples never fits
    trial = _trial(task, torch.device("cpu"), StepSettings(precision="fp32"), eval_size=32, steps=1, warmup=1, seed=0)
    with pytest.raises(NoBatchFitsError, match=r"GPU memory \(evaluation step at batch 32: CUDA out of memory"):
        search_batch_size(trial, cap=32)


def test_find_batch_size_refuses_a_cpu_device():
    with pytest.raises(ConfigError, match="CUDA"):
        find_batch_size(tiny.classification(), "cpu")


# ---- the `batch_size` check in `baseline` ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "batch-size finder runs on CUDA only; keeping batch_size=64."),
        ({"find_batch_size": False}, "turned off (baseline.find_batch_size: false); keeping batch_size=64."),
    ],
)
def test_baseline_check_skips_on_cpu_and_when_turned_off(settings, message, tmp_path):
    stage = Baseline({"steps": 5, "seed_steps": 2, **settings})
    result = Recipe(tiny.classification(), run_dir=tmp_path, stages=[stage], device="cpu", quiet=True).run()
    first = result.checks[0]
    assert (first.name, first.status, first.message) == ("batch_size", "skip", message)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["train_final"]["batch_size"] == 64 and "batch_size" not in manifest["learned"]["baseline"]


def _cuda_context(tmp_path) -> Context:
    """A context that says CUDA, for the stage's side of the check on a machine without one (the finder is faked)."""
    return Context(tiny.classification(), torch.device("cuda"), 0, RunDir(tmp_path, ["baseline"]), stage="baseline")


def test_baseline_check_learns_the_size_and_saves_curve_and_plot(tmp_path, monkeypatch):
    found = search_batch_size(FakeStep(speed=lambda b: min(b, 16)), cap=32)
    monkeypatch.setattr("recipe.stages.baseline.find_batch_size", lambda *args, **kwargs: found)
    ctx = _cuda_context(tmp_path)
    check = Baseline()._batch_size(ctx)
    assert (check.status, check.value) == ("pass", 16)
    assert check.message.endswith("using 16. Later stages train with batch_size=16 (was 64).")
    assert ctx.train.batch_size == 16 and ctx.learned["baseline"]["batch_size_rule"] == "finder: throughput knee"
    assert set(check.artifacts) == {"02_baseline/batch_size.json", "02_baseline/batch_size.png"}
    assert json.loads((tmp_path / "02_baseline" / "batch_size.json").read_text())["knee"] == 16


def test_baseline_check_measures_the_largest_rung_of_a_ladder(tmp_path, monkeypatch):
    class Large(tiny.MLP):
        pass

    seen = []

    def finder(task, *args, **kwargs) -> BatchSizeResult:
        seen.append(type(task.make_model()))
        return search_batch_size(FakeStep(), cap=8)

    monkeypatch.setattr("recipe.stages.baseline.find_batch_size", finder)
    ctx = _cuda_context(tmp_path)
    ctx.task = tiny.classification(models={"small": tiny.MLP, "large": Large})
    check = Baseline()._batch_size(ctx)
    assert seen == [Large] and "Measured on the ladder's largest rung, 'large'." in check.message
    assert ctx.train.batch_size == 8 and ctx.train.model is None  # the rung trained is unchanged


def test_baseline_check_fails_naming_memory_when_nothing_fits(tmp_path, monkeypatch):
    def nothing_fits(*args, **kwargs) -> BatchSizeResult:
        return search_batch_size(FakeStep(memory=0), cap=32)

    monkeypatch.setattr("recipe.stages.baseline.find_batch_size", nothing_fits)
    ctx = _cuda_context(tmp_path)
    check = Baseline()._batch_size(ctx)
    assert check.status == "fail" and "GPU memory" in check.message
    assert ctx.train.batch_size == 64


# ---- the real thing -------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.cuda
@cuda
def test_finder_on_cuda_runs_and_frees_what_it_allocated():
    before = torch.cuda.memory_allocated()
    result = find_batch_size(tiny.classification(), "cuda", progress=False)
    assert result.cap == 32 and 1 <= result.batch_size <= 32
    assert set(result.curve) >= {1, 2, 4, 8, 16, 32} and all(v > 0 for v in result.curve.values())
    assert torch.cuda.memory_allocated() - before < 16 * 2**20  # the training split stays resident, models do not


class Hog(nn.Module):
    """Holds 1 GiB per sample through a training step: real CUDA out-of-memory errors at a few dozen samples."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(tiny.FEATURES, tiny.CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.linear(x)
        ballast = torch.ones(len(x), 2**28, device=x.device, requires_grad=True)
        return self.linear(x) + ballast.sum(1, keepdim=True) * 0


@pytest.mark.cuda
@cuda
def test_finder_on_cuda_recovers_from_real_out_of_memory():
    total = torch.cuda.get_device_properties(0).total_memory
    before = torch.cuda.memory_allocated()
    task = tiny.classification(model=Hog, n_train=4096)
    result = find_batch_size(task, "cuda", progress=False, max_batch_size=4096, steps=1, warmup=1)
    assert result.out_of_memory and min(result.out_of_memory) * 2**30 > total / 4
    assert result.batch_size * 2**30 < total and result.batch_size not in result.out_of_memory[-1:]
    assert torch.cuda.memory_allocated() - before < 64 * 2**20  # every model, gradient and optimizer state freed
    out = fit(tiny.classification(), epochs=1, device="cuda", progress=False)  # the device is still usable
    assert next(out.model.parameters()).is_cuda


@pytest.mark.cuda
@cuda
def test_baseline_on_cuda_learns_the_batch_size(tmp_path):
    result = Recipe(
        tiny.classification(), run_dir=tmp_path, stages=["baseline"], device="cuda", progress=False, quiet=True
    ).run()
    check = next(c for c in result.checks if c.name == "batch_size")
    assert check.status == "pass", check.message
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["train_final"]["batch_size"] == check.value == manifest["learned"]["baseline"]["batch_size"]
    assert (tmp_path / "02_baseline" / "batch_size.png").exists()


@pytest.mark.cuda
@cuda
def test_find_batch_size_docstring_example_runs():
    pytest.importorskip("sklearn")
    exec(docstring_example(find_batch_size), {})
