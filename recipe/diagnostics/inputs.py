"""The data as the model receives it: input statistics and their scale, and how token targets line up with the
input tokens (`recipe.diagnostics.target_leak` reads targets straight off the inputs).

Why: recipe steps 1-2, "visualize just before the net" and catalog D7 (inputs not normalised).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recipe.check import Check, passed, skipped, warned
from recipe.joined import column_name, describe_parts, joined_features, part_shapes, tensor_leaves
from recipe.task import IGNORE_INDEX, Task


def feature_axis(x: torch.Tensor) -> int:
    """Channels for images (B, C, H, W) and 1-d signals (B, C, L); the last axis otherwise."""
    return 1 if x.dim() == 4 else x.dim() - 1


def feature_stats(x: torch.Tensor) -> dict[str, list[float]]:
    """Per-feature (or per-channel) mean, std, min and max over the batch."""
    axis = feature_axis(x)
    flat = x.detach().float().movedim(axis, -1).reshape(-1, x.shape[axis])
    return {
        "mean": flat.mean(0).tolist(),
        "std": flat.std(0, unbiased=False).tolist(),
        "min": flat.min(0).values.tolist(),
        "max": flat.max(0).values.tolist(),
    }


def input_batch(inputs: Any, task: Task) -> tuple[Check, dict[str, Any]]:
    """The batch exactly as the model receives it: per-feature statistics, and a warning when its scale is far from
    what networks train well on (raw pixels, features in the thousands, a large offset).

    Why: recipe step 2, "visualize just before the net"; catalog D7 (|mean| > 3 or std > 10 after preprocessing).
    """
    parts, shapes = None, None
    if not isinstance(inputs, torch.Tensor):
        joined = joined_features(inputs, measurements_only=True)  # category ids have no scale to judge
        if joined is None:
            return skipped("input_batch", "inputs are neither one tensor nor several with a float one."), {}
        shapes = part_shapes(inputs, measurements_only=True)
        inputs, parts = joined, describe_parts(part_shapes(inputs))
    info: dict[str, Any] = {"shape": list(inputs.shape), "dtype": str(inputs.dtype)}
    if parts:
        info["parts"] = parts
    if not inputs.is_floating_point():
        info.update(min=int(inputs.min()), max=int(inputs.max()))
        text = task.decode(inputs[0].reshape(-1).tolist()) if inputs.dim() >= 2 else None
        if text is not None:
            info["decoded_first_sample"] = text
        return passed(
            "input_batch",
            f"integer inputs {tuple(inputs.shape)} ({inputs.dtype}) with ids {info['min']}..{info['max']}.",
            {k: v for k, v in info.items() if k != "decoded_first_sample"},
        ), info
    stats = feature_stats(inputs)
    info["features"] = stats
    summary = {"shape": info["shape"], "dtype": info["dtype"], **scale_summary(stats, inputs)}
    problem = scale_problem(summary, stats, shapes)
    constant = summary["constant_features"]
    note = f" {constant} feature(s) are constant in this batch (information only)." if constant else ""
    if problem:
        return warned(
            "input_batch",
            f"inputs are far from unit scale: {problem} Standardise with training-split statistics "
            "((x - mean) / std) so the network sees values near [-1, 1]." + note,
            summary,
            "|mean| <= 3 and std <= 10 per feature",
        ), info
    shown = f"{parts}, joined {tuple(inputs.shape)}" if parts else f"{tuple(inputs.shape)}"
    return passed(
        "input_batch",
        f"inputs {shown} ({inputs.dtype}): max |mean| "
        f"{summary['max_abs_mean']:.2f}, max std {summary['max_std']:.2f}." + note,
        summary,
    ), info


def scale_summary(stats: dict[str, list[float]], inputs: torch.Tensor) -> dict[str, Any]:
    means, stds = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    x = inputs.float()
    present = int(torch.count_nonzero(x))  # zeros add nothing to the norm: the non-zero values' RMS without a copy
    return {
        "max_abs_mean": float(means.abs().max()),
        "max_std": float(stds.max()),
        "overall_std": float(x.std()),
        "constant_features": int((stds == 0).sum()),
        "zero_share": 1 - present / max(x.numel(), 1),
        "nonzero_rms": float(torch.linalg.vector_norm(x)) / present**0.5 if present else 0.0,
    }


def scaled_by_model(check: Check, task: Task, inputs: Any) -> Check:
    """`check`, a warning that the inputs are far from unit scale, passed instead when the model scales them itself:
    the first layer with a weight matrix that a training-mode forward pass reaches (a Linear, a convolution, a
    recurrent or attention layer; not an embedding, which reads ids) sees values at unit scale. A normalisation
    layer holding the training statistics, `x / 255` in forward, or a BatchNorm on the raw inputs does that.

    Why: catalog D7 is about what the network's weights see; the batch the model receives is one step before."""
    if check.status != "warn":
        return check
    seen = _first_weighted_input(task, inputs)
    if seen is None:
        return check
    name, x = seen
    stats = feature_stats(x)
    summary = scale_summary(stats, x)
    if scale_problem(summary, stats) is not None:
        return check
    problem = check.message.split(": ", 1)[-1].split(" Standardise")[0].rstrip(".")
    return passed(
        check.name,
        f"the raw inputs are far from unit scale ({problem}), but the model scales them before its first weights: "
        f"{name} sees max |mean| {summary['max_abs_mean']:.2f} and max std {summary['max_std']:.2f}.",
        {**(check.value or {}), "first_weighted_layer": name, "seen_there": summary},
    )


def _first_weighted_input(task: Task, inputs: Any) -> tuple[str, torch.Tensor] | None:
    """The name and floating-point input of the first module with a weight matrix of its own that a training-mode
    forward pass of a fresh model reaches; None when there is none, or the model cannot be probed."""
    model = task.make_model()
    device = next((t.device for t in tensor_leaves(inputs) if isinstance(t, torch.Tensor)), torch.device("cpu"))
    model.to(device).train()
    names = {id(m): name or "the model" for name, m in model.named_modules()}
    first: list[tuple[str, torch.Tensor]] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not first and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            first.append((f"{names[id(module)]} ({type(module).__name__})", args[0].detach()))

    weighted = [
        m
        for m in model.modules()
        if not isinstance(m, nn.Embedding | nn.EmbeddingBag) and any(p.dim() >= 2 for p in m.parameters(recurse=False))
    ]
    hooks = [m.register_forward_pre_hook(capture) for m in weighted]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            task.forward(model, inputs)
    except Exception:  # a probe of the model must not break a data check: the warning then stands
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return first[0] if first and first[0][1].dim() >= 2 and len(first[0][1]) > 1 else None


def large_inputs(inputs: Any) -> str | None:
    """Which feature of a batch of float inputs (one tensor, or the float ones of several, joined) lies far above unit
    scale (|mean| > 3 or std > 10, as `scale_problem` judges it), for a message; None when none does, and for token
    inputs."""
    several = not isinstance(inputs, torch.Tensor)
    x = joined_features(inputs, measurements_only=True) if several else inputs
    if x is None or not x.is_floating_point() or x.dim() < 2 or len(x) < 2:
        return None
    stats = feature_stats(x)
    means, stds = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    if not bool(((means.abs() > 3) | (stds > 10)).any()):
        return None
    return scale_problem(
        scale_summary(stats, x), stats, part_shapes(inputs, measurements_only=True) if several else None
    )


def scale_problem(
    summary: dict[str, Any], stats: dict[str, list[float]], shapes: tuple[tuple[int, ...], ...] | None = None
) -> str | None:
    """What makes these inputs far from the unit scale networks train well on, or None. `shapes`: the per-sample
    shapes of several joined tensors, to name a feature by its tensor.

    Why: catalog D7, |mean| > 3 or std > 10 per feature, or everything squeezed below std 0.1 (divided twice). In
    sparse inputs (more than half the values exactly zero: word counts, one-hot blocks) the std measures how often
    features are present, so the values that are present are judged instead: counts of 1, 2, 3 are at unit scale,
    and standardising a rare word by its small std would blow it up.
    """
    means, stds = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
    far = (means.abs() > 3) | (stds > 10)
    if bool(far.any()):
        worst = int((means.abs() + stds).argmax())
        name = column_name(shapes, worst) if shapes else f"feature {worst}"
        return (
            f"{name} has mean {means[worst]:.3g} and std {stds[worst]:.3g} ({int(far.sum())} of "
            f"{len(means)} features with |mean| > 3 or std > 10)."
        )
    if summary["overall_std"] >= 0.1:
        return None
    if summary.get("zero_share", 0.0) <= 0.5:
        return f"the whole input has std {summary['overall_std']:.3g} (scaled down twice?)."
    if summary["nonzero_rms"] < 0.1:  # sparse inputs: their std counts how often a feature is present, not its scale
        return (
            f"the non-zero inputs ({1 - summary['zero_share']:.1%} of the values) have a root mean square of "
            f"{summary['nonzero_rms']:.3g} (scaled down twice?)."
        )
    return None


def input_stats(
    inputs: torch.Tensor | None, scope: str = "all", shapes: tuple[tuple[int, ...], ...] | None = None
) -> tuple[Check, dict[str, Any]]:
    """Catches inputs far from a sane scale over the whole training split (raw pixels, features in the thousands,
    a large offset), and names constant features as information. `shapes`: the per-sample shapes of several joined
    tensors, to name a feature by its tensor.

    Why: recipe step 1 and catalog D7; constant columns are normal (clean digits has three), so they are not a
    warning.
    """
    if inputs is None:
        return skipped("input_stats", "inputs are not a single tensor; override in a subclass."), {}
    if not inputs.is_floating_point():
        value = {"dtype": str(inputs.dtype), "min": int(inputs.min()), "max": int(inputs.max())}
        return passed("input_stats", f"integer inputs (ids {value['min']}..{value['max']}).", value), value
    stats = feature_stats(inputs)
    summary = {**scale_summary(stats, inputs), "features": len(stats["mean"]), "scanned": scope}
    stds = torch.tensor(stats["std"])
    constant = (stds == 0).nonzero().flatten().tolist()
    summary["constant_feature_indices"] = constant[:20]
    unit = "channel" if inputs.dim() == 4 else "feature"
    note = f" {len(constant)} {unit}(s) are constant ({constant[:8]}): information only." if constant else ""
    problem = scale_problem(summary, stats, shapes)
    if problem:
        mean = [round(v, 3) for v in stats["mean"][:6]]
        std = [round(v, 3) for v in stats["std"][:6]]
        how = (
            f"per channel, e.g. Normalize(mean={mean}, std={std})"
            if inputs.dim() == 4
            else f"per {unit} with the training statistics in input_stats.json (first means {mean}, stds {std})"
        )
        return warned(
            "input_stats",
            f"training inputs are far from unit scale: {problem} Standardise {how}, and apply the same "
            "transform to validation." + note,
            summary,
            "|mean| <= 3 and std <= 10 per feature",
        ), stats
    return passed(
        "input_stats",
        f"training inputs ({scope}) are near unit scale: max |mean| {summary['max_abs_mean']:.2f}, max std "
        f"{summary['max_std']:.2f} over {len(stds)} {unit}s." + note,
        summary,
    ), stats


def alignment_profile(inputs: torch.Tensor, target: torch.Tensor, shifts: range = range(-2, 3)) -> dict[int, float]:
    """For each k, the rate at which y[t] == x[t + k] over valid positions: next-token targets peak at k = +1."""
    rates = {}
    length = inputs.shape[1]
    for k in shifts:
        lo, hi = max(0, -k), min(length, length - k)
        if hi <= lo:
            continue
        y, x = target[:, lo:hi], inputs[:, lo + k : hi + k]
        valid = y != IGNORE_INDEX
        rates[k] = float(((y == x) & valid).sum() / valid.sum().clamp_min(1))
    return rates


def aligned_part(inputs: Any, target: torch.Tensor, least: float = 0.9) -> torch.Tensor | None:
    """Among several token tensors, the one shaped like per-token targets that holds them at some shift -2..2 on
    `least` of the scored positions (a decoder's input beside its source); None when none does."""
    if not isinstance(target, torch.Tensor) or target.dim() != 2 or target.is_floating_point():
        return None
    best, best_rate = None, least
    for part in tensor_leaves(inputs):
        if isinstance(part, torch.Tensor) and part.shape == target.shape and not part.is_floating_point():
            rate = max(alignment_profile(part, target).values(), default=0.0)
            if rate >= best_rate:
                best, best_rate = part, rate
    return best


def time_first(inputs: Any, target: Any) -> Any:
    """Channels-first series (B, C, T) beside targets per step (B, T) or (B, T, F) as (B, T, C), the layout the
    per-step probes read; any other inputs unchanged (the same object)."""
    if not isinstance(inputs, torch.Tensor) or not isinstance(target, torch.Tensor) or inputs.dim() != 3:
        return inputs
    steps = target.shape[1] if target.dim() >= 2 else -1
    return inputs.transpose(1, 2) if inputs.shape[1] != steps and inputs.shape[2] == steps else inputs


def holds_targets_ahead(inputs: Any, target: Any, least: float = 0.9) -> bool:
    """Whether float inputs (B, T) or (B, T, F) (or channels first, (B, F, T)) hold a float target (B, T) or (B, T,
    F') 1 to 3 steps ahead along T, on `least` of the positions: a forecaster's history, whose later values are its
    earlier targets (one varying target channel that some input channel repeats is enough)."""
    inputs = time_first(inputs, target)
    if not isinstance(inputs, torch.Tensor) or not isinstance(target, torch.Tensor):
        return False
    if not (inputs.is_floating_point() and target.is_floating_point()) or min(inputs.dim(), target.dim()) < 2:
        return False
    if inputs.shape[:2] != target.shape[:2] or inputs.shape[1] < 4:
        return False
    x, y = inputs.detach().flatten(2) if inputs.dim() > 2 else inputs[..., None], target.detach()
    x, y = x[..., :64].float(), (y.flatten(2) if y.dim() > 2 else y[..., None])[..., :64].float()

    def rate(shift: int, j: int) -> torch.Tensor:  # per input channel: the share of positions that match
        later, want = x[:, shift:], y[:, : y.shape[1] - shift, j : j + 1]
        return torch.isclose(later, want, rtol=1e-4, atol=1e-6 * float(want.abs().max())).float().mean((0, 1))

    for j in range(y.shape[2]):
        if float(y[..., j].std()) == 0:
            continue
        same = rate(0, j)  # a series that mostly repeats its values matches at every shift: no alignment to read
        if any(bool(((rate(shift, j) >= least) & (same < least)).any()) for shift in (1, 2, 3)):
            return True
    return False


def token_distance(inputs: torch.Tensor, target: torch.Tensor, pad_id: int | None = None) -> float:
    """Total variation between the frequencies of the input tokens (padding left out) and of the scored targets: near
    0 when the targets are the input's own tokens (next-token prediction), near 1 when they are another alphabet
    (tags of a token-tagging task)."""
    x = inputs[inputs != pad_id] if pad_id is not None else inputs.reshape(-1)
    y = target[target != IGNORE_INDEX]
    if not len(x) or not len(y) or x.min() < 0 or y.min() < 0:
        return 0.0
    size = int(max(x.max(), y.max())) + 1
    p = torch.bincount(x.long().cpu(), minlength=size).float()
    q = torch.bincount(y.long().cpu(), minlength=size).float()
    return float((p / p.sum() - q / q.sum()).abs().sum() / 2)
