"""A run directory is locked while a run uses it; SIGTERM and Ctrl-C end a `recipe run` with a report marked
interrupted and a documented exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe.errors import ConfigError
from recipe.rundir import LOCK, RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path):
    first = RunDir(tmp_path)
    first.create()
    with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()}"):
        RunDir(tmp_path).create()
    first.close()
    assert not (tmp_path / LOCK).exists()
    RunDir(tmp_path).create()  # free again


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    RunDir(tmp_path).create()  # a run directory whose run died holding its lock
    (tmp_path / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    run = RunDir(tmp_path)
    run.create()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    run.close()


CONFIG = """
task: tests.tiny:classification
run_dir: {run_dir}
stages: [complexify]
complexify: {{epochs: 100000, lr_steps: 20}}
"""


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_with_a_report_marked_interrupted(tmp_path, sig, status):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(run_dir=tmp_path / "run"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "recipe.cli", "run", str(config), "--quiet"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"rung_model"' in metrics.read_text()):
        time.sleep(0.1)  # polling until the long training run has started: the event this test waits on
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == status, stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert "interrupted" in (tmp_path / "run" / "report.html").read_text()
    assert not (tmp_path / "run" / LOCK).exists()
