"""The tune stage's trials as tables: trials.csv (every trial, its last row each parameter's importance),
trials.table.json (the 20 best, for the report) and importances.json."""

from __future__ import annotations

import csv
import io
from typing import Any

from recipe import playbook
from recipe.context import Context


def trials_table(ctx: Context, study: Any, finished: list[Any], in_order: list[Any], names: list[str]) -> list[str]:
    """Write the tables; returns their paths in the run directory. `in_order`: the finished trials by number."""
    metric = ctx.task.metric_name
    rows = [[t.number, t.value, t.user_attrs.get("val_metric"), *(t.params.get(n) for n in names)] for t in in_order]
    weights = playbook.importances(study, finished, names)
    buffer = io.StringIO()
    header = ["trial", "val_loss", f"val_{metric}", *names]
    csv.writer(buffer).writerows([header, *rows, ["importance", "", "", *(weights.get(n, "") for n in names)]])
    shown = [[r[0], fmt(r[1]), fmt(r[2]), *(fmt(v) for v in r[3:])] for r in sorted(rows, key=lambda r: r[1])]
    table: dict[str, list[Any]] = {"columns": ["trial", "val loss", f"val {metric}", *names], "rows": shown[:20]}
    if weights:
        table["rows"].append(["importance", "", "", *(fmt(weights.get(n, "")) for n in names)])
    paths = [ctx.save_text("trials.csv", buffer.getvalue()), ctx.save_json("trials.table.json", table)]
    return paths + ([ctx.save_json("importances.json", weights)] if weights else [])


def fmt(value: Any) -> str:
    """A table cell: a float to 4 significant digits, anything else as it prints."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
