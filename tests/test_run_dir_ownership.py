"""A run directory is recipe's only where recipe wrote it: a folder of the user's files is refused untouched, a second
run with other stages keeps the first run's results, and a stage run again replaces only what recipe wrote for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipe import Recipe
from recipe.errors import ConfigError
from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
FAST = {"overfit": {"lr_steps": 30}, "baseline": {"steps": 30, "seed_steps": 5}}
SOURCE = {"task": "tests.tiny:classification", "task_args": {"n_train": 256}}


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(run_dir: Path, stages: list[str], task=None, **kwargs) -> Recipe:
    recipe = Recipe(task or tiny.classification(), run_dir=run_dir, stages=stages, device="cpu", config=FAST,
                    progress=False, quiet=True, keep_going=True, **kwargs)  # fmt: skip
    recipe.run()
    return recipe


def test_recipe_run_on_a_folder_of_user_files_exits_2_and_touches_nothing(tmp_path):
    data = tmp_path / "project"
    (data / "00_raw_data").mkdir(parents=True)
    (data / "00_raw_data" / "train.csv").write_text("x,y\n1,2\n")
    (data / "42_results").mkdir()
    (data / "42_results" / "final.txt").write_text("0.93")
    (data / "report.html").write_text("<p>my report</p>")
    before = files(data)
    config = tmp_path / "c.yaml"
    config.write_text("task: tests.tiny:classification\nstages: [overfit]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "recipe.cli", "run", str(config), "--run-dir", str(data), "--quiet"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "recipe did not create" in proc.stderr
    assert files(data) == before


def test_a_second_run_with_other_stages_keeps_the_first_runs_results(tmp_path):
    first = run(tmp_path / "run", ["inspect"])
    inspect_files = {k: v for k, v in files(first.run_dir).items() if k.startswith("01_inspect/")}
    assert inspect_files
    run(tmp_path / "run", ["overfit"])
    after = files(tmp_path / "run")
    assert {k: after.get(k) for k in inspect_files} == inspect_files
    assert any(k.startswith("03_overfit/") for k in after)
    checks = json.loads(after["checks.json"])
    assert {c["stage"] for c in checks} == {"inspect", "overfit"}
    assert [c["stage"] for c in checks] == sorted((c["stage"] for c in checks), key=["inspect", "overfit"].index)
    manifest = json.loads(after["manifest.json"])
    assert set(manifest["stages"]) == {"inspect", "overfit"} and manifest["status"] == "complete"
    assert [r["stages"] for r in manifest["runs"]] == [["inspect"], ["overfit"]]
    rows = [json.loads(line) for line in after["metrics.jsonl"].decode().splitlines()]
    assert {r["stage"] for r in rows} == {"overfit"} | ({"inspect"} & {r["stage"] for r in rows})
    assert "report.html" in after and b"01_inspect" in after["report.html"] and b"03_overfit" in after["report.html"]


def test_a_later_stage_reads_what_earlier_stages_learned_from_the_run(tmp_path):
    run(tmp_path / "run", ["overfit"])
    learned = json.loads((tmp_path / "run" / "manifest.json").read_text())["train_after"]["overfit"]["lr"]
    second = Recipe(tiny.classification(), run_dir=tmp_path / "run", stages=["complexify"], device="cpu",
                    config={"complexify": {"epochs": 1, "lr_steps": 20}}, progress=False, quiet=True)  # fmt: skip
    second.run()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["train_after"]["overfit"]["lr"] == learned  # kept
    fits = [f for f in manifest["fits"] if f["stage"] == "complexify"]
    assert fits and set(manifest["stages"]) == {"overfit", "complexify"}
    assert "overfit" in manifest["learned"]


def test_running_a_stage_again_replaces_only_what_recipe_wrote_for_it(tmp_path):
    first = run(tmp_path / "run", ["inspect", "overfit"])
    mine = first.run_dir / "03_overfit" / "my_notes.txt"
    mine.write_text("keep me")
    (first.run_dir / "notes.md").write_text("mine too")
    stale = first.run_dir / "03_overfit" / "stale.json"  # as if an earlier version of the stage had written it
    first_overfit = [c for c in json.loads((first.run_dir / "checks.json").read_text()) if c["stage"] == "overfit"]
    from recipe.rundir import RunDir

    rd = RunDir(first.run_dir, ["inspect", "overfit"])
    rd.record("03_overfit/stale.json")
    stale.write_text("{}")
    run(first.run_dir, ["overfit"])
    assert mine.read_text() == "keep me" and (first.run_dir / "notes.md").read_text() == "mine too"
    assert not stale.exists()
    checks = json.loads((first.run_dir / "checks.json").read_text())
    assert len([c for c in checks if c["stage"] == "overfit"]) == len(first_overfit)
    assert any(c["stage"] == "inspect" for c in checks)


def test_resume_reruns_a_stage_whose_folder_was_deleted_by_hand(tmp_path):
    recipe = run(tmp_path / "run", ["inspect", "overfit"])
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (recipe.run_dir / "manifest.json").write_text(json.dumps(manifest))
    for p in (recipe.run_dir / "01_inspect").iterdir():
        p.unlink()
    (recipe.run_dir / "01_inspect").rmdir()
    resumed = Recipe(tiny.classification(), run_dir=recipe.run_dir, stages=["inspect", "overfit"], device="cpu",
                     config=FAST, progress=False, quiet=True, keep_going=True, resume=True)  # fmt: skip
    resumed.run()
    assert (recipe.run_dir / "01_inspect").is_dir()
    last = json.loads((recipe.run_dir / "manifest.json").read_text())["runs"][-1]
    assert last == last | {"stages": ["inspect", "overfit"], "resume": True}


def test_resume_refuses_changed_task_args(tmp_path):
    recipe = run(
        tmp_path / "run", ["inspect"], source={"task": "tests.tiny:classification", "task_args": {"n_train": 256}}
    )
    manifest = json.loads((recipe.run_dir / "manifest.json").read_text())
    (recipe.run_dir / "manifest.json").write_text(json.dumps(manifest | {"status": "interrupted"}))
    changed = {**SOURCE, "task_args": {"n_train": 255}}
    with pytest.raises(ConfigError, match=r"source\.task_args\.n_train"):
        Recipe(tiny.classification(), run_dir=recipe.run_dir, stages=["inspect"], device="cpu", config=FAST,
               progress=False, quiet=True, resume=True, source=changed).run()  # fmt: skip
