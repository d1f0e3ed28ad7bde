"""`recipe run CONFIG --resume RUN_DIR`: a run killed during a later stage resumes with its finished stages kept
(checks, artifacts, metrics rows and what they learned), and a changed config is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
task: tests.tiny:classification
run_dir: {run_dir}
stages: [overfit, complexify]
overfit: {{lr_steps: 30}}
complexify: {{epochs: {epochs}, lr_steps: 20}}
"""


def recipe(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "recipe.cli", "run", *args, "--quiet"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_killed_run_resumes_with_its_finished_stages_kept(tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(run_dir=run_dir, epochs=100000))
    proc = recipe(str(config))
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"rung_model"' in metrics.read_text()):
        time.sleep(0.1)  # polling until complexify's long run has started: overfit has finished by then
    proc.send_signal(signal.SIGKILL)  # no handler runs: only what was written after each stage survives
    proc.wait()
    before = json.loads((run_dir / "manifest.json").read_text())
    assert before["status"] == "running" and list(before["stages"]) == ["overfit"]
    overfit_checks = [c for c in json.loads((run_dir / "checks.json").read_text()) if c["stage"] == "overfit"]
    overfit_rows = [r for r in metrics.read_text().splitlines() if '"stage": "overfit"' in r]
    lr_plot = (run_dir / "03_overfit" / "lr_range_test.png").stat().st_mtime_ns

    changed = tmp_path / "changed.yaml"
    changed.write_text(CONFIG.format(run_dir=run_dir, epochs=3).replace("lr_steps: 30", "lr_steps: 31"))
    refused = recipe(str(changed), "--resume", str(run_dir))
    _, stderr = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "config.overfit.lr_steps" in stderr

    config.write_text(CONFIG.format(run_dir=run_dir, epochs=100000).replace("epochs: 100000", "epochs: 3"))
    done = recipe(str(config), "--resume", str(run_dir), "--force")  # only complexify's budget changed
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr
    after = json.loads((run_dir / "manifest.json").read_text())
    assert after["status"] == "complete" and list(after["stages"]) == ["overfit", "complexify"]
    checks = json.loads((run_dir / "checks.json").read_text())
    assert [c for c in checks if c["stage"] == "overfit"] == overfit_checks
    assert [r for r in metrics.read_text().splitlines() if '"stage": "overfit"' in r] == overfit_rows
    assert (run_dir / "03_overfit" / "lr_range_test.png").stat().st_mtime_ns == lr_plot  # not re-run
    assert after["learned"]["overfit"] == before["learned"]["overfit"]
    assert any(c["stage"] == "complexify" for c in checks)


def test_resume_needs_an_interrupted_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(run_dir=tmp_path / "run", epochs=2))
    proc = recipe(str(config), "--resume", str(tmp_path / "nothing"))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "no manifest.json" in stderr
