"""cli: `recipe run` / `recipe report` end to end on a tiny task written into a temporary folder; bad configs exit 2
with one line; flags override the YAML."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from recipe import cli

TASK_MODULE = """
import torch
from torch import nn

from recipe import Task


def make_task(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :3].argmax(1)
    model = lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    return Task((x[:150], y[:150]), (x[150:], y[150:]), model, name="tiny")


def not_a_task(**kwargs):
    return 42
"""

CONFIG = """\
task: {module}:make_task
task_args: {{n: 200}}
run_dir: runs/tiny
device: cpu
seed: 0
stages: [overfit]
train: {{batch_size: 32}}
overfit: {{batch_size: 8, steps: 60, lr: 1.0e-2, lr_steps: 20}}
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_project(folder: Path, module: str) -> Path:
    (folder / f"{module}.py").write_text(TASK_MODULE)
    config = folder / "config.yaml"
    config.write_text(CONFIG.format(module=module))
    return config


def recipe_cli(*args: str, cwd: Path, console_script: bool = False) -> subprocess.CompletedProcess:
    command = (
        [shutil.which("recipe") or pytest.skip("no `recipe` console script on PATH")]
        if console_script
        else [sys.executable, "-m", "recipe.cli"]
    )
    return subprocess.run([*command, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


# ---- end to end (subprocesses) ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real `python -m recipe.cli run` on the tiny config, shared by the tests that read its run directory."""
    folder = tmp_path_factory.mktemp("project")
    write_project(folder, "tiny_task_e2e")
    done = recipe_cli("run", "config.yaml", cwd=folder)
    return folder / "runs" / "tiny", done


def test_run_exits_0_and_writes_the_run_directory(finished_run):
    run_dir, done = finished_run
    assert done.returncode == 0, done.stderr
    assert {"checks.json", "manifest.json", "metrics.jsonl", "report.html", "03_overfit"} <= set(os.listdir(run_dir))
    checks = json.loads((run_dir / "checks.json").read_text())
    assert checks and {c["stage"] for c in checks} == {"overfit"}
    assert all(c["status"] in ("pass", "warn", "skip") for c in checks)  # a 20-step sweep may not tell a rate
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["seed"], manifest["device"], manifest["stages_planned"]) == (0, "cpu", ["overfit"])
    assert manifest["config"]["overfit"]["steps"] == 60 and manifest["config"]["train"]["batch_size"] == 32
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all({"stage", "step", "split", "metric", "value"} <= set(m) for m in metrics)
    assert "OK" in done.stdout and "report.html" in done.stdout


def test_report_rebuilds_report_html_through_the_console_script(finished_run):
    run_dir, _ = finished_run
    (run_dir / "report.html").unlink()
    done = recipe_cli("report", str(run_dir), cwd=run_dir.parent, console_script=True)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    assert done.stdout.strip().endswith("report.html")
    assert all(c["name"] in page for c in json.loads((run_dir / "checks.json").read_text()))


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "config.yaml").write_text("task: no_such_module_xyz:make_task\n")
    debug = recipe_cli("--debug", "run", "config.yaml", cwd=tmp_path)  # without --debug: see the in-process tests
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "recipe.errors.ConfigError" in debug.stderr and "no_such_module_xyz" in debug.stderr


# ---- bad input (in process: one line on stderr, exit 2) ---------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch, request):
    """A folder holding a task module (unique name) and config.yaml, as the current directory."""
    module = f"tiny_task_{request.node.name.split('[')[-1].strip(']').replace('-', '_')}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    yield write_project(tmp_path, module), module
    sys.modules.pop(module, None)


@pytest.mark.parametrize(
    ("edit", "argv", "match"),
    [
        pytest.param(
            lambda c, m: c + "trian: {lr: 0.1}\n", [], r"unknown key 'trian'; did you mean 'train'\?", id="unknown-key"
        ),
        pytest.param(
            lambda c, m: c.replace("steps: 60", "stpes: 60"),
            [],
            r"overfit: unknown key 'stpes'; did you mean 'steps'\?",
            id="unknown-stage-setting",
        ),
        pytest.param(
            lambda c, m: c.replace("[overfit]", "[overfitt]"),
            [],
            r"unknown stage 'overfitt'; did you mean 'overfit'\?",
            id="unknown-stage-in-yaml",
        ),
        pytest.param(lambda c, m: c, ["--stages", "overfit,tuen"], r"unknown stage 'tuen'", id="unknown-stage-flag"),
        pytest.param(
            lambda c, m: c.replace(f"{m}:make_task", "no_such_module_xyz:make_task"),
            [],
            r"cannot import 'no_such_module_xyz' for `task:`",
            id="missing-task-module",
        ),
        pytest.param(
            lambda c, m: c.replace(":make_task", ":make_tsak"),
            [],
            r"has no function 'make_tsak'",
            id="missing-task-function",
        ),
        pytest.param(
            lambda c, m: c.replace(f"{m}:make_task", m),
            [],
            r"`task:` must name a function as "
            r"module\.path:function",
            id="task-without-colon",
        ),
        pytest.param(
            lambda c, m: c.replace(":make_task", ":not_a_task"),
            [],
            r"returned int; it must return a "
            r"recipe\.Task",
            id="factory-returns-non-task",
        ),
        pytest.param(
            lambda c, m: c.replace("{n: 200}", "{nn: 200}"), [], r"task_args do not fit .*'nn'", id="bad-task-args"
        ),
        pytest.param(lambda c, m: c.replace("seed: 0", "seed: zero"), [], r"seed must be an integer", id="wrong-type"),
        pytest.param(lambda c, m: c + "seed: 1\n", [], r"key 'seed' is given twice", id="duplicate-key"),
        pytest.param(lambda c, m: c.replace("device: cpu", "device: tpu"), [], r"device='tpu'", id="bad-device"),
    ],
)
def test_bad_config_exits_2_with_one_line(project, capsys, edit, argv, match):
    config, module = project
    config.write_text(edit(config.read_text(), module))
    assert cli.main(["run", str(config), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recipe: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and re.search(match, err), err
    assert not (config.parent / "runs").exists()  # nothing written before the error


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "missing.yaml"], r"config file missing\.yaml does not exist"),
        (["report", "no_run_here"], r"no_run_here holds no recipe run"),
    ],
)
def test_missing_paths_exit_2(tmp_path, monkeypatch, capsys, argv, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "no_run_here").mkdir()
    assert cli.main(argv) == 2
    assert re.search(match, capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "run", "missing.yaml"],
        ["run", "missing.yaml", "--debug"],
        ["report", "nowhere", "--debug"],
        ["--debug", "report", "nowhere"],
    ],
    ids=["before-command", "after-command", "report-after", "report-before"],
)
def test_debug_flag_raises_in_either_position(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.ConfigError):
        cli.main(argv)


# ---- precedence: CLI > YAML > defaults ---------------------------------------------------------------------------


def _args(**flags):
    defaults = {"run_dir": None, "device": None, "seed": None, "keep_going": False, "quiet": False}
    return argparse.Namespace(**{**defaults, **flags})


@pytest.mark.parametrize(
    ("yaml_values", "flags", "expected"),
    [
        ({}, {}, {"run_dir": None, "device": "auto", "seed": 0, "keep_going": False}),
        (
            {"run_dir": "r", "device": "cpu", "seed": 4, "keep_going": True},
            {},
            {"run_dir": "r", "device": "cpu", "seed": 4, "keep_going": True},
        ),
        (
            {"run_dir": "r", "device": "cpu", "seed": 4},
            {"run_dir": "cli", "device": "cuda", "seed": 0},
            {"run_dir": "cli", "device": "cuda", "seed": 0},
        ),  # seed 0 on the command line still wins
        ({}, {"keep_going": True, "quiet": True}, {"keep_going": True, "quiet": True, "progress": False}),
    ],
)
def test_flags_override_yaml_override_defaults(yaml_values, flags, expected):
    from recipe.config import RunConfig

    config = RunConfig(task="m:f", **yaml_values)
    built = cli._recipe(
        lambda task, **kwargs: kwargs, "TASK", config, {"overfit": {"steps": 5}}, ["overfit"], _args(**flags)
    )
    assert {k: built[k] for k in expected} == expected
    assert built["config"] == {"train": {}, "overfit": {"steps": 5}} and built["stages"] == ["overfit"]
