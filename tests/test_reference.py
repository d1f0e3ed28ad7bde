"""docs/config.md is generated from the settings dataclasses; it must match what the code generates now."""

from __future__ import annotations

from pathlib import Path

from recipe.reference import reference
from recipe.stages import STAGES

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_the_config_reference_matches_the_code():
    assert DOC.read_text() == reference(), "regenerate it: python -m recipe.reference > docs/config.md"


def test_every_stage_and_every_setting_is_documented():
    text = reference()
    for name, stage in STAGES.items():
        assert f"## `{name}`" in text
        for field in stage.settings_cls.__dataclass_fields__:
            assert f"| `{field}` |" in text
    assert "|  |" not in text, "a setting without a description in its class docstring's Args"
