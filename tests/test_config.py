"""config: YAML read safely, one key per settings field, unknown keys and wrong types rejected with a suggestion;
every shipped config builds its settings."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from recipe.config import RunConfig, TrainSettings, load_yaml, settings_from_dict, split_config
from recipe.errors import ConfigError
from recipe.stage import StageSettings
from recipe.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("**/*.yaml"))


# ---- settings dataclasses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, TrainSettings()),
        (None, TrainSettings()),
        ({"lr": "3e-4"}, TrainSettings(lr=3e-4)),  # YAML 1.1 reads 3e-4 (no dot) as a string
        ({"lr": 1}, TrainSettings(lr=1.0)),
        ({"grad_clip": None}, TrainSettings(grad_clip=None)),
        ({"grad_clip": "1e0"}, TrainSettings(grad_clip=1.0)),
        ({"grad_clip": 2}, TrainSettings(grad_clip=2.0)),
        ({"epochs": 3, "compile": True, "optimizer": "sgd"}, TrainSettings(epochs=3, compile=True, optimizer="sgd")),
    ],
)
def test_settings_from_dict_builds_the_dataclass(data, expected):
    built = settings_from_dict(TrainSettings, data, "train")
    assert built == expected
    assert all(type(getattr(built, f.name)) is type(getattr(expected, f.name)) for f in dataclasses.fields(built))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"batchsize": 32}, r"train: unknown key 'batchsize'; did you mean 'batch_size'\?"),
        ({"epoch": 3}, r"unknown key 'epoch'; did you mean 'epochs'\?"),
        ({"warmup": 10}, r"unknown key 'warmup'; did you mean 'warmup_steps'\?"),
        ({"zzz": 1}, r"unknown key 'zzz'; valid keys: augment, batch_size, checkpoint_seconds, .*weight_decay\."),
        ({"epochs": "ten"}, r"train\.epochs must be an integer, got 'ten'"),
        ({"epochs": 10.0}, r"train\.epochs must be an integer, got 10\.0"),
        ({"epochs": True}, r"train\.epochs must be an integer, got True"),
        ({"lr": "fast"}, r"train\.lr must be a number, got 'fast'"),
        ({"lr": [1e-3]}, r"train\.lr must be a number"),
        ({"compile": "yes"}, r"train\.compile must be true or false, got 'yes'"),
        ({"optimizer": 3}, r"train\.optimizer must be a string, got 3"),
        ({"grad_clip": "none"}, r"train\.grad_clip must be a number, got 'none'"),
    ],
)
def test_settings_from_dict_rejects_unknown_keys_and_wrong_types(data, match):
    with pytest.raises(ConfigError, match=match):
        settings_from_dict(TrainSettings, data, "train")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], r"train must be a mapping of settings, got list"),
        ("lr=1", r"train must be a mapping of settings, got str"),
    ],
)
def test_settings_from_dict_needs_a_mapping(data, match):
    with pytest.raises(ConfigError, match=match):
        settings_from_dict(TrainSettings, data, "train")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"skip": ["loss_at_init"]}, ("loss_at_init",)),
        ({"skip": []}, ()),
    ],
)
def test_tuple_fields_take_yaml_lists(data, expected):
    assert settings_from_dict(StageSettings, data, "baseline").skip == expected


def test_tuple_field_rejects_a_bare_string():
    with pytest.raises(ConfigError, match=r"baseline\.skip must be a list"):
        settings_from_dict(StageSettings, {"skip": "loss_at_init"}, "baseline")


# ---- YAML files -------------------------------------------------------------------------------------------------


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_yaml_reads_floats_without_a_dot_as_settings_floats(tmp_path):
    data = load_yaml(write(tmp_path, "task: m:f\ntrain: {lr: 3e-4, batch_size: 8}\n"))
    assert data["train"]["lr"] == "3e-4"  # what yaml.safe_load gives ...
    assert settings_from_dict(TrainSettings, data["train"], "train").lr == 3e-4  # ... and what the settings hold


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("task: m:f\nseed: 1\nseed: 2\n", r"config\.yaml: line 3: key 'seed' is given twice"),
        ("task: m:f\ntrain:\n  lr: 0.1\n  lr: 0.2\n", r"line 4: key 'lr' is given twice"),
        ("task: [unclosed\n", r"config\.yaml line \d+: not valid YAML"),
        ("? [a, b]\n: 1\n", r"not valid YAML for recipe \(found unhashable key\)"),
        ("- task: m:f\n", r"a config must be a mapping"),
        ("", r"a config must be a mapping"),
        ("task: !!python/name:os.getcwd ''\n", r"not valid YAML"),
    ],
)
def test_load_yaml_refuses_bad_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_yaml(write(tmp_path, text))


def test_load_yaml_of_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/apply:subprocess.call"])
def test_load_yaml_runs_no_python_tags(tmp_path, tag):
    sentinel = tmp_path / "pwned"
    args = f"[touch {sentinel}]" if tag.endswith("os.system") else f"[[touch, {sentinel}]]"
    path = write(tmp_path, f"task: m:f\nseed: {tag} {args}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        load_yaml(path)
    assert not sentinel.exists()


# ---- run settings and stage sections ----------------------------------------------------------------------------


def test_split_config_separates_run_settings_from_stage_sections():
    stage = next(iter(STAGES))
    run, sections = split_config(
        {"task": "m:f", "seed": 3, "stages": [stage], "train": {"lr": "1e-3"}, stage: {"skip": []}}, STAGES, "c.yaml"
    )
    assert run == RunConfig(task="m:f", seed=3, stages=[stage], train={"lr": "1e-3"})
    assert sections == {stage: {"skip": []}}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"task": "m:f", "trian": {}}, r"c\.yaml: unknown key 'trian'; did you mean 'train'\?"),
        ({"task": "m:f", "sed": 1}, r"unknown key 'sed'; did you mean 'seed'\?"),
        ({"task": "m:f", "seed": "0"}, r"c\.yaml\.seed must be an integer"),
        ({"task": "m:f", "stages": "overfit"}, r"stages must be a list"),
        ({"task": "m:f", "train": {"lr": "x"}}, r"c\.yaml: train\.lr must be a number"),
        ({"task": "m:f", "train": {"batchsize": 8}}, r"unknown key 'batchsize'; did you mean 'batch_size'\?"),
        ({"task": "m:f", "task_args": ["mlp"]}, r"task_args must be a mapping"),
    ],
)
def test_split_config_rejects_bad_top_level_keys(data, match):
    with pytest.raises(ConfigError, match=match):
        split_config(data, STAGES, "c.yaml")


def test_a_stage_section_with_an_unknown_key_is_rejected():
    name, cls = next(iter(STAGES.items()))
    with pytest.raises(ConfigError, match=rf"{name}: unknown key 'skp'; did you mean 'skip'\?"):
        cls({"skp": ["x"]})


def test_every_shipped_config_is_found():
    assert len(CONFIGS) >= 1
    assert len(CONFIGS) == sum(1 for p in (ROOT / "configs").rglob("*") if p.suffix == ".yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS])
def test_every_shipped_config_builds_its_settings(path):
    run, sections = split_config(load_yaml(path), STAGES, str(path))
    settings_from_dict(TrainSettings, run.train, f"{path}: train")
    for name in run.stages or []:
        assert name in STAGES, f"{path}: stages lists unknown stage {name!r}"
    for name, section in sections.items():
        stage = STAGES[name](section)
        assert isinstance(stage.settings, STAGES[name].settings_cls)
    module, _, function = run.task.partition(":")
    assert callable(getattr(importlib.import_module(module), function))  # imported, not called
