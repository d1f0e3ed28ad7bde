"""Faults a signal cannot reach, injected through `recipe.rundir.before_replace` (the seam every atomic write calls
just before its rename): a write that fails for lack of space, and a process killed between writing a temporary file
and renaming it over its target. Only the reliability tests and `benchmarks/faults.py` arm them: in this process
with `inject`, in a child by starting it through `tests.reliability.faulty`.

A spec (a target matches by its file name, with shell-style wildcards; a pattern with a `/` matches the end of the
path instead):

    enospc:<glob>                      the next matching write fails with OSError(ENOSPC), as a full disk does
    enospc:<n>:<glob>                  ... the n-th matching write (1-based)
    kill_before_rename:<glob>          SIGKILL this process once the temporary file is written, before the rename
    kill_before_rename:<n>:<glob>      ... at the n-th matching write (`kill_after:<n>:<glob>` is the same)

For example `kill_before_rename:2:last.pt` kills a `fit` with `checkpoint_dir` while it writes its second `last.pt`.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from recipe import rundir

ACTIONS = {"enospc": "enospc", "kill_before_rename": "kill", "kill_after": "kill"}


@dataclass
class Fault:
    action: str  # "enospc" or "kill"
    nth: int
    pattern: str
    seen: int = 0
    done: bool = False

    def __call__(self, path: Path) -> None:
        """`rundir.before_replace`: count the matching writes and strike at the n-th."""
        if self.done or not matches(path, self.pattern):
            return
        self.seen += 1
        if self.seen < self.nth:
            return
        self.done = True
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a failed write(2) names no file


def parse(spec: str | None) -> Fault | None:
    """The fault a spec describes; None for an empty one. A malformed one raises ValueError."""
    if not spec:
        return None
    action, _, rest = spec.partition(":")
    count, _, pattern = rest.partition(":")
    if not count.isdigit():
        count, pattern = "1", rest
    if action not in ACTIONS or not pattern or int(count) < 1:
        raise ValueError(f"fault {spec!r}: expected enospc:[N:]GLOB or kill_before_rename:[N:]GLOB.")
    return Fault(ACTIONS[action], int(count), pattern)


def inject(spec: str | None) -> None:
    """Arm a fault in this process; None disarms it."""
    rundir.before_replace = parse(spec)


def matches(path: Path, pattern: str) -> bool:
    """A pattern matches the file name (`last.pt`), or with a `/` the end of the path (`rung_model-0/last.pt`)."""
    return fnmatch.fnmatch(path.as_posix(), f"*/{pattern}") if "/" in pattern else fnmatch.fnmatch(path.name, pattern)
