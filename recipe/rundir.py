"""The run directory: stage folders, atomic writes, metrics.jsonl, checks.json and manifest.json.

Stages write through this object only; `report.py` reads what it wrote and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe.check import Check, to_jsonable
from recipe.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGE_ORDER = ("inspect", "baseline", "overfit", "complexify", "regularize", "tune")
"""The six stages in recipe order, named only here: their folders are numbered by it (01_inspect ... 06_tune), and
`recipe.stages.STAGES` pairs these names with their classes in this order."""
CHECKS, MANIFEST, METRICS, REPORT = "checks.json", "manifest.json", "metrics.jsonl", "report.html"
LOCK = ".lock"  # held by the run using the directory: {"pid", "host", "started"}
LEDGER = ".recipe"  # marks a run directory; one line per file recipe wrote in it (a run-relative path)
TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # `temporary_beside`'s names: an atomic write not yet renamed
DPI = 110  # every saved figure's resolution


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


before_replace: Callable[[Path], None] | None = None
"""A test seam, None in production: every atomic write (`write_atomic`, `checkpoint.save_atomic`) calls it with its
target once the temporary file is complete, just before the rename. tests/reliability/faults.py sets it to make a
write fail for lack of space or kill the process there, faults a signal cannot aim at."""


def rename_into_place(tmp: str, path: Path) -> None:
    """The last step of an atomic write: `os.replace(tmp, path)`, after the `before_replace` seam."""
    if before_replace is not None:
        before_replace(path)
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename over `path`: readers never see half a file."""
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        rename_into_place(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


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


def check_owned(path: str | Path) -> None:
    """Refuse a folder recipe did not create: `path` must be missing, empty, or a run directory (it holds LEDGER).

    Called before any data is loaded, so a mistyped --run-dir pointing at the user's own folder is refused before
    anything there is read, written or deleted."""
    path = Path(path)
    if not path.is_dir() or (path / LEDGER).is_file():
        return
    try:
        entries = sorted(p.name for p in path.iterdir())
    except OSError:
        return  # unreadable: `create` reports it with the reason
    if not entries:
        return
    older = " (it looks like a run of an older recipe, which did not mark its runs)" if MANIFEST in entries else ""
    raise ConfigError(
        f"run_dir {path} is a non-empty folder that recipe did not create{older}: it holds {', '.join(entries[:3])}"
        f"{', ...' if len(entries) > 3 else ''}; recipe never writes into or deletes from such a folder, so choose a "
        "new or empty --run-dir."
    )


def inside_links(root: Path, path: Path) -> bool:
    """Whether `path` (under `root`) or any folder between them is a symbolic link: a delete never goes through one."""
    current = path
    while current != root and root in current.parents:
        if current.is_symlink():
            return True
        current = current.parent
    return False


def remove_files(root: Path, paths: Iterable[Path]) -> None:
    """Delete files recipe wrote under `root`, then the folders they leave empty. A path reached through a symbolic
    link, or one that is no longer a plain file, is left alone; a folder holding anything else is kept."""
    folders: set[Path] = set()
    for path in paths:
        if inside_links(root, path) or not path.is_file():
            continue
        path.unlink(missing_ok=True)
        folders.update(p for p in path.parents if root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty


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
        self._ledger: set[str] | None = None
        self.written: dict[str, list[str]] = {}  # stage -> the run-relative paths this process wrote for it

    def create(self, replace: Iterable[str] = ()) -> None:
        """Create the folder (or take over the run directory it already is) and lock it; fails early when it is not
        writable, another live run holds it, or it is a folder recipe did not create (`check_owned`).

        `replace` names the stages that run now: the files recipe wrote for them earlier are removed, and nothing
        else is. Files recipe did not write are never touched; the other stages' results stay."""
        check_owned(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, probe = temporary_beside(self.path / ".write-test")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"run_dir {self.path} is not writable ({exc.strerror}); choose another --run-dir."
            ) from exc
        if not (self.path / LEDGER).exists():  # marked as recipe's before anything else is written in it
            self._write_ledger([])
        self._lock()
        try:
            ledger = self.ledger()
            for partial in self.path.iterdir():  # atomic writes a killed run left before their rename
                if TEMPORARY.match(partial.name) and partial.is_file() and not partial.is_symlink():
                    partial.unlink(missing_ok=True)
            folders = {stage_folder(s, self._stages) + "/" for s in replace}
            stale = sorted(p for p in ledger if any(p.startswith(f) for f in folders))
            remove_files(self.path, (self.path / p for p in stale))
            self._write_ledger(sorted(p for p in ledger if (self.path / p).exists() or p in _RUN_FILES))
        except BaseException:
            self.close()  # the lock goes with the run that could not start
            raise

    def ledger(self) -> set[str]:
        """The run-relative paths recipe wrote in this directory (read once; a torn last line is ignored)."""
        if self._ledger is None:
            try:
                lines = (self.path / LEDGER).read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                lines = []
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{self.path / LEDGER} cannot be read ({exc}); choose another --run-dir.") from exc
            self._ledger = {line for line in lines[1:] if line and not line.startswith(("/", "../"))}
        return self._ledger

    def _write_ledger(self, paths: list[str]) -> None:
        header = "recipe run directory: the files recipe wrote here, one per line (recipe deletes no other file)"
        write_atomic(self.path / LEDGER, "\n".join([header, *paths, ""]).encode())
        self._ledger = set(paths)

    def record(self, relative: str) -> None:
        """Add a path to the ledger before the file is written, so even a write cut short is known to be recipe's."""
        ledger = self.ledger()
        if relative in ledger:
            return
        with open(self.path / LEDGER, "a", encoding="utf-8") as f:
            f.write(relative + "\n")
        ledger.add(relative)

    def _claim(self, path: Path, stage: str | None = None) -> None:
        """Record `path` as recipe's before writing it; refuse to overwrite a file recipe did not write."""
        relative = path.relative_to(self.path).as_posix()
        if path.exists() and relative not in self.ledger():
            raise StorageError(
                f"{path} exists and recipe did not write it; recipe never overwrites a file it did not write: move "
                "it out of the run directory or choose another --run-dir."
            )
        self.record(relative)
        if stage is not None:
            self.written.setdefault(stage, []).append(relative)

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
        import matplotlib.pyplot as plt  # ~1 s to import: paid by the first figure, not by `recipe --help`

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches=_tight_box(fig, DPI))
        plt.close(fig)
        return self._save(stage, name, buffer.getvalue())

    def _save(self, stage: str, name: str, data: bytes) -> str:
        path = self.stage_dir(stage) / name
        self._claim(path, stage)
        write_atomic(path, data)
        return path.relative_to(self.path).as_posix()

    # ---- run-level files -----------------------------------------------------------------------------------------

    def metrics_log(self, stage: str, run: str) -> Callable[[dict[str, Any]], None]:
        """A function appending one record per call to metrics.jsonl, flushed at once."""
        if self._metrics is None:
            self._claim(self.path / METRICS)
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
        """Take run_dir/.lock (pid, host, start) atomically; a lock whose process is gone on this host is taken over.

        The record is written to a temporary file first and hard-linked into place, so a lock is never seen half
        written: an empty or unreadable one was damaged outside recipe, and the error says how to clear it."""
        if self._locked:
            return
        lock = self.path / LOCK
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}).encode()
        fd, tmp = temporary_beside(lock)
        with os.fdopen(fd, "wb") as f:
            f.write(record)
        try:
            for _ in range(2):
                try:
                    os.link(tmp, lock)
                except FileExistsError:
                    holder = _read_lock(lock)
                    if not holder:
                        raise ConfigError(
                            f"{lock} is empty or unreadable, so recipe cannot tell whether a run uses {self.path}; "
                            f"if none does, delete {lock} and run again."
                        ) from None
                    if holder.get("host") == socket.gethostname() and not process_alive(holder.get("pid")):
                        lock.unlink(missing_ok=True)  # left by a dead process: take it over
                        continue
                    raise ConfigError(
                        f"run_dir {self.path} is in use by pid {holder.get('pid')} on {holder.get('host')}; wait "
                        "for that run to end or choose another --run-dir."
                    ) from None
                self._locked = True
                return
        finally:
            os.unlink(tmp)
        raise ConfigError(f"run_dir {self.path}: could not take its lock; remove {lock} if no run uses it.")

    def write_checks(self, checks: Iterable[Check]) -> None:
        self._claim(self.path / CHECKS)
        write_atomic(self.path / CHECKS, json.dumps([c.to_dict() for c in checks], indent=1).encode())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        # every digit: a resume reads the learned values and training settings back from it
        self._claim(self.path / MANIFEST)
        write_atomic(self.path / MANIFEST, json.dumps(to_jsonable(manifest, exact=True), indent=1).encode())

    def write_report(self, html: str) -> None:
        if (self.path / LEDGER).exists():  # `recipe report` on a run: the ledger lists the page too
            self._claim(self.path / REPORT)
        write_atomic(self.path / REPORT, html.encode())

    # ---- reading back --------------------------------------------------------------------------------------------

    def read_checks(self) -> list[Check]:
        path = self.path / CHECKS
        if not path.exists():
            return []
        try:
            return [Check.from_dict(r) for r in json.loads(path.read_text(encoding="utf-8"))]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(_malformed(path, exc)) from None

    def read_manifest(self) -> dict[str, Any]:
        path = self.path / MANIFEST
        if not path.exists():
            return {}
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(_malformed(path, exc)) from None
        if not isinstance(manifest, dict):
            raise ConfigError(_malformed(path, TypeError(f"a JSON {type(manifest).__name__}, not an object")))
        return manifest

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl; a torn last line (a crash mid-write) is skipped, a bad line elsewhere is a
        one-line error naming the file and the line."""
        path = self.path / METRICS
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                if number == len(lines):
                    continue
                raise ConfigError(_malformed(path, exc, f"line {number}")) from None
            if isinstance(record, dict):
                records.append(record)
        return records


_RUN_FILES = (CHECKS, MANIFEST, METRICS, REPORT)


def _tight_box(fig: Figure, dpi: float) -> Any:
    """The box `bbox_inches="tight"` would crop `fig` to at `dpi`, without its cost: matplotlib draws the whole
    figure once without output, then measures it, then draws it; measuring alone (`get_tightbbox`, at the dpi the
    text is rendered at) gives the same box, pixel for pixel on all 114 figures of the five bundled configs'
    recipes, for about a fifth less. A layout engine moves the axes while drawing, so figures with one (and a pad
    that is not a length) keep matplotlib's own way."""
    import matplotlib

    pad = matplotlib.rcParams["savefig.pad_inches"]
    if fig.get_layout_engine() is not None or not isinstance(pad, (int, float)):
        return "tight"
    original, fig.dpi = fig.dpi, dpi
    try:
        return fig.get_tightbbox().padded(pad)
    finally:
        fig.dpi = original


def _malformed(path: Path, exc: BaseException, where: str = "") -> str:
    reason = " ".join(str(exc).split())[:160]
    return (
        f"{path} is malformed{f' at {where}' if where else ''} ({reason}): it was cut short or edited by hand; "
        "restore it, or remove it (the run's results it held are then lost) or choose another --run-dir."
    )
