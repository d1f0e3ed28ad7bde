"""fit: the one training loop — learning, determinism, step counting, logging, schedules, non-finite losses,
early stopping, checkpoints and resume, bad settings; evaluate against a hand computation."""

from __future__ import annotations

import contextlib
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from recipe import ConfigError, NonFiniteError, Task, evaluate, fit
from recipe.checkpoint import load
from recipe.data import batch_bounds
from tests.conftest import N_FEATURES, TinyDataset, TinyMLP, gaussian_points

CPU = torch.device("cpu")
step_module = importlib.import_module("recipe.step")  # builds the training step `fit` runs


def quick(task, **settings):
    """fit with small, fast defaults: 150 train samples / 32 = 5 steps per epoch."""
    defaults = {"epochs": 2, "batch_size": 32, "lr": 1e-2, "device": "cpu", "seed": 0, "progress": False}
    return fit(task, **{**defaults, **settings})


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def with_dropout(task):
    """A variant whose model draws from the global RNG every step (dropout), so RNG state matters."""
    return task.replace(model=lambda: TinyMLP(hidden=32, dropout=0.2))


# ---- learning and determinism -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "epochs", "lr", "data_path"),
    [
        ("classification_task", 6, 3e-2, "in-memory tensors (CPU)"),
        ("regression_task", 6, 1e-2, "in-memory tensors (CPU)"),
        ("sequence_task", 8, 3e-2, "in-memory tensors (CPU)"),
        ("dataset_task", 6, 3e-2, "DataLoader"),
    ],
)
def test_loss_goes_down_on_a_learnable_task(request, fixture, epochs, lr, data_path):
    task = request.getfixturevalue(fixture)
    out = quick(task, epochs=epochs, lr=lr)
    assert out.setup["data_path"] == data_path
    assert sum(out.step_losses[-3:]) < 0.5 * sum(out.step_losses[:3])
    assert out.history[-1]["val_loss"] < 0.6 * out.step_losses[0]


@pytest.mark.parametrize("fixture", ["classification_task", "dataset_task"])
def test_same_seed_is_bit_identical_and_another_seed_differs(request, fixture):
    task = with_dropout(request.getfixturevalue(fixture))
    a, b, c = quick(task, seed=1), quick(task, seed=1), quick(task, seed=2)
    assert a.step_losses == b.step_losses and same_weights(a.model, b.model)
    assert a.history == b.history
    assert a.step_losses != c.step_losses and not same_weights(a.model, c.model)


def test_a_given_model_is_trained_in_place(classification_task):
    model = TinyMLP()
    before = [p.detach().clone() for p in model.parameters()]
    out = quick(classification_task, model=model, epochs=1)
    assert out.model is model
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


# ---- steps, epochs and history ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epochs", "max_steps", "batch_size", "steps", "epochs_run"),
    [
        (2, None, 32, 10, 2),  # 150 samples / 32 -> 5 steps per epoch (last batch 22)
        (2, None, 50, 6, 2),
        (1, None, 150, 1, 1),
        (None, 7, 32, 7, 2),  # max_steps alone: stops inside the second epoch
        (3, 4, 32, 4, 1),  # whichever comes first: max_steps
        (3, 100, 50, 9, 3),  # whichever comes first: epochs
    ],
)
def test_epochs_and_max_steps_count_optimizer_steps(
    classification_task, epochs, max_steps, batch_size, steps, epochs_run
):
    out = quick(classification_task, epochs=epochs, max_steps=max_steps, batch_size=batch_size)
    assert out.steps == steps == out.setup["steps"] == len(out.step_losses)
    assert [r["epoch"] for r in out.history] == list(range(epochs_run))
    assert out.history[-1]["step"] == steps


@pytest.mark.parametrize(
    ("fixture", "metric"),
    [("classification_task", "accuracy"), ("regression_task", "mae"), ("sequence_task", "accuracy")],
)
def test_history_has_one_record_per_epoch_with_val_metrics_and_standard_errors(request, fixture, metric):
    task = request.getfixturevalue(fixture)
    out = quick(task, epochs=3)
    assert len(out.history) == 3
    for epoch, record in enumerate(out.history):
        assert set(record) == {
            "epoch",
            "step",
            "train_loss",
            "val_loss",
            "val_loss_se",
            f"val_{metric}",
            f"val_{metric}_se",
        }
        assert record["epoch"] == epoch and record["step"] == out.setup["steps_per_epoch"] * (epoch + 1)
        assert all(math.isfinite(record[k]) and record[k] >= 0 for k in record)
    last, ev = out.history[-1], evaluate(task, out.model, task.val, CPU)  # the last record is the returned model's
    assert (last["val_loss"], last[f"val_{metric}"]) == pytest.approx((ev.loss, ev.metric))
    assert (last["val_loss_se"], last[f"val_{metric}_se"]) == pytest.approx((ev.loss_se, ev.metric_se))


def test_no_evaluation_when_switched_off(classification_task):
    out = quick(classification_task, evaluate_every_epoch=False)
    assert [set(r) for r in out.history] == [{"epoch", "step", "train_loss"}] * 2


# ---- logging ----------------------------------------------------------------------------------------------------


def test_log_receives_step_and_epoch_records(classification_task):
    records = []
    out = quick(classification_task, epochs=2, log=records.append, log_every=5)
    assert records and all({"step", "split", "metric", "value", "epoch"} <= set(r) for r in records)
    assert all(isinstance(r["value"], float) and math.isfinite(r["value"]) for r in records)
    train_steps = [r["step"] for r in records if (r["split"], r["metric"]) == ("train", "loss")]
    assert {5, 10} <= set(train_steps)
    first_window = next(r for r in records if r["split"] == "train")
    assert first_window["value"] == pytest.approx(sum(out.step_losses[:5]) / 5)
    val = [(r["step"], r["metric"], r["value"]) for r in records if r["split"] == "val"]
    assert val == [(h["step"], m, h[f"val_{m}"]) for h in out.history for m in ("loss", "accuracy")]


def test_log_records_are_unambiguous(classification_task):
    records = []
    quick(classification_task, epochs=2, log=records.append, log_every=2)
    keys = [(r["step"], r["split"], r["metric"]) for r in records]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize(("log_every", "calls"), [(1, list(range(1, 11))), (5, [5, 10]), (10, [10])])
def test_on_log_is_called_every_log_every_steps_in_training_mode(classification_task, log_every, calls):
    seen = []
    quick(
        classification_task,
        epochs=2,
        log_every=log_every,
        on_log=lambda step, model: seen.append((step, model.training)),
    )
    assert seen == [(step, True) for step in calls]


def test_on_log_is_called_at_every_logged_step(classification_task):
    seen, records = [], []
    quick(classification_task, epochs=2, log_every=2, on_log=lambda step, model: seen.append(step), log=records.append)
    logged = sorted({r["step"] for r in records if (r["split"], r["metric"]) == ("train", "loss")})
    assert seen == logged


# ---- non-finite losses ------------------------------------------------------------------------------------------


class LogOfRelu(TinyMLP):
    def forward(self, x):
        return torch.log(torch.relu(self.net(x)))


def _nan_inputs(task):
    x, y = gaussian_points(200)
    x[:, 0] = float("nan")
    return Task((x[:150], y[:150]), task.val, TinyMLP)


@pytest.mark.parametrize(
    ("plant", "settings", "step", "parameter"),
    [
        pytest.param(lambda t: t, {"lr": 1e6, "optimizer": "sgd"}, None, "net.0.weight", id="lr-1e6-sgd"),
        pytest.param(_nan_inputs, {}, 0, "net.0.weight", id="nan-in-inputs"),
        pytest.param(lambda t: t.replace(model=LogOfRelu), {}, 0, None, id="log-of-relu"),
    ],
)
def test_non_finite_loss_raises_with_step_and_location(classification_task, plant, settings, step, parameter):
    task = plant(classification_task)
    with pytest.raises(NonFiniteError, match=r"training loss became (nan|inf) at step \d+") as info:
        quick(task, epochs=3, log_every=1, **settings)
    err = info.value
    assert err.step == (step if step is not None else len(err.losses)) and len(err.losses) == err.step
    assert all(math.isfinite(v) for v in err.losses)
    assert err.parameter == parameter
    if parameter is not None:
        assert parameter in str(err) and err.module == "net.0 (Linear)"


def test_non_finite_loss_is_caught_between_log_points(classification_task):
    with pytest.raises(NonFiniteError) as info:
        quick(_nan_inputs(classification_task), log_every=4)
    assert info.value.step == 0  # the first bad step, not the step where the losses were read


# ---- schedules --------------------------------------------------------------------------------------------------


def _cosine(i, total, warmup=0):
    return (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup)))


@pytest.mark.parametrize(
    ("schedule", "warmup_steps", "factor"),
    [
        ("constant", 0, lambda i, n: 1.0),
        ("cosine", 0, lambda i, n: _cosine(i, n)),
        ("linear", 0, lambda i, n: 1 - i / n),
        ("constant", 4, lambda i, n: min(1.0, (i + 1) / 4)),
        ("cosine", 4, lambda i, n: _cosine(i, n, 4)),
        ("linear", 3, lambda i, n: (i + 1) / 3 if i < 3 else 1 - (i - 3) / (n - 3)),
        (lambda step: 0.5**step, 0, lambda i, n: 0.5**i),
    ],
    ids=["constant", "cosine", "linear", "constant-warmup", "cosine-warmup", "linear-warmup", "callable"],
)
def test_schedule_sets_the_lr_of_every_step(classification_task, monkeypatch, schedule, warmup_steps, factor):
    lrs = []
    make_optimizer = step_module.build_optimizer

    def recording_optimizer(*args, **kwargs):
        opt = make_optimizer(*args, **kwargs)
        opt.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(step_module, "build_optimizer", recording_optimizer)
    out = quick(classification_task, epochs=2, lr=0.1, schedule=schedule, warmup_steps=warmup_steps)
    assert len(lrs) == out.steps == 10
    assert lrs == pytest.approx([0.1 * factor(i, 10) for i in range(10)])


# ---- early stopping and checkpoints ------------------------------------------------------------------------------


@pytest.fixture
def noise_task():
    """Random labels: validation loss rises from the first epoch as the model memorises, so "best" is early."""
    x, _ = gaussian_points(200)
    y = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(0))
    return Task((x[:100], y[:100]), (x[100:], y[100:]), lambda: TinyMLP(hidden=64))


def test_early_stopping_stops_and_restores_the_best_weights(noise_task):
    out = quick(noise_task, epochs=30, batch_size=20, early_stopping=2)
    val = [r["val_loss"] for r in out.history]
    best = min(range(len(val)), key=val.__getitem__)
    assert len(val) == best + 1 + 2 < 30  # stopped two epochs after the best
    assert out.setup["restored_best_val_loss"] == val[best]
    assert evaluate(noise_task, out.model, noise_task.val, CPU).loss == pytest.approx(val[best], abs=1e-6)


def test_stop_below_ends_after_the_first_epoch_whose_mean_loss_reaches_it(classification_task):
    full = quick(classification_task, epochs=12, evaluate_every_epoch=False)
    losses = [r["train_loss"] for r in full.history]
    target = losses[5]  # reached at the end of the sixth epoch, and not before
    assert min(losses[:5]) > target
    out = quick(classification_task, epochs=12, evaluate_every_epoch=False, stop_below=target)
    assert [r["train_loss"] for r in out.history] == losses[:6]  # the same epochs, then no more
    assert out.steps == 6 * 5 < full.steps
    never = quick(classification_task, epochs=3, evaluate_every_epoch=False, stop_below=-1.0)
    assert never.steps == 3 * 5  # a value the loss never reaches: the whole budget


def test_checkpoint_dir_holds_last_and_best(noise_task, tmp_path):
    out = quick(noise_task, epochs=4, batch_size=20, checkpoint_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "best.pt",
        "best.pt.sha256",
        "last.1.pt",
        "last.1.pt.sha256",
        "last.pt",
        "last.pt.sha256",
    ]  # fmt: skip  (the previous training state kept, no temporary files left)
    last, best = load(tmp_path / "last.pt"), load(tmp_path / "best.pt")  # weights_only loading works
    assert load(tmp_path / "last.1.pt")["epoch"] == 2
    assert last["epoch"] == 3 and last["steps"] == out.steps and last["step_losses"] == out.step_losses
    assert all(torch.equal(last["model"][k], v) for k, v in out.model.state_dict().items())
    val = [r["val_loss"] for r in out.history]
    assert best["epoch"] == val.index(min(val))


def _crash_at(step):
    def on_log(current, model):
        if current == step:
            raise KeyboardInterrupt  # what a user's Ctrl-C looks like to the loop

    return on_log


@pytest.mark.parametrize("fixture", ["classification_task", "dataset_task"])
@pytest.mark.parametrize(
    ("first_run", "settings"),
    [
        pytest.param({"epochs": 2}, {}, id="2-epochs-then-2-more"),
        pytest.param(
            {"on_log": _crash_at(13), "log_every": 1},
            {"schedule": "cosine", "warmup_steps": 3},
            id="crash-mid-epoch-3-cosine",
        ),
    ],
)
def test_resume_continues_bit_identically(request, tmp_path, fixture, first_run, settings):
    task = with_dropout(request.getfixturevalue(fixture))
    full = quick(task, epochs=4, seed=5, **settings)
    with contextlib.suppress(KeyboardInterrupt):  # the crashing variant stops in epoch 3
        quick(task, seed=5, checkpoint_dir=tmp_path, **{"epochs": 4, **settings, **first_run})
    assert load(tmp_path / "last.pt")["epoch"] == 1
    resumed = quick(task, epochs=4, seed=5, checkpoint_dir=tmp_path, resume=True, **settings)
    assert resumed.steps == full.steps == 20
    assert resumed.step_losses == full.step_losses
    assert same_weights(resumed.model, full.model)
    assert resumed.history == full.history


@pytest.mark.parametrize("fixture", ["classification_task", "dataset_task"])
def test_resume_from_a_mid_epoch_checkpoint_continues_bit_identically(request, tmp_path, fixture):
    task = with_dropout(request.getfixturevalue(fixture))  # shuffling and dropout on
    settings = {"epochs": 4, "seed": 5, "log_every": 1, "schedule": "cosine", "warmup_steps": 3}
    full = quick(task, **settings)
    with contextlib.suppress(KeyboardInterrupt):  # killed at step 13, in the third epoch (steps 11-15)
        quick(task, checkpoint_dir=tmp_path, checkpoint_every=2, on_log=_crash_at(13), **settings)
    state = load(tmp_path / "last.pt")
    assert (state["epoch"], state["steps"], state["batches_done"]) == (2, 12, 2)  # the last one, mid-epoch
    resumed = quick(task, checkpoint_dir=tmp_path, resume=True, **settings)
    assert resumed.step_losses == full.step_losses
    assert same_weights(resumed.model, full.model)
    assert resumed.history == full.history


def test_resume_without_a_checkpoint_starts_fresh(classification_task, tmp_path):
    a = quick(classification_task, checkpoint_dir=tmp_path / "new", resume=True)
    b = quick(classification_task)
    assert a.step_losses == b.step_losses and (tmp_path / "new" / "last.pt").exists()


def test_resume_keeps_the_best_checkpoint(noise_task, tmp_path):
    quick(noise_task, epochs=2, batch_size=20, checkpoint_dir=tmp_path)
    out = quick(noise_task, epochs=5, batch_size=20, checkpoint_dir=tmp_path, resume=True)
    val = [r["val_loss"] for r in out.history]
    assert load(tmp_path / "best.pt")["epoch"] == val.index(min(val))


# ---- other settings ---------------------------------------------------------------------------------------------


def test_grad_clip_bounds_the_update(classification_task):
    model = TinyMLP()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    quick(
        classification_task,
        model=model,
        max_steps=1,
        epochs=None,
        optimizer="sgd",
        momentum=0.0,
        lr=1.0,
        grad_clip=1e-3,
    )
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() == pytest.approx(1e-3, rel=1e-3)  # SGD: update = lr * clipped gradient


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"optimizer": "adagrad"}, r"optimizer='adagrad' is not known"),
        ({"schedule": "step"}, r"schedule='step' is not known"),
        ({"precision": "fp16"}, r"precision='fp16' is not known"),
        ({"batch_size": 0}, r"batch_size must be a positive int"),
        ({"batch_size": 151}, r"batch_size=151 is larger than the training split \(150 samples\)"),
        ({"lr": 0}, r"lr must be a positive number"),
        ({"lr": -1e-3}, r"lr must be a positive number"),
        ({"lr": float("nan")}, r"lr must be a positive number"),
        ({"epochs": None, "max_steps": None}, r"give epochs or max_steps"),
        ({"epochs": 0}, r"epochs must be a positive int"),
        ({"epochs": None, "max_steps": 2.5}, r"max_steps must be a positive int"),
        ({"stop_below": float("nan")}, r"stop_below must be a finite number or None"),
        ({"stop_below": "0.1"}, r"stop_below must be a finite number or None"),
        ({"device": "tpu"}, r"device='tpu'"),
        pytest.param(
            {"device": "cuda"},
            r"no CUDA GPU is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_bad_settings_raise_config_error_before_training(classification_task, settings, match):
    logged = []
    with pytest.raises(ConfigError, match=match):
        quick(classification_task, log=logged.append, **settings)
    assert logged == []


# ---- evaluate ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1024, 16])
def test_evaluate_matches_a_hand_computation(classification_task, batch_size):
    model = TinyMLP()
    model.train()
    x, y = classification_task.val.x, classification_task.val.y
    with torch.no_grad():
        logits = model(x)
    losses = F.cross_entropy(logits, y, reduction="none")
    hits = (logits.argmax(1) == y).float()
    ev = evaluate(classification_task, model, classification_task.val, CPU, batch_size=batch_size)
    assert ev.n == 50 and model.training  # the caller's mode is restored
    assert ev.loss == pytest.approx(float(losses.mean()), rel=1e-5)
    assert ev.loss_se == pytest.approx(float(losses.std() / math.sqrt(50)), rel=1e-4)
    assert ev.metric == pytest.approx(float(hits.mean()))
    assert ev.metric_se == pytest.approx(float(hits.std() / math.sqrt(50)), rel=1e-4)
    assert torch.allclose(ev.per_sample_loss, losses, atol=1e-6)


def test_evaluate_with_a_callable_loss_weights_batches_by_size(classification_task):
    task = classification_task.replace(loss=lambda out, t: F.cross_entropy(out, t))
    model = TinyMLP()
    with torch.no_grad():
        expected = float(F.cross_entropy(model(task.val.x), task.val.y))
    ev = evaluate(task, model, task.val, CPU, batch_size=16)  # batches of 16, 16, 16, 2
    assert ev.loss == pytest.approx(expected, rel=1e-5) and ev.loss_se is None and ev.per_sample_loss is None


def test_evaluate_runs_in_eval_mode(classification_task):
    model = TinyMLP(dropout=0.9)
    first = evaluate(classification_task, model, classification_task.val, CPU)
    second = evaluate(classification_task, model, classification_task.val, CPU)
    assert first.loss == second.loss  # dropout off: deterministic


def test_a_lone_sample_left_over_joins_the_batch_before_it():
    assert batch_bounds(129, 64) == [(0, 64), (64, 129)]
    assert batch_bounds(130, 64) == [(0, 64), (64, 128), (128, 130)]
    assert batch_bounds(65, 64) == [(0, 65)] and batch_bounds(64, 64) == [(0, 64)] and batch_bounds(1, 64) == [(0, 1)]


class BatchNormMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(N_FEATURES, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("in_memory", [True, False])
def test_batchnorm_trains_when_the_split_leaves_one_sample_over(tmp_path, in_memory):
    """129 samples in batches of 64: the third batch would hold one sample, which BatchNorm cannot normalise in
    training (PyTorch raises). It joins the second; a mid-epoch resume replays the same batches."""
    x, y = gaussian_points(200)
    train = (x[:129], y[:129]) if in_memory else TinyDataset(x[:129], y[:129])
    task = Task(train, (x[129:], y[129:]), BatchNormMLP, num_classes=3)
    settings = {"epochs": 3, "batch_size": 64, "seed": 5, "log_every": 1}
    full = quick(task, **settings)
    assert full.steps == 6  # two batches per epoch
    with contextlib.suppress(KeyboardInterrupt):
        quick(task, checkpoint_dir=tmp_path, checkpoint_every=1, on_log=_crash_at(4), **settings)
    resumed = quick(task, checkpoint_dir=tmp_path, resume=True, **settings)
    assert resumed.step_losses == full.step_losses and same_weights(resumed.model, full.model)
