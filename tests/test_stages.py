"""Contract tests over the registry: every stage builds from defaults, runs on a tiny CPU task, emits valid checks,
and writes only inside its own NN_<stage>/ folder."""

from __future__ import annotations

import json
import re

import pytest

from recipe import Check, Recipe
from recipe.rundir import STAGE_ORDER, stage_folder
from recipe.stages import STAGES
from tests import tiny

RUN_LEVEL_FILES = {".recipe", "checks.json", "manifest.json", "metrics.jsonl", "report.html"}


def test_registry_names_match_classes_and_recipe_order():
    for name, cls in STAGES.items():
        assert cls.name == name
        assert name in STAGE_ORDER
    assert list(STAGES) == [s for s in STAGE_ORDER if s in STAGES]


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_contract(name, tmp_path):
    stage = STAGES[name]()  # builds from defaults
    result = Recipe(
        tiny.classification(), run_dir=tmp_path, stages=[stage], device="cpu", progress=False, quiet=True
    ).run()
    assert result.checks, f"{name} emitted no checks"
    for check in result.checks:
        assert isinstance(check, Check)
        assert check.stage == name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", check.name), check.name
        assert check.status in ("pass", "warn", "fail", "skip")
        assert check.message.rstrip().endswith((".", ")")), check.message
    assert [c["name"] for c in json.loads((tmp_path / "checks.json").read_text())] == [c.name for c in result.checks]
    allowed = RUN_LEVEL_FILES | {stage_folder(name)} | ({"study"} if name == "tune" else set())  # resumable study
    assert {p.name for p in tmp_path.iterdir()} <= allowed
    for check in result.checks:
        for artifact in check.artifacts:
            assert artifact.startswith(stage_folder(name) + "/") and (tmp_path / artifact).exists()


@pytest.mark.parametrize("name", list(STAGES))
def test_clean_tiny_task_does_not_fail(name, tmp_path):
    result = Recipe(
        tiny.classification(), run_dir=tmp_path, stages=[name], device="cpu", progress=False, quiet=True
    ).run()
    assert result.ok, [c.message for c in result.failures]


def test_settings_come_from_config_and_reject_unknown_keys():
    from recipe.errors import ConfigError

    assert STAGES["baseline"]({"steps": 12}).settings.steps == 12
    assert STAGES["overfit"](steps=7).settings.steps == 7
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        STAGES["baseline"]({"stpes": 12})
