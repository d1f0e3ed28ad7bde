"""What `regularize` checks before it tries the task's augmentation as a regulariser: the same samples before and
after `task.augment` against the labels' declared invariances (shown side by side: pictures, decoded text or
values), and one small batch overfit with augmentation on (a transform that destroys the label cannot be fit).

    "The next best thing to real data is half-fake data - try out more aggressive data augmentation."
    — Karpathy, A Recipe for Training Neural Networks, step 4.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from recipe import plots
from recipe.check import Check, skipped
from recipe.context import REGULARISATION_OFF, Context
from recipe.data import fixed_indices, tree_map
from recipe.diagnostics.numerics import non_finite
from recipe.diagnostics.regularization import augmentation_invariances, augmentation_overfit
from recipe.errors import NonFiniteError
from recipe.evaluation import constant_loss
from recipe.models import disable_dropout


def augmentation_checks(ctx: Context, samples: int, batch_size: int, steps: int, lr: float) -> list[Check]:
    """The same `samples` before and after the task's augmentation, its declared invariances, and one batch of
    `batch_size` overfit with it on for `steps` at `lr`."""
    task = ctx.task
    if task.augmentation is None:
        reason = "the task has no training-time augmentation (Task(augment=...))."
        return [skipped("augmentation_invariances", reason), skipped("augmentation_overfit", reason)]
    batch = task.sample_batch("train", samples, ctx.seed, ctx.device)
    inputs, target = task.split_batch(batch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        augmented = task.augment(tree_map(torch.clone, inputs))
    check = ctx.check(augmentation_invariances, task, inputs, augmented)
    before, after = task.images(inputs), task.images(augmented)
    if before is not None and after is not None and before.shape == after.shape:
        grid, labels, columns = _interleave(before[:32].cpu(), after[:32].cpu(), target[:32].cpu())
        fig = partial(
            plots.image_grid, grid, labels, "Each row as stored, the row below it after task.augment", columns
        )
        check = check.replace(artifacts=(ctx.save_figure("augmentation.png", fig),))
    elif isinstance(inputs, torch.Tensor) and isinstance(augmented, torch.Tensor):
        shown: dict[str, Any] = {"before": inputs[:8].cpu(), "after": augmented[:8].cpu()}
        if task.decoder is not None and not inputs.is_floating_point():
            shown = {k: [task.decode(row.tolist()) for row in v] for k, v in shown.items()}
        check = check.replace(artifacts=(ctx.save_json("augmentation.json", shown),))
    return [check, _augmentation_overfit(ctx, batch_size, steps, lr)]


def _augmentation_overfit(ctx: Context, batch_size: int, steps: int, lr: float) -> Check:
    task = ctx.training_task()
    indices = fixed_indices(len(task.train), batch_size, ctx.seed)
    try:
        result = ctx.fit(
            "augmentation_overfit",
            **{**REGULARISATION_OFF, "augment": True},
            task=task.subset("train", indices),
            model=disable_dropout(task.make_model()),
            batch_size=len(indices),
            max_steps=steps,
            epochs=None,
            lr=lr,
            evaluate_every_epoch=False,
            log_every=25,
        )
    except NonFiniteError as exc:
        return non_finite(exc)
    _, target = task.split_batch(task.batch("train", indices))
    check = augmentation_overfit(result.step_losses, constant_loss(task, target), len(indices))
    return check.replace(seconds=result.seconds)


def _interleave(before: torch.Tensor, after: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, list[str], int]:
    """Rows of up to 8 samples as stored, each followed by the same samples augmented, with their labels."""
    columns = min(8, len(before))
    n = len(before) - len(before) % columns
    grid = torch.stack([before[:n].unflatten(0, (-1, columns)), after[:n].unflatten(0, (-1, columns))], 1)
    names = [str(int(t)) if t.numel() == 1 else "" for t in target[:n]]
    labels: list[str] = []
    for r in range(0, n, columns):
        labels += names[r : r + columns] + [f"aug {x}" for x in names[r : r + columns]]
    return grid.reshape(-1, *before.shape[1:]), labels, columns
