"""figures=False (`figures: false`, `--no-figures`): the same checks with the same verdicts, and no figure drawn or
written; the run says so."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from recipe import Check, ConfigError, Context, Recipe, cli
from recipe.check import passed
from recipe.rundir import RunDir
from tests import tiny

STAGES = ["inspect", "baseline", "overfit"]


def _run(tmp_path, name, **kwargs):
    task = tiny.classification()
    return Recipe(
        task, run_dir=tmp_path / name, stages=STAGES, device="cpu", progress=False, quiet=True, **kwargs
    ).run()


def test_figures_off_keeps_every_verdict_and_writes_no_png(tmp_path):
    drawn, bare = _run(tmp_path, "drawn"), _run(tmp_path, "bare", figures=False)
    assert list(drawn.run_dir.rglob("*.png")) and not list(bare.run_dir.rglob("*.png"))
    verdicts = {(c.stage, c.name): c.status for c in drawn.checks}
    without = {(c.stage, c.name): c.status for c in bare.checks}
    assert verdicts.pop(("inspect", "samples")) == "pass" and without.pop(("inspect", "samples")) == "skip"
    assert without == verdicts
    for check in json.loads((bare.run_dir / "checks.json").read_text()):
        assert all(isinstance(a, str) and not a.endswith(".png") for a in check["artifacts"]), check
        assert all((bare.run_dir / a).exists() for a in check["artifacts"])  # tables still written
    assert json.loads((bare.run_dir / "manifest.json").read_text())["figures"] is False
    assert "figures off" in (bare.run_dir / "report.html").read_text()
    assert "figures off" not in (drawn.run_dir / "report.html").read_text()


def test_a_figure_function_is_not_called_when_figures_are_off(tmp_path):
    def draw():
        raise AssertionError("drawn although figures are off")

    rundir = RunDir(tmp_path / "run")
    ctx = Context(tiny.classification(), torch.device("cpu"), 0, rundir, stage="baseline", figures=False)
    assert ctx.save_figure("curve.png", draw) is None
    assert passed("x", "ok").replace(artifacts=(ctx.save_figure("curve.png", draw), "table.json")).artifacts == (
        "table.json",
    )


def test_a_figure_function_is_drawn_when_figures_are_on(tmp_path):
    import matplotlib.pyplot as plt

    rundir = RunDir(tmp_path / "run")
    rundir.create(replace=["baseline"])
    ctx = Context(tiny.classification(), torch.device("cpu"), 0, rundir, stage="baseline")
    path = ctx.save_figure("curve.png", lambda: plt.subplots()[0])
    rundir.close()
    assert path is not None and (rundir.path / path).stat().st_size > 0


def test_figures_must_be_a_bool(tmp_path):
    with pytest.raises(ConfigError, match="figures must be True or False, got 'no'"):
        Recipe(tiny.classification(), run_dir=tmp_path / "run", figures="no")  # type: ignore[arg-type]


def test_check_leaves_out_figures_not_drawn():
    assert Check("x", "pass", artifacts=(None, "a.json", None)).artifacts == ("a.json",)  # type: ignore[arg-type]


CONFIG = """\
task: {module}:make_task
run_dir: runs/tiny
device: cpu
stages: [overfit]
overfit: {{batch_size: 8, steps: 30, lr: 1.0e-2, lr_steps: 20}}
{extra}"""

TASK_MODULE = """
import torch
from torch import nn
from recipe import Task

def make_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = x[:, :3].argmax(1)
    return Task((x[:150], y[:150]), (x[150:], y[150:]), lambda: nn.Sequential(nn.Linear(8, 3)), name="tiny")
"""


@pytest.mark.parametrize(
    ("extra", "argv", "figures"),
    [("", [], True), ("figures: false\n", [], False), ("", ["--no-figures"], False)],
    ids=["default", "yaml", "flag"],
)
def test_the_command_line_turns_figures_off(tmp_path, monkeypatch, extra, argv, figures):
    module = f"tiny_figures_{len(extra)}_{len(argv)}"
    (tmp_path / f"{module}.py").write_text(TASK_MODULE)
    (tmp_path / "config.yaml").write_text(CONFIG.format(module=module, extra=extra))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert cli.main(["run", "config.yaml", "--quiet", *argv]) in (0, 1)
    run = tmp_path / "runs" / "tiny"
    assert json.loads((run / "manifest.json").read_text())["figures"] is figures
    assert bool(list(run.rglob("*.png"))) is figures


def test_a_bad_figures_value_in_the_yaml_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.yaml").write_text(CONFIG.format(module="m", extra="figures: sometimes\n"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "config.yaml"]) == 2
    err = capsys.readouterr().err
    assert "figures" in err and "sometimes" in err and not (tmp_path / "runs").exists()
