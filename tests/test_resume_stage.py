"""A run killed inside a stage resumes that stage from its checkpoints: the training runs that had ended are
replayed from their `done.pt`, the one that was interrupted continues from its last checkpoint, and the run ends
with the checks, learned values and metrics rows of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
task: tests.tiny:classification
run_dir: {run_dir}
stages: [overfit, complexify]
train: {{checkpoint_seconds: 0}}  # a checkpoint at every epoch end and log point
overfit: {{lr_steps: 30}}
complexify: {{epochs: 4, lr_steps: 20}}
"""


def recipe(config: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = ["tests.reliability.faulty", fault, "--"] if fault else []  # arms the fault in the child
    command = [sys.executable, "-m", *launch, "recipe.cli", "run", str(config), "--quiet", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def outcome(run_dir: Path) -> tuple[list, dict, list]:
    checks = [
        (c["stage"], c["name"], c["status"], c["message"]) for c in json.loads((run_dir / "checks.json").read_text())
    ]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return checks, manifest["learned"], rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list, dict, list]:
    tmp = tmp_path_factory.mktemp("full")
    config = tmp / "config.yaml"
    config.write_text(CONFIG.format(run_dir=tmp / "run"))
    done = recipe(config)
    assert done.returncode == 0, done.stderr
    assert not (tmp / "run" / "checkpoints").exists()  # removed stage by stage
    return outcome(tmp / "run")


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("kill_before_rename:3:rung_model-0/last.pt", id="mid-run-of-the-second-fit"),
        pytest.param("kill_before_rename:1:lr_range_model-0/done.pt", id="as-the-first-fit-ends"),
        pytest.param("kill_before_rename:2:overfit_batch-0/last.pt", id="in-the-first-stage"),
    ],
)
def test_a_run_killed_inside_a_stage_resumes_it_and_ends_as_an_uninterrupted_one(tmp_path, uninterrupted, fault):
    config = tmp_path / "config.yaml"
    run_dir = tmp_path / "run"
    config.write_text(CONFIG.format(run_dir=run_dir))
    killed = recipe(config, fault=fault)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
    left = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "checkpoints").rglob("*.pt"))
    assert left, "the interrupted stage kept its checkpoints"
    resumed = recipe(config, "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    checks, learned, rows = outcome(run_dir)
    full_checks, full_learned, full_rows = uninterrupted
    assert checks == full_checks
    assert learned == full_learned
    assert rows == full_rows  # none lost, none twice, same values
    assert not (run_dir / "checkpoints").exists()
