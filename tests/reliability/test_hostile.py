"""Issue 15, item 7: hostile content is inert. Every value report.html shows is escaped, whatever checks.json and
manifest.json hold (the seed and the task name included), and a stage name from a hand-edited file leads nowhere
outside the run; a YAML config with nested aliases ("billion laughs") is refused at once, not expanded.
"""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from recipe import ConfigError, cli
from recipe.check import Check
from recipe.config import MAX_ALIASES, load_yaml
from recipe.report import build_report, checks_table_html, result_html
from recipe.runner import RecipeResult

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'
MARK = "pwned-by-report"  # only ever inside the payloads: seeing it unescaped means markup went through


def _payload(where: str) -> str:
    return f"{EVIL}{MARK}-{where}\"'&"


def _hostile_run(folder: Path) -> Path:
    """A run directory as a hand edit could leave it: markup in every field of manifest.json and checks.json, numbers
    where text is expected and text where numbers are."""
    run = folder / "run"
    run.mkdir(parents=True)
    stage = _payload("stage")
    manifest = {
        "task": {"name": _payload("name"), "kind": _payload("kind")},
        "seed": _payload("seed"),
        "device": _payload("device"),
        "start": _payload("start"),
        "end": _payload("end"),
        "status": "interrupted",
        "stages_planned": ["overfit", stage],
        "stages": {"overfit": _payload("status"), stage: "fail"},
        "seconds": {"overfit": _payload("seconds"), stage: 1.5},
        "learned": {"overfit": {"lr": _payload("learned")}},
        "config": {"overfit": {"lr": _payload("config")}},
        "versions": {"recipe": _payload("version")},
        "device_name": _payload("device_name"),
    }
    checks = [
        {
            "stage": s,
            "name": _payload(f"name-{i}"),
            "status": status,
            "value": {"a": _payload(f"value-{i}"), _payload(f"key-{i}"): 1.0},
            "expected": _payload(f"expected-{i}"),
            "message": _payload(f"message-{i}"),
            "seconds": _payload(f"seconds-{i}") if i == 0 else 0.25,
        }
        for i, (s, status) in enumerate([("overfit", "fail"), (stage, "fail"), ("overfit", "warn")])
    ]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "checks.json").write_text(json.dumps(checks))
    folder_name = "03_overfit"
    (run / folder_name).mkdir()
    table = {"columns": [_payload("column")], "rows": [[_payload("cell")]]}
    (run / folder_name / f"{EVIL[:8]}.table.json").write_text(json.dumps(table))
    return run


def _unescaped(page: str) -> list[str]:
    """Markup that came through from the payloads: their tags, or the marker right after a raw `>`."""
    return re.findall(r"<script|<img src=x|onerror=alert\(1\)>" + MARK, page, re.IGNORECASE)


def test_every_value_in_report_html_is_escaped(tmp_path):
    run = _hostile_run(tmp_path)
    page = build_report(run).read_text()
    assert _unescaped(page) == []
    assert "<script" not in page.lower() and "onerror=alert(1)>" not in page
    for where in ("name", "seed", "device", "start", "kind", "stage", "status", "message-0", "value-0", "column"):
        assert f"{MARK}-{where}" in page, where  # shown, escaped: not dropped
    assert "&lt;script&gt;" in page


def test_a_stage_name_in_a_hand_edited_file_reads_nothing_outside_the_run(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG not really, but private")
    run = tmp_path / "run"
    run.mkdir()
    stage = "../../" + tmp_path.name  # stage_folder makes it 07_../../<tmp>: a path out of the run
    (run / "manifest.json").write_text(json.dumps({"stages_planned": [stage], "stages": {stage: "pass"}}))
    (run / "checks.json").write_text("[]")
    page = build_report(run).read_text()
    assert base64.b64encode(outside.read_bytes()).decode() not in page
    (run / "07_my stage.v2").mkdir()  # the fixed twin: a custom stage's own folder, whatever its name holds
    (run / "07_my stage.v2" / "curve.png").write_bytes(b"\x89PNG a custom stage's plot")
    (run / "manifest.json").write_text(json.dumps({"stages_planned": ["my stage.v2"], "stages": {}}))
    assert base64.b64encode(b"\x89PNG a custom stage's plot").decode() in build_report(run).read_text()


def test_a_clean_report_still_shows_its_numbers(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = {"task": {"name": "digits"}, "seed": 7, "stages_planned": ["overfit"], "stages": {"overfit": "pass"}}
    (run / "manifest.json").write_text(json.dumps({**manifest, "seconds": {"overfit": 2.25}}))
    check = {"stage": "overfit", "name": "overfit_batch", "status": "pass", "message": "ok", "seconds": 0.5}
    (run / "checks.json").write_text(json.dumps([check]))
    page = build_report(run).read_text()
    assert "seed 7" in page and " 2.2 s" in page and "<td>0.50</td>" in page


def test_the_notebook_view_escapes_too(tmp_path):
    check = Check(name=_payload("name"), status="fail", message=_payload("message"), stage=_payload("stage"))
    result = RecipeResult(False, [check], tmp_path, {_payload("stage"): "fail"})
    assert _unescaped(result_html(result)) == [] and _unescaped(checks_table_html([check])) == []


# ---- YAML ----------------------------------------------------------------------------------------------------------

LAUGHS = "task: m:f\ntask_args:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)  # nine levels of nine: 9**9 = 387 million strings once expanded


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (LAUGHS, r"line 5: alias \*b refers to an anchor that holds an alias itself"),
        ("task: m:f\na: &a [x, *a]\n", r"line 2: alias \*a refers to an anchor that holds an alias"),  # recursive
        ("task: m:f\nx: &x 1\nys: [" + ", ".join(["*x"] * (MAX_ALIASES + 1)) + "]\n", rf"more than {MAX_ALIASES}"),
    ],
    ids=["billion-laughs", "recursive", "too-many"],
)
def test_yaml_aliases_that_would_blow_up_are_refused_at_once(tmp_path, text, match):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=match):
        load_yaml(config)
    assert time.perf_counter() - start < 1.0


def test_the_billion_laughs_through_the_command_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text(LAUGHS.replace("task: m:f", f"task: m:f\nrun_dir: {tmp_path / 'run'}"))
    assert cli.main(["run", "config.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml: line" in err and "nested aliases" in err
    assert not (tmp_path / "run").exists()


def test_plain_anchors_and_merge_keys_still_load(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        "task: m:f\ndefaults: &defaults {batch_size: 32, lr: 1.0e-3}\n"
        "train: {<<: *defaults, lr: 3.0e-4}\noverfit: {<<: *defaults}\nstages: &s [overfit]\nother: *s\n"
    )
    data = load_yaml(config)
    assert data["train"] == {"batch_size": 32, "lr": 3e-4} and data["overfit"] == {"batch_size": 32, "lr": 1e-3}
    assert data["other"] == ["overfit"]
