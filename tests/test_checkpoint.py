"""checkpoint: atomic saves, weights-only loads that refuse pickled code; the RNG state they carry for resume."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from recipe.checkpoint import CheckpointError, load, save_atomic
from recipe.errors import RecipeError
from recipe.reproducibility import rng_state, seed_everything, set_rng_state
from tests.conftest import TinyMLP


def test_save_and_load_roundtrip(tmp_path):
    model = TinyMLP()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "history": [{"val_loss": 0.5, "val_loss_se": None}],
        "name": "run",
        "losses": [1.0, 0.5],
        "rng": rng_state(),
    }
    path = save_atomic(state, tmp_path / "deep" / "last.pt")
    assert path == tmp_path / "deep" / "last.pt" and sorted(os.listdir(path.parent)) == ["last.pt", "last.pt.sha256"]
    back = load(path)
    assert back["epoch"] == 3 and back["history"] == state["history"] and back["losses"] == [1.0, 0.5]
    assert all(torch.equal(back["model"][k], v) for k, v in model.state_dict().items())
    restored = TinyMLP()
    restored.load_state_dict(back["model"])
    torch.optim.AdamW(restored.parameters()).load_state_dict(back["optimizer"])


def test_save_replaces_an_existing_checkpoint(tmp_path):
    save_atomic({"epoch": 1}, tmp_path / "last.pt")
    save_atomic({"epoch": 2}, tmp_path / "last.pt")
    assert load(tmp_path / "last.pt") == {"epoch": 2} and sorted(os.listdir(tmp_path)) == ["last.pt", "last.pt.sha256"]


def test_a_failed_save_keeps_the_previous_checkpoint_and_no_temporary(tmp_path):
    save_atomic({"epoch": 1}, tmp_path / "last.pt")
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_atomic({"epoch": 2, "fn": lambda: 0}, tmp_path / "last.pt")  # lambdas cannot be pickled
    assert load(tmp_path / "last.pt") == {"epoch": 1} and sorted(os.listdir(tmp_path)) == ["last.pt", "last.pt.sha256"]


class Payload:
    """Runs `Path(sentinel).touch()` when unpickled: what a malicious checkpoint does."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"model": {}, "extra": p}], ids=["bare", "nested"])
def test_a_pickled_payload_is_refused_and_never_runs(tmp_path, wrap):
    sentinel = tmp_path / "pwned"
    torch.save(wrap(Payload(sentinel)), tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*evil\.pt: UnpicklingError"):
        load(tmp_path / "evil.pt")
    assert not sentinel.exists()
    assert issubclass(CheckpointError, RecipeError)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"FileNotFoundError"),
        (b"", r"cannot load checkpoint"),
        (b"not a checkpoint at all", r"cannot load checkpoint"),
        ("truncated", r"last\.pt is corrupted: its size differs"),
        ("flipped", r"last\.pt is corrupted: its sha256 differs"),
    ],
)
def test_unreadable_checkpoints_raise_one_line_errors(tmp_path, content, match):
    path = tmp_path / "last.pt"
    if content == "truncated":
        save_atomic({"model": TinyMLP().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "flipped":  # one byte inside a tensor's payload: torch itself loads this without complaint
        save_atomic({"model": TinyMLP().state_dict()}, path)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        load(path)
    assert "\n" not in str(info.value)


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    seed_everything(7)
    _draws()
    save_atomic({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = [_draws() for _ in range(3)]
    seed_everything(123)  # something else consumes and reseeds the generators
    set_rng_state(load(tmp_path / "rng.pt")["rng"])
    assert [_draws() for _ in range(3)] == expected


@pytest.mark.parametrize("seed", [0, 1, 2**40, -3])
def test_seed_everything_makes_draws_repeatable(seed):
    seed_everything(seed)
    first = _draws()
    seed_everything(seed)
    assert _draws() == first


def test_resume_removes_only_recipes_own_temporaries_from_a_checkpoint_folder(tmp_path):
    """The checkpoint folder is the user's choice: a resume clears the temporaries of killed writes (recipe's names,
    `.<file>.<8 hex>.tmp`) and nothing else."""
    from recipe import fit
    from tests import tiny

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".notes.tmp").write_text("mine")
    (folder / ".last.pt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    fit(tiny.classification(), epochs=1, device="cpu", progress=False, checkpoint_dir=folder, resume=True)
    assert (folder / ".notes.tmp").read_text() == "mine"
    assert not (folder / ".last.pt.0123abcd.tmp").exists()
