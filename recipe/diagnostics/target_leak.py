"""Targets that can be read straight off the inputs: a feature that is the label, sequence targets not shifted (or
shifted twice), per-token targets that are the input tokens themselves.

Why: catalog D11 (the label encoded in an input feature), D12 (sequence targets not shifted: the model sees the
token it must predict).
"""

from __future__ import annotations

from typing import Any

import torch

from recipe.check import Check, failed, passed, skipped, warned
from recipe.diagnostics.inputs import aligned_part, alignment_profile, holds_targets_ahead, token_distance
from recipe.diagnostics.splits import row_keys
from recipe.joined import column_name, joined_features, part_shapes
from recipe.task import IGNORE_INDEX, Task


def _copied_tokens(inputs: torch.Tensor, target: torch.Tensor, min_scored: int = 100) -> Check:
    """`target_leak` for one class per token of token inputs (a tagger, masked-token prediction): warns when every
    scored target is the input token at its own position, so the model can copy it (right for an autoencoder; for
    masked-token prediction the tokens to predict were left in the input)."""
    scored = int((target != IGNORE_INDEX).sum())
    rate = alignment_profile(inputs, target, range(0, 1))[0]
    value = {"same_token_rate": rate, "scored_positions": scored}
    if rate == 1.0 and scored >= min_scored:
        return warned(
            "target_leak",
            f"every scored target ({scored:,} positions) is the input token at its own position: the model can copy "
            "its input. Right for an autoencoder; for masked-token prediction the tokens to predict were left in the "
            "input (replace them with the mask id before the model sees them).",
            value,
            "targets not all equal to the input token",
        )
    return passed(
        "target_leak",
        f"the per-token targets equal the input token at {rate:.0%} of {scored:,} scored positions.",
        value,
    )


def _nearest_neighbour_targets(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor) -> torch.Tensor:
    """For each feature separately, the training target of the nearest training value: shape (F, N_val)."""
    values, order = x_train.T.contiguous().sort(dim=1)  # (F, N)
    values = values.contiguous()
    right = torch.searchsorted(values, x_val.T.contiguous()).clamp(max=values.shape[1] - 1)
    left = (right - 1).clamp(min=0)
    queries = x_val.T
    nearer_left = (queries - values.gather(1, left)).abs() <= (values.gather(1, right) - queries).abs()
    index = torch.where(nearer_left, left, right)
    return y_train[order.gather(1, index)]


def single_feature_scores(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    classification: bool,
    bins: int = 32,
) -> torch.Tensor:
    """How well each single input feature predicts the target on validation, fitted on training; shape (F,).

    Two one-feature predictors, the better one counts: the majority (or mean) training target per quantile bin, and
    the target of the nearest training value. Classification scores accuracy; regression scores R² (or the squared
    correlation, if higher).
    """
    x_train, x_val = x_train.float(), x_val.float()
    n_features = x_train.shape[1]
    quantiles = torch.linspace(0, 1, bins + 1)[1:-1]
    edges = torch.quantile(x_train, quantiles, dim=0).T.contiguous()  # (F, bins - 1)
    bin_tr = torch.searchsorted(edges, x_train.T.contiguous(), right=True)  # (F, N)
    bin_va = torch.searchsorted(edges, x_val.T.contiguous(), right=True)
    offsets = torch.arange(n_features).unsqueeze(1) * bins
    neighbour = _nearest_neighbour_targets(x_train, y_train.reshape(-1), x_val)
    if classification:
        classes = int(max(y_train.max(), y_val.max())) + 1
        index = ((offsets + bin_tr) * classes + y_train.long().unsqueeze(0)).reshape(-1)
        table = torch.bincount(index, minlength=n_features * bins * classes).reshape(n_features * bins, classes)
        predicted = table.argmax(1)[(offsets + bin_va).reshape(-1)].reshape(n_features, -1)
        target = y_val.long().unsqueeze(0)
        return torch.maximum((predicted == target).float().mean(1), (neighbour == target).float().mean(1))
    yt, yv = y_train.float().reshape(-1), y_val.float().reshape(-1)
    flat = (offsets + bin_tr).reshape(-1)
    sums = torch.zeros(n_features * bins).index_add_(0, flat, yt.repeat(n_features))
    counts = torch.zeros(n_features * bins).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
    means = torch.where(counts > 0, sums / counts.clamp_min(1), yt.mean())
    predicted = means[(offsets + bin_va).reshape(-1)].reshape(n_features, -1)
    variance = yv.var(unbiased=False).clamp_min(1e-12)
    r2_binned = 1 - ((predicted - yv) ** 2).mean(1) / variance
    r2_neighbour = 1 - ((neighbour.float() - yv) ** 2).mean(1) / variance
    xc = x_val - x_val.mean(0)
    corr = (xc * (yv - yv.mean()).unsqueeze(1)).mean(0) / (
        xc.std(0, unbiased=False) * yv.std(unbiased=False)
    ).clamp_min(1e-12)
    return torch.stack([r2_binned, r2_neighbour, corr**2]).max(0).values


def _copies_target(feature: torch.Tensor, target: torch.Tensor, classification: bool) -> bool:
    """Whether one feature is the target itself on these rows. Classification: sorted by the feature, the class
    changes only between classes, once per class boundary, and no value holds two classes (a label column, or one
    mapped to other values). Regression: the target is an affine function of it to within 1e-4 of its spread
    (in float64)."""
    x, y = feature.double(), target.reshape(-1)
    if classification:
        order = torch.argsort(x, stable=True)
        xs, ys = x[order], y[order]
        steps = (ys[1:] != ys[:-1]).nonzero().flatten()
        ties = bool((xs[steps + 1] == xs[steps]).any())
        return not ties and len(steps) == len(y.unique()) - 1 and len(y) >= 30
    y = y.double()
    design = torch.stack([x, torch.ones_like(x)], 1)
    fit = torch.linalg.lstsq(design, y[:, None]).solution
    residual = y - (design @ fit)[:, 0]
    return bool(residual.std() <= 1e-4 * y.std().clamp_min(1e-12))


def _positions_as_rows(
    x: torch.Tensor, y: torch.Tensor, max_rows: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Class targets per position (B, T) beside inputs with one axis of T positions ((B, T), (B, C, T), (B, T, C)):
    every scored (sample, position) as a row of the input's features at that position (its channels), up to
    `max_rows` of them, seeded; positions whose target is negative (ignored) are left out. None when no input axis,
    or more than one, has T positions."""
    axes = [a for a in range(1, x.dim()) if x.shape[a] == y.shape[1]]
    if len(axes) != 1:
        return None
    x = x.movedim(axes[0], 1).reshape(len(x), y.shape[1], -1).reshape(-1, x[0].numel() // y.shape[1])
    y = y.reshape(-1)
    scored = (y >= 0).nonzero().flatten()
    if len(scored) > max_rows:
        scored = scored[torch.randperm(len(scored), generator=torch.Generator().manual_seed(seed))[:max_rows]]
    return x[scored], y[scored]


def target_leak(task: Task, max_samples: int = 4000, max_features: int = 2048, seed: int = 0) -> Check:
    """Catches targets that can be read straight off the input: a feature equal to (or encoding) the label, or
    sequence targets aligned with the input at the same position (not shifted) or shifted twice.

    Why: catalog D11 and D12. A single feature that predicts the validation target almost perfectly through a
    lookup fitted on training is suspect, but some features are decisive by nature (the last value of a smooth
    series predicts the next one with R² 0.9999), and from the data alone such a feature cannot be told from a
    label column with noise: that warns. Only a feature that is the target itself, in both splits, fails: the
    classes in disjoint runs of its sorted values (classification), or the target an exact affine function of it
    (regression, residual under 1e-4 of the target's spread, float32 rounding aside). For next-token targets
    `y[t] == x[t+k]` must peak at k = +1 only.
    """
    train = task.sample_batch("train", max_samples, seed)
    val = task.sample_batch("val", max_samples // 2, seed)
    (xt, yt), (xv, yv) = task.split_batch(train), task.split_batch(val)
    shapes, decoder = None, ""
    if not isinstance(xt, torch.Tensor):  # several tensors are scanned joined, one feature at a time
        if (aligned := aligned_part(xt, yt)) is not None:  # a decoder's input beside its source: read that one
            xt = aligned
            decoder = (
                " The input read is the token tensor that holds the targets (a decoder's input beside its source): "
                "it must be the targets shifted right by one ([BOS] + y[:-1]), so position t sees only y[<t]."
            )
        else:
            shapes = part_shapes(xt)
            xt, xv = joined_features(xt), joined_features(xv)
            if xt is None or xv is None or task.kind == "sequence":
                return skipped(
                    "target_leak",
                    "inputs are neither one tensor, nor several with a float one, nor token tensors one of which "
                    "holds the targets at a shift of -2..2.",
                )
    if task.kind == "sequence":
        rates = alignment_profile(xt, yt)
        peak = max(rates, key=lambda k: rates[k])
        value = {"match_rate_by_shift": rates, "peak_shift": peak}
        if peak != 1 and rates[peak] > 0.9:
            what = "are the input tokens themselves (not shifted)" if peak == 0 else f"are shifted by {peak}"
            return failed(
                "target_leak",
                f"targets {what}: y[t] == x[t{peak:+d}] at {rates[peak]:.0%} of positions. "
                "Next-token targets must be y[t] = x[t+1] (build pairs as x = data[i:i+T], "
                f"y = data[i+1:i+T+1]).{decoder}",
                value,
                "peak at shift +1 only",
            )
        distance = token_distance(xt, yt, task.pad_id)
        if rates.get(1, 0.0) < 0.9 and distance > 0.5:
            return skipped(
                "target_leak",
                f"the targets are not the input's tokens (their frequencies differ by total variation "
                f"{distance:.2f}): a tagging task, not next-token prediction, so the shift test does not apply.",
            )
        if rates.get(1, 0.0) < 0.9:
            return warned(
                "target_leak",
                f"targets match the next input token at only {rates.get(1, 0.0):.0%} of "
                f"positions (profile {rates}); next-token targets should be y[t] = x[t+1].",
                value,
            )
        return passed(
            "target_leak",
            f"targets are the next tokens: y[t] == x[t+1] at {rates[1]:.0%} of positions, at "
            f"most {max(v for k, v in rates.items() if k != 1):.0%} for other shifts.",
            value,
        )
    if not xt.is_floating_point() and xt.dim() == 2 and yt.shape == xt.shape and task.kind == "classification":
        return _copied_tokens(xt, yt)
    if not xt.is_floating_point() or yt.dim() > 2 or task.loss not in ("cross_entropy", "mse", "l1", "bce_with_logits"):
        return skipped("target_leak", "single-feature scan needs float inputs and per-sample targets.")
    if yt.dim() > 1 and holds_targets_ahead(xt, yt):  # targets per step that the input holds later on
        return skipped(
            "target_leak",
            "the inputs hold the targets 1 to 3 steps ahead, as a forecaster's history does: a target read from a "
            "later input position is next-step prediction, and whether the model reads ahead is causal's to judge.",
        )
    classification = task.kind == "classification" and task.loss == "cross_entropy"
    where = ""
    if classification and yt.dim() == 2:  # a class per position: each (sample, position) is a row
        rows = _positions_as_rows(xt, yt, max_samples, seed), _positions_as_rows(xv, yv, max_samples // 2, seed + 1)
        if rows[0] is None or rows[1] is None:
            return skipped(
                "target_leak",
                f"a class per position ({tuple(yt.shape[1:])} per sample) beside inputs of {tuple(xt.shape[1:])}, "
                "where no single axis has that many positions: the input read at a position cannot be told.",
            )
        (xt, yt), (xv, yv), where = rows[0], rows[1], " at each position"
    xt, xv = xt.reshape(len(xt), -1), xv.reshape(len(xv), -1)
    keep = torch.arange(xt.shape[1])
    if xt.shape[1] > max_features:
        keep = torch.randperm(xt.shape[1], generator=torch.Generator().manual_seed(seed))[:max_features]
        xt, xv = xt[:, keep], xv[:, keep]
    if not classification and yt.dim() > 1 and yt.shape[1] > 1:
        return _target_columns(xt, yt, xv, yv, keep, shapes, seed)
    scores = single_feature_scores(xt, yt, xv, yv, classification)
    best = int(scores.argmax())
    metric = "accuracy" if classification else "R²"
    # what knowing nothing scores: the majority class (classification) or the mean (R² = 0)
    floor = float(torch.bincount(yv.long()).max() / len(yv)) if classification else 0.0
    name = column_name(shapes, int(keep[best]))  # the column in the model's input, not in the scanned subset
    if where:
        name = f"input channel {int(keep[best])}{where}" if xt.shape[1] > 1 else f"the input value{where}"
    value = {
        "best_feature": int(keep[best]),
        f"best_single_feature_{metric}": float(scores[best]),
        "no_information": floor,
        "features_scanned": xt.shape[1],
    }
    if float(scores[best]) >= 0.99 and 1 - float(scores[best]) <= 0.1 * (1 - floor):
        if all(_copies_target(x[:, best], y, classification) for x, y in ((xt, yt), (xv, yv))):
            return failed(
                "target_leak",
                f"{name} is the target itself, up to "
                f"{'a relabelling' if classification else 'scale and offset'} ({metric} "
                f"{float(scores[best]):.4f}): the target is encoded in the input (a label column). Remove that "
                "feature.",
                value,
                f"no single feature near {metric} 1",
            )
        memorised = _training_rows(xt, xv)
        if bool(memorised.any()):  # a lookup finds a training row's own target: memory, not a leak
            share, unseen = float(memorised.float().mean()), ~memorised
            if int(unseen.sum()) < 30:
                return skipped(
                    "target_leak",
                    f"{share:.0%} of the validation rows are training rows (see duplicates): a lookup fitted on "
                    "training finds their targets by memory, so the single-feature scan cannot tell a leak here.",
                ).replace(value=value | {"validation_rows_in_training": share})
            again = float(single_feature_scores(xt, yt, xv[unseen], yv[unseen], classification)[best])
            value.update(validation_rows_in_training=share, **{f"{metric}_on_unseen_rows": again})
            if again < 0.99:
                return passed(
                    "target_leak",
                    f"{name} predicts the validation target with {metric} {float(scores[best]):.4f}, but only "
                    f"through the {share:.0%} of validation rows that are training rows (see duplicates): on the "
                    f"others it scores {again:.3f}.",
                    value,
                )
        return warned(
            "target_leak",
            f"{name} alone predicts the validation target with {metric} {float(scores[best]):.4f}: "
            "either the target is encoded in the input (a label column with noise, an id or timestamp that encodes "
            "it: remove that feature), or the feature is decisive by nature (the last observed value when "
            "forecasting the next one): then keep it, if it is known when the model will predict.",
            value,
            f"no single feature near {metric} 1",
        )
    return passed(
        "target_leak",
        f"no single input feature gives the target away (best: {name}, {metric} "
        f"{float(scores[best]):.3f} on validation).",
        value,
    )


def _training_rows(xt: torch.Tensor, xv: torch.Tensor) -> torch.Tensor:
    """Which validation rows are, value for value, a training row (a bool per row of `xv`)."""
    ids = row_keys(torch.cat([xt, xv]))
    seen = torch.zeros(int(ids.max()) + 1, dtype=torch.bool)
    seen[ids[: len(xt)]] = True
    return seen[ids[len(xt) :]]


def _target_columns(
    xt: torch.Tensor,
    yt: torch.Tensor,
    xv: torch.Tensor,
    yv: torch.Tensor,
    keep: torch.Tensor,
    shapes: Any,
    seed: int,
    max_columns: int = 32,
) -> Check:
    """`target_leak` for several target columns (a forecast horizon, several quantities): each column against each
    feature. A column that is a feature itself, in both splits, fails when at most half are: the input holds part of
    what it should predict (a window that ends one step too late). Every column a feature is reconstruction (an
    autoencoder), the task itself, and most of them warns (an image filled in from its given half); a column a feature
    predicts at R² 0.99 without being it warns, as for one target.
    Columns constant in a split (a background pixel) have no R² and are left out."""
    columns = ((yt.float().std(0) > 0) & (yv.float().std(0) > 0)).nonzero().flatten()  # a constant has no R²
    if not len(columns):
        return skipped("target_leak", "no target column varies in both splits.")
    if len(columns) > max_columns:
        chosen = torch.randperm(len(columns), generator=torch.Generator().manual_seed(seed))[:max_columns]
        columns = columns[chosen.sort()[0]]
    best, copied = [], []
    for j in columns.tolist():
        scores = single_feature_scores(xt, yt[:, j], xv, yv[:, j], False)
        k = int(scores.argmax())
        best.append((float(scores[k]), j, k))
        if float(scores[k]) >= 0.99 and all(_copies_target(x[:, k], y[:, j], False) for x, y in ((xt, yt), (xv, yv))):
            copied.append((j, k))
    r2, column, feature = max(best)
    name = column_name(shapes, int(keep[feature]))
    value = {
        "target_columns_scanned": len(columns),
        "copied_columns": [j for j, _ in copied],
        "best_feature": int(keep[feature]),
        "best_column": column,
        "best_single_feature_R²": r2,
    }
    if copied and len(copied) == len(columns):
        return passed(
            "target_leak",
            f"each of the {len(columns)} target columns scanned is an input feature itself: the targets are the "
            "inputs (an autoencoder), so reconstructing them is the task.",
            value,
        )
    if copied:
        j, k = copied[0]
        said = (
            f"target column {j} is {column_name(shapes, int(keep[k]))} itself, up to scale and offset ({len(copied)} "
            f"of the {len(columns)} columns scanned are features, {len(columns) - len(copied)} are not): the input "
            "holds part of what it should predict"
        )
        if 2 * len(copied) > len(columns):  # mostly copies: a reconstruction with part of it given, by design?
            return warned(
                "target_leak",
                f"{said}. If the model is meant to fill in the rest (an image from its top half), the loss rewards "
                "copying these columns too: score the others only. Otherwise cut them from the input.",
                value,
                "no target column equal to an input feature",
            )
        return failed(
            "target_leak",
            f"{said} (a window that ends a step too late, a column of the answer). Cut it from the input.",
            value,
            "no target column equal to an input feature",
        )
    if r2 >= 0.99:
        return warned(
            "target_leak",
            f"{name} alone predicts target column {column} with R² {r2:.4f} on validation: either the column is "
            "encoded in the input (remove that feature), or the feature is decisive by nature (the last observed "
            "value when forecasting the next one): then keep it, if it is known when the model will predict.",
            value,
            "no single feature near R² 1",
        )
    return passed(
        "target_leak",
        f"no single input feature gives a target column away (best: {name} for column {column}, R² {r2:.3f} on "
        "validation).",
        value,
    )
