"""threads: the intra-op thread count chosen for the work; the user's choice wins; training is unchanged by it."""

from __future__ import annotations

import pytest
import torch

from recipe import fit, threads
from recipe.errors import ConfigError
from tests import tiny

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def default_threads(monkeypatch):
    """Each test starts from torch's default count, no environment override, and no remembered decision."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_decided", {})
    monkeypatch.setattr(threads, "CORES", 4)
    before = torch.get_num_threads()
    torch.set_num_threads(threads._AT_IMPORT)
    yield
    torch.set_num_threads(before)


def never_called():
    raise AssertionError("measured, though the count was not recipe's to choose")


@pytest.mark.parametrize(
    ("one", "every", "chosen"),
    [
        (1.0, 2.0, 1),  # slower on every core (a busy machine)
        (1.0, 0.9, 1),  # faster, but within timing noise: one thread, the cores stay free
        (1.0, 0.5, 4),  # clearly faster
    ],
)
def test_auto_takes_every_core_only_when_clearly_faster(monkeypatch, one, every, chosen):
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 1.0)  # a large step
    monkeypatch.setattr(threads, "_measure", lambda step: (one, every))
    count, reason = threads.choose("auto", CPU, lambda: lambda: None, ("work",))
    assert count == chosen and reason.startswith(f"auto: {chosen} ")


def test_a_small_step_trains_on_one_thread_unmeasured(monkeypatch):
    monkeypatch.setattr(threads, "_measure", lambda step: never_called())
    count, reason = threads.choose("auto", CPU, lambda: lambda: None, ("tiny",))
    assert count == 1 and "too little work" in reason


def test_a_decision_is_measured_once_per_work(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 1.0)
    monkeypatch.setattr(threads, "_measure", lambda step: calls.append(1) or (1.0, 0.1))
    for _ in range(3):
        threads.choose("auto", CPU, lambda: lambda: None, ("same work",))
    assert len(calls) == 1


def test_measure_times_the_step_on_one_thread_and_on_every_core_alternately(monkeypatch):
    seen = []
    monkeypatch.setattr(threads, "WINDOW", 0.0)
    one, every = threads._measure(lambda: seen.append(torch.get_num_threads()))
    assert seen == [1, 4] * threads.ROUNDS and one >= 0 and every >= 0
    assert torch.get_num_threads() == threads._AT_IMPORT  # restored


def test_the_users_choice_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose("auto", CPU, never_called) == (
        torch.get_num_threads(),
        f"{torch.get_num_threads()} (yours: OMP_NUM_THREADS=3)",
    )
    monkeypatch.delenv("OMP_NUM_THREADS")
    mine = 3 if threads._AT_IMPORT != 3 else 2
    torch.set_num_threads(mine)
    assert threads.choose("auto", CPU, never_called) == (mine, f"{mine} (yours: torch.set_num_threads({mine}))")
    assert threads.choose(2, CPU, never_called) == (2, "2 (set by threads=2)")


def test_a_count_recipe_set_itself_is_not_mistaken_for_the_users(monkeypatch):
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 1.0)
    monkeypatch.setattr(threads, "_measure", lambda step: (1.0, 2.0))
    with threads.using(1 if threads._AT_IMPORT != 1 else 2):
        _, reason = threads.choose("auto", CPU, lambda: lambda: None, ("inner",))
    assert reason.startswith("auto:")


@pytest.mark.parametrize("bad", [0, -1, 1.5, "many", True])
def test_a_bad_count_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="threads="):
        threads.choose(bad, CPU, never_called)


def test_fit_trains_the_same_and_leaves_threads_and_random_state_as_they_were():
    task = tiny.classification()
    results = []
    for count in (1, "auto"):
        out = fit(task, epochs=2, batch_size=32, device="cpu", progress=False, threads=count)
        results.append((out.step_losses, torch.random.get_rng_state()))
        assert torch.get_num_threads() == threads._AT_IMPORT
        assert "threads" in out.setup
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])  # the timed probe drew nothing from the generator


class NumpyJitter(torch.utils.data.Dataset):
    """Training samples with noise drawn from numpy's global generator on every read."""

    def __init__(self):
        self.x, self.y = tiny.blobs(128, 0)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        import numpy as np

        return self.x[i] + torch.from_numpy(np.random.normal(0, 0.1, self.x.shape[1]).astype("float32")), self.y[i]


def test_a_run_that_measured_and_one_that_remembered_train_alike():
    """The probe reads a batch through the Dataset; its random draws must not shift training's (the seed check
    compares two runs of which only the first measures)."""
    task = tiny.classification().replace(train=NumpyJitter())
    runs = [fit(task, epochs=1, batch_size=32, device="cpu", progress=False).step_losses for _ in range(2)]
    assert runs[0] == runs[1]
