"""Training against validation, drawn or preprocessed differently? A classifier told to tell the splits apart.

Why: catalog D8 (train/eval preprocessing skew). A mean-only statistic missed a validation split left unnormalised
(median |SMD| 0.24) that a domain classifier separated perfectly (AUC 1.00 against 0.48 on clean data), so the
shift check trains one. A shift is not a bug by itself: a group split (other patients) separated at AUC 1.00 too, so
a fail also needs the shift to vanish once each split is standardised on its own (a preprocessing difference), which
a different draw's does not (a nearest-neighbour test still sees it).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch

from recipe.check import Check, failed, passed, skipped, warned
from recipe.diagnostics.integrity import SplitSample


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores sharing their average rank)."""
    scores, labels = scores.double(), labels.bool()
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    average_rank = last - (counts.double() - 1) / 2  # 1-based rank shared by every tie
    ranks = average_rank[inverse]
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic_scores(
    x: torch.Tensor, y: torch.Tensor, x_eval: torch.Tensor, l2: float, iterations: int
) -> torch.Tensor:
    """Held-out logits of an L2-regularised logistic regression with balanced class weights, fitted by Newton's
    method (a few exact steps; no optimizer state, no learning rate to choose). Where the fit separates its rows (a
    pixel lit in one image of 1,797 stands 42 standard deviations out, its square 1,794), every p(1 - p) underflows
    and the curvature of the unshrunk intercept is zero: the fit stops at the weights it has."""
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    weight = torch.where(y == 1, 0.5 / y.mean().clamp_min(1e-12), 0.5 / (1 - y.mean()).clamp_min(1e-12)) / len(y)
    penalty = torch.full((x.shape[1],), l2, dtype=x.dtype)
    penalty[-1] = 0.0  # the intercept is not shrunk
    w = torch.zeros(x.shape[1], dtype=x.dtype)
    for _ in range(iterations):
        p = torch.sigmoid(x @ w)
        gradient = x.T @ (weight * (p - y)) + penalty * w
        hessian = (x.T * (weight * p * (1 - p))) @ x + torch.diag(penalty)
        step, info = torch.linalg.solve_ex(hessian, gradient)
        if int(info) or not bool(torch.isfinite(step).all()):
            break
        w -= step
        if float(step.abs().max()) < 1e-6:
            break
    return torch.cat([x_eval, torch.ones(len(x_eval), 1, dtype=x_eval.dtype)], dim=1) @ w


def domain_auc(
    a: torch.Tensor, b: torch.Tensor, folds: int = 3, seed: int = 0, l2: float = 1e-3, iterations: int = 25
) -> float:
    """Held-out AUC of a classifier telling rows of `a` from rows of `b` (about 0.5 when they are alike).

    The classifier is a logistic regression on the standardised features and their squares, so a change of
    scale (a split normalised differently) is as visible as a change of mean.
    """
    x = torch.cat([a, b]).double()
    y = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).double()
    z = (x - x.mean(0)) / x.std(0).clamp_min(1e-12)
    z = z[:, x.std(0) > 0]
    features = torch.cat([z, z.square() - 1], dim=1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    scores = torch.empty(len(x), dtype=torch.double)
    for k in range(folds):
        held = order[k::folds]
        fit = torch.ones(len(x), dtype=torch.bool)
        fit[held] = False
        scores[held] = _logistic_scores(features[fit], y[fit], features[held], l2, iterations)
    return auc(scores, y)


def _own_standardised(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The columns `keep` of `x`, standardised by the split's own mean and std."""
    x = x[:, keep].double()
    return (x - x.mean(0)) / x.std(0)


def neighbour_auc(
    a: torch.Tensor, b: torch.Tensor, k: int = 10, permutations: int = 20, seed: int = 0, chunk: int = 1024
) -> tuple[float, float, float]:
    """A nearest-neighbour two-sample test: the AUC with which the share of `b` rows among each row's `k` nearest
    neighbours (itself left out) tells the rows of `b` from those of `a`, with the mean and standard deviation of
    that AUC when the split labels are permuted (its null for these rows: the neighbours are kept).

    Unlike the logistic domain classifier it sees any difference in the joint distribution (clusters, correlations,
    shapes), not only per-feature means and scales (Friedman and Rafsky 1979; Schilling 1986).
    """
    x = torch.cat([a, b]).double()
    neighbours = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)
        rows = torch.arange(len(d))
        d[rows, rows + start] = float("inf")
        neighbours.append(d.topk(k, largest=False).indices)
    index = torch.cat(neighbours)
    labels = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).bool()

    def score(y: torch.Tensor) -> float:
        return auc(y[index].double().mean(1), y)

    g = torch.Generator().manual_seed(seed)
    null = torch.tensor([score(labels[torch.randperm(len(labels), generator=g)]) for _ in range(permutations)])
    return score(labels), float(null.mean()), float(null.std())


def _flat_features(x: torch.Tensor, max_features: int, seed: int) -> torch.Tensor:
    flat = x.float().reshape(len(x), -1)
    if flat.shape[1] > max_features:
        keep = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed))[:max_features]
        flat = flat[:, keep.sort().values]
    return flat


def _with_noise(x: torch.Tensor, added: torch.Tensor, seed: int) -> torch.Tensor:
    """`x` with independent Gaussian noise of variance `added` per column (seeded): what augmentation that adds
    such noise on read would make of it."""
    g = torch.Generator().manual_seed(seed)
    return x + torch.randn(x.shape, generator=g, dtype=x.dtype) * added.to(x.dtype).sqrt()


MIN_ROWS_TO_FAIL = 50  # a group split with 20 validation rows left the neighbour test at z 1-4; with 40, z 5-10


def _by_groups(groups: tuple[list[Any], list[Any]] | None) -> str | None:
    """How a declared group split reads in a message ("8 training and 2 validation groups"); None when no groups
    are declared or a group sits in both splits (then `group_leak` fails and the split is not by group)."""
    if groups is None:
        return None
    train, val = set(groups[0]), set(groups[1])
    return None if train & val else f"{len(train)} training and {len(val)} validation groups"


def _feature_gaps(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature: the standardised mean difference and the log ratio of standard deviations (0 for a constant).

    A feature holding one value in both splits has means that differ by the rounding of their sums alone, over a
    standard deviation of zero: its difference is 0, not that rounding over 1e-12."""
    both = torch.cat([a, b])
    constant = both.amax(0) == both.amin(0)
    smd = torch.where(constant, torch.zeros(1), (b.mean(0) - a.mean(0)) / both.std(0).clamp_min(1e-12))
    varying = (a.std(0) > 0) & (b.std(0) > 0)
    log_ratio = torch.where(varying, (b.std(0).clamp_min(1e-12) / a.std(0).clamp_min(1e-12)).log(), torch.zeros(1))
    return smd, log_ratio


def affine_residual(a: torch.Tensor, b: torch.Tensor, max_rows: int = 3000, seed: int = 0) -> dict[str, float]:
    """What is left of the difference between `a` and `b` once each is standardised by its own per-feature mean and
    std: `neighbour_auc` of the two, its permutation null, and `z`, the excess in null standard deviations.

    A split preprocessed differently (a per-feature affine change: other units, another normalisation) leaves
    nothing (z about 0); a split drawn differently (other subjects, sites, times, augmentation) keeps its clusters
    and correlations apart (z of 10 to 30 on group splits and train-only augmentation of digits).
    """
    g = torch.Generator().manual_seed(seed)
    n_b = min(len(b), max_rows // 3)
    a = a[torch.randperm(len(a), generator=g)[: max_rows - n_b]]
    b = b[torch.randperm(len(b), generator=g)[:n_b]]
    keep = (a.std(0) > 0) & (b.std(0) > 0)
    observed, null_mean, null_sd = neighbour_auc(_own_standardised(a, keep), _own_standardised(b, keep), seed=seed)
    z = (observed - null_mean) / max(null_sd, 1e-3)
    return {"auc": observed, "null_auc": null_mean, "null_sd": null_sd, "z": z}


def split_shift(
    train: SplitSample,
    val: SplitSample,
    warn_sigmas: float = 5.0,
    fail_auc: float = 0.9,
    max_rows: int = 6000,
    max_features: int = 128,
    seed: int = 0,
    groups: tuple[list[Any], list[Any]] | None = None,
    residual_sigmas: float = 3.0,
    train_augmented: bool = False,
    augmentation: torch.Tensor | None = None,
) -> Check:
    """Catches validation inputs preprocessed differently from training (another normalisation or units at
    evaluation, validation standardised with its own statistics), and reports splits drawn differently.

    Why: catalog D8 and the ML Test Score's "training and serving are not skewed"; different is not wrong. A domain
    classifier's held-out AUC is about 0.5 for one distribution (it warns `warn_sigmas` null standard errors above).
    A shift is called a preprocessing bug (fail, at `fail_auc`) only when standardising each split by its own
    per-feature statistics removes it (`affine_residual` within `residual_sigmas` of its null) across half the
    features or more, with `MIN_ROWS_TO_FAIL` rows in each split. A shift that survives is a different draw (groups,
    time, domain, train-only augmentation): a warning, or a pass when the split is declared by group
    (`Task(groups=...)`, no group in both splits) or the training samples are augmented on read (`train_augmented`:
    two reads differ), so that they differ from validation's by design. When the augmentation's own variance per
    input value is known (`augmentation`, from two reads of the same samples), the validation inputs are also
    compared with that much independent noise added; a difference that is gone then was the augmentation's noise
    (it widens each feature, as a scale bug does), and the check passes.
    """
    if train.inputs is None or val.inputs is None or not train.inputs.is_floating_point():
        return skipped("split_shift", "needs float inputs held as one tensor (token inputs are not compared).")
    judge = partial(
        _split_shift, warn_sigmas=warn_sigmas, fail_auc=fail_auc, max_rows=max_rows, max_features=max_features,
        seed=seed, groups=groups, residual_sigmas=residual_sigmas, train_augmented=train_augmented,
    )  # fmt: skip
    items = None if train.parts else _recurring_items(train.inputs, val.inputs)
    if items is not None:  # one tensor of several items per sample (a pair of images): as for several tensors below
        a, b = items
        check = judge(a, b, augmentation=None)
        what = (
            f"the {train.inputs.shape[1]} items of each sample compared as items, each distinct one once ({len(a):,} "
            f"and {len(b):,}: an item recurs across samples)"
        )
        return check.replace(message=f"{what}: {check.message}")
    if not train.parts:
        return judge(train.inputs, val.inputs, augmentation=augmentation)
    # several tensors (a pair, an image and its metadata): each float one is compared on its own, each distinct value
    # once; a value that recurs in many samples (one image in several pairs) would otherwise sit in the classifier's
    # training folds and its held-out fold at once, and a split's own sample of values would read as a shift.
    # Category ids are not measurements that a preprocessing step scales, so they are not compared.
    checks = []
    for k, (shape, columns, continuous) in enumerate(train.part_columns()):
        if not continuous:
            continue
        a, b = (x[:, columns].unique(dim=0) for x in (train.inputs, val.inputs))
        noise = None if augmentation is None else augmentation.reshape(-1)[columns]
        check = judge(a, b, augmentation=noise)
        what = f"input {k} of {len(train.parts)} {shape}, {len(a):,} and {len(b):,} distinct values"
        checks.append(check.replace(message=f"{what}: {check.message}", value={**check.value, "input": k}))
    order = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}
    return max(checks, key=lambda c: (order.get(c.status, 0), c.value.get("auc", 0.0)))


def _recurring_items(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For inputs (B, A, ...) whose items along axis 1 recur across samples (pairs drawn from a pool of images, a
    tenth or more of the items repeated), the distinct items of each split, one row each; None otherwise."""
    if train.dim() < 3 or train.shape[1] < 2:
        return None
    items = [x.reshape(len(x) * x.shape[1], -1) for x in (train, val)]
    distinct = [rows.unique(dim=0) for rows in items]
    if len(distinct[0]) > 0.9 * len(items[0]):
        return None
    return distinct[0], distinct[1]


def _split_shift(
    train: torch.Tensor,
    val: torch.Tensor,
    warn_sigmas: float,
    fail_auc: float,
    max_rows: int,
    max_features: int,
    seed: int,
    groups: tuple[list[Any], list[Any]] | None,
    residual_sigmas: float,
    train_augmented: bool,
    augmentation: torch.Tensor | None,
) -> Check:
    """`split_shift` on two tensors of inputs, one row per sample."""
    g = torch.Generator().manual_seed(seed)
    a, b = _flat_features(train, max_features, seed), _flat_features(val, max_features, seed)
    n_b = min(len(b), max_rows // 3)
    a = a[torch.randperm(len(a), generator=g)[: min(len(a), max_rows - n_b)]]
    b = b[torch.randperm(len(b), generator=g)[:n_b]]
    score = domain_auc(a, b, seed=seed)
    null_se = math.sqrt((len(a) + len(b) + 1) / (12 * len(a) * len(b)))
    smd, log_ratio = _feature_gaps(a, b)
    gap = smd.abs() + log_ratio.abs()
    top = gap.argsort(descending=True)[:5].tolist()
    value: dict[str, Any] = {
        "auc": score,
        "auc_null_se": null_se,
        "median_abs_smd": float(smd.abs().median()),
        "median_abs_log_std_ratio": float(log_ratio.abs().median()),
        "most_different_features": [
            {"feature": i, "smd": float(smd[i]), "std_ratio": float(log_ratio[i].exp())} for i in top
        ],
        "rows": [len(a), len(b)],
        "rows_features": a.shape[1],
    }
    warn_at = 0.5 + max(0.05, warn_sigmas * null_se)
    if score < warn_at:
        return passed(
            "split_shift",
            f"training and validation inputs look alike: domain-classifier AUC {score:.2f} (0.50 ± {null_se:.3f} "
            f"expected), median |log std ratio| {value['median_abs_log_std_ratio']:.2f}.",
            value,
        )
    if augmentation is not None:
        added = _flat_features(augmentation[None], max_features, seed)[0]
        value["auc_val_with_augmentation_noise"] = noised = domain_auc(a, _with_noise(b, added, seed), seed=seed)
        if noised < warn_at:
            return passed(
                "split_shift",
                f"a classifier tells training from validation inputs apart (held-out AUC {score:.2f}), but not once "
                f"the validation inputs get noise of the variance the training Dataset's augmentation adds on read "
                f"(AUC {noised:.2f}; measured from two reads of the same samples): the difference is the "
                "augmentation, as designed.",
                value,
            )
    value["after_own_standardisation"] = residual = affine_residual(a, b, seed=seed)
    value["features_shifted"] = shifted = int((gap > 1.0).sum())  # by a standard deviation or more
    affine = residual["z"] <= residual_sigmas
    return _shift_verdict(score, warn_at, null_se, fail_auc, affine, shifted, groups, value, train_augmented)


def _shift_verdict(
    score: float,
    warn_at: float,
    null_se: float,
    fail_auc: float,
    affine: bool,
    shifted: int,
    groups: tuple[list[Any], list[Any]] | None,
    value: dict[str, Any],
    train_augmented: bool = False,
) -> Check:
    """The verdict of `split_shift` once a shift is seen: preprocessing (affine) or a different draw."""
    named = ", ".join(
        f"{f['feature']} (mean shift {f['smd']:+.2f} sd, std x{f['std_ratio']:.2f})"
        for f in value["most_different_features"][:3]
    )
    seen = f"a classifier tells training from validation inputs apart (held-out AUC {score:.2f}; 0.5 when they match)"
    by_groups = _by_groups(groups)
    declare = (
        "If the splits come from different subjects, sites or times on purpose, declare them with "
        "Task(groups=(train_groups, val_groups)); a different distribution is not a bug by itself."
    )
    features = value["rows_features"]
    broad = shifted >= max(min(3, features), features / 2)  # a whole split rescaled, not one drifting feature
    powered = min(value["rows"]) >= MIN_ROWS_TO_FAIL  # enough rows for the neighbour test to see another draw
    if affine and broad and powered and by_groups is None and score >= fail_auc:
        return failed(
            "split_shift",
            f"{seen}, and standardising each split by its own statistics removes the difference: the splits are "
            f"scaled or shifted differently, feature by feature ({value['features_shifted']} features). Most "
            f"different features: {named}. Preprocess both splits with one transform fitted on training. (If "
            "validation holds other subjects or sites, declare them with Task(groups=...): then this is a warning.)",
            value,
            f"AUC < {warn_at:.2f}",
        )
    if affine:
        few = "" if powered else f" ({min(value['rows'])} rows are too few to tell it from a different draw.)"
        return warned(
            "split_shift",
            f"{seen}, and standardising each split by its own statistics removes the difference: a per-feature "
            f"offset or scale differs.{few} Most different features: {named}. Check that both splits are "
            f"preprocessed with one transform fitted on training. {declare if by_groups is None else ''}".rstrip(),
            value,
        )
    if by_groups is not None:
        return passed(
            "split_shift",
            f"{seen}, as expected of a split by group ({by_groups}): the difference survives standardising each "
            f"split, so the splits are drawn differently, not preprocessed differently. Most different: {named}.",
            value,
        )
    if train_augmented:
        return passed(
            "split_shift",
            f"{seen}, as expected when the training Dataset augments on read (two reads of a sample differ): the "
            f"difference survives standardising each split, so it is not a preprocessing bug. Most different: {named}.",
            value,
        )
    return warned(
        "split_shift",
        f"{seen}; the difference survives standardising each split by its own statistics, so the splits are drawn "
        f"differently (other subjects, sites or times; a temporal or cross-domain split; augmentation applied to "
        f"one split only), not preprocessed differently. Most different features: {named}. {declare}",
        value,
    )
