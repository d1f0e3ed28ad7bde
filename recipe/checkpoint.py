"""Checkpoints written atomically (temporary file, then rename) and read with `weights_only=True`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from recipe import stopping
from recipe.reproducibility import rng_state, set_rng_state
from recipe.rundir import rename_into_place, temporary_beside, write_atomic

if TYPE_CHECKING:
    from recipe.loop import FitResult

from recipe.errors import CheckpointError, StorageError

__all__ = ["CheckpointError", "digest", "load", "save_atomic", "verify"]


def digest(path: str | Path) -> dict[str, Any]:
    """Size and sha256 of a file, as recorded beside every checkpoint and in manifest.json."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"size": Path(path).stat().st_size, "sha256": sha.hexdigest()}


def save_atomic(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, then `os.replace`: a crash never leaves half a file.

    A `<name>.sha256` file beside it records size and hash, which `load` verifies: torch checks no CRC on load,
    so one flipped byte inside a tensor would otherwise load without error. Before the rename it lists both the old
    and the new file's digest, after it only the new one, so a kill between the two writes leaves a pair that
    verifies. SIGINT and SIGTERM wait until the write is done: a Ctrl-C inside `torch.save` would otherwise surface
    as torch's "unexpected pos" RuntimeError instead of an interrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_beside(path)
    try:
        with stopping.signals_deferred(), os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
            new = digest(tmp)
            old = _recorded(path) if path.exists() else []
            write_atomic(sidecar(path), json.dumps([new, *old]).encode())
            rename_into_place(tmp, path)
            write_atomic(sidecar(path), json.dumps([new]).encode())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write(2) names no file: name the checkpoint
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except RuntimeError as exc:
        Path(tmp).unlink(missing_ok=True)
        if "unexpected pos" in str(exc):  # torch's zip writer when the disk fills up under it
            raise StorageError(
                f"could not write checkpoint {path}: the disk is full or failed mid-write; the previous checkpoint "
                "is intact. Free space or choose another --run-dir."
            ) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _recorded(path: Path) -> list[dict[str, Any]]:
    """The digests `path`'s sidecar accepts (a list; a single record from older versions)."""
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return []
    return record if isinstance(record, list) else [record]


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def verify(path: str | Path) -> None:
    """Raise `CheckpointError` when `path` no longer matches the size and sha256 recorded when it was written."""
    path = Path(path)
    record_path = sidecar(path)
    if not record_path.exists():
        return  # a checkpoint written by another tool: nothing recorded to check against
    expected = _recorded(path)
    if not expected:
        raise CheckpointError(f"cannot read {record_path}; it should hold the checkpoint's size and sha256.")
    actual = digest(path)
    if actual not in expected:
        what = "size" if all(actual["size"] != e.get("size") for e in expected) else "sha256"
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its {what} differs from the one recorded when it was written "
            f"({actual[what]} against {expected[0].get(what)}); use another checkpoint."
        )


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Verify a checkpoint against its recorded sha256, then load it with `weights_only=True`; anything else is
    refused with a one-line error."""
    if Path(path).exists():
        verify(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first_line = next(iter(str(exc).splitlines()), "")  # EOFError from an empty file has no message
        detail = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {detail}") from exc


def save_training_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    generator: torch.Generator,
    result: FitResult,
    epoch: int,
    progress_state: dict[str, Any],
    position: tuple[int, torch.Tensor] | None = None,
    log: dict[str, Any] | None = None,
) -> None:
    """Everything a resumed `fit` needs to continue as if never stopped; the checkpoint it replaces is kept as
    `<name>.1.pt` (see `keep_previous`), for a resume to fall back on. `position` is (batches consumed, the data
    generator's state when the epoch began) for a checkpoint written mid-epoch; None at an epoch's end. `log` is
    what the loss log keeps (rows written, losses not yet logged)."""
    keep_previous(path)
    save_atomic(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "schedule": sched.state_dict() if sched is not None else None,
            "epoch": epoch,
            "steps": result.steps,
            "generator": generator.get_state(),
            "rng": rng_state(),
            "history": result.history,
            "step_losses": result.step_losses,
            "log_values": result.log_values,
            "progress": dict(progress_state),
            "batches_done": position[0] if position else None,
            "epoch_generator": position[1] if position else None,
            "log": log or {},
        },
        path,
    )


def previous(path: Path) -> Path:
    return path.with_name(f"{path.stem}.1{path.suffix}")


def keep_previous(path: Path) -> None:
    """Move `path` (and its record) to `<name>.1.pt` before a new one is written. The record moves first: at every
    instant either `path` is whole (without a record, it loads unverified) or `<name>.1.pt` matches its record."""
    if path.exists():
        if sidecar(path).exists():
            os.replace(sidecar(path), sidecar(previous(path)))
        else:
            sidecar(previous(path)).unlink(missing_ok=True)
        os.replace(path, previous(path))


def restore_newest(path: Path, *restore_args: Any) -> tuple[tuple[int, int, dict[str, Any]], str]:
    """`restore_training_state` from `path`, or, when that fails, from the one it replaced (`<name>.1.pt`); returns
    its result and which file was used (with the reason when it fell back). Raises the newest file's error when
    neither can be restored."""
    errors: list[CheckpointError] = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            restored = restore_training_state(candidate, *restore_args)
        except CheckpointError as exc:
            errors.append(exc)
            continue
        used = candidate.name if not errors else f"{candidate.name} ({path.name} failed: {errors[0]})"
        return restored, used
    raise errors[0]


def restore_training_state(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    generator: torch.Generator,
    result: FitResult,
    progress_state: dict[str, Any],
) -> tuple[int, int, dict[str, Any]]:
    """Restore a training state; returns (the epoch to start at, batches of it to skip, the loss log's state)."""
    state = load_keys(path, TRAINING_STATE)
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state["schedule"] is not None:
            sched.load_state_dict(state["schedule"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit this model and optimizer ({one_line(exc)}); it was written by another "
            "model or settings: delete it, or train without resume."
        ) from exc
    try:
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        result.steps, result.history, result.step_losses = state["steps"], state["history"], state["step_losses"]
        result.log_values = list(state.get("log_values", []))
        progress_state.update(state.get("progress") or {})
        if state.get("batches_done") is not None:  # written mid-epoch: replay that epoch's order, skip what it used
            generator.set_state(state["epoch_generator"])
            return int(state["epoch"]), int(state["batches_done"]), state.get("log") or {}
        return int(state["epoch"]) + 1, 0, state.get("log") or {}
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(
            f"checkpoint {path} holds a malformed training state ({one_line(exc)}); delete it, or train without resume."
        ) from exc


TRAINING_STATE = ("model", "optimizer", "schedule", "epoch", "steps", "generator", "rng", "history", "step_losses")
"""The keys every training state `save_training_state` writes holds (later versions add optional ones)."""


def load_keys(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """`load`, then a one-line `CheckpointError` naming `path` unless it holds a mapping with every one of `keys`."""
    state = load(path)
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
    if missing:
        held = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)} (it holds {held}): it was not written by this version of "
            "recipe's fit, or was cut short; delete it, or train without resume."
        )
    return state


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's message on one line, shortened: torch's state-dict errors span many."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
