"""report.html, built from the run directory alone (`recipe report RUN_DIR` rebuilds it).

One self-contained page: a status summary at the top (failures first, each with its fix), a section per stage with
its checks and plots (embedded as base64, so the file reads offline), what the stages learned, then the run's
configuration, environment and training runs folded away. A click on a plot shows it large in an in-page viewer (a
`<dialog>`: Esc or a click closes it), so nothing navigates to a `data:` URL, which browsers block; the page holds no
`<script>` element, only two inline handlers, and works from a single file offline.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recipe.check import Check
from recipe.errors import ConfigError
from recipe.rundir import REPORT, RunDir, stage_folder

if TYPE_CHECKING:
    from recipe.runner import RecipeResult

COLORS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#6e7781", "error": "#8250df"}
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:32px 0 8px;border-bottom:1px solid #d0d7de}
.meta{color:#59636e;margin-bottom:16px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
table{border-collapse:collapse;width:100%;background:#fff;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa} td.name{font-family:ui-monospace,monospace;white-space:nowrap}
td{font-variant-numeric:tabular-nums} td.value{font-family:ui-monospace,monospace;font-size:12px}
td.value .kv{white-space:nowrap} td.stage{white-space:nowrap} td.message{min-width:22em}
td.value pre{margin:4px 0 0;padding:4px;font-size:11px;max-height:240px;max-width:480px} summary{cursor:pointer}
.summary{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;min-width:120px}
.problems li{margin:4px 0}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px;margin:8px 0;align-items:start}
.plots figure{margin:0;background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:6px}
.plots img{width:100%;cursor:zoom-in} .plots figcaption{font-size:12px;color:#59636e}
dialog.viewer{padding:8px;border:0;border-radius:6px;max-width:98vw;max-height:98vh;cursor:zoom-out}
dialog.viewer::backdrop{background:rgba(0,0,0,.7)}
dialog.viewer img{display:block;width:94vw;height:88vh;object-fit:contain}
dialog.viewer p{margin:4px 0 0;font-size:12px;color:#59636e;text-align:center}
details.fold{margin:8px 0} details.fold>summary{font-weight:600;padding:4px 0}
pre{background:#fff;border:1px solid #d0d7de;padding:10px;overflow:auto;font-size:12px}
table.data{width:auto;font-size:13px} table.data caption{text-align:left;font-weight:600;padding:4px 0}
table.data td{white-space:nowrap}
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


def _kv(text: str) -> str:
    """A number or a `key=value` pair without spaces, never broken across lines (text with spaces wraps)."""
    return html.escape(text) if " " in text else f"<span class=kv>{html.escape(text)}</span>"


def _pair(key: Any, value: Any) -> str:
    return _kv(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={_short(value, 80)}")


def _value_html(value: Any) -> str:
    """A number or short text as it is; a mapping as its first few scalar entries, one a line, the rest behind a
    click. Numbers and pairs never break across lines; long text wraps."""
    if value is None:
        return ""
    if not isinstance(value, dict):
        return _kv(_short(value, 120))
    scalars = [(k, v) for k, v in value.items() if isinstance(v, int | float | str | bool) and len(str(v)) < 40]
    summary = "<br>".join(_pair(k, v) for k, v in scalars[:3]) or "details"
    full = html.escape(json.dumps(value, indent=1)[:4000])
    return f"<details><summary>{summary}</summary><pre>{full}</pre></details>"


def checks_table_html(checks: list[Check], stage: bool = False) -> str:
    """A checks table as HTML; in a notebook, `IPython.display.HTML(checks_table_html([check]))` shows one check
    (a `Check` renders nothing itself: the report renders checks)."""
    rows = "".join(
        f"<tr><td>{_badge(c.status)}</td>{f'<td class=stage>{_esc(c.stage)}</td>' if stage else ''}"
        f"<td class=name>{_esc(c.name)}</td>"
        f"<td class=message>{_esc(c.message)}</td><td class=value>{_value_html(c.value)}</td>"
        f"<td class=value>{_value_html(c.expected)}</td>"
        f"<td>{_seconds(c.seconds, 2)}</td></tr>"
        for c in checks
    )
    head = f"<th>status</th>{'<th>stage</th>' if stage else ''}<th>check</th><th>message</th>"
    return f"<table><tr>{head}<th>value</th><th>expected</th><th>s</th></tr>{rows}</table>"


def result_html(result: RecipeResult) -> str:
    """The compact notebook view of a RecipeResult: stage statuses and the checks table with each check's stage."""
    stages = " ".join(f"{_esc(name)} {_badge(status)}" for name, status in result.stages.items())
    badge = _badge("pass" if result.ok else "fail")
    return f"<div><b>recipe run</b> {badge} {stages}{checks_table_html(result.checks, stage=True)}</div>"


def _image(path: Path) -> str:
    """A plot as a thumbnail; `VIEWER` shows it large on a click."""
    data = base64.b64encode(path.read_bytes()).decode()
    name = html.escape(path.name)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{name}" title="click to enlarge">'
        f"<figcaption>{name}</figcaption></figure>"
    )


# The in-page viewer: a click on a plot copies it into the <dialog> and opens it modal; Esc (the browser's) or a click
# on the dialog closes it. Inline handlers rather than a <script>, so one file works offline, in a notebook's output
# too, and the page holds no script element at all.
VIEWER = '<dialog class=viewer onclick="this.close()"><img alt=""><p></p></dialog>'
OPEN_VIEWER = (
    "var i=event.target.closest('.plots img');if(i){var d=this.querySelector('dialog.viewer');"
    "d.querySelector('img').src=i.src;d.querySelector('p').textContent=i.alt;d.showModal()}"
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


def validation_table(rows: list[dict[str, Any]], stage: str, limit: int = 40) -> str:
    """The last validation figures of each of a stage's training runs (metrics.jsonl rows), as an HTML table, when
    they hold more than the loss and one metric (a task's extra metrics, `Task(metrics=...)`); else nothing."""
    last: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("stage") == stage and row.get("split") == "val":
            last.setdefault(str(row.get("run")), {})[str(row.get("metric"))] = row.get("value")
    names = list(dict.fromkeys(name for figures in last.values() for name in figures))
    if len(names) <= 2:
        return ""
    head = "<th>run</th>" + "".join(f"<th>val {_esc(n)}</th>" for n in names)
    body = "".join(
        f"<tr><td>{_esc(run)}</td>" + "".join(f"<td>{_esc(_figure(figures.get(n)))}</td>" for n in names) + "</tr>"
        for run, figures in list(last.items())[:limit]
    )
    caption = "<caption>validation metrics (each run's last evaluation)</caption>"
    return f"<table class=data>{caption}<tr>{head}</tr>{body}</table>"


def _figure(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) and not isinstance(value, bool) else str(value or "")


def _pre(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=1, default=str))}</pre>"


def _folded(summary: str, body: str) -> str:
    """A section shown by a click: what a person reads only when looking for it."""
    return f"<details class=fold><summary>{html.escape(summary)}</summary>{body}</details>"


def _learned(learned: Any) -> str:
    """What each stage handed on (manifest.json's `learned`), one row per stage, one `key=value` a line."""
    if not isinstance(learned, dict) or not all(isinstance(v, dict) for v in learned.values()):
        return _pre(learned)  # a hand-edited manifest: shown as it is
    rows = "".join(
        f"<tr><td class=name>{_esc(stage)}</td><td class=value>{'<br>'.join(_pair(k, v) for k, v in values.items())}"
        "</td></tr>"
        for stage, values in learned.items()
        if values
    )
    return f"<table class=data><tr><th>stage</th><th>learned</th></tr>{rows}</table>" if rows else "<p>Nothing.</p>"


FIT_COLUMNS = ("stage", "run", "seconds", "steps", "batch_size", "lr", "precision", "optimizer", "device", "data_path")


def _fits(fits: Any) -> str:
    """Every training run of the recipe (manifest.json's `fits`) as one table, folded away."""
    if not isinstance(fits, list) or not fits:
        return ""
    rows = [f for f in fits if isinstance(f, dict)]
    seconds = sum(f["seconds"] for f in rows if isinstance(f.get("seconds"), int | float))
    head = "".join(f"<th>{c}</th>" for c in FIT_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(_short(f.get(c, ''), 60))}</td>" for c in FIT_COLUMNS) + "</tr>" for f in rows
    )
    summary = f"Training runs: {len(rows)} fits, {seconds:.1f} s"
    return _folded(summary, f"<table class=data><tr>{head}</tr>{body}</table>")


def build_report(run_dir: str | Path) -> Path:
    """Write report.html for a run directory from checks.json, manifest.json and the stage folders."""
    rundir = RunDir(run_dir)
    checks, manifest = rundir.read_checks(), rundir.read_manifest()
    try:
        metric_rows = rundir.read_metrics()
    except (OSError, ConfigError):  # a damaged metrics.jsonl costs its table, not the report
        metric_rows = []
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
        f"{' · <b>interrupted</b>' if manifest.get('status') == 'interrupted' else ''}"
        f"{' · figures off' if manifest.get('figures') is False else ''}</div>",
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
        parts.append(validation_table(metric_rows, stage))
        images = sorted(folder.glob("*.png")) if plain and folder.exists() else []
        if images:
            parts.append('<div class="plots">' + "".join(_image(p) for p in images) + "</div>")
    parts.append("<h2>What the stages learned</h2>" + _learned(manifest.get("learned")))
    parts.append("<h2>Configuration and environment</h2>")
    parts.append(_folded("Settings of every stage, as run", _pre(manifest.get("config"))))
    environment = {k: manifest.get(k) for k in ("versions", "device_name", "threads", "source") if k in manifest}
    parts.append(_folded("Environment: library versions, device, threads", _pre(environment)))
    parts.append(_fits(manifest.get("fits")))
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>recipe report</title>"
        f'<style>{CSS}</style></head><body><main onclick="{OPEN_VIEWER}">{"".join(parts)}{VIEWER}</main>'
        "</body></html>"
    )
    rundir.write_report(page)
    return rundir.path / REPORT
