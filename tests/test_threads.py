"""threads: the intra-op thread count chosen for the work; the user's choice wins; training is unchanged by it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from recipe import fit, threads
from recipe.errors import ConfigError
from tests import tiny

CPU = torch.device("cpu")
OTHERS_RUNNING = threads.others_running  # the real reading (the fixture stubs it)


@pytest.fixture(autouse=True)
def default_threads(monkeypatch):
    """Each test starts from torch's default count, no environment override, and no remembered decision."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_timed", {})
    monkeypatch.setattr(threads, "CORES", 4)
    monkeypatch.setattr(threads, "others_running", lambda: 0.0)  # a quiet machine unless a test says otherwise
    before = torch.get_num_threads()
    torch.set_num_threads(threads._AT_IMPORT)
    yield
    torch.set_num_threads(before)


def never_called():
    raise AssertionError("measured, though the count was not recipe's to choose")


@pytest.mark.parametrize(
    ("one", "every", "chosen"),
    [
        (1.0, 2.0, 1),  # slower on every core
        (1.0, 0.9, 1),  # faster, but within timing noise: one thread, the cores stay free
        (1.0, 0.5, 4),  # clearly faster
    ],
)
def test_auto_takes_the_free_cores_only_when_clearly_faster(monkeypatch, one, every, chosen):
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 1.0)  # a large step
    monkeypatch.setattr(threads, "_measure", lambda step, count, first: (one, every))
    count, reason = threads.choose("auto", CPU, lambda: lambda: None, ("work",))
    assert count == chosen and reason.startswith(f"auto: {chosen} ")


def test_a_tiny_step_trains_on_one_thread_unmeasured(monkeypatch):
    monkeypatch.setattr(threads, "_measure", lambda *args: never_called())
    monkeypatch.setattr(threads, "others_running", never_called)
    for _ in range(2):  # measured, then remembered
        count, reason = threads.choose("auto", CPU, lambda: lambda: None, ("tiny",))
        assert count == 1 and "too little work" in reason


def test_a_busy_machine_keeps_one_thread_and_the_step_is_timed_again_once_it_is_free(monkeypatch):
    """Other processes' runnable threads take cores: timing steps then would mislead (threads waiting for each other
    lose far more than they gain), so nothing is remembered until the cores are free."""
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 0.002)  # a 2 ms step
    monkeypatch.setattr(threads, "others_running", lambda: 3.0)  # three busy threads elsewhere on the four cores
    monkeypatch.setattr(threads, "_measure", lambda *args: never_called())
    count, reason = threads.choose("auto", CPU, lambda: lambda: None, ("work",))
    assert count == 1 and "other processes keep 3.0 of the 4 cores busy" in reason
    measured = []
    monkeypatch.setattr(threads, "others_running", lambda: 1.0)  # three cores free now
    monkeypatch.setattr(threads, "_measure", lambda step, count, first: measured.append(count) or (0.002, 0.001))
    assert threads.choose("auto", CPU, lambda: lambda: None, ("work",))[0] == 3
    assert measured == [3]


def test_a_remembered_gain_is_not_taken_while_the_machine_is_busy(monkeypatch):
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 0.002)
    monkeypatch.setattr(threads, "_measure", lambda step, count, first: (0.002, 0.001))
    assert threads.choose("auto", CPU, lambda: lambda: None, ("work",))[0] == 4
    monkeypatch.setattr(threads, "others_running", lambda: 2.9)  # another run started meanwhile
    count, reason = threads.choose("auto", CPU, never_called, ("work",))
    assert count == 1 and "but other processes keep 2.9 of the 4 cores busy" in reason
    monkeypatch.setattr(threads, "others_running", lambda: 1.0)
    assert threads.choose("auto", CPU, never_called, ("work",))[0] == 3  # the free cores, timing not repeated


@pytest.mark.parametrize(("step", "measured"), [(0.002, False), (0.05, True)])
def test_without_a_readable_load_small_steps_stay_on_one_thread(monkeypatch, step, measured):
    """Off Linux the load cannot be read: a step under SMALL_STEP is not worth the risk; a large one is measured."""
    monkeypatch.setattr(threads, "others_running", lambda: None)
    monkeypatch.setattr(threads, "_per_step", lambda fn, count, window: step)
    calls = []
    monkeypatch.setattr(threads, "_measure", lambda fn, count, first: calls.append(count) or (step, step / 2))
    count, reason = threads.choose("auto", CPU, lambda: lambda: None, ("work",))
    assert (count, calls) == ((4, [4]) if measured else (1, []))
    assert measured or "load cannot be read" in reason


def test_a_decision_is_measured_once_per_work(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "_per_step", lambda step, count, window: 1.0)
    monkeypatch.setattr(threads, "_measure", lambda step, count, first: calls.append(1) or (1.0, 0.1))
    for _ in range(3):
        threads.choose("auto", CPU, lambda: lambda: None, ("same work",))
    assert len(calls) == 1


def test_measure_times_the_step_on_one_thread_and_on_the_free_cores_alternately(monkeypatch):
    seen = []
    monkeypatch.setattr(threads, "WINDOW", (0.0, 0.0))
    one, many = threads._measure(lambda: seen.append(torch.get_num_threads()), 3, 0.0)
    assert seen == [1, 3] * threads.ROUNDS and one >= 0 and many >= 0
    assert torch.get_num_threads() == threads._AT_IMPORT  # restored


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="the load is read from Linux's /proc/stat")
def test_others_running_sees_a_busy_process():
    busy = subprocess.Popen(
        [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert busy.stdout.readline() == "spinning\n"  # its loop has started
        seen = OTHERS_RUNNING(samples=20)
        assert seen is not None and seen >= 0.5
    finally:
        busy.kill()
        busy.wait()


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
    monkeypatch.setattr(threads, "_measure", lambda step, count, first: (1.0, 2.0))
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
