"""report: the page a person reads. Plots open in an in-page viewer (no `data:` link, each image embedded once),
configuration, environment and training runs are folded away, numbers and `key=value` pairs never break across
lines, and the notebook view names each check's stage. (In a real browser: tests/test_report_browser.py; hostile
content: tests/reliability/test_hostile.py.)"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from recipe.check import Check
from recipe.report import CSS, build_report, checks_table_html, result_html
from recipe.runner import RecipeResult

PNG = b"\x89PNG\r\n\x1a\n a plot's bytes"


def _run(folder: Path) -> Path:
    """A finished run directory as recipe writes it: two stages, a plot, a table, learned values and fits."""
    run = folder / "run"
    (run / "03_overfit").mkdir(parents=True)
    (run / "03_overfit" / "overfit_batch.png").write_bytes(PNG)
    manifest = {
        "task": {"name": "digits", "kind": "classification"},
        "seed": 0,
        "stages_planned": ["overfit", "tune"],
        "stages": {"overfit": "pass", "tune": "warn"},
        "seconds": {"overfit": 1.25, "tune": 12.5},
        "learned": {"overfit": {"lr": 0.0138512, "lr_rule": "range test, minimum/10"}, "tune": {}},
        "config": {"train": {"lr": 0.0003, "batch_size": 64}, "overfit": {"steps": 300}},
        "versions": {"recipe": "0.1", "torch": "2.13"},
        "fits": [{"stage": "overfit", "run": "overfit_batch", "seconds": 0.5, "steps": 300, "lr": 0.01}],
    }
    value = {"loss": 0.001234, "reference": 2.302585, "steps": 300}
    checks = [
        Check("overfit_batch", "pass", value, None, "memorised.", stage="overfit"),
        Check("seed_variance", "warn", 0.973125, "spread under the lead", "the lead is inside the noise " * 3, "tune"),
    ]
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "checks.json").write_text(json.dumps([c.to_dict() for c in checks]))
    return run


def test_plots_open_in_the_page_viewer_not_through_a_data_link(tmp_path):
    page = build_report(_run(tmp_path)).read_text()
    data = base64.b64encode(PNG).decode()
    assert page.count(data) == 1  # the thumbnail only: the viewer borrows its source on a click
    assert 'href="data:' not in page and "target=" not in page  # nothing navigates to a data: URL (Chromium: blank)
    assert page.count("<dialog class=viewer") == 1 and "showModal()" in page and "this.close()" in page
    assert "<script" not in page.lower()  # inline handlers only: the page holds no script element
    assert re.search(r'<figure><img src="data:image/png;base64,[^"]+" alt="overfit_batch.png"', page)


def test_thumbnails_use_the_page_width():
    columns = re.search(r"\.plots\{[^}]*grid-template-columns:repeat\(auto-fill,minmax\((\d+)px", CSS)
    assert columns and int(columns.group(1)) >= 480  # two columns of at least 480 px in a 1200 px page
    assert "width:340px" not in CSS


def test_configuration_environment_and_training_runs_are_folded_away(tmp_path):
    page = build_report(_run(tmp_path)).read_text()
    folded = re.findall(r"<details class=fold><summary>([^<]*)</summary>(.*?)</details>", page, re.S)
    summaries = {summary: body for summary, body in folded}
    assert set(summaries) == {
        "Settings of every stage, as run",
        "Environment: library versions, device, threads",
        "Training runs: 1 fits, 0.5 s",
    }
    assert "&quot;batch_size&quot;: 64" in summaries["Settings of every stage, as run"]
    assert "&quot;torch&quot;: &quot;2.13&quot;" in summaries["Environment: library versions, device, threads"]
    assert "<td>overfit_batch</td><td>0.5</td><td>300</td>" in summaries["Training runs: 1 fits, 0.5 s"]
    assert page.index("<h2>What the stages learned</h2>") < page.index("Settings of every stage")
    assert "<span class=kv>lr=0.01385</span>" in page  # what stages learned stays in view, one pair a line


def test_numbers_and_pairs_never_break_and_long_text_wraps(tmp_path):
    page = build_report(_run(tmp_path)).read_text()
    assert ".kv{white-space:nowrap}" in CSS and "overflow-wrap:anywhere" not in CSS
    assert "<span class=kv>loss=0.001234</span><br><span class=kv>reference=2.303</span>" in page
    assert "<span class=kv>0.973125</span>" in page  # a bare number too
    assert "<span class=kv>the lead is inside" not in page and "the lead is inside the noise" in page
    assert "lr_rule=range test, minimum/10" in page and "<span class=kv>lr_rule" not in page  # words wrap
    assert "<td class=message>memorised.</td>" in page and "td.message{min-width:22em}" in CSS


def test_the_notebook_view_has_a_stage_column_and_the_stage_table_none(tmp_path):
    checks = [Check("loss_at_init", "pass", 2.3, 2.303, "ok", stage="baseline"), Check("x", "fail", stage="tune")]
    notebook = result_html(RecipeResult(False, checks, tmp_path, {"baseline": "pass", "tune": "fail"}))
    assert "<th>stage</th><th>check</th>" in notebook
    assert "<td class=stage>baseline</td><td class=name>loss_at_init</td>" in notebook
    assert "<td class=stage>tune</td>" in notebook
    assert "<th>stage</th>" not in checks_table_html(checks)  # a stage's own section needs no stage column
