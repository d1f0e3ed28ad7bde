"""report.html, built from the run directory alone (`recipe report RUN_DIR` rebuilds it).

One self-contained page: a status summary at the top (failures first, each with its fix), a section per stage with
its checks and plots (embedded as base64, so the file reads offline), then the run's configuration.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe.check import Check
from recipe.rundir import REPORT, RunDir, stage_folder

if TYPE_CHECKING:
    from recipe.runner import RecipeResult

COLORS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781", "error": "#8250df"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d0d7de}
.meta{color:#59636e;margin-bottom:16px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.name{font-family:ui-monospace,monospace;white-space:nowrap}
td.value{font-family:ui-monospace,monospace;font-size:12px;max-width:260px;overflow-wrap:anywhere}
td.value pre{margin:4px 0 0;padding:4px;font-size:11px;max-height:240px} summary{cursor:pointer}
.summary{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:120px}
.problems li{margin:4px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}
.plots figure{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:6px;width:340px}
.plots img{width:100%;cursor:zoom-in} .plots figcaption{font-size:12px;color:#59636e}
pre{background:#fff;border:1px solid #d0d7de;padding:10px;overflow:auto;font-size:12px}
table.data{width:auto;font-size:13px} table.data caption{text-align:left;font-weight:600;padding:4px 0}
"""


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{COLORS.get(status, "#6e7781")}">{_esc(status)}</span>'


def _esc(value: Any) -> str:
    """Any value as HTML text: whatever a run directory holds (a task name, a seed, a message) is escaped."""
    return html.escape(str(value))


def _seconds(value: Any, digits: int) -> str:
    """A duration formatted, or nothing when it is not a number (a hand-edited manifest.json or checks.json)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return f"{value:.{digits}f}" if ok else ""


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _value_html(value: Any) -> str:
    """A number or short text as it is; a mapping as its first few scalar entries, the rest behind a click."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        return html.escape(_short(value, 120))
    scalars = [(k, v) for k, v in value.items() if isinstance(v, int | float | str | bool) and len(str(v)) < 40]
    summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars[:3]) or "details"
    full = html.escape(json.dumps(value, indent=1)[:4000])
    return f"<details><summary>{html.escape(summary)}</summary><pre>{full}</pre></details>"


def checks_table_html(checks: list[Check]) -> str:
    """A checks table as HTML (also what a Check shows in a notebook)."""
    rows = "".join(
        f"<tr><td>{_badge(c.status)}</td><td class=name>{_esc(c.name)}</td>"
        f"<td>{_esc(c.message)}</td><td class=value>{_value_html(c.value)}</td>"
        f"<td class=value>{_value_html(c.expected)}</td>"
        f"<td>{_seconds(c.seconds, 2)}</td></tr>"
        for c in checks
    )
    return (
        "<table><tr><th>status</th><th>check</th><th>message</th><th>value</th><th>expected</th><th>s</th></tr>"
        f"{rows}</table>"
    )


def result_html(result: RecipeResult) -> str:
    """The compact notebook view of a RecipeResult: stage statuses and the checks table."""
    stages = " ".join(f"{_esc(name)} {_badge(status)}" for name, status in result.stages.items())
    badge = _badge("pass" if result.ok else "fail")
    return f"<div><b>recipe run</b> {badge} {stages}{checks_table_html(result.checks)}</div>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    src = f"data:image/png;base64,{data}"
    return (
        f'<figure><a href="{src}" target="_blank" rel="noopener"><img src="{src}" alt="{html.escape(path.name)}">'
        f"</a><figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


def _table(path: Path) -> str:
    """A stage's `<name>.table.json` ({"columns": [...], "rows": [[...], ...]}) as an HTML table."""
    try:
        table = json.loads(path.read_text())
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table["columns"])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in table["rows"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # a table that cannot be read is left out; the checks above still show
    caption = html.escape(path.name.removesuffix(".table.json"))
    return f"<table class=data><caption>{caption}</caption><tr>{head}</tr>{body}</table>"


def build_report(run_dir: str | Path) -> Path:
    """Write report.html for a run directory from checks.json, manifest.json and the stage folders."""
    rundir = RunDir(run_dir)
    checks, manifest = rundir.read_checks(), rundir.read_manifest()
    order = manifest.get("stages_order") or manifest.get("stages_planned", [])
    stages = list(dict.fromkeys([*order, *(c.stage for c in checks)]))
    statuses = manifest.get("stages", {})
    rank = {"fail": 0, "error": 1, "warn": 2}  # a check that raised could not judge: after the failures
    problems = sorted((c for c in checks if c.status in rank), key=lambda c: rank[c.status])
    task = manifest.get("task", {})
    parts = [
        f"<h1>recipe report: {html.escape(str(task.get('name', rundir.path.name)))}</h1>",
        f"<div class=meta>{html.escape(str(task.get('kind', '')))} · "
        f"device {html.escape(str(manifest.get('device', '?')))}"
        f" · seed {_esc(manifest.get('seed', '?'))} · {html.escape(str(manifest.get('start', '')))} → "
        f"{html.escape(str(manifest.get('end', 'interrupted')))}"
        f"{' · <b>interrupted</b>' if manifest.get('status') == 'interrupted' else ''}</div>",
        '<div class="summary">',
    ]
    for stage in stages:
        status = statuses.get(stage, "not run")
        seconds = manifest.get("seconds", {}).get(stage)
        parts.append(
            f'<div class="card"><b>{_esc(stage)}</b><br>{_badge(status)}'
            f"{'' if not _seconds(seconds, 1) else f' {_seconds(seconds, 1)} s'}</div>"
        )
    parts.append("</div>")
    if problems:
        parts.append("<h2>Needs attention</h2><ul class=problems>")
        parts += [
            f"<li>{_badge(c.status)} <b>{_esc(c.stage)}.{_esc(c.name)}</b>: {_esc(c.message)}</li>" for c in problems
        ]
        parts.append("</ul>")
    for stage in stages:
        stage_checks = [c for c in checks if c.stage == stage]
        parts.append(
            f"<h2 id='{_esc(stage)}'>{_esc(stage_folder(stage, stages))} {_badge(statuses.get(stage, 'not run'))}</h2>"
        )
        parts.append(checks_table_html(stage_checks) if stage_checks else "<p>Not run.</p>")
        folder = rundir.path / stage_folder(stage, stages)
        plain = not re.search(r"[/\\\0]", str(stage))  # a name from a hand-edited file must not lead outside the run
        tables = sorted(folder.glob("*.table.json")) if plain and folder.exists() else []
        parts += [_table(p) for p in tables]
        images = sorted(folder.glob("*.png")) if plain and folder.exists() else []
        if images:
            parts.append('<div class="plots">' + "".join(_image(p) for p in images) + "</div>")
    learned = manifest.get("learned", {})
    parts.append("<h2>What the stages learned</h2><pre>" + html.escape(json.dumps(learned, indent=1)) + "</pre>")
    parts.append(
        "<h2>Configuration and environment</h2><pre>"
        + html.escape(json.dumps({k: manifest.get(k) for k in ("config", "versions", "device_name", "fits")}, indent=1))
        + "</pre>"
    )
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>recipe report</title>"
        f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>"
    )
    rundir.write_report(page)
    return rundir.path / REPORT
