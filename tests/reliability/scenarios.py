"""Issue 8's fault scenarios, shared by `tests/reliability/test_faults.py` and `benchmarks/faults.py`.

Each scenario injects one fault into real work and returns an `Outcome`: whether the run survived (resumed to what
an uninterrupted run gives, or refused with a one-line error), with the rows and trials lost and the hostile files
that ran. Faults come from real signals sent to a child process (`os.kill`), or from `tests.reliability.faults`
(armed in a child through `tests.reliability.faulty`) for what a signal cannot reach: a write that fails for lack of
space, a kill between a temporary file and its rename.

A child is killed at a precise point without sleeping: its training prints `MARKER` on stdout and then blocks reading
stdin; the parent waits for that line, then signals it. In a `fit` child the point is chosen by a callback (`on_log`,
`on_epoch`) or by the model's evaluation forward; in a `recipe run` child by `RECIPE_TEST_BLOCK`, read by
`blocking_task`'s model:

    forward:<n>            block at the n-th training forward of this process
    trials:<n>:<run_dir>   block in the first trial started once <run_dir>/study/trials holds n trial checkpoints

    python -m tests.reliability.scenarios fit FOLDER POINT ROWS_FILE    (the `fit` child; POINT: see FIT_POINTS)
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
MARKER = "RECIPE-TEST-BLOCKED"
BLOCK_ENV = "RECIPE_TEST_BLOCK"
TIMEOUT = 180.0  # a failure guard only: every wait ends on an event long before

# The fit every kill scenario trains: 8 steps per epoch, cosine decay after 6 warm-up steps, a checkpoint every 3
# steps (so kills land between checkpoints), a row per step, shuffled batches and dropout (RNG state matters).
FIT = {
    "epochs": 3,
    "batch_size": 32,
    "lr": 1e-2,
    "schedule": "cosine",
    "warmup_steps": 6,
    "log_every": 1,
    "checkpoint_every": 3,
    "device": "cpu",
    "seed": 0,
    "progress": False,
}
FIT_POINTS = {  # where the child blocks, to be killed there
    "warmup": "step 5 of 6 warm-up steps (last checkpoint: step 3)",
    "mid_epoch": "step 11, mid-epoch 1 (last checkpoint: step 9)",
    "epoch_end": "epoch 0's end, after its evaluation (last checkpoint: step 6)",
    "evaluation": "during epoch 1's evaluation (last checkpoint: step 15)",
}


@dataclass
class Outcome:
    """What one scenario measured. `survived`: the run resumed to an uninterrupted run's result, or the bad file
    was refused with a one-line error; `trials_lost` counts trials lost, counted twice or left RUNNING."""

    name: str
    kind: str  # "fault" or "hostile"
    survived: bool
    detail: str
    rows_lost: int = 0
    rows_duplicated: int = 0
    trials_lost: int = 0
    hostile_executed: int = 0
    user_files_lost: int = 0
    facts: dict[str, Any] = field(default_factory=dict)


# ---- the child side: a model that blocks where the parent wants to kill it ----------------------------------------

_block = os.environ.get(BLOCK_ENV, "")
_state: dict[str, Any] = {"forwards": 0, "armed": False, "blocked": False, "error": None}


def block_here() -> None:
    """Tell the parent where we are, then wait for a signal (or for a line on stdin, which releases us)."""
    if _state["blocked"]:
        return
    _state["blocked"] = True
    print(MARKER, flush=True)
    os.read(sys.stdin.fileno(), 1)  # one byte, unbuffered: a tune child's workers share its stdin, one byte each


class DropoutMLP(nn.Module):
    """tests.tiny's MLP with dropout (so a resume must restore the RNG), and the blocking points above."""

    def __init__(self, features: int = 12, classes: int = 4):
        super().__init__()
        self.l1, self.l2, self.head = nn.Linear(features, 32), nn.Linear(32, 32), nn.Linear(32, classes)
        self.drop = nn.Dropout(0.2)
        if _block.startswith("trials:"):
            _, count, run_dir = _block.split(":", 2)
            trials = Path(run_dir) / "study" / "trials"
            _state["armed"] = _state["armed"] or (trials.exists() and len(list(trials.glob("*.pt"))) >= int(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            _state["forwards"] += 1
            if _block == f"forward:{_state['forwards']}" or (_block.startswith("trials:") and _state["armed"]):
                block_here()
        elif _state["armed"] and not _block:
            block_here()  # a `fit` child armed for "evaluation"
        return self.head(self.drop(F.relu(self.l2(self.drop(F.relu(self.l1(x)))))))


def blocking_task() -> Any:
    """The `task:` of the `recipe run` children: tests.tiny's classification with `DropoutMLP`."""
    from tests import tiny

    return tiny.classification(model=DropoutMLP)


def train(folder: Path, point: str = "none", rows_name: str = "rows.jsonl") -> int:
    """Train `FIT` with checkpoints in folder/ckpt (resuming from them), rows to folder/ROWS_NAME (opened fresh),
    then write folder/final.pt and folder/history.json; block at `point` (one of `FIT_POINTS`, or "none").
    Returns 0, or 3 after a `RecipeError` or `OSError` (kept in `_state["error"]`)."""
    from recipe import fit
    from recipe.errors import RecipeError

    folder.mkdir(parents=True, exist_ok=True)
    _state["error"] = None
    with open(folder / rows_name, "w", encoding="utf-8") as rows:

        def log(row: dict[str, Any]) -> None:
            rows.write(json.dumps(row, sort_keys=True) + "\n")
            rows.flush()

        def on_log(step: int, model: nn.Module) -> None:
            if (point, step) in (("warmup", 5), ("mid_epoch", 11)):
                block_here()
            if (point, step) == ("evaluation", 16):
                _state["armed"] = True  # epoch 1's last step: its evaluation comes next

        def on_epoch(record: dict[str, Any]) -> None:
            if point == "epoch_end" and record["epoch"] == 0:
                block_here()

        try:
            result = fit(
                blocking_task(), **FIT, checkpoint_dir=folder / "ckpt", resume=True, log=log, on_log=on_log,
                on_epoch=on_epoch,
            )  # fmt: skip
        except (RecipeError, OSError) as exc:
            _state["error"] = exc
            return 3
    torch.save(result.model.state_dict(), folder / "final.pt")
    (folder / "history.json").write_text(json.dumps(result.history, sort_keys=True))
    return 0


# ---- the parent side ---------------------------------------------------------------------------------------------


class Child:
    """A child process whose stdout is read line by line (to wait for `MARKER`) and whose stdin can release it."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT):
        base = {k: v for k, v in os.environ.items() if k != BLOCK_ENV}
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line)
            if announce:
                self.lines.put(line)
        if announce:
            self.lines.put(None)

    def wait_for_marker(self) -> bool:
        """True once the child printed `MARKER`; False when it ended (or the guard expired) first."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                return False
            if line is None:
                return False
            if line.strip() == MARKER:
                return True

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.proc.pid, sig)

    def release(self) -> None:
        """Unblock a child waiting on stdin (after a signal whose handler only sets a flag)."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()

    def finish(self) -> int:
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        return self.proc.returncode

    @property
    def err(self) -> str:
        return "".join(self.stderr)


def fit_process(folder: Path, point: str, rows: str, fault: str | None = None) -> Child:
    folder.mkdir(parents=True, exist_ok=True)
    launch = ["tests.reliability.faulty", fault, "--"] if fault else []  # arms the fault in the child
    return Child([sys.executable, "-m", *launch, "tests.reliability.scenarios", "fit", str(folder), point, rows])


def recipe_process(*args: str, env: dict[str, str] | None = None) -> Child:
    return Child([sys.executable, "-m", "recipe.cli", "run", *args, "--quiet"], env)


@dataclass
class FitRun:
    """A finished `fit` child: its weights, history and rows."""

    weights: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    rows: list[str]


def read_fit(folder: Path, rows: str) -> FitRun:
    weights = torch.load(folder / "final.pt", weights_only=True)
    history = json.loads((folder / "history.json").read_text())
    return FitRun(weights, history, read_rows(folder / rows))


def read_rows(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def reference_fit(folder: Path) -> FitRun:
    """The uninterrupted run every kill scenario is compared with (in this process, like every resume)."""
    if train(folder) != 0:
        raise RuntimeError(f"the reference fit failed in {folder}")
    return read_fit(folder, "rows.jsonl")


def command(*argv: str) -> tuple[int, str]:
    """`recipe run ARGV --quiet` in this process: its exit status and what it wrote to stderr."""
    import io

    from recipe import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["run", *argv, "--quiet"])
    return rc, err.getvalue()


def compare(name: str, run: FitRun, ref: FitRun, before: list[str], detail: str) -> Outcome:
    """Same weights (bit for bit), history and rows as the uninterrupted run; the rows logged before the kill
    agree with it too."""
    same_weights = run.weights.keys() == ref.weights.keys() and all(
        torch.equal(run.weights[k], ref.weights[k]) for k in ref.weights
    )
    got, want = collections.Counter(run.rows), collections.Counter(ref.rows)
    lost, duplicated = sum((want - got).values()), sum((got - want).values())
    prefix = before == ref.rows[: len(before)]
    ok = same_weights and run.history == ref.history and run.rows == ref.rows and prefix
    facts = {"weights_equal": same_weights, "history_equal": run.history == ref.history, "rows_before_kill": prefix}
    if not ok:
        detail += f"; {facts}, rows lost {lost}, duplicated {duplicated}"
    return Outcome(name, "fault", ok, detail, lost, duplicated, facts=facts)


def kill_fit(folder: Path, point: str, ref: FitRun) -> Outcome:
    """kill -9 a `fit` child at `point`, then train again with resume=True: the weights, history and rows of the
    uninterrupted run."""
    name = f"kill -9 fit: {point}"
    child = fit_process(folder, point, "rows_before.jsonl")
    if not child.wait_for_marker():
        child.finish()
        return Outcome(name, "fault", False, f"the child never reached {point}: {child.err[-500:]}")
    child.kill()
    rc = child.finish()
    return resume_and_compare(folder, name, ref, f"{FIT_POINTS[point]}; exit {rc}")


def signal_fit(folder: Path, sig: signal.Signals, ref: FitRun) -> Outcome:
    """SIGTERM or SIGINT to a `fit` child at step 11 (last periodic checkpoint: step 9). SIGTERM lets the step in
    progress end, writes last.pt there and raises `Terminated`; SIGINT stops at once. Either way a resume ends where
    an uninterrupted run ends."""
    name = f"{sig.name} to fit: mid_epoch"
    child = fit_process(folder, "mid_epoch", "rows_before.jsonl")
    if not child.wait_for_marker():
        child.finish()
        return Outcome(name, "fault", False, f"the child never reached step 11: {child.err[-500:]}")
    child.kill(sig)
    child.release()  # SIGTERM's handler only sets a flag: training goes on to the step boundary
    rc = child.finish()
    last = child.err.strip().splitlines()[-1:] or [""]
    facts = {"exit": rc, "raised": last[0][:120], **last_checkpoint(folder)}
    steps = facts.get("last_pt_steps")
    return resume_and_compare(folder, name, ref, f"exit {rc} ({last[0][:60]}); last.pt at step {steps}", facts)


def resume_and_compare(folder: Path, name: str, ref: FitRun, detail: str, facts: Any = None) -> Outcome:
    before = read_rows(folder / "rows_before.jsonl")
    if train(folder, "none", "rows_after.jsonl") != 0:
        return Outcome(name, "fault", False, f"{detail}; the resume failed", facts=facts or {})
    out = compare(name, read_fit(folder, "rows_after.jsonl"), ref, before, detail)
    out.facts.update(facts or {}, rows_before=len(before))
    return out


def stray_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def last_checkpoint(folder: Path) -> dict[str, Any]:
    """Whether the newest training checkpoint that verifies loads: last.pt, or the one it replaced (last.1.pt)
    while a new last.pt was being written."""
    from recipe import checkpoint

    errors = []
    for name in ("last.pt", "last.1.pt"):
        try:
            steps = checkpoint.load(folder / "ckpt" / name)["steps"]
            return {"last_pt_intact": True, "last_pt_steps": steps, "last_pt_name": name}
        except checkpoint.CheckpointError as exc:
            errors.append(str(exc))
    return {"last_pt_intact": False, "last_pt_error": errors[0]}


def kill_in_write(folder: Path, target: str, nth: int, ref: FitRun) -> Outcome:
    """`kill_before_rename:<nth>:<target>` (tests/reliability/faults.py): a `fit` child dies at its nth write of
    `target`, once the temporary file is written and before its rename (`save_atomic` writes last.pt.sha256 twice
    per checkpoint: before last.pt's rename and after it). The checkpoint left must verify and load, and a resume must
    end where an uninterrupted run ends."""
    name = f"kill -9 before renaming {target} (write {nth})"
    child = fit_process(folder, "none", "rows_before.jsonl", f"kill_before_rename:{nth}:{target}")
    rc = child.finish()
    facts = {"exit": rc, "stray": stray_temporaries(folder / "ckpt"), **last_checkpoint(folder)}
    detail = f"exit {rc}; " + (
        f"{facts['last_pt_name']} verified (step {facts['last_pt_steps']})"
        if facts["last_pt_intact"]
        else facts["last_pt_error"]
    )
    out = resume_and_compare(folder, name, ref, detail, facts)
    out.survived = out.survived and facts["last_pt_intact"]
    return out


def enospc_fit(folder: Path, ref: FitRun) -> Outcome:
    """The disk is full at `fit`'s third write of last.pt: OSError(ENOSPC), the previous last.pt verifies and
    loads, no temporary file stays, and a resume ends where an uninterrupted run ends."""
    import errno

    from tests.reliability import faults

    name = "ENOSPC writing last.pt"
    faults.inject("enospc:3:last.pt")
    try:
        rc = train(folder, "none", "rows_before.jsonl")
    finally:
        faults.inject(None)
    stray = stray_temporaries(folder / "ckpt")
    facts = {"exit": rc, "stray": stray, **last_checkpoint(folder)}
    error = _state["error"]
    raised = rc == 3 and isinstance(error, OSError) and error.errno == errno.ENOSPC
    out = resume_and_compare(folder, name, ref, f"fit raised {'OSError(ENOSPC)' if raised else rc}", facts)
    out.survived = out.survived and raised and facts["last_pt_intact"] and not stray
    return out


# ---- checkpoints gone bad ------------------------------------------------------------------------------------------

CORRUPTIONS = ("truncated", "zero_bytes", "flipped_byte", "renamed_over", "other_architecture")


def good_checkpoints(folder: Path, model: Any = DropoutMLP) -> Path:
    """A checkpoint folder (last.pt, best.pt and their sidecars) from two epochs of a small `fit`, in-process."""
    from recipe import fit
    from tests import tiny

    ckpt = folder / "ckpt"
    fit(tiny.classification(model=model), epochs=2, batch_size=64, device="cpu", progress=False, checkpoint_dir=ckpt)
    return ckpt


def payload_offset(path: Path) -> int:
    """The offset of a byte in the middle of the largest tensor stored in a `torch.save` zip file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len + info.file_size // 2


def corrupt(ckpt: Path, how: str, scratch: Path) -> None:
    """Spoil ckpt/last.pt in one of the `CORRUPTIONS` ways."""
    last = ckpt / "last.pt"
    if how == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif how == "zero_bytes":
        last.write_bytes(b"")
    elif how == "flipped_byte":
        data = bytearray(last.read_bytes())
        data[payload_offset(last)] ^= 0x01
        last.write_bytes(bytes(data))
    elif how == "renamed_over":
        os.replace(ckpt / "best.pt", last)  # its own sidecar stays behind; last.pt's no longer matches
    elif how == "other_architecture":  # a valid checkpoint, with its own valid sidecar, of another model
        other = good_checkpoints(scratch, model=lambda: nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)))
        for name in ("last.pt", "last.pt.sha256"):
            shutil.copy(other / name, ckpt / name)
    else:
        raise ValueError(how)


def one_line_error(exc: BaseException, path: Path) -> bool:
    """A `RecipeError` whose message is one line and names `path`."""
    from recipe.errors import RecipeError

    return isinstance(exc, RecipeError) and "\n" not in str(exc) and str(path) in str(exc)


def corrupted_checkpoint(folder: Path, how: str) -> Outcome:
    """Resume a `fit` from a spoiled last.pt: it falls back to the checkpoint last.pt replaced (last.1.pt) with a
    one-line warning naming last.pt; with no last.1.pt to fall back on, it fails with a one-line `RecipeError` naming
    last.pt (loading the file directly too, unless it is a valid file of another model)."""
    import shutil
    import warnings

    from recipe import checkpoint, fit
    from tests import tiny

    name = f"corrupted checkpoint: {how}"
    ckpt = good_checkpoints(folder)
    corrupt(ckpt, how, folder / "other")
    alone = folder / "alone"
    shutil.copytree(ckpt, alone)
    for path in (alone / "last.1.pt", checkpoint.sidecar(alone / "last.1.pt")):
        path.unlink(missing_ok=True)
    last = ckpt / "last.pt"
    facts: dict[str, Any] = {}
    if how != "other_architecture":
        try:
            checkpoint.load(last)
            facts["load"] = "loaded"
        except Exception as exc:
            facts["load"] = f"{type(exc).__name__}: {exc}"
            facts["load_ok"] = one_line_error(exc, last)
    task = tiny.classification(model=DropoutMLP)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, **{**FIT, "epochs": 3}, checkpoint_dir=ckpt, resume=True)
    said = [str(w.message) for w in caught if "resumed from last.1.pt" in str(w.message)]
    facts["fallback"] = said[0] if said else "no warning"
    fallback_ok = bool(said) and "\n" not in said[0] and str(last) in said[0]
    try:
        fit(task, **{**FIT, "epochs": 3}, checkpoint_dir=alone, resume=True)
        facts["resume"] = "resumed without complaint"
        resume_ok = False
    except Exception as exc:
        facts["resume"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        resume_ok = one_line_error(exc, alone / "last.pt")
    ok = fallback_ok and resume_ok and facts.get("load_ok", True)
    return Outcome(
        name, "fault", ok, "fell back to last.1.pt; alone: " + facts["resume"].splitlines()[0][:120], facts=facts
    )


# ---- hostile files -------------------------------------------------------------------------------------------------


class Payload:
    """Runs `touch <sentinel>` through os.system when unpickled: what a malicious checkpoint does."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.sentinel}",))


def hostile_checkpoint(folder: Path, through: str) -> Outcome:
    """A checkpoint whose unpickling runs a command, loaded by `checkpoint.load` ("load") or found as last.pt by a
    resuming `fit` with a forged sidecar that matches it ("fit")."""
    from recipe import checkpoint, fit
    from tests import tiny

    sentinel = folder / "pwned"
    ckpt = folder / "ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    evil = ckpt / "last.pt"
    torch.save({"model": {}, "steps": Payload(sentinel)}, evil)
    if through == "fit":
        checkpoint.sidecar(evil).write_text(json.dumps(checkpoint.digest(evil)))
    try:
        if through == "load":
            checkpoint.load(evil)
        else:
            fit(tiny.classification(model=DropoutMLP), **FIT, checkpoint_dir=ckpt, resume=True)
        said, ok = "accepted", False
    except Exception as exc:
        said, ok = f"{type(exc).__name__}: {exc}", one_line_error(exc, evil)
    ran = int(sentinel.exists())
    return Outcome(f"malicious checkpoint via {through}", "hostile", ok and not ran, said[:160], hostile_executed=ran)


def hostile_yaml(folder: Path) -> Outcome:
    """A config whose YAML tag would run a command: exit 2 with one line, nothing ran, no run directory."""
    sentinel = folder / "pwned"
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yaml"
    config.write_text(
        f"task: tests.reliability.scenarios:blocking_task\nrun_dir: {folder / 'run'}\nstages: [overfit]\n"
        f'seed: !!python/object/apply:os.system ["touch {sentinel}"]\n'
    )
    rc, said = command(str(config))
    ran = int(sentinel.exists())
    ok = rc == 2 and len(said.strip().splitlines()) == 1 and not ran and not (folder / "run").exists()
    return Outcome("malicious YAML via the CLI", "hostile", ok, f"exit {rc}: {said.strip()[:160]}",
                   hostile_executed=ran)  # fmt: skip


# ---- `recipe run` in a child ---------------------------------------------------------------------------------------

RUN_CONFIG = """\
task: tests.reliability.scenarios:blocking_task
run_dir: {run_dir}
stages: [complexify]
train: {{batch_size: 32}}
complexify: {{epochs: 3, lr_steps: 10}}
"""


def write_config(folder: Path, text: str = RUN_CONFIG) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = folder / "run"
    config = folder / "config.yaml"
    config.write_text(text.format(run_dir=run_dir))
    return config, run_dir


def manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def signal_run(folder: Path, sig: signal.Signals, reference_rows: list[str] | None = None) -> Outcome:
    """SIGTERM, SIGINT or SIGKILL to `recipe run` in the middle of training. SIGTERM and SIGINT: exit 143 / 130, a
    manifest and report marked interrupted, the lock released. SIGKILL: the manifest still says "running". Then
    `--resume` completes (with the metrics rows of an uninterrupted run, when given)."""
    name = f"{sig.name} to recipe run"
    expected = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}[sig]
    config, run_dir = write_config(folder)
    child = recipe_process(str(config), env={BLOCK_ENV: "forward:60"})
    if not child.wait_for_marker():
        child.finish()
        return Outcome(name, "fault", False, f"never reached training: {child.err[-300:]}")
    child.kill(sig)
    child.release()  # a handler that only sets a flag lets training go on to its next step boundary
    rc = child.finish()
    report = run_dir / "report.html"
    killed = sig == signal.SIGKILL  # no handler runs: only what was written before survives
    facts: dict[str, Any] = {
        "exit": rc,
        "status": manifest(run_dir).get("status"),
        "report_marked": killed or (report.exists() and "interrupted" in report.read_text()),
        "lock_released": killed or not (run_dir / ".lock").exists(),
        "stderr": child.err.strip().splitlines()[-1:] if child.err.strip() else [],
        "checkpoints": sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("checkpoints/**/*.pt")),
    }
    facts["resume_exit"], _ = command(str(config), "--resume", str(run_dir))
    facts["resume_status"] = manifest(run_dir).get("status")
    lost = duplicated = 0
    rows_detail = ""
    if reference_rows is not None:  # metrics.jsonl as an uninterrupted run writes it
        rows = read_rows(run_dir / "metrics.jsonl")
        got, want = collections.Counter(rows), collections.Counter(reference_rows)
        lost, duplicated = sum((want - got).values()), sum((got - want).values())
        facts["rows_equal"] = rows == reference_rows
        facts["rows_differing"] = [(a, b) for a, b in zip(rows, reference_rows, strict=False) if a != b][:3]
        rows_detail = "" if facts["rows_equal"] else f"; metrics.jsonl rows lost {lost}, duplicated {duplicated}"
    ok = (
        rc == expected
        and facts.get("rows_equal", True)
        and facts["status"] == ("running" if killed else "interrupted")
        and facts["report_marked"]
        and facts["lock_released"]
        and facts["resume_exit"] in (0, 1)
        and facts["resume_status"] == "complete"
    )
    return Outcome(name, "fault", ok, f"exit {rc}, then --resume exit {facts['resume_exit']}{rows_detail}",
                   rows_lost=lost, rows_duplicated=duplicated, facts=facts)  # fmt: skip


def reference_run(folder: Path) -> list[str]:
    """metrics.jsonl of an uninterrupted `recipe run` of `RUN_CONFIG`."""
    config, run_dir = write_config(folder)
    rc, said = command(str(config))
    if rc not in (0, 1):
        raise RuntimeError(f"the reference run failed: {said}")
    return read_rows(run_dir / "metrics.jsonl")


def two_runs(folder: Path) -> Outcome:
    """A second `recipe run` into a directory a live run holds is refused naming its pid and host; once that run
    is killed (-9), its stale lock is taken over and `--resume` completes."""
    name = "two runs on one directory"
    config, run_dir = write_config(folder)
    first = recipe_process(str(config), env={BLOCK_ENV: "forward:30"})
    if not first.wait_for_marker():
        first.finish()
        return Outcome(name, "fault", False, f"the first run never reached training: {first.err[-300:]}")
    rc2, said = command(str(config), "--run-dir", str(run_dir))
    said = said.strip()
    named = f"pid {first.proc.pid}" in said and socket.gethostname() in said and len(said.splitlines()) == 1
    first.kill()
    first.finish()
    rc3, _ = command(str(config), "--resume", str(run_dir))
    facts = {
        "second_exit": rc2,
        "second_said": said,
        "named": named,
        "resume_exit": rc3,
        "status": manifest(run_dir).get("status"),
    }
    ok = rc2 == 2 and named and rc3 in (0, 1) and facts["status"] == "complete"
    return Outcome(
        name, "fault", ok, f"second run exit {rc2}: {said[:120]}; after kill -9, --resume exit {rc3}", facts=facts
    )


def enospc_run(folder: Path) -> Outcome:
    """The disk fills while `recipe run` writes a stage's figure: one line naming the disk's complaint and where,
    exit 2, a manifest marked interrupted; `--resume` completes."""
    name = "ENOSPC during recipe run"
    config, run_dir = write_config(folder)
    from tests.reliability import faults

    faults.inject("enospc:*.png")
    try:
        rc, said = command(str(config))
    finally:
        faults.inject(None)
    said = said.strip()
    clear = rc == 2 and len(said.splitlines()) == 1 and "space" in said.lower() and str(run_dir) in said
    status = manifest(run_dir).get("status")
    rc2, _ = command(str(config), "--resume", str(run_dir))
    ok = clear and status == "interrupted" and rc2 in (0, 1) and manifest(run_dir).get("status") == "complete"
    return Outcome(name, "fault", ok, f"exit {rc}: {said[-160:]}; status {status}; --resume exit {rc2}")


# ---- tune ----------------------------------------------------------------------------------------------------------

TUNE_TRIALS = 8
TUNE_CONFIG = f"""\
task: tests.reliability.scenarios:blocking_task
run_dir: {{run_dir}}
stages: [tune]
train: {{{{batch_size: 32, epochs: 2}}}}
tune:
  trials: {TUNE_TRIALS}
  epochs: 2
  seeds: 0
  ensemble: 2
  pruning: "off"
  space: {{{{lr: {{{{low: 0.001, high: 0.1, log: true}}}}}}}}
"""


def study_trials(run_dir: Path) -> list[Any]:
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(run_dir / "study" / "journal.log")))
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def kill_tune(folder: Path) -> Outcome:
    """kill -9 `recipe run` in the third trial of a search, then `--resume`: every queued configuration completes
    once, none is left RUNNING, and every completed trial's metrics rows are in metrics.jsonl once."""
    name = "kill -9 recipe run during tune"
    config, run_dir = write_config(folder, TUNE_CONFIG)
    child = recipe_process(str(config), env={BLOCK_ENV: f"trials:2:{run_dir}"})
    if not child.wait_for_marker():
        child.finish()
        return Outcome(name, "fault", False, f"the search never reached its third trial: {child.err[-300:]}")
    child.kill()
    child.finish()
    before = collections.Counter(t.state.name for t in study_trials(run_dir))
    rc, said = command(str(config), "--resume", str(run_dir))
    trials = study_trials(run_dir)
    states = collections.Counter(t.state.name for t in trials)
    queued = {json.dumps(t.params, sort_keys=True) for t in trials}
    done = collections.Counter(json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE")
    lost = len(queued - set(done))
    twice = sum(n - 1 for n in done.values())
    running = states["RUNNING"]
    running_retried = sum(json.dumps(t.params, sort_keys=True) in done for t in trials if t.state.name == "RUNNING")
    rows = [json.loads(r) for r in read_rows(run_dir / "metrics.jsonl")]
    per_trial = collections.Counter(r["trial"] for r in rows if r.get("stage") == "tune" and "trial" in r)
    complete = [t.number for t in trials if t.state.name == "COMPLETE"]
    counts = [per_trial[n] for n in complete if per_trial[n]]
    usual = collections.Counter(counts).most_common(1)[0][0] if counts else 0  # every trial trains the same steps
    rows_lost = sum(max(0, usual - per_trial[n]) for n in complete)
    rows_twice = sum(max(0, per_trial[n] - usual) for n in complete)
    without_rows = [n for n in complete if not per_trial[n]]
    facts = {
        "states_at_kill": dict(before),
        "states_after": dict(states),
        "resume_exit": rc,
        "lost": lost,
        "counted_twice": twice,
        "left_running": running,
        "trials_without_rows": without_rows,
        "rows_per_trial": usual,
        "stderr": said.strip()[-300:],
    }
    ok = rc in (0, 1) and len(done) == TUNE_TRIALS and not (lost or twice or running or rows_lost or rows_twice)
    detail = f"at the kill {dict(before)}; after --resume {dict(states)}"
    if without_rows:
        detail += f"; trials {without_rows} have no metrics rows"
    return Outcome(name, "fault", ok, detail, rows_lost=rows_lost, rows_duplicated=rows_twice,
                   trials_lost=lost + twice + running_retried, facts=facts)  # fmt: skip


# ---- tune under interruption (issue 15) ----------------------------------------------------------------------------
# A search in a `recipe run` child is stopped with its trials in progress: the child (and each of its `--workers`,
# which inherit its stdin, stdout and RECIPE_TEST_BLOCK) blocks in its first trial started once two trials finished,
# printing MARKER; a release writes one byte per blocked process.

WORKERS_CONFIG = TUNE_CONFIG.replace("  pruning:", "  workers: 2\n  pruning:")


def blocked_search(folder: Path, text: str, blocked: int) -> tuple[Child | None, Path, Path, str]:
    """Start `recipe run` on the search config `text` and wait until `blocked` of its processes block mid-trial."""
    config, run_dir = write_config(folder, text)
    child = recipe_process(str(config), env={BLOCK_ENV: f"trials:2:{run_dir}"})
    for _ in range(blocked):
        if not child.wait_for_marker():
            child.finish()
            return None, config, run_dir, f"the search never blocked in a trial: {child.err[-300:]}"
    return child, config, run_dir, ""


def lease_holders(run_dir: Path) -> dict[int, int]:
    """trial number -> pid of the process running it, from the leases under study/leases."""
    holders = {}
    for lease in (run_dir / "study" / "leases").glob("trial_*"):
        with contextlib.suppress(OSError, ValueError):
            holders[int(lease.name.removeprefix("trial_"))] = json.loads(lease.read_text())["pid"]
    return holders


def wait_exit(pid: int, timeout: float = TIMEOUT) -> bool:
    """Wait for a process that is not our child to end (a pidfd becomes readable then); True once it has."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def judge_search(name: str, run_dir: Path, detail: str, facts: dict[str, Any]) -> Outcome:
    """After the resume: every queued configuration completed exactly once, no trial RUNNING, and each completed
    trial with its metrics rows (as many as every other trial) in metrics.jsonl and its row in trials.csv."""
    import csv

    trials = study_trials(run_dir)
    states = collections.Counter(t.state.name for t in trials)
    # a configuration is what was queued (fixed_params) and what was drawn: a trial stopped before its objective
    # suggested every value has partial `params`, and requeue() queues the fixed ones again
    key = [json.dumps({**t.system_attrs.get("fixed_params", {}), **t.params}, sort_keys=True) for t in trials]
    done = collections.Counter(k for k, t in zip(key, trials, strict=True) if t.state.name == "COMPLETE")
    lost, twice = len(set(key) - set(done)), sum(n - 1 for n in done.values())
    complete = sorted(t.number for t in trials if t.state.name == "COMPLETE")
    rows = [json.loads(r) for r in read_rows(run_dir / "metrics.jsonl")]
    per_trial = collections.Counter(r["trial"] for r in rows if r.get("stage") == "tune" and "trial" in r)
    usual = collections.Counter(per_trial[n] for n in complete).most_common(1)[0][0] if complete else 0
    rows_lost = sum(max(0, usual - per_trial[n]) for n in complete) + usual * sum(not per_trial[n] for n in complete)
    table = run_dir / "06_tune" / "trials.csv"
    table_rows = list(csv.DictReader(table.open())) if table.exists() else []
    listed = sorted(int(r["trial"]) for r in table_rows if r["trial"].isdigit())  # the last row: parameter importances
    failed = [(t.number, key[i]) for i, t in enumerate(trials) if t.state.name == "FAIL"]  # said when one is lost
    facts.update(states_after=dict(states), lost=lost, counted_twice=twice, left_running=states["RUNNING"],
                 rows_per_trial=usual, rows_lost=rows_lost, trials_csv=listed, complete=complete)  # fmt: skip
    facts["failed"] = failed
    ok = (
        len(done) == TUNE_TRIALS
        and not (lost or twice or states["RUNNING"] or rows_lost)
        and usual > 0
        and listed == complete
        and facts.get("resume_exit") in (0, 1)
    )
    return Outcome(name, "fault", ok, f"{detail}; after --resume {dict(states)}", rows_lost=rows_lost,
                   trials_lost=lost + twice + states["RUNNING"], facts=facts)  # fmt: skip


def signal_tune(folder: Path, sig: signal.Signals) -> Outcome:
    """SIGINT or SIGTERM to a one-process search mid-trial: exit 130 / 143, the trial failed (not RUNNING) and its
    configuration queued again with the same values; `--resume` completes the planned trials."""
    name = f"{sig.name} to tune mid-trial"
    child, config, run_dir, why = blocked_search(folder, TUNE_CONFIG, 1)
    if child is None:
        return Outcome(name, "fault", False, why)
    child.kill(sig)
    child.release()  # SIGTERM's handler only sets a flag: the trial goes on to its next step boundary
    rc = child.finish()
    at_stop = study_trials(run_dir)
    failed = [t for t in at_stop if t.state.name == "FAIL"]
    retries = [t for t in at_stop if t.state.name == "WAITING" and "retry_of" in t.user_attrs]
    facts: dict[str, Any] = {
        "exit": rc,
        "stderr": child.err.strip().splitlines(),  # one line: the interruption, no trial's traceback
        "states_at_stop": dict(collections.Counter(t.state.name for t in at_stop)),
        "requeued_same_params": len(failed) == 1
        and [t.system_attrs.get("fixed_params") for t in retries] == [failed[0].params],
    }
    facts["resume_exit"], _ = command(str(config), "--resume", str(run_dir))
    out = judge_search(name, run_dir, f"exit {rc}, at the stop {facts['states_at_stop']}", facts)
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
    out.survived = out.survived and rc == expected and facts["requeued_same_params"]
    out.survived = out.survived and "RUNNING" not in facts["states_at_stop"] and len(facts["stderr"]) == 1
    return out


def signal_tune_workers(folder: Path, sig: signal.Signals) -> Outcome:
    """SIGINT or SIGTERM to `recipe run --workers 2` while it and its worker are mid-trial: the signal reaches the
    worker, the run exits 130 / 143 within a few seconds with no trial RUNNING, and `--resume` completes."""
    name = f"{sig.name} to tune with workers"
    child, config, run_dir, why = blocked_search(folder, WORKERS_CONFIG, 2)
    if child is None:
        return Outcome(name, "fault", False, why)
    workers = sorted(set(lease_holders(run_dir).values()) - {child.proc.pid})
    complete = sum(t.state.name == "COMPLETE" for t in study_trials(run_dir))
    start = time.perf_counter()
    child.kill(sig)
    child.release()
    child.release()  # both blocked processes: the child and its worker
    workers_ended = all(wait_exit(pid, 60) for pid in workers)
    worker_seconds = time.perf_counter() - start
    rc = child.finish()
    seconds = time.perf_counter() - start
    at_stop = collections.Counter(t.state.name for t in study_trials(run_dir))
    facts: dict[str, Any] = {
        "exit": rc,
        "stderr": child.err.strip().splitlines(),  # the worker's too: one line, no trial's traceback
        "seconds": round(seconds, 2),
        "worker_seconds": round(worker_seconds, 2),
        "workers": workers,
        "workers_ended": workers_ended,
        "states_at_stop": dict(at_stop),
        "completed_after_signal": at_stop["COMPLETE"] - complete,  # the worker stopped: it finished no more trials
    }
    facts["resume_exit"], _ = command(str(config), "--resume", str(run_dir))
    detail = f"exit {rc} after {seconds:.1f} s (worker gone after {worker_seconds:.1f} s), at the stop {dict(at_stop)}"
    out = judge_search(name, run_dir, detail, facts)
    expected = {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
    ok = rc == expected and len(workers) == 1 and facts["workers_ended"] and "RUNNING" not in at_stop
    ok = ok and facts["completed_after_signal"] == 0 and len(facts["stderr"]) == 1
    out.survived = out.survived and ok and seconds < 10
    return out


def kill_tune_workers(folder: Path) -> Outcome:
    """kill -9 `recipe run --workers 2` while it and its worker are mid-trial: the orphaned worker stops by itself
    (its trial queued again), and `--resume` (which waits for any such worker before rewriting metrics.jsonl)
    completes with every completed trial's rows in metrics.jsonl and trials.csv."""
    name = "kill -9 tune with workers"
    child, config, run_dir, why = blocked_search(folder, WORKERS_CONFIG, 2)
    if child is None:
        return Outcome(name, "fault", False, why)
    orphans = sorted(set(lease_holders(run_dir).values()) - {child.proc.pid})
    complete = sum(t.state.name == "COMPLETE" for t in study_trials(run_dir))
    child.kill()
    child.proc.wait()
    start = time.perf_counter()
    child.release()  # the orphan, blocked mid-trial, reads it and goes on to its next step boundary
    stopped = all(wait_exit(pid, 60) for pid in orphans)
    seconds = time.perf_counter() - start
    child.finish()
    at_stop = collections.Counter(t.state.name for t in study_trials(run_dir))
    facts: dict[str, Any] = {
        "orphans": orphans,
        "orphans_stopped": stopped,
        "seconds": round(seconds, 2),
        "states_at_stop": dict(at_stop),
        "completed_after_kill": at_stop["COMPLETE"] - complete,  # the orphan stopped mid-trial, finishing none
    }
    facts["resume_exit"], _ = command(str(config), "--resume", str(run_dir))
    out = judge_search(name, run_dir, f"orphan stopped after {seconds:.1f} s; at the stop {dict(at_stop)}", facts)
    out.survived = out.survived and stopped and len(orphans) == 1 and facts["completed_after_kill"] == 0
    return out


def torn_journal(folder: Path) -> Outcome:
    """A search killed (-9) after two trials, its study/journal.log then ending in half a record (a crash
    mid-append): `--resume` cuts the torn tail with a warning naming the file, never appends onto it, and completes;
    a corrupted record before the last is refused with one line naming the file."""
    import warnings

    name = "torn study/journal.log"
    child, config, run_dir, why = blocked_search(folder, TUNE_CONFIG, 1)
    if child is None:
        return Outcome(name, "fault", False, why)
    child.kill()
    child.finish()
    journal = run_dir / "study" / "journal.log"
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    journal.write_bytes(whole + last[: len(last) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, _ = command(str(config), "--resume", str(run_dir))
    notes = [str(w.message) for w in caught if "torn" in str(w.message)]
    lines = journal.read_bytes().split(b"\n")
    parsed = sum(1 for line in lines if line and _is_json(line))
    facts: dict[str, Any] = {"resume_exit": rc, "note": notes[:1], "records_bad": len([x for x in lines if x]) - parsed,
                             "starts_whole": journal.read_bytes().startswith(whole)}  # fmt: skip
    out = judge_search(name, run_dir, f"note: {notes[0][:90] if notes else 'none'}", facts)
    # a record before the last spoiled: refused, one line, naming the file
    lines = journal.read_bytes().split(b"\n")
    lines[3] = lines[3][: len(lines[3]) // 2]
    journal.write_bytes(b"\n".join(lines))
    rc2, said = command(str(config))
    said = said.strip()
    facts.update(refused_exit=rc2, refused=said[-200:])
    refused = rc2 == 2 and len(said.splitlines()) == 1 and str(journal) in said
    out.survived = out.survived and len(notes) == 1 and str(journal) in notes[0] and not facts["records_bad"]
    out.survived = out.survived and facts["starts_whole"] and refused
    return out


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


# ---- malformed files recipe reads (issue 15, item 5) ---------------------------------------------------------------

SMALL_RUN = """\
task: tests.reliability.scenarios:blocking_task
run_dir: {run_dir}
stages: [overfit]
train: {{batch_size: 32}}
overfit: {{lr_steps: 10}}  # passes (a warning at most), so a resume keeps it
"""
MALFORMED = {  # name -> (file, how it is spoiled, the commands that read it)
    "manifest_truncated": ("manifest.json", "cut", ("report", "resume")),
    "checks_truncated": ("checks.json", "cut", ("report", "resume")),
    "metrics_bad_line": ("metrics.jsonl", "bad_line", ("resume",)),
    "lock_empty": (".lock", "empty", ("run", "resume")),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def malformed_run_file(folder: Path, name: str) -> Outcome:
    """An interrupted run whose `MALFORMED[name]` file is spoiled (cut in half, a bad line mid-file, emptied): every
    command that reads it (`recipe report`, `recipe run`, `recipe run --resume`) exits 2 with one line naming the
    file, and the run directory is left exactly as it was."""
    import io

    from recipe import cli

    filename, how, commands = MALFORMED[name]
    config, run_dir = write_config(folder, SMALL_RUN)
    rc, said = command(str(config))
    if rc not in (0, 1):
        return Outcome(f"malformed {filename}", "fault", False, f"the first run failed: exit {rc}: {said[-200:]}")
    record = manifest(run_dir)
    (run_dir / "manifest.json").write_text(json.dumps({**record, "status": "interrupted"}))  # as after a kill
    path = run_dir / filename
    if how == "cut":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "bad_line":
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join([*lines[:2], b'{"stage": "overfit", "step": \n', *lines[2:]]))
    else:
        path.write_bytes(b"")
    before = snapshot(run_dir)
    facts: dict[str, Any] = {}
    for what in commands:
        if what == "report":
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = cli.main(["report", str(run_dir)])
            said = err.getvalue()
        else:
            rc, said = command(str(config), *(["--resume", str(run_dir)] if what == "resume" else []))
        lines = said.strip().splitlines()
        facts[what] = {"exit": rc, "said": said.strip()[-300:]}
        facts[what]["ok"] = rc == 2 and len(lines) == 1 and str(path) in lines[0] and "Traceback" not in said
    after = snapshot(run_dir)
    facts["changed"] = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    ok = not facts["changed"] and all(facts[w]["ok"] for w in commands)
    first = facts[commands[0]]["said"].splitlines()[0] if facts[commands[0]]["said"] else "nothing said"
    return Outcome(f"malformed {filename}", "fault", ok, first[:160], facts=facts)


def checkpoint_lacking_keys(folder: Path) -> Outcome:
    """A last.pt that loads (valid zip, matching sidecar) but holds only the weights: a resuming `fit` falls back to
    last.1.pt with a warning naming last.pt, and without last.1.pt fails with one line naming last.pt."""
    import warnings

    from recipe import checkpoint, fit
    from tests import tiny

    ckpt = good_checkpoints(folder)
    weights = checkpoint.load(ckpt / "last.pt")["model"]
    checkpoint.save_atomic({"model": weights}, ckpt / "last.pt")  # a sidecar that matches: only the keys are wrong
    task, facts = tiny.classification(model=DropoutMLP), {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, **FIT, checkpoint_dir=ckpt, resume=True)
    said = [str(w.message) for w in caught if "resumed from last.1.pt" in str(w.message)]
    facts["fallback"] = said[0] if said else "no warning"
    fallback_ok = bool(said) and "\n" not in said[0] and "lacks" in said[0]
    checkpoint.save_atomic({"model": weights}, ckpt / "last.pt")
    for path in (ckpt / "last.1.pt", checkpoint.sidecar(ckpt / "last.1.pt")):
        path.unlink(missing_ok=True)
    try:
        fit(task, **FIT, checkpoint_dir=ckpt, resume=True)
        facts["alone"], alone_ok = "resumed without complaint", False
    except Exception as exc:
        facts["alone"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        alone_ok = one_line_error(exc, ckpt / "last.pt") and "lacks" in str(exc)
    return Outcome("last.pt lacking keys", "fault", fallback_ok and alone_ok, facts["alone"][:160], facts=facts)


def hostile_report(folder: Path) -> Outcome:
    """markup in every field of checks.json and manifest.json (the seed, the task name, a stage name): report.html
    shows each escaped; `hostile_executed` counts the payloads that came through as markup."""
    import re

    from recipe.report import build_report

    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    (run / "manifest.json").write_text(json.dumps({
        "task": {"name": evil, "kind": evil}, "seed": evil, "device": evil, "start": evil, "end": evil,
        "stages_planned": ["overfit", evil], "stages": {"overfit": evil}, "seconds": {"overfit": evil},
        "learned": {"overfit": {"lr": evil}}, "config": {"x": evil},
    }))  # fmt: skip
    checks = [{"stage": st, "name": evil, "status": "fail", "value": {evil: evil}, "expected": evil, "message": evil,
               "seconds": evil} for st in ("overfit", evil)]  # fmt: skip
    (run / "checks.json").write_text(json.dumps(checks))
    try:
        page = build_report(run).read_text()
    except Exception as exc:
        return Outcome("hostile report fields", "hostile", False, f"build_report raised {type(exc).__name__}: {exc}")
    through = len(re.findall(r"<script|<img src=x", page, re.IGNORECASE))
    return Outcome("hostile report fields", "hostile", through == 0, f"{through} payloads unescaped",
                   hostile_executed=through)  # fmt: skip


def yaml_bomb(folder: Path) -> Outcome:
    """A config with nine levels of nine nested aliases (9**9 strings once expanded): refused in well under a
    second with one line, exit status 2, no run directory."""
    import time

    folder.mkdir(parents=True, exist_ok=True)
    levels = "".join(f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    config = folder / "config.yaml"
    config.write_text(
        f"task: tests.reliability.scenarios:blocking_task\nrun_dir: {folder / 'run'}\nstages: [overfit]\n"
        f"task_args:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n{levels}"
    )
    start = time.perf_counter()
    rc, said = command(str(config))
    seconds = time.perf_counter() - start
    ok = rc == 2 and len(said.strip().splitlines()) == 1 and seconds < 2 and not (folder / "run").exists()
    return Outcome("YAML billion laughs", "hostile", ok, f"exit {rc} in {seconds:.3f} s: {said.strip()[:120]}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["fit"]:
        torch.set_num_threads(1)
        status = train(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
        if _state["error"] is not None:
            print(f"ERROR {type(_state['error']).__name__}: {_state['error']}", flush=True)
        sys.exit(status)
    sys.exit(f"usage: {__doc__}")
