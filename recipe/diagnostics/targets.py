"""The targets before any network sees them: class ids in range and present in training, regression targets on a
scale the network need not first learn, and label frequencies split alike.

Why: recipe step 1, "become one with the data"; catalog D3 (label index shifted between splits), D5 (a split cut
from label-sorted data) and M11 (targets far from zero mean and unit scale).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from recipe.check import Check, failed, passed, skipped, warned
from recipe.diagnostics.integrity import SplitSample, class_counts, is_class_task, scored
from recipe.task import IGNORE_INDEX, Task


def target_range(train: SplitSample, val: SplitSample, task: Task, rare_ratio: float = 0.1) -> Check:
    """Catches labels outside 0..C-1, validation classes absent or rare in training, and regression targets whose
    scale or offset the network must first learn away.

    Why: catalog D3 and D5 (a class missing from training cannot be learned; measured on a split of sorted digits,
    classes 8 and 9 were absent from train). A random split leaves a class of k samples out of training with
    probability (validation share)^k, so with a few samples per class some go missing by chance: that warns, and
    only more missing classes than chance allows (p < 0.001) fail as a sorted split. A regression target far from
    zero mean and unit scale makes the first phase of training fit the offset (catalog M11).
    """
    if task.kind == "regression":
        own = _standardised_on_its_own(val)
        if own is not None:
            return own
        return _regression_targets(train, task)
    if task.kind == "sequence" or not is_class_task(task):
        y = torch.cat([train.targets.reshape(-1), val.targets.reshape(-1)]).float()
        y = y[y != IGNORE_INDEX]
        low, high = (0.0, 1.0) if task.loss == "bce_with_logits" else (0.0, float((task.num_classes or 1) - 1))
        if len(y) and (y.min() < low or y.max() > high):
            return failed(
                "target_range",
                f"targets span {float(y.min()):g}..{float(y.max()):g} but {task.loss} needs {low:g}..{high:g}.",
                {"min": float(y.min()), "max": float(y.max())},
                f"{low:g}..{high:g}",
            )
        return passed(
            "target_range", f"targets lie within {low:g}..{high:g}.", {"min": float(y.min()), "max": float(y.max())}
        )
    classes = task.num_classes or 1
    for part in (train, val):
        y = scored(part.targets)
        if not len(y):
            continue
        if y.is_floating_point() and not bool((y == y.round()).all()):
            return failed("target_range", f"{part.name} labels are not whole numbers; class ids must be integers.")
        if int(y.min()) < 0 or int(y.max()) >= classes:
            return failed(
                "target_range",
                f"{part.name} labels span {int(y.min())}..{int(y.max())} but num_classes={classes} allows "
                f"0..{classes - 1}; remap the labels to 0..C-1.",
                {"min": int(y.min()), "max": int(y.max())},
                f"0..{classes - 1}",
            )
    n_train, n_val = class_counts(train, classes).float(), class_counts(val, classes).float()
    p_train, p_val = n_train / n_train.sum(), n_val / n_val.sum()
    missing = [c for c in range(classes) if n_val[c] > 0 and n_train[c] == 0]
    rare = [c for c in range(classes) if n_val[c] > 0 and 0 < p_train[c] < rare_ratio * p_val[c]]
    value = {"classes": classes, "missing_in_train": missing, "rare_in_train": rare, "train_counts": n_train.tolist()}
    chance = _missing_by_chance(n_train, n_val)
    value["missing_by_chance"] = chance
    if missing and _poisson_tail(len(missing), chance) < 1e-3:
        return failed(
            "target_range",
            f"class(es) {missing} occur in validation ({int(n_val[missing].sum())} samples) but never in training, "
            f"so the model cannot learn them (a random split would leave {chance:.2g} out): the split was probably "
            "cut from data sorted by label, or a class folder is missing. Shuffle before splitting (stratify by "
            "label).",
            value,
            "every validation class present in training",
        )
    if missing:
        return warned(
            "target_range",
            f"class(es) {missing[:8]}{' ...' if len(missing) > 8 else ''} occur in validation "
            f"({int(n_val[missing].sum())} samples) but never in training, so the model cannot learn them; with so "
            f"few samples per class a random split leaves about {chance:.2g} out by chance. Split with "
            "stratification (every class in training first), or gather more samples of the rare classes.",
            value,
            "every validation class present in training",
        )
    if rare:
        return warned(
            "target_range",
            f"class(es) {rare} are under {rare_ratio:.0%} as frequent in training as in validation; split with "
            "stratification so both splits hold the classes alike.",
            value,
        )
    absent = [c for c in range(classes) if n_train[c] == 0]
    note = f" Classes {absent} have no samples in either split." if absent else ""
    return passed(
        "target_range", f"labels within 0..{classes - 1}; every validation class is in training.{note}", value
    )


def _missing_by_chance(n_train: torch.Tensor, n_val: torch.Tensor) -> float:
    """How many classes a random split of these counts leaves out of training on average: a class of k samples
    lands wholly in validation with probability (validation share)^k."""
    total = n_train + n_val
    share = float(n_val.sum() / total.sum())
    return float((share ** total[total > 0]).sum())


def _poisson_tail(observed: int, expected: float) -> float:
    """P(X >= observed) for X ~ Poisson(expected): how surprising `observed` missing classes are by chance."""
    if expected <= 0:
        return 0.0 if observed > 0 else 1.0
    term = cumulative = math.exp(-expected)
    for j in range(1, observed):
        term *= expected / j
        cumulative += term
    return max(0.0, 1.0 - cumulative)


def _standardised_on_its_own(val: SplitSample, least: int = 30) -> Check | None:
    """The fail for validation targets standardised with their own statistics: every varying column at mean 0 and
    std 1 to 1e-4. Standardised with the training statistics, as it should be, a split of n samples keeps a mean of
    about ±1/sqrt(n) and a std of about 1 ± 1/sqrt(2n): both within 1e-4 by chance is a one-in-a-million event per
    column. Read on the whole split only (a sample of it is not exact), of `least` samples or more."""
    n = len(val.targets)
    if n != val.size or n < least or not val.targets.is_floating_point():
        return None
    y = val.targets.double().reshape(n, -1)
    varying = y.std(0) > 0
    if not bool(varying.any()):
        return None
    mean, biased, unbiased = y.mean(0), y.std(0, unbiased=False), y.std(0)
    exact = (mean.abs() < 1e-4) & (((biased - 1).abs() < 1e-4) | ((unbiased - 1).abs() < 1e-4))
    if not bool(exact[varying].all()):
        return None
    return failed(
        "target_range",
        f"the validation targets have mean 0 and std 1 to 1e-4 in all {int(varying.sum())} varying column(s): they "
        f"were standardised with their own statistics. With the training mean and std, as the model will meet new "
        f"data, {n} validation samples keep a mean of about ±{1 / math.sqrt(n):.2g} and a std off 1 by about "
        f"{1 / math.sqrt(2 * n):.2g}; their own statistics shift and rescale validation against training, so its "
        "figures mislead. Standardise both splits with the training statistics.",
        {"val_mean": mean.tolist()[:8], "val_std": biased.tolist()[:8], "val_size": n},
        "validation targets standardised with the training statistics",
    )


def _regression_targets(train: SplitSample, task: Task) -> Check:
    """Each target column's offset and its large scale, and the targets' pooled scale when it is small.

    A column far from zero mean, or with a spread over 10, makes the first phase of training learn that offset or
    scale (and under MSE the wide column drowns the others). A small spread counts only for the targets as a whole
    (the root mean variance of the columns): columns that barely vary beside others that do (an image's background
    pixels under an autoencoder) are near constants a model learns at once, and standardising them would magnify
    their noise. Under a callable loss the outputs need not live on the targets' scale (Poisson NLL's log rate):
    it passes with the statistics, unless the loss compares outputs and targets by their difference alone (the same
    value when both move by one constant: Huber, SmoothL1, a custom squared error), which is judged as MSE is."""
    y = train.targets.float().reshape(len(train.targets), -1)
    mean, std = y.mean(0), y.std(0, unbiased=False)
    pooled = float(std.square().mean().sqrt())
    value = {"mean": mean.tolist(), "std": std.tolist()}
    if callable(task.loss) and (competing := _columns_compete(y, task)) is not None:
        return competing.replace(value={**value, **(competing.value or {})})
    if callable(task.loss) and not _on_target_scale(train.targets, task):
        return passed(
            "target_range",
            f"regression targets have mean {float(mean.mean()):.3g} and std {float(std.mean()):.3g}; under a callable "
            "loss the outputs need not be on the targets' scale (a log rate, a distribution's parameters), so their "
            "scale is not judged.",
            value,
        )
    if task.loss == "bce_with_logits":
        return _probability_targets(y, mean, std, value)
    offset = mean.abs() > 3 * std.clamp_min(1.0)
    wide = std > 10
    small = 0 < pooled < 0.1
    if bool(offset.any() or wide.any()) or small:
        flagged = offset | wide if bool(offset.any() or wide.any()) else torch.ones_like(offset)
        worst = int(((mean.abs() + std) * flagged).argmax())
        column = f" (column {worst} of {len(mean)})" if len(mean) > 1 else ""
        what = "offset" if bool(offset.any()) else "scale"
        return warned(
            "target_range",
            f"regression targets have mean {float(mean[worst]):.4g} and std {float(std[worst]):.4g}{column}: the "
            f"network must first learn that {what}. Standardise them with the training statistics, y' = (y - "
            f"{float(mean[worst]):.4g}) / {float(std[worst]):.4g}, and invert that on predictions.",
            value,
            "|mean| <= 3 std and std <= 10 per column; a pooled std of at least 0.1",
        )
    return passed(
        "target_range", f"regression targets have mean {float(mean.mean()):.3g} and std {float(std.mean()):.3g}.", value
    )


def _probability_targets(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, value: dict[str, Any]) -> Check:
    """Continuous targets under `bce_with_logits` are probabilities (a share, a soft label) and the outputs are
    logits: the targets' offset and scale are the task's, and standardising them would leave [0, 1], where binary
    cross-entropy has no meaning (it takes any target silently and rewards outputs without bound)."""
    low, high = float(y.min()), float(y.max())
    if low < 0 or high > 1:
        return failed(
            "target_range",
            f"targets span {low:.4g}..{high:.4g} under bce_with_logits, which reads each target as a probability in "
            "[0, 1]: outside it the loss has no minimum and the outputs grow without bound. Rescale the targets to "
            "[0, 1] (a share, a soft label), or use loss='mse' for values on another scale.",
            value,
            "targets in [0, 1]",
        )
    return passed(
        "target_range",
        f"targets are probabilities in [{low:.3g}, {high:.3g}] (mean {float(mean.mean()):.3g}, std "
        f"{float(std.mean()):.3g}) under bce_with_logits, whose outputs are logits: their scale is not judged.",
        value,
    )


def class_balance(
    train: SplitSample, val: SplitSample, task: Task, fail_tv: float = 0.25, permutations: int = 200, seed: int = 0
) -> Check:
    """Catches splits whose label frequencies differ beyond sampling noise (a split cut from sorted data), and
    reports the imbalance ratio.

    Why: catalog D5. The total-variation distance between the two label histograms is compared with its
    distribution under random re-splitting of the same labels (a permutation test): a difference that random
    splits never produce warns. A gross one (TV >= `fail_tv`) fails when some class sits almost only in one split,
    the mark of a cut through sorted data (`_confined_classes`); with every class in both splits it warns, since a
    validation set balanced on purpose, or a resampled training set, differs as much.
    """
    if not is_class_task(task) or not task.num_classes:
        return skipped("class_balance", "not a single-label classification task.")
    classes = task.num_classes
    n_train, n_val = class_counts(train, classes), class_counts(val, classes)
    tv = 0.5 * float((n_train / n_train.sum() - n_val / n_val.sum()).abs().sum())
    pooled = torch.cat([train.targets.reshape(-1), val.targets.reshape(-1)]).long().clamp(0, classes - 1)
    g = torch.Generator().manual_seed(seed)
    null = []
    for _ in range(permutations):
        perm = pooled[torch.randperm(len(pooled), generator=g)]
        a = torch.bincount(perm[: len(train.targets)], minlength=classes).float()
        b = torch.bincount(perm[len(train.targets) :], minlength=classes).float()
        null.append(0.5 * float((a / a.sum() - b / b.sum()).abs().sum()))
    null_t = torch.tensor(null)
    present = n_train[n_train > 0].float()
    ratio = float(present.max() / present.min()) if len(present) else math.nan
    majority = float(n_train.max() / n_train.sum())
    value = {
        "total_variation": tv,
        "random_split_tv_max": float(null_t.max()),
        "imbalance_ratio": ratio,
        "majority_share": majority,
        "train_counts": n_train.tolist(),
        "val_counts": n_val.tolist(),
    }
    # beyond every random re-split, and by a margin, so a clean random split warns well under 1% of the time
    shifted = tv > max(float(null_t.max()), 1.5 * float(null_t.quantile(0.99)))
    confined = _confined_classes(n_train, n_val)
    value["confined_classes"] = confined
    if shifted and tv >= fail_tv and confined:
        where = "; ".join(f"class {c}: {int(n_train[c])} training, {int(n_val[c])} validation" for c in confined[:4])
        return failed(
            "class_balance",
            f"label frequencies differ between training and validation by total variation {tv:.2f} (random "
            f"splits of the same labels: at most {float(null_t.max()):.3f}), and some classes sit almost only in "
            f"one split ({where}): the split was cut from ordered data. Shuffle before splitting, stratified by "
            "label.",
            value,
            f"TV within random-split noise (<= {float(null_t.max()):.3f})",
        )
    if shifted and tv >= fail_tv:
        return warned(
            "class_balance",
            f"label frequencies differ between training and validation by total variation {tv:.2f} (random "
            f"splits of the same labels: at most {float(null_t.max()):.3f}), with every class in both splits. A "
            "validation set balanced on purpose (or a training set resampled) looks like this: then the validation "
            "loss weighs the classes unlike training, so compare per-class metrics. Otherwise the split was cut "
            "from partly ordered data: shuffle before splitting, stratified by label.",
            value,
            f"TV within random-split noise (<= {float(null_t.max()):.3f})",
        )
    if shifted:
        return warned(
            "class_balance",
            f"label frequencies differ between the splits by total variation {tv:.3f}, more than any of "
            f"{permutations} random re-splits ({float(null_t.max()):.3f}); split with stratification unless the "
            "shift is intended (a temporal split).",
            value,
        )
    if majority >= 0.95:
        return warned(
            "class_balance",
            f"one class holds {majority:.0%} of the training labels (imbalance {ratio:.0f}:1): a constant "
            "prediction already scores that accuracy. Report a per-class metric and weight or resample the classes.",
            value,
        )
    return passed(
        "class_balance",
        f"label frequencies match across splits (TV {tv:.3f}, random splits give up to {float(null_t.max()):.3f}); "
        f"imbalance ratio {ratio:.1f}:1.",
        value,
    )


def _confined_classes(n_train: torch.Tensor, n_val: torch.Tensor, factor: float = 10.0, least: int = 10) -> list[int]:
    """Classes with at least `least` rows whose share in one split is under 1/`factor` of that split's share of all
    rows: a class 10x rarer in validation than the split sizes predict (or in training) was cut off, not sampled."""
    total = n_train + n_val
    val_share = float(n_val.sum() / total.sum())
    share = n_val / total.clamp_min(1)
    off = (share < val_share / factor) | (1 - share < (1 - val_share) / factor)
    return [int(c) for c in (off & (total >= least)).nonzero().flatten()]


def _columns_compete(y: torch.Tensor, task: Task) -> Check | None:
    """A warn when a callable loss is a softmax across each row of outputs (its value unchanged by a constant added to
    a whole row, changed by scaling the row) while many target rows are not one distribution (several labels, or
    none: their sum is not 1): independent labels made to compete for one unit of probability. None otherwise, or
    when the loss does not take outputs shaped like the targets."""
    if y.shape[1] < 2 or bool((y < 0).any()):
        return None
    loose = float(((y.sum(1) - 1).abs() > 1e-3).float().mean())
    if loose < 0.05:  # rows that sum to 1: one class each, or soft targets (distillation, mixup, smoothing)
        return None
    rows = y[:256]
    g = torch.Generator().manual_seed(0)
    out, shift = torch.randn(rows.shape, generator=g), 3 * torch.randn(len(rows), 1, generator=g)
    values = _losses(task, [(out, rows), (out + shift, rows), (2 * out, rows)])
    if values is None or not _same(values[0], values[1]):
        return None
    if _same(values[0], values[2]):  # the loss ignores its outputs' values altogether: not this question
        return None
    return warned(
        "target_range",
        f"the loss is a softmax across each row of outputs (adding a constant to a whole row leaves it unchanged), "
        f"so the {y.shape[1]} target columns compete for one unit of probability, yet {loose:.0%} of the training "
        "target rows do not sum to 1 (several labels, or none). Independent labels need a sigmoid per column: "
        "loss='bce_with_logits' (kind='classification' reads accuracy at logit 0). If each row is one "
        "distribution over the columns, normalise the targets to sum to 1.",
        {"rows_not_summing_to_1": loose},
        "a loss per column for several labels per row, or target rows that sum to 1",
    )


def _on_target_scale(y: torch.Tensor, task: Task) -> bool:
    """Whether a callable loss reads outputs on the targets' own scale: unchanged when outputs and targets move by
    one constant together, changed when the outputs alone move (as a squared error, Huber or SmoothL1 loss is; a
    Poisson NLL on log rates, or a loss over outputs of another shape, is not)."""
    rows = y[:256].float()  # as the task holds them: the loss may want (B,) or (B, 1)
    g = torch.Generator().manual_seed(1)
    out, shift = rows + 0.5 * torch.randn(rows.shape, generator=g), 3.0 + 2 * float(rows.std())
    values = _losses(task, [(out, rows), (out + shift, rows + shift), (out + 1, rows)])
    return values is not None and _same(values[0], values[1]) and not _same(values[0], values[2])


def _losses(task: Task, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> list[float] | None:
    """The task's loss on each (output, target) pair, without gradients; None when the loss refuses one (it wants
    outputs of another shape: a mean and a variance, quantiles) or a value is not finite."""
    try:
        with torch.no_grad():
            values = [float(task.compute_loss(output, target)) for output, target in pairs]
    except Exception:  # no verdict on a loss these outputs do not fit
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _same(a: float, b: float) -> bool:
    """Two values of one loss equal up to float rounding (1e-4 of the first)."""
    return abs(b - a) <= 1e-4 * max(abs(a), 1e-6)
