"""target_leak on targets of several columns (a forecast horizon, an image to reconstruct): each column is scanned
against each input feature. A forecasting window that ends one step too late holds the first step to predict, and
was missed (the scan skipped every target of more than one column); an autoencoder's targets are its inputs by
design and pass; constant columns (background pixels) have no R² and are left out."""

from __future__ import annotations

import math

import torch
from sklearn.datasets import load_digits
from torch import nn

from recipe import Task
from recipe.diagnostics.target_leak import target_leak

WINDOW, HORIZON = 32, 8


def series(n: int = 3000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    return torch.sin(2 * math.pi * t / 50) + 0.5 * torch.sin(2 * math.pi * t / 17) + 0.3 * torch.randn(n, generator=g)


def forecast_task(late: int = 0) -> Task:
    """Windows of WINDOW steps and the next HORIZON steps, split by time; `late` ends each window that many steps
    too late, inside the horizon."""
    s = series()
    starts = torch.arange(0, len(s) - WINDOW - HORIZON - late)
    x = torch.stack([s[i + late : i + late + WINDOW] for i in starts.tolist()])
    y = torch.stack([s[i + WINDOW : i + WINDOW + HORIZON] for i in starts.tolist()])
    cut = int(0.8 * len(x))
    model = lambda: nn.Sequential(nn.Linear(WINDOW, 32), nn.ReLU(), nn.Linear(32, HORIZON))
    return Task((x[:cut], y[:cut]), (x[cut + 40 :], y[cut + 40 :]), model, loss="mse", kind="regression")


def digits_task(given: str) -> Task:
    """Digits in, the whole image out: all of it given (an autoencoder) or its top six rows only (the rest zeroed)."""
    x, _ = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x[:1400].mean()) / x[:1400].std()
    inputs = x.clone()
    if given == "top rows":
        inputs[:, 48:] = 0.0
    model = lambda: nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 64))
    return Task((inputs[:1400], x[:1400]), (inputs[1400:], x[1400:]), model, loss="mse", kind="regression")


def test_a_forecast_window_that_ends_a_step_too_late_is_a_leak_and_its_twin_passes():
    assert target_leak(forecast_task()).status == "pass"
    leak = target_leak(forecast_task(late=1))
    assert leak.status == "fail" and "target column 0 is input feature 31" in leak.message, leak.message
    assert leak.value["copied_columns"] == [0]


def test_an_autoencoders_targets_are_its_inputs_by_design():
    check = target_leak(digits_task("all"))
    assert check.status == "pass" and "autoencoder" in check.message, check.message
    assert check.value["target_columns_scanned"] < 64  # the background pixels constant in a split are left out


def test_a_reconstruction_with_most_columns_given_warns():
    check = target_leak(digits_task("top rows"))
    assert check.status == "warn" and "score the others only" in check.message, check.message


def test_per_step_targets_that_the_input_holds_a_step_later_are_for_causal_to_judge():
    """A forecaster of values with an output per step (y[:, t] = x[:, t + 1]): every target but the last is a later
    input value, which is next-step prediction with a causal model, and target_leak warned that the input holds
    most of what it should predict."""
    s = series()
    x = torch.stack([s[i : i + WINDOW + 1] for i in range(0, 2400, 3)])
    model = lambda: nn.Linear(WINDOW, WINDOW)
    task = Task((x[:600, :-1], x[:600, 1:]), (x[600:, :-1], x[600:, 1:]), model, loss="mse", kind="regression")
    check = target_leak(task)
    assert check.status == "skip" and "causal" in check.message, check.message
