"""Training against validation: do the two splits share samples?

Why: catalog D4 (duplicates and train-test leakage) and D6 (`__getitem__` that ignores its index). Whether they come
from one distribution is `recipe.diagnostics.shift`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from recipe.check import Check, failed, passed, skipped, warned
from recipe.diagnostics.integrity import SplitSample, is_class_task
from recipe.task import Task


def row_keys(x: torch.Tensor) -> torch.Tensor:
    """One integer group id per row: rows with identical content (floats compared in float32) share it.

    Rows are hashed as bytes (64-bit SipHash, collisions negligible at these sizes): sorting whole rows with
    `torch.unique(dim=0)` took 8 s for 25k images.
    """
    flat = x.reshape(len(x), -1)
    flat = flat.float() if flat.is_floating_point() else flat.long()
    rows = np.ascontiguousarray(flat.numpy())
    rows[rows == 0] = 0  # -0.0 and 0.0 are the same value
    hashes = torch.tensor([hash(row.tobytes()) for row in rows], dtype=torch.long)
    _, inverse = torch.unique(hashes, return_inverse=True)
    return inverse


def _embed(x: torch.Tensor, dims: int, seed: int) -> torch.Tensor:
    """Flattened rows, standardised by their own statistics; a random projection to `dims` when wider (distances
    are kept within a few percent: Johnson-Lindenstrauss)."""
    flat = x.reshape(len(x), -1).float()
    sd = flat.std(0)
    flat = (flat[:, sd > 0] - flat[:, sd > 0].mean(0)) / sd[sd > 0]
    if flat.shape[1] > dims:
        projection = torch.randn(flat.shape[1], dims, generator=torch.Generator().manual_seed(seed)) / dims**0.5
        flat = flat @ projection
    return flat


def _nearest(queries: torch.Tensor, reference: torch.Tensor, exclude_self: bool, chunk: int = 2048) -> torch.Tensor:
    out = []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start : start + chunk], reference)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = float("inf")
        out.append(d.min(1).values)
    return torch.cat(out)


def near_duplicate_rates(
    train: torch.Tensor, val: torch.Tensor, closeness: float = 0.25, max_rows: int = 5000, seed: int = 0
) -> dict[str, Any]:
    """Share of training rows (leave-one-out) and of validation rows with a training neighbour far closer than
    usual (under `closeness` x the median training nearest-neighbour distance). Independent splits share one rate;
    validation rows built from training rows (augmented or re-encoded copies) raise the second."""
    g = torch.Generator().manual_seed(seed)
    a = train[torch.randperm(len(train), generator=g)[:max_rows]]
    b = val[torch.randperm(len(val), generator=g)[:max_rows]]
    embedded = _embed(torch.cat([a, b]), 128, seed)
    a, b = embedded[: len(a)], embedded[len(a) :]
    within = _nearest(a, a, exclude_self=True)
    across = _nearest(b, a, exclude_self=False)
    radius = closeness * float(within.median())
    return {
        "radius": radius,
        "train": float((within < radius).float().mean()),
        "val": float((across < radius).float().mean()),
        "val_rows": len(b),
    }


def _excess(observed: int, n: int, rate: float) -> bool:
    """More than `n * rate` by three binomial standard deviations and by three rows at least."""
    rate = min(rate, 1.0)
    return observed > max(n * rate + 3 * math.sqrt(n * rate * (1 - rate)), 2)


def duplicates(train: SplitSample, val: SplitSample, task: Task, leak_fraction: float = 0.01) -> Check:
    """Catches validation samples that also occur in training (leakage), training duplicates, identical inputs
    with conflicting labels, and a dataset that keeps returning the same few samples.

    Why: catalog D4 and D6. Identical inputs across splits inflate the validation metric; the fraction of
    validation rows found in training must stay near the fraction of training rows that repeat within training
    (what independent draws of this data would share) plus `leak_fraction`, beyond three binomial standard
    deviations, so one chance twin in a small tabular split (iris holds one duplicated row) is not called a leak.
    Inputs of a few binary or categorical features, whose combinations are fewer than the rows or few enough that
    independent columns repeat rows by chance as often as seen (a birthday bound), repeat by necessity, and their
    conflicting labels are the noise of an outcome given its inputs: no warning for either.
    """
    if train.inputs is None or val.inputs is None:
        return skipped("duplicates", "inputs are not a single tensor; override in a subclass.")
    keys = row_keys(torch.cat([train.inputs.reshape(len(train.inputs), -1), val.inputs.reshape(len(val.inputs), -1)]))
    k_train, k_val = keys[: len(train.inputs)], keys[len(train.inputs) :]
    groups = int(keys.max()) + 1
    train_count = torch.bincount(k_train, minlength=groups)
    within = float((train_count[k_train] > 1).float().mean())
    shared_rows = train_count[k_val] > 0
    shared = float(shared_rows.float().mean())
    value: dict[str, Any] = {
        "train_rows_duplicated": within,
        "val_rows_in_train": shared,
        "val_indices_in_train": val.indices[shared_rows][:20].tolist(),
        "distinct_train_inputs": int((train_count > 0).sum()),
    }
    conflicts = (
        _conflicts(
            keys, torch.cat([train.targets, val.targets]), torch.cat([train.indices, val.indices]), len(train.inputs)
        )
        if is_class_task(task)
        else []
    )
    value["conflicting_label_groups"] = conflicts[:20]
    pairs = torch.unique(torch.stack([k_train, train.targets.reshape(len(k_train), -1)[:, 0].long()]), dim=1).shape[1]
    if len(k_train) >= 64 and pairs <= max(1, len(k_train) // 50):
        return failed(
            "duplicates",
            f"the training split holds only {pairs} distinct (input, target) pairs among {len(k_train)} samples "
            "read: a Dataset whose __getitem__ ignores its index (or data repeated by mistake).",
            value,
            "most samples distinct",
        )
    near = near_duplicate_rates(train.inputs, val.inputs) if train.inputs.is_floating_point() else {}
    value["near_duplicates"] = near
    if _excess(int(shared_rows.sum()), len(k_val), within + leak_fraction):
        return failed(
            "duplicates",
            f"{shared:.1%} of validation samples ({int(shared_rows.sum())}, e.g. indices "
            f"{value['val_indices_in_train'][:5]}) also occur in training (within training {within:.1%} of rows "
            "repeat): the validation metric is inflated. Deduplicate before splitting, and split by source "
            "(subject, file) rather than by row.",
            value,
            f"about {within:.1%} of validation rows in training, as within training",
        )
    if near and _excess(round(near["val"] * near["val_rows"]), near["val_rows"], near["train"] + leak_fraction):
        return warned(
            "duplicates",
            f"{near['val']:.1%} of validation samples have a training sample far closer than usual (distance "
            f"under {near['radius']:.3g}, where {near['train']:.1%} of training samples have such a neighbour): "
            "near-duplicates (augmented, resized or re-encoded copies) leak across the split.",
            value,
        )
    possible, chance = _repeats(train.inputs, len(k_train)) if conflicts or within > 0.05 else (None, 0.0)
    if possible is not None:
        value["possible_inputs"] = possible
        return passed(
            "duplicates",
            f"{shared:.1%} of validation samples occur in training; {within:.1%} of training rows repeat, and "
            f"{len(conflicts)} group(s) of identical inputs carry different labels, as they must: the inputs take "
            f"at most {possible} distinct values (each feature's values seen, combined) among {len(k_train)} rows, "
            "so a label is a draw given its inputs, not a mistake to fix.",
            value,
        )
    if within > 0 and chance >= 0.5 * within:
        value["repeats_by_chance"] = chance
        return passed(
            "duplicates",
            f"{within:.1%} of training rows repeat, as independent discrete columns with the values seen repeat by "
            f"chance ({chance:.1%} expected), and {len(conflicts)} group(s) of identical inputs carry different "
            "labels: a label is a draw given its inputs, not a mistake to fix.",
            value,
        )
    if conflicts:
        return warned(
            "duplicates",
            f"{len(conflicts)} group(s) of identical inputs carry different labels (e.g. {conflicts[0]}); "
            "a model cannot fit both: check those labels.",
            value,
        )
    if within > 0.05:
        return warned(
            "duplicates",
            f"{within:.1%} of training rows are exact duplicates of another training row; they weigh more in "
            "the loss. Deduplicate, unless the inputs are legitimately discrete.",
            value,
        )
    return passed(
        "duplicates",
        f"{shared:.1%} of validation samples occur in training; {within:.1%} of training rows repeat.",
        value,
    )


def _repeats(inputs: torch.Tensor, limit: int) -> tuple[int | None, float]:
    """How the rows' columns make repeats the data, not a bug, from each column's values seen: how many distinct
    inputs they allow when combined, when that is at most `limit` (else None: a handful of binary or categorical
    columns allow fewer than a split holds rows); and the share of rows expected to repeat another by chance were the
    columns independent: two rows agree with probability prod_c sum_v p_c(v)^2 (a birthday bound over the rows). A
    continuous column settles both at once: more values than `limit`, and repeats all but impossible."""
    rows = inputs.reshape(len(inputs), -1)
    total, agree = 1, 1.0
    for column in rows.T:
        _, counts = torch.unique(column, return_counts=True)
        total *= len(counts)
        agree *= float((counts.double() / len(rows)).square().sum())
        if total > limit and agree * len(rows) < 1e-6:
            break
    chance = 0.0 if agree * len(rows) < 1e-6 else 1.0 - (1.0 - agree) ** (len(rows) - 1)
    return (total if total <= limit else None), chance


def _conflicts(keys: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, n_train: int) -> list[dict[str, Any]]:
    """Groups of identical inputs whose labels differ: their split/index and labels."""
    labels = targets.reshape(len(keys), -1)[:, 0].long()
    pairs = torch.unique(torch.stack([keys, labels]), dim=1)
    groups, counts = torch.unique(pairs[0], return_counts=True)
    out = []
    for group in groups[counts > 1][:50].tolist():
        rows = (keys == group).nonzero().flatten().tolist()
        out.append(
            {
                "samples": [f"{'train' if r < n_train else 'val'}[{int(indices[r])}]" for r in rows[:6]],
                "labels": sorted({int(labels[r]) for r in rows}),
            }
        )
    return out
