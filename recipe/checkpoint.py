"""Checkpoints written atomically (temporary file, then rename) and read with `weights_only=True`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from recipe.errors import RecipeError


class CheckpointError(RecipeError):
    """A checkpoint could not be read: truncated, corrupted, or carrying a pickled payload."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, then `os.replace`: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with `weights_only=True`; anything else is refused with a one-line error."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first_line = next(iter(str(exc).splitlines()), "")  # EOFError from an empty file has no message
        detail = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {detail}") from exc
