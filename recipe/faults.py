"""A test hook that injects the faults a signal cannot reach: a write that fails for lack of space, and a process
killed between writing a temporary file and renaming it over its target.

Not a setting: only the reliability tests and `benchmarks/faults.py` set it. `RECIPE_FAULT` is read once, at
import; when it is unset `before_replace` returns at once. Its forms (a target matches by its file name, with
shell-style wildcards; a pattern with a `/` matches the end of the path instead):

    enospc:<glob>                      the next matching write fails with OSError(ENOSPC), as a full disk does
    enospc:<n>:<glob>                  ... the n-th matching write (1-based)
    kill_before_rename:<glob>          SIGKILL this process once the temporary file is written, before the rename
    kill_before_rename:<n>:<glob>      ... at the n-th matching write (`kill_after:<n>:<glob>` is the same)

For example `RECIPE_FAULT=kill_before_rename:2:last.pt` kills a `fit` with `checkpoint_dir` while it writes its
second `last.pt`. Every atomic write (`rundir.write_atomic`, `checkpoint.save_atomic`) calls `before_replace`.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from dataclasses import dataclass
from pathlib import Path

ACTIONS = {"enospc": "enospc", "kill_before_rename": "kill", "kill_after": "kill"}


@dataclass
class Fault:
    action: str  # "enospc" or "kill"
    nth: int
    pattern: str
    seen: int = 0
    done: bool = False


def parse(spec: str | None) -> Fault | None:
    """The fault a `RECIPE_FAULT` value describes; None for an empty value. A malformed one raises ValueError."""
    if not spec:
        return None
    action, _, rest = spec.partition(":")
    count, _, pattern = rest.partition(":")
    if not count.isdigit():
        count, pattern = "1", rest
    if action not in ACTIONS or not pattern or int(count) < 1:
        raise ValueError(
            f"RECIPE_FAULT={spec!r}: expected enospc:[N:]GLOB or kill_before_rename:[N:]GLOB (a test hook)."
        )
    return Fault(ACTIONS[action], int(count), pattern)


_fault = parse(os.environ.get("RECIPE_FAULT"))


def inject(spec: str | None) -> None:
    """Arm a fault in this process (what `RECIPE_FAULT` does for a new one); None disarms it."""
    global _fault
    _fault = parse(spec)


def before_replace(path: Path) -> None:
    """Called by every atomic write once its temporary file is complete, just before it is renamed to `path`."""
    fault = _fault
    if fault is None or fault.done or not _matches(path, fault.pattern):
        return
    fault.seen += 1
    if fault.seen < fault.nth:
        return
    fault.done = True
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write(2) names no file


def _matches(path: Path, pattern: str) -> bool:
    """A pattern matches the file name (`last.pt`), or with a `/` the end of the path (`rung_model-0/last.pt`)."""
    return fnmatch.fnmatch(path.as_posix(), f"*/{pattern}") if "/" in pattern else fnmatch.fnmatch(path.name, pattern)
