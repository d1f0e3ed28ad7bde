"""The training step `build_step` builds once before the loop: clipping applied, the schedule stepped and gradients
zeroed after every step, channels_last for conv nets, the compiled forward kept to full batches, and the automatic
compile falling back to eager when compiling fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe import Task, fast_paths
from recipe.step import StepSettings, build_step
from tests import tiny

CPU = torch.device("cpu")


def one_batch(task, size=16):
    return task.batch("train", list(range(size)), CPU)


def flat_params(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("clip", [None, 0.01])
def test_clipping_bounds_the_update_to_the_clipped_gradient_norm(clip):
    task = tiny.classification()
    torch.manual_seed(0)
    model = task.make_model()
    settings = StepSettings("sgd", lr=1.0, momentum=0.0, grad_clip=clip, precision="fp32")
    step = build_step(task, model, CPU, settings, batch_size=16, total_steps=1)
    batch = one_batch(task)
    probe = task.make_model()
    probe.load_state_dict(model.state_dict())
    task.compute_loss(*task.outputs(probe, batch)).backward()
    raw_norm = torch.cat([p.grad.flatten() for p in probe.parameters()]).norm().item()
    before = flat_params(model)
    step(batch)
    moved = (flat_params(model) - before).norm().item()  # plain SGD at lr 1: the update is the (clipped) gradient
    assert raw_norm > 0.1  # the clip below is far under the raw norm, so clipping shows
    assert moved == pytest.approx(clip if clip else raw_norm, rel=1e-4)


def test_the_schedule_steps_and_gradients_are_zeroed_after_every_step():
    task = tiny.classification()
    model = task.make_model()
    settings = StepSettings("adamw", lr=0.1, schedule=lambda s: 0.5**s, precision="fp32")
    step = build_step(task, model, CPU, settings, batch_size=16, total_steps=3)
    for _ in range(3):
        loss = step(one_batch(task))
        assert all(p.grad is None for p in model.parameters())
    assert not loss.requires_grad and loss.device == CPU
    assert step.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert step.setup == {
        "precision": "fp32",
        "optimizer": "adamw",
        "optimizer_kernel": step.setup["optimizer_kernel"],
        "compile": False,
        "channels_last": False,
    }


class SmallConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        assert x.is_contiguous(memory_format=torch.channels_last)  # the step converted the batch
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_channels_last_converts_the_model_and_every_batch():
    x, y = torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,))
    task = Task((x, y), (x, y), SmallConv, num_classes=3)
    model = task.make_model()
    step = build_step(task, model, CPU, StepSettings(channels_last=True), batch_size=8, total_steps=1)
    assert step.setup["channels_last"] and model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(step((x[:8].contiguous(), y[:8])))


class Counting(nn.Module):
    """Stands in for a compiled module: calls the model and counts the calls; `broken` raises as a failed compile."""

    def __init__(self, model, broken=False):
        super().__init__()
        self.model, self.broken, self.calls = model, broken, 0

    def forward(self, x):
        self.calls += 1
        if self.broken:
            raise RuntimeError("inductor exploded")
        return self.model(x)


def test_compiled_forward_takes_full_batches_and_a_short_last_batch_runs_eagerly(monkeypatch):
    task = tiny.classification()
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(Counting(model)) or compiled[-1])
    step = build_step(task, task.make_model(), CPU, StepSettings(compile=True), batch_size=16, total_steps=2)
    step(one_batch(task, 16))
    step(one_batch(task, 5))  # a compiled graph keeps one shape
    assert step.setup["compile"] is True and compiled[0].calls == 1


def test_compile_true_that_fails_raises(monkeypatch):
    task = tiny.classification()
    monkeypatch.setattr(torch, "compile", lambda model: Counting(model, broken=True))
    step = build_step(task, task.make_model(), CPU, StepSettings(compile=True), batch_size=16, total_steps=1)
    with pytest.raises(RuntimeError, match="inductor exploded"):
        step(one_batch(task))


def test_auto_compile_stays_eager_off_cuda_and_says_why():
    task = tiny.classification()
    step = build_step(task, task.make_model(), CPU, StepSettings(compile="auto"), batch_size=16, total_steps=100)
    setup = dict(step.setup)
    step.start(0, setup)
    assert setup["compile"].startswith("auto: off (cpu: auto compiles on CUDA only") and step.auto is None


def test_auto_compile_that_fails_falls_back_to_eager_and_says_so(monkeypatch):
    task = tiny.classification()
    monkeypatch.setattr(fast_paths, "compile_unavailable", lambda device, world: None)
    monkeypatch.setattr(fast_paths, "compile_pays", lambda seconds, steps: (True, "forced by the test"))
    monkeypatch.setattr(torch, "compile", lambda model: Counting(model, broken=True))
    model = task.make_model()
    total = fast_paths.WARMUP_STEPS + fast_paths.TIMED_STEPS + 2
    step = build_step(task, model, CPU, StepSettings(compile="auto"), batch_size=16, total_steps=total)
    setup = dict(step.setup)
    step.start(0, setup)
    for done in range(1, total + 1):
        assert torch.isfinite(step(one_batch(task)))
        step.after_step(done)
    step.finish(setup)
    assert step.forward is model  # eager from the failure on
    assert setup["compile"] == "auto: off: torch.compile failed (RuntimeError: inductor exploded)"
