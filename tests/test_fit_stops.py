"""fit stopped and resumed: the metrics rows come out exact, SIGTERM checkpoints the step boundary it lands on,
time-based checkpoints; and the speed choices fit reports (compile, channels_last)."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
import torch
from torch import nn

from recipe import ConfigError, fast_paths
from recipe.checkpoint import load
from recipe.errors import Terminated
from recipe.stopping import handling_sigterm
from tests.conftest import N_CLASSES, N_FEATURES, TinyMLP
from tests.test_fit import _crash_at, quick, same_weights, with_dropout


@pytest.mark.parametrize("fixture", ["classification_task", "dataset_task"])
def test_a_resumed_fit_sends_exactly_the_rows_of_an_uninterrupted_one(request, tmp_path, fixture):
    task = with_dropout(request.getfixturevalue(fixture))
    settings = {"epochs": 4, "seed": 5, "log_every": 3}  # 5 steps per epoch: log windows straddle epochs
    rows_full: list[dict] = []
    quick(task, log=rows_full.append, **settings)
    rows_killed: list[dict] = []
    with contextlib.suppress(KeyboardInterrupt):  # checkpoints at steps 3, 6, 9, 12; dies at 15, before its own
        quick(
            task, checkpoint_dir=tmp_path, checkpoint_every=3, on_log=_crash_at(15), log=rows_killed.append, **settings
        )
    assert load(tmp_path / "last.pt")["steps"] == 12
    assert len(rows_killed) > len([r for r in rows_full if r["step"] <= 12])  # rows after the checkpoint were sent
    rows_resumed: list[dict] = []
    quick(task, checkpoint_dir=tmp_path, resume=True, log=rows_resumed.append, **settings)
    assert rows_resumed == rows_full


class SignalsAt(nn.Module):
    """TinyMLP with dropout that sends this process SIGTERM during its `at`-th training forward."""

    def __init__(self, at: int):
        super().__init__()
        self.net, self.at, self.calls = TinyMLP(hidden=32, dropout=0.2), at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
        return self.net(x)


def test_sigterm_checkpoints_the_step_it_lands_in_and_the_resume_is_exact(classification_task, tmp_path):
    settings = {"epochs": 4, "seed": 5, "log_every": 4, "schedule": "cosine"}
    task = classification_task.replace(model=lambda: SignalsAt(at=10**9))
    rows_full: list[dict] = []
    full = quick(task, log=rows_full.append, **settings)
    killed = classification_task.replace(model=lambda: SignalsAt(at=13))  # step 13: mid-epoch, not a log point
    with pytest.raises(Terminated):
        quick(killed, checkpoint_dir=tmp_path, **settings)
    state = load(tmp_path / "last.pt")
    assert (state["steps"], state["epoch"], state["batches_done"]) == (13, 2, 3)
    rows: list[dict] = []
    resumed = quick(task, checkpoint_dir=tmp_path, resume=True, log=rows.append, **settings)
    assert resumed.step_losses == full.step_losses and same_weights(resumed.model, full.model)
    assert rows == rows_full


def test_sigterm_outside_a_fit_raises_at_once_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), handling_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # a bytecode boundary for the handler; never reached
    assert signal.getsignal(signal.SIGTERM) is before


def test_checkpoint_seconds_writes_at_log_points(classification_task, tmp_path):
    seen: list[int | None] = []

    def look(step, model):  # called at a log point, before its checkpoint
        seen.append(load(tmp_path / "last.pt")["steps"] if (tmp_path / "last.pt").exists() else None)

    quick(classification_task, epochs=2, checkpoint_dir=tmp_path, checkpoint_seconds=0.0, log_every=2, on_log=look)
    assert seen == [None, 2, 5, 6, 8]  # log points 2..10 each see the last one: 4, 6 (5 was an epoch end), 8, 10
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))  # no temporary left behind


# ---- speed choices ----------------------------------------------------------------------------------------------


def test_auto_compile_stays_eager_on_cpu_and_says_why(classification_task):
    out = quick(classification_task)
    assert out.setup["compile"].startswith("auto: off (cpu")
    assert quick(classification_task, compile=False).setup["compile"] is False


def test_an_unknown_compile_value_is_refused(classification_task):
    with pytest.raises(ConfigError, match="compile='yes'"):
        quick(classification_task, compile="yes")


@pytest.mark.parametrize(
    ("step_ms", "steps_left", "pays"),
    [(1.0, 1_000, False), (1.0, 1_000_000, True), (100.0, 100, False), (100.0, 10_000, True)],
)
def test_compile_pays_when_the_time_it_saves_exceeds_its_cost(step_ms, steps_left, pays):
    decided, reason = fast_paths.compile_pays(step_ms / 1e3, steps_left)
    assert decided is pays and f"{steps_left} steps left" in reason
    saved = fast_paths.COMPILE_SAVES * step_ms / 1e3 * steps_left
    assert decided == (saved > fast_paths.COMPILE_SECONDS)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * N_FEATURES, N_CLASSES)

    def forward(self, x):  # the features seen as a 1 x 1 x N_FEATURES image
        return self.head(torch.relu(self.conv(x.reshape(-1, 1, 1, N_FEATURES))).flatten(1))


def test_channels_last_is_chosen_for_conv_nets_on_cuda_only():
    conv, mlp = ConvNet(), TinyMLP()
    assert fast_paths.wants_channels_last(conv, torch.device("cuda"))
    assert not fast_paths.wants_channels_last(mlp, torch.device("cuda"))
    assert not fast_paths.wants_channels_last(conv, torch.device("cpu"))
    assert fast_paths.wants_channels_last(mlp, torch.device("cpu"), choice=True)
    x, y = fast_paths.to_channels_last((torch.randn(2, 3, 4, 5), torch.arange(2)))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() and y.dim() == 1


def test_channels_last_trains_the_same_model(classification_task):
    task = classification_task.replace(model=ConvNet)
    plain = quick(task, channels_last=False)
    nhwc = quick(task, channels_last=True)
    assert nhwc.setup["channels_last"] and not plain.setup["channels_last"]
    assert torch.allclose(torch.tensor(nhwc.step_losses), torch.tensor(plain.step_losses), rtol=1e-4, atol=1e-5)


def test_a_compiled_model_sees_one_batch_shape_only(classification_task, monkeypatch):
    """150 samples in batches of 32 end each epoch with a batch of 22: it runs eagerly instead of recompiling."""
    import torch._dynamo

    graphs: list[set[tuple[int, ...]]] = []

    def recording_backend(graph, example_inputs):
        graphs.append({tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)})
        return graph.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=recording_backend))
    torch._dynamo.reset()
    out = quick(classification_task, epochs=2, compile=True)
    torch._dynamo.reset()
    assert out.setup["compile"] is True and out.steps == 10
    assert len(graphs) == 1 and (32, N_FEATURES) in graphs[0]  # one graph, for the full batches


# ---- non-finite losses --------------------------------------------------------------------------------------------


def test_a_nan_sample_is_named_by_its_index_and_no_nan_checkpoint_is_written(classification_task, tmp_path):
    from recipe import NonFiniteError, Task
    from tests.conftest import gaussian_points

    x, y = gaussian_points(200)
    x[37, 2] = float("nan")  # one sample of the training split
    task = Task((x[:150], y[:150]), classification_task.val, TinyMLP)
    with pytest.raises(NonFiniteError) as info:
        quick(task, epochs=3, log_every=4, checkpoint_dir=tmp_path, checkpoint_every=1)
    err = info.value
    assert 37 in err.indices and len(err.indices) in (32, 150 - 4 * 32)  # exactly the batch that held it
    assert "non-finite inputs in training samples [37]" in str(err) and f"at step {err.step}" in str(err)
    assert "the data, not the rate, is the cause" in str(err) and "learning rate too high" not in str(err)
    if (tmp_path / "last.pt").exists():  # checkpoints before the NaN step are finite; none was written after it
        state = load(tmp_path / "last.pt")
        assert state["steps"] <= err.step and all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize(("total", "compiles"), [(10**8, True), (40, False)])
def test_auto_compile_decides_after_its_timed_window(total, compiles):
    """The CUDA-only decision, driven on CPU with a clock that gives the timed window 0.1 s a step: a run of 10^8
    steps repays compiling, one of 40 does not."""
    readings = iter([0.0, 0.1 * fast_paths.TIMED_STEPS])
    model = TinyMLP()
    auto = fast_paths.AutoCompile(model, torch.device("cpu"), start=0, total=total, clock=lambda: next(readings))
    forward: nn.Module = model
    end = fast_paths.WARMUP_STEPS + fast_paths.TIMED_STEPS
    for step in range(1, end + 3):
        forward = auto.after_step(step, forward)
        assert (forward is model) == (step < end or not compiles), step
    assert auto.decided and auto.reason.startswith("on:" if compiles else "off:")
    assert f"{total - end} steps left" in auto.reason
