"""Samples unlike the rest: "outliers almost always uncover some bugs in data quality or preprocessing."

Why: recipe step 1 (Karpathy) and catalog D10 (sentinel values such as -999 for "missing"); a sample scaled by a
stray factor, a blank image or a truncated sequence stands out in one per-sample statistic.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from recipe.check import Check, passed, skipped, warned
from recipe.diagnostics.integrity import SplitSample
from recipe.task import IGNORE_INDEX

DISCRETE = 20  # a statistic with fewer distinct values than this is a handful of levels, not a continuum


def varying_features(x: torch.Tensor) -> torch.Tensor:
    """The features (columns of (n, F)) that vary across most samples: those with a nonzero median absolute
    deviation. A feature that holds one value in half the samples or more (a pixel blank in most images, a one-hot
    column, a rare flag) has no spread to measure its other values against: standardised, a value that 3 samples
    of 1,437 hold lands 20 standard deviations out by construction, which says nothing of a wrong unit or a
    sentinel. Every feature when none or all of them vary."""
    spread = (x - x.median(0).values).abs().median(0).values
    keep = spread > 0
    return x if bool(keep.all()) or not bool(keep.any()) else x[:, keep]


def sample_statistic(part: SplitSample) -> tuple[torch.Tensor, str, torch.Tensor | None] | None:
    """One number per sample: the log of its input's L2 norm over the features that vary (float inputs), or its
    scored length (sequences); with what it is and the features it was read on (None for lengths)."""
    x = part.inputs
    if x is None:
        return None
    if x.is_floating_point():
        flat = x.float().reshape(len(x), -1)
        read = varying_features(flat)
        norm = read.norm(dim=1)
        floor = 1e-3 * float(norm.median().clamp_min(1e-12))  # a blank (all-zero) sample is finite and far out
        what = "log L2 norm of the input"
        if read.shape[1] < flat.shape[1]:
            what += f" (over the {read.shape[1]} of {flat.shape[1]} features that vary in most samples)"
        return (norm + floor).log(), what, read
    if part.targets.dim() == 2:
        return (part.targets != IGNORE_INDEX).sum(1).float(), "scored tokens per sequence", None
    return None


def robust_z(values: torch.Tensor) -> torch.Tensor:
    """(value - median) / (1.4826 MAD): a z-score that the outliers themselves cannot inflate."""
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    if float(mad) == 0:
        mad = (values - median).abs().mean().clamp_min(1e-12) * 1.2533  # mean absolute deviation, Gaussian-scaled
    return (values - median) / mad


def small_norm_allowance(inputs: torch.Tensor, log_norms: torch.Tensor, rows: int = 256) -> float:
    """How far below the median log L2 norm the smallest of n samples falls by chance, doubled for margin, when
    the inputs have a density around zero: P(norm < r) grows as r^d, so the minimum of n sits about ln(n) / d
    below. d is the larger of two readings: the inputs' effective dimension (the participation ratio of their
    covariance, from up to `rows` samples) and the one their own spread shows (the lower quartile of the norm
    sits at 0.5^(1/d) of the median under that law): norms that cluster far from zero (no density there) get
    little allowance. Small for images (a blank one still stands out); most of the spread for one or two
    features drawn around zero."""
    n = len(log_norms)
    if not inputs.is_floating_point() or n < 2:
        return 0.0
    x = inputs[:rows].double().reshape(min(len(inputs), rows), -1)
    x = x - x.mean(0)
    gram = x @ x.T  # the nonzero eigenvalues of the covariance, through the smaller side
    spread = float(gram.square().sum())
    covariance_dimension = float(gram.trace()) ** 2 / spread if spread > 0 else 1.0
    drop = float(log_norms.median() - log_norms.double().quantile(0.25))  # a quartile: robust to a corrupted group
    tail_dimension = math.log(2) / drop if drop > 0 else math.inf
    return 2 * math.log(n) / max(covariance_dimension, tail_dimension, 1.0)


def outliers(part: SplitSample, z_warn: float = 8.0, top: int = 16) -> tuple[Check, dict[str, Any]]:
    """Catches samples whose size is far outside the rest (a stray scale factor, a sentinel value, a blank input).

    Why: a robust z-score of 8 is beyond any sample of a Gaussian of any practical size (p < 1e-15) and beyond the
    heavy tails of the clean bundled datasets; samples past it are worth a look, not proof of a bug (warn). The
    z-score reads a statistic with a continuum of values; one with fewer than `DISCRETE` levels (six binary
    features have seven norms, and an all-zero row is one of them) says nothing it can read, and the check skips.
    A small norm counts only beyond what chance gives inputs with a density around zero (`small_norm_allowance`):
    of 3,000 one-feature inputs drawn evenly from [-2, 2], the smallest |x| is 8 robust deviations below the
    median log norm, by nature.
    """
    stat = sample_statistic(part)
    if stat is None:
        return skipped("outliers", "no per-sample statistic for these inputs; override in a subclass."), {}
    values, what, read = stat
    z = robust_z(values)
    order = z.abs().argsort(descending=True)[:top]
    allowance = small_norm_allowance(read, values) if read is not None else 0.0
    beyond = (z > z_warn) | ((z < -z_warn) & (values.median() - values > allowance))
    flagged = int(beyond.sum())
    table = [
        {"index": int(part.indices[i]), "statistic": float(values[i]), "robust_z": float(z[i])} for i in order.tolist()
    ]
    info = {"statistic": what, "values": values, "z": z, "top": order, "table": table}
    value = {"statistic": what, "beyond_threshold": flagged, "max_abs_z": float(z.abs().max()), "top": table[:5]}
    levels = len(values.unique())
    if flagged and levels < DISCRETE:
        return skipped(
            "outliers",
            f"the {what} takes only {levels} distinct values over {part.scope} samples (binary or categorical "
            f"features): a z-score cannot single out a sample among so few levels (the farthest, index "
            f"{table[0]['index']}, shares its value with {int((values == values[order[0]]).sum()) - 1} others).",
        ).replace(value=value), info
    if flagged:
        farthest = int((z.abs() * beyond).argmax())
        first = {"index": int(part.indices[farthest]), "robust_z": float(z[farthest])}
        return warned(
            "outliers",
            f"{flagged} training sample(s) lie more than {z_warn:g} robust standard deviations from the median "
            f"{what} (the farthest, index {first['index']}, at z = {first['robust_z']:+.1f}). Look at them "
            "(outliers.png): a wrong unit or scale, a sentinel value, a corrupted or blank sample.",
            value,
            f"|robust z| <= {z_warn:g}",
        ), info
    return passed(
        "outliers",
        f"no training sample beyond {z_warn:g} robust standard deviations of the {what} (max |z| "
        f"{value['max_abs_z']:.1f}, {part.scope} samples).",
        value,
    ), info
