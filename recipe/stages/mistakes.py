"""Looking at the mistakes of the model a stage chose: the `prediction_errors` check with what a person reads beside
it (a confusion matrix and per-class recall, or residuals; the highest-loss validation samples as pictures, text or
rows). `complexify` calls it on the chosen rung and `tune` on the best trial.

    "if your network gives you predictions that are not consistent with what you have seen in the data, something
    is off" — Karpathy, A Recipe for Training Neural Networks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from recipe import error_plots, plots
from recipe.check import Check
from recipe.context import Context
from recipe.diagnostics.errors import (
    Predictions,
    confusion,
    prediction_errors,
    residuals,
    validation_predictions,
)

SHOWN = 16  # highest-loss validation samples shown


def look_at_mistakes(ctx: Context, model: nn.Module, whose: str) -> Check:
    """`prediction_errors` on `model` (described as `whose`), with its figures and tables saved in the stage."""
    predictions = validation_predictions(ctx.task, model, ctx.device)
    check = prediction_errors(predictions, ctx.task)
    if check.status == "skip":
        return check
    artifacts: list[str | None] = []
    if "classes" in check.value:
        classes = check.value["classes"]
        fig = partial(
            error_plots.confusion_matrix, confusion(predictions, predictions.output.shape[1]), f"Confusion: {whose}"
        )
        recalls = {f"class {r['class']}": (r["recall"], r["se"]) for r in classes}
        artifacts += [
            ctx.save_figure("confusion.png", fig),
            ctx.save_figure(
                "class_recall.png", lambda: plots.baselines(recalls, f"Recall per class: {whose}", "recall ± SE")
            ),
        ]
    elif ctx.task.kind == "regression":
        n = len(predictions.target)
        target = predictions.target.reshape(n, -1).float().mean(1)
        residual = residuals(predictions)
        if residual is not None:
            figure = partial(error_plots.residuals, target, residual, f"Residuals: {whose}")
            artifacts.append(ctx.save_figure("residuals.png", figure))
        if check.value["worst_bins"]:
            rows = [[b["by"], f"{b['low']:.4g}..{b['high']:.4g}", b["n"], f"{b['loss']:.4g}", f"{b['se']:.2g}"]
                    for b in check.value["worst_bins"]]  # fmt: skip
            table = {"columns": ["binned by", "range", "samples", "mean loss", "SE"], "rows": rows}
            artifacts.append(ctx.save_json("residual_bins.table.json", table))
    artifacts.append(_highest_losses(ctx, predictions, check.value["worst"][:SHOWN], whose))
    return check.replace(artifacts=tuple(artifacts))


def _highest_losses(ctx: Context, predictions: Predictions, worst: list[int], whose: str) -> str | None:
    """The highest-loss validation samples: pictures when the inputs are images, decoded text when the task can
    decode them, a table of their first features otherwise."""
    task = ctx.task
    inputs, _ = task.split_batch(task.batch("val", worst))
    loss = predictions.loss[worst]
    given: list[Any] = list(predictions.target[worst])
    predicted: list[Any] = list(_predicted(predictions.output[worst], task.kind))
    images = task.images(inputs)
    if images is not None:
        labels = [f"#{i} {_short(g)}→{_short(p)}" for i, g, p in zip(worst, given, predicted, strict=True)]
        title = f"Highest-loss validation samples: {whose} (given → predicted)"
        return ctx.save_figure("highest_losses.png", lambda: plots.image_grid(images.cpu(), labels, title))
    if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() and task.decoder is not None:
        shown: list[Any] = [task.decode(row.reshape(-1).tolist()) for row in inputs.cpu()]
        columns = ["sample", "input (decoded)"]
        if task.kind == "sequence":  # next tokens: the targets and predictions read as text too
            given = [task.decode(row.reshape(-1).tolist()) for row in given]
            predicted = [task.decode(row.reshape(-1).tolist()) for row in predicted]
    elif isinstance(inputs, torch.Tensor):
        flat = inputs.reshape(len(inputs), -1).cpu()
        more = " ..." if flat.shape[1] > 8 else ""
        shown = [", ".join(f"{v:.3g}" for v in row[:8].tolist()) + more for row in flat]
        columns = ["sample", "inputs (first 8 values)"]
    else:
        shown, columns = ["" for _ in worst], ["sample", "input"]
    rows = [
        [i, s, _short(g), _short(p), f"{float(v):.4g}"]
        for i, s, g, p, v in zip(worst, shown, given, predicted, loss, strict=True)
    ]
    table = {"columns": [*columns, "given", "predicted", "loss"], "rows": rows}
    return ctx.save_json("highest_losses.table.json", table)


def _predicted(output: torch.Tensor, kind: str) -> torch.Tensor:
    return output.argmax(1) if kind == "classification" and output.dim() == 2 else output


def _short(t: Any) -> str:
    if isinstance(t, str):
        return t
    values = t.reshape(-1).tolist()
    text = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values[:4])
    return text + (" ..." if len(values) > 4 else "")
