"""Kill a `recipe run` at every fit boundary of every stage, resume it, and compare with an uninterrupted run; and the
run directory's ownership (issue 15, items 1 and 2). Shared by tests/reliability/test_fit_boundaries.py and
benchmarks/faults.py.

A fit boundary is the start of a stage's k-th training run: every `Context.fit` first writes its `settings.json`
under run_dir/checkpoints/, so the fault `kill_before_rename:<n>:settings.json` (tests/reliability/faults.py) kills
the process (SIGKILL, no handler runs) as the n-th training run of the whole run begins, when the n-1 before it have
ended. The resumed stage
replays those from their `done.pt`, and must end with the checks, learned values and metrics rows, byte for byte, of
a run never interrupted: whatever a callback or a plot needs from a replayed fit comes back with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.reliability.scenarios import ROOT, Outcome

CONFIG = """\
task: tests.tiny:classification
run_dir: {run_dir}
stages: [baseline, overfit, complexify, regularize]
keep_going: true
baseline: {{steps: 200, seed_steps: 5}}
overfit: {{lr_steps: 30, steps: 100}}
complexify: {{epochs: 2, lr_steps: 20}}
regularize: {{epochs: 2}}
"""


FITS = 17  # training runs in CONFIG's run: baseline 5, overfit 3 (a longer one-batch run), complexify 2, regularize 7


def recipe(config: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tests.reliability.faulty", fault or "", "--", "recipe.cli", "run", str(config)]
    command += ["--quiet", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def config_in(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    config, run_dir = folder / "config.yaml", folder / "run"
    config.write_text(CONFIG.format(run_dir=run_dir))
    return config, run_dir


def outcome(run_dir: Path) -> dict[str, Any]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {
        "checks": [(c["stage"], c["name"], c["status"], c["value"], c["message"])
                   for c in json.loads((run_dir / "checks.json").read_text())],
        "learned": manifest["learned"],
        "rows": (run_dir / "metrics.jsonl").read_text().splitlines(),
        "fits": [(f["stage"], f["run"]) for f in manifest["fits"]],
    }  # fmt: skip


def reference(folder: Path) -> dict[str, Any]:
    """The uninterrupted run (exit 1 is fine: keep_going records every check)."""
    config, run_dir = config_in(folder)
    done = recipe(config)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"the reference run failed: {done.stderr[-500:]}")
    return outcome(run_dir)


def kill_at_fit(folder: Path, n: int, ref: dict[str, Any]) -> Outcome:
    """SIGKILL as training run `n` (1-based) starts; resume; the run must end as the uninterrupted one."""
    name = f"kill_at_fit_{n}"
    if n > len(ref["fits"]):
        return Outcome(name, "fault", False, f"the reference run has {len(ref['fits'])} training runs, not {n}")
    stage, run = ref["fits"][n - 1]
    config, run_dir = config_in(folder)
    killed = recipe(config, fault=f"kill_before_rename:{n}:settings.json")
    if killed.returncode != -signal.SIGKILL:
        return Outcome(name, "fault", False, f"not killed at fit {n} ({stage}/{run}): exit {killed.returncode}")
    resumed = recipe(config, "--resume", str(run_dir))
    if resumed.returncode not in (0, 1):
        tail = resumed.stderr.strip().splitlines()[-1:] or [""]
        return Outcome(
            name, "fault", False, f"resume after a kill at {stage}/{run} exited {resumed.returncode}: {tail[0]}"
        )
    got = outcome(run_dir)
    lost = len(set(ref["rows"]) - set(got["rows"]))
    same = {k: got[k] == ref[k] for k in ("checks", "learned", "rows")}
    detail = f"killed as {stage}/{run} began; resumed: " + ", ".join(
        f"{k} {'same' if v else 'DIFFER'}" for k, v in same.items()
    )
    return Outcome(name, "fault", all(same.values()), detail, rows_lost=lost,
                   rows_duplicated=max(0, len(got["rows"]) - len(ref["rows"])))  # fmt: skip


def user_files(folder: Path) -> Outcome:
    """`recipe run --run-dir` on a folder of the user's files: refused with one line, every file intact."""
    data = folder / "project"
    (data / "00_raw_data").mkdir(parents=True, exist_ok=True)
    (data / "00_raw_data" / "train.csv").write_text("x,y\n1,2\n")
    (data / "42_results").mkdir(exist_ok=True)
    (data / "42_results" / "final.txt").write_text("0.93")
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    config, _ = config_in(folder)
    refused = recipe(config, "--run-dir", str(data), "--stages", "overfit")
    after = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    lost = sum(after.get(p) != content for p, content in before.items())
    extra = sorted(p.name for p in after if p not in before)
    ok = refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and not lost and not extra
    detail = f"exit {refused.returncode}, {lost} of {len(before)} user files lost or changed, {len(extra)} written"
    return Outcome("user_files_run_dir", "fault", ok, detail, user_files_lost=lost)


def other_stages(folder: Path) -> Outcome:
    """`--stages inspect` then `--stages overfit` on one run directory: the first run's results all stay."""
    config, run_dir = config_in(folder)
    first = recipe(config, "--stages", "inspect")
    kept = (
        {p: p.read_bytes() for p in (run_dir / "01_inspect").rglob("*") if p.is_file()}
        if first.returncode in (0, 1)
        else {}
    )
    second = recipe(config, "--stages", "overfit")
    lost = sum(not p.exists() or p.read_bytes() != content for p, content in kept.items())
    stages = {c[0] for c in outcome(run_dir)["checks"]} if second.returncode in (0, 1) else set()
    ok = bool(kept) and not lost and stages == {"inspect", "overfit"}
    detail = f"{len(kept)} inspect files, {lost} lost after --stages overfit; checks.json holds {sorted(stages)}"
    return Outcome("other_stages_keep_results", "fault", ok, detail, user_files_lost=lost)
