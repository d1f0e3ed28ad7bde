"""The run directory: stage folders, atomic writes, metrics.jsonl, checks.json and manifest.json.

Stages write through this object only; `report.py` reads what it wrote and nothing else.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe import faults
from recipe.check import Check, to_jsonable
from recipe.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGE_ORDER = ("inspect", "baseline", "overfit", "complexify", "regularize", "tune")
CHECKS, MANIFEST, METRICS, REPORT = "checks.json", "manifest.json", "metrics.jsonl", "report.html"
LOCK = ".lock"  # held by the run using the directory: {"pid", "host", "started"}


def temporary_beside(path: Path) -> tuple[int, str]:
    """A new temporary file in `path`'s folder, opened for writing: (descriptor, name). Unlike `mkstemp` (mode 0600)
    it gets the permissions any new file gets (0666 less the umask), which the rename hands on to `path`."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path`: readers never see half a file."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        faults.before_replace(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}  # a lock being written right now, or torn: treated as held by an unknown live process


def process_alive(pid: Any) -> bool:
    """Whether a process of this host with this pid runs (True when it cannot be told)."""
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_folder(stage: str, extra: Iterable[str] = ()) -> str:
    """`02_baseline` for the six known stages; custom stages are numbered after them in order of appearance."""
    if stage in STAGE_ORDER:
        return f"{STAGE_ORDER.index(stage) + 1:02d}_{stage}"
    others = [s for s in dict.fromkeys(extra) if s not in STAGE_ORDER]
    index = others.index(stage) if stage in others else len(others)
    return f"{len(STAGE_ORDER) + 1 + index:02d}_{stage}"


class RunDir:
    """One run's directory (contract: checks.json, report.html, metrics.jsonl, manifest.json, NN_<stage>/)."""

    def __init__(self, path: str | Path, stages: Iterable[str] = ()):
        self.path = Path(path)
        self._stages = list(stages)
        self._metrics: Any = None
        self._locked = False

    def create(self, keep: Iterable[str] | None = None) -> None:
        """Create the folder (or clear a previous run's files from it) and lock it; fails early when it is not
        writable or another live run holds it. `keep` (a resume) names the stages whose folders stay, and keeps the
        run-level files for the caller to rewrite."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(
                f"run_dir {self.path} is not writable ({exc.strerror}); choose another --run-dir."
            ) from exc
        self._lock()
        for partial in self.path.glob(".*.tmp"):  # atomic writes a killed run left before their rename
            partial.unlink(missing_ok=True)
        kept = {stage_folder(s, self._stages) for s in keep or ()}
        for name in (CHECKS, MANIFEST, METRICS, REPORT) if keep is None else (REPORT,):
            (self.path / name).unlink(missing_ok=True)
        for child in self.path.iterdir():
            if child.is_dir() and child.name[:2].isdigit() and child.name[2:3] == "_" and child.name not in kept:
                shutil.rmtree(child)

    # ---- stage artifacts -----------------------------------------------------------------------------------------

    def stage_dir(self, stage: str) -> Path:
        folder = self.path / stage_folder(stage, self._stages)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def save_json(self, stage: str, name: str, obj: Any) -> str:
        return self._save(stage, name, json.dumps(to_jsonable(obj), indent=1).encode())

    def save_text(self, stage: str, name: str, text: str) -> str:
        return self._save(stage, name, text.encode())

    def save_figure(self, stage: str, name: str, fig: Figure) -> str:
        import io

        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return self._save(stage, name, buffer.getvalue())

    def _save(self, stage: str, name: str, data: bytes) -> str:
        path = self.stage_dir(stage) / name
        write_atomic(path, data)
        return path.relative_to(self.path).as_posix()

    # ---- run-level files -----------------------------------------------------------------------------------------

    def metrics_log(self, stage: str, run: str) -> Callable[[dict[str, Any]], None]:
        """A function appending one record per call to metrics.jsonl, flushed at once."""
        if self._metrics is None:
            self._metrics = open(self.path / METRICS, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

        def write(record: dict[str, Any]) -> None:
            self._metrics.write(json.dumps(to_jsonable({"stage": stage, "run": run, **record})) + "\n")
            self._metrics.flush()

        return write

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    def _lock(self) -> None:
        """Take run_dir/.lock (pid, host, start) atomically; a lock whose process is gone on this host is taken over."""
        if self._locked:
            return
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
        for _ in range(2):
            try:
                fd = os.open(self.path / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _read_lock(self.path / LOCK)
                if holder.get("host") == socket.gethostname() and not process_alive(holder.get("pid")):
                    (self.path / LOCK).unlink(missing_ok=True)  # left by a dead process: take it over
                    continue
                raise ConfigError(
                    f"run_dir {self.path} is in use by pid {holder.get('pid')} on {holder.get('host')}; wait for "
                    "that run to end or choose another --run-dir."
                ) from None
            with os.fdopen(fd, "wb") as f:
                f.write(record)
            self._locked = True
            return
        raise ConfigError(f"run_dir {self.path}: could not take its lock; remove {self.path / LOCK} if no run uses it.")

    def write_checks(self, checks: Iterable[Check]) -> None:
        write_atomic(self.path / CHECKS, json.dumps([c.to_dict() for c in checks], indent=1).encode())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        # every digit: a resume reads the learned values and training settings back from it
        write_atomic(self.path / MANIFEST, json.dumps(to_jsonable(manifest, exact=True), indent=1).encode())

    def write_report(self, html: str) -> None:
        write_atomic(self.path / REPORT, html.encode())

    # ---- reading back --------------------------------------------------------------------------------------------

    def read_checks(self) -> list[Check]:
        path = self.path / CHECKS
        return [Check.from_dict(r) for r in json.loads(path.read_text())] if path.exists() else []

    def read_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        return json.loads(path.read_text()) if path.exists() else {}

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
        path = self.path / METRICS
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records
