"""Seeds and random-number-generator state: python, numpy, torch and CUDA, set together and saved together."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from recipe.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG, torch's CPU RNG and every CUDA device."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, in a form `torch.load(weights_only=True)` accepts."""
    numpy_state: Any = np.random.get_state()
    kind, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": _listify(random.getstate()),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _listify(obj: Any) -> Any:
    return [_listify(v) for v in obj] if isinstance(obj, tuple | list) else obj


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" picks CUDA when present; otherwise the named device, which must exist."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={str(device)!r} asks for CUDA but no CUDA GPU is visible; use 'auto' or 'cpu'.")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible.")
    elif resolved.type not in ("cpu", "mps"):
        raise ConfigError(f"device={str(device)!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return resolved


@contextlib.contextmanager
def rng_state_kept() -> Iterator[None]:
    """Run a block without moving any global generator (python, numpy, torch, CUDA): for reads recipe makes on
    its own account (a Dataset's random transforms draw from them), so training draws what it would have anyway."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
