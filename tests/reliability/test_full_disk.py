"""A disk that fills up: torch's zip writer fails with "unexpected pos", which becomes a `StorageError` naming the
checkpoint while the previous one stays intact; on a real (tmpfs) full disk, and through `recipe run`."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from recipe import StorageError
from recipe import checkpoint as checkpoint_module
from recipe.checkpoint import load, save_atomic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 192 KiB tmpfs; skipped where mounting is not permitted (not root, or a container without CAP_SYS_ADMIN)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()[:80]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_torchs_full_disk_error_becomes_a_storage_error_naming_the_checkpoint(tmp_path, monkeypatch):
    save_atomic({"step": 1}, tmp_path / "last.pt")

    def full(obj, f):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 39808 vs 39696")

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    with pytest.raises(StorageError, match=r"could not write checkpoint .*last\.pt: the disk is full") as info:
        save_atomic({"step": 2}, tmp_path / "last.pt")
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert load(tmp_path / "last.pt") == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "last.pt.sha256"]


def test_a_real_full_disk_keeps_the_previous_checkpoint(small_disk):
    save_atomic({"w": torch.zeros(10)}, small_disk / "last.pt")
    with pytest.raises(StorageError, match="disk is full"):
        save_atomic({"w": torch.zeros(100_000)}, small_disk / "last.pt")  # 400 KB on a 192 KiB disk
    assert load(small_disk / "last.pt")["w"].shape == (10,)
    assert sorted(os.listdir(small_disk)) == ["last.pt", "last.pt.sha256"]


def test_recipe_run_on_a_full_disk_is_one_line_naming_a_path(small_disk, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"task: tests.tiny:classification\nrun_dir: {small_disk / 'run'}\nstages: [baseline, overfit]\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "recipe.cli", "run", str(config), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(small_disk) in lines[0], lines
    assert "space" in lines[0] or "disk is full" in lines[0]
