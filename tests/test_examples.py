"""Every bundled example builds a valid task and trains a few steps through `fit`."""

from __future__ import annotations

import pytest

from examples import charlm, digits, regression
from recipe import fit

EXAMPLES = {
    "digits-mlp": lambda: digits.make_task("mlp"),
    "digits-cnn": lambda: digits.make_task("cnn"),
    "charlm-gpt": lambda: charlm.make_task("gpt", max_chars=50_000),
    "charlm-conv": lambda: charlm.make_task("conv", max_chars=50_000),
    "diabetes": regression.make_task,
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains(name):
    task = EXAMPLES[name]()
    out = fit(task, epochs=None, max_steps=30, lr=3e-3, progress=False, device="cpu", evaluate_every_epoch=True)
    assert out.step_losses[-1] < out.step_losses[0]
    assert out.history and out.history[-1]["val_loss"] > 0


def test_charlm_targets_are_the_next_characters():
    x, y = charlm.windows(charlm.encode("abcdefghij" * 5), 8)
    assert (y[:, :-1] == x[:, 1:]).all()
    assert charlm.decode(x[0].tolist()) == "abcdefgh"
