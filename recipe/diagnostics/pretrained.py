"""Pretrained weights: the inputs fed to them must look like the inputs they were trained on.

Why: recipe step 1's silent bug, "you initialized your weights from a pretrained checkpoint but didn't use the
original mean": the code runs, the loss falls, and the pretrained features see inputs they were never trained on.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from recipe.check import Check, failed, passed, skipped, warned
from recipe.transfer import Pretrained

MIN_SAMPLES = 30
Z = 5.0  # a difference counts only beyond 5 standard errors of sampling noise
SHIFT_FAIL, RATIO_FAIL = 1.0, 3.0  # a whole recorded std off, or three times (a third of) the recorded scale
SHIFT_WARN, RATIO_WARN = 0.5, 2.0


def input_moments(inputs: torch.Tensor, features: int) -> dict[str, torch.Tensor]:
    """Per feature (the axis after the batch; all values pooled when `features` is 1): mean and variance over the
    samples, each with its standard error over samples (values within one sample are not independent)."""
    x = inputs.detach().double().cpu()
    per = x.reshape(len(x), features, -1)
    sample_means = per.mean(2)
    mean = sample_means.mean(0)
    sample_vars = ((per - mean[None, :, None]) ** 2).mean(2)
    n = math.sqrt(len(x))
    return {
        "mean": mean,
        "mean_se": sample_means.std(0) / n,
        "var": sample_vars.mean(0),
        "var_se": sample_vars.std(0) / n,
    }


def pretrained_inputs(inputs: Any, rung: Pretrained, name: str = "pretrained") -> Check:
    """Catches data fed to a pretrained rung that is not normalised as the data its weights were trained on.

    `inputs` is a sample of the task's training inputs as the model receives them; `rung` records the per-feature
    (or per-channel, or single) mean and std of the pretraining inputs.

    Why: a normalisation error (the original mean not subtracted, pixels 0-16 or 0-255 where the weights saw 0-1)
    moves every feature alike; a change of domain moves some. So it fails when most features sit more than one
    recorded std from the recorded mean, or at 3x (or a third of) the recorded scale, each beyond 5 standard errors
    of sampling noise; half as far warns.
    """
    if rung.mean is None:
        return skipped("pretrained_inputs", f"rung {name!r} records no input mean/std (Pretrained(mean=, std=)).")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        return skipped("pretrained_inputs", "the inputs are not a float tensor: a mean and std do not describe them.")
    ref_mean, ref_std = rung.stats()
    features = len(ref_mean)
    if features > 1 and (inputs.dim() < 2 or inputs.shape[1] != features):
        return skipped(
            "pretrained_inputs",
            f"rung {name!r} records {features} means but inputs of shape {tuple(inputs.shape)} have "
            f"{inputs.shape[1] if inputs.dim() > 1 else 1} features (axis 1); cannot match them.",
        )
    if len(inputs) < MIN_SAMPLES:
        return skipped("pretrained_inputs", f"{len(inputs)} samples; at least {MIN_SAMPLES} to measure a mean/std.")
    m = input_moments(inputs, features)
    judged = ref_std > 1e-12  # a constant feature (a border pixel) has no scale to compare with
    if not bool(judged.any()):
        return skipped("pretrained_inputs", f"rung {name!r} records a zero std for every feature.")
    ref_mean, ref_std = ref_mean[judged], ref_std[judged]
    mean, mean_se, var, var_se = (m[k][judged] for k in ("mean", "mean_se", "var", "var_se"))
    shift = (mean - ref_mean) / ref_std
    shift_z = (mean - ref_mean).abs() / mean_se.clamp_min(1e-12)
    log_ratio = 0.5 * torch.log(var.clamp_min(1e-24)) - torch.log(ref_std)
    ratio_z = log_ratio.abs() / (var_se / (2 * var.clamp_min(1e-24))).clamp_min(1e-12)

    def share(max_shift: float, max_ratio: float) -> float:
        off = ((shift.abs() > max_shift) & (shift_z > Z)) | ((log_ratio.abs() > math.log(max_ratio)) & (ratio_z > Z))
        return float(off.double().mean())

    median_shift, median_ratio, far_off = (
        float(shift.median()),
        float(log_ratio.median().exp()),
        share(SHIFT_FAIL, RATIO_FAIL),
    )
    value = {
        "rung": name,
        "features": int(judged.sum()),
        "median_shift_in_stds": median_shift,
        "median_std_ratio": median_ratio,
        "share_far_off": far_off,
    }
    expected = f"most features within {SHIFT_WARN} recorded std of the recorded mean and {RATIO_WARN}x its scale"
    seen = (
        f"the inputs fed to pretrained rung {name!r} sit {median_shift:+.2g} recorded stds from the mean its weights "
        f"were trained on, at {median_ratio:.3g}x their std (median over {value['features']} feature(s))"
    )
    if far_off > 0.5:
        return failed(
            "pretrained_inputs",
            f"{seen}: far beyond sampling noise on {far_off:.0%} of them, so they are not normalised "
            "as in pretraining (the original mean not subtracted, another pixel scale). Transform the inputs as "
            "for pretraining, so they have the recorded mean and std.",
            value,
            expected,
        )
    if share(SHIFT_WARN, RATIO_WARN) > 0.5:
        return warned(
            "pretrained_inputs",
            f"{seen}: beyond noise on most of them. A new domain can do this; a normalisation that differs from "
            "pretraining's does too: check the inputs are transformed as they were for pretraining.",
            value,
            expected,
        )
    return passed("pretrained_inputs", f"{seen}: as during pretraining.", value, expected)
