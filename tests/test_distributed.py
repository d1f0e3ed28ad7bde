"""`fit` under `torchrun --nproc_per_node 2` on the CPU (gloo): both ranks end with identical weights, the loss goes
down, each rank reads half of every epoch, and rank 0 alone logs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = textwrap.dedent(
    """
    import atexit, json, sys
    import torch, torch.distributed as dist
    from recipe import fit
    from tests import tiny

    out = sys.argv[1]
    rank = int(__import__("os").environ["RANK"])
    # registered before fit's, so it runs after it: the group fit joined must be gone by then
    atexit.register(lambda: open(f"{out}/rank{rank}.exit", "w").write(str(dist.is_initialized())))
    records = []
    result = fit(tiny.classification(n_train=512), epochs=5, batch_size=32, lr=3e-3, device="cpu", progress=False,
                 log=records.append)
    torch.save(result.model.state_dict(), f"{out}/rank{rank}.pt")
    json.dump({"losses": result.step_losses, "setup": result.setup, "steps": result.steps, "logged": len(records)},
              open(f"{out}/rank{rank}.json", "w"))
    """
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_fit_under_torchrun_keeps_ranks_identical_and_learns(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    launcher = shutil.which("torchrun") or None
    command = [launcher] if launcher else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*command, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    weights = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    runs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert runs[0]["setup"]["world_size"] == 2
    assert runs[0]["steps"] == 5 * (512 // 2 // 32)  # each rank reads its half of every epoch
    for run in runs:
        first, last = sum(run["losses"][:5]) / 5, sum(run["losses"][-5:]) / 5
        assert last < 0.7 * first
    # left before the interpreter's teardown, where gloo's threads once aborted a rank (SIGABRT) after training
    assert [(tmp_path / f"rank{r}.exit").read_text() for r in (0, 1)] == ["False", "False"]
    assert runs[0]["logged"] > 0 and runs[1]["logged"] == 0
