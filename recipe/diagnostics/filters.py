"""The first layer's weights, visualised and judged: filters that still look like noise after training.

Why: recipe step 4, "visualize the network's first-layer weights ... if your first layer filters look like noise then
something could be off".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recipe.check import Check, passed, skipped, warned
from recipe.task import Task


def first_layer_filters(model: nn.Module, task: Task, inputs: Any) -> tuple[str, torch.Tensor] | None:
    """The first Linear or Conv2d layer the inputs reach, and its weights as pictures (N, C, H, W); None when the
    inputs are not images or the layer's weights cannot be drawn as them."""
    images = task.images(inputs)
    if images is None:
        return None
    names = {m: n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    reached: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, *_: reached.append(m)) for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            task.forward(model, inputs[:2])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    layer = reached[0] if reached else None
    if not isinstance(layer, nn.Linear | nn.Conv2d):
        return None
    w = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Conv2d) and w.dim() == 4 and w.shape[-1] * w.shape[-2] >= 4:
        return names[layer], w if w.shape[1] in (1, 3) else w.reshape(-1, 1, *w.shape[-2:])
    if isinstance(layer, nn.Linear) and w.shape[1] == images[0].numel():
        return names[layer], w.reshape(len(w), *images.shape[1:])
    return None


TRAINED_CORRELATION = 0.12  # the lowest neighbour correlation measured on trained first layers (digits MLP/CNN)


def _neighbour_correlation(w: torch.Tensor) -> torch.Tensor:
    """Correlation of horizontally and vertically neighbouring weights, pooled over 2-D filters (..., K, H, W)."""
    products = (w[..., :, 1:] * w[..., :, :-1]).sum((-1, -2)) + (w[..., 1:, :] * w[..., :-1, :]).sum((-1, -2))
    pairs = w.shape[-1] * (w.shape[-2] - 1) + w.shape[-2] * (w.shape[-1] - 1)
    return products.mean(-1) / pairs / (w**2).mean((-1, -2, -3))


def first_layer(
    filters: torch.Tensor,
    layer: str,
    permutations: int = 50,
    seed: int = 8_191,
    learned: tuple[float, float] | None = None,
) -> Check:
    """Catches a first layer whose weights still look like noise after training (barely trained: a learning rate
    far too low, a layer cut off from the gradient, too few steps).

    Why: recipe step 4, "if your first layer filters look like noise then something could be off". Statistic: the
    correlation of horizontally and vertically neighbouring weights, pooled over filters. Its null is the same
    statistic on the weights shuffled within each filter (`permutations` times): that keeps each filter's mean and
    spread and destroys only the spatial arrangement, so noise around a per-filter offset (which the former
    zero-correlation null passed: 0.91 against a threshold of 0.03) is recognised. Warns within 3 null standard
    deviations of the shuffled mean; skips when 3 of them exceed the weakest structure measured on trained layers
    (0.12; digits MLP 0.12-0.21, CNN 0.12-0.32), where the filters are too small to tell (3x3 filters, few of them).
    Noise-like filters say "barely trained" only of a model that did not learn: `learned` is (validation loss, the
    constant prediction's), and a model at under half the constant's loss learned with them; inputs other than
    natural images (spectrograms of tones) need no smooth filters, and that passes, saying so.
    """
    w = filters.double()
    n, c, h, width = w.shape
    if h < 2 or width < 2 or float((w**2).mean()) == 0:
        return skipped("first_layer", f"{layer}'s weights have no neighbouring pairs to compare (or are all zero).")
    flat = w.reshape(n * c, h * width)
    r = float(_neighbour_correlation(flat.reshape(n * c, h, width)))
    # float64 keys from an unusual seed: keys drawn like a layer's init (float32, seed 0) sorted a seed-0 layer
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(permutations, n * c, h * width, generator=g, dtype=torch.float64).argsort(-1)
    shuffled = flat.expand(permutations, -1, -1).gather(-1, order).reshape(permutations, n * c, h, width)
    null = _neighbour_correlation(shuffled)
    mean, std = float(null.mean()), float(null.std())
    z = (r - mean) / std if std > 0 else (math.inf if r > mean else 0.0)
    shape = "x".join(map(str, w.shape[1:]))
    value = {"layer": layer, "neighbour_correlation": r, "shuffled_mean": mean, "shuffled_std": std, "z": z}
    value["filters"] = n
    against = f"{r:.3f} against {mean:.3f} ± {std:.3f} for the same weights shuffled within each filter"
    if 3 * std > TRAINED_CORRELATION:
        reason = f"{n} filters of {shape} are too few weights to tell structure from noise: neighbouring weights "
        return skipped("first_layer", reason + f"correlate {against}; see first_layer.png.").replace(value=value)
    if z < 3 and learned is not None and learned[0] < 0.5 * learned[1]:
        return passed(
            "first_layer",
            f"the first layer ({layer}, {n} filters of {shape}) has no spatial structure (neighbouring weights "
            f"correlate {against}, z = {z:.1f}), yet the model learned (validation loss {learned[0]:.4g} against "
            f"{learned[1]:.4g} for a constant prediction): these inputs need no smooth filters (not natural images); "
            "see first_layer.png.",
            value,
        )
    if z < 3:
        return warned(
            "first_layer",
            f"the first layer ({layer}, {n} filters of {shape}) looks like noise: neighbouring weights correlate "
            f"{against} (z = {z:.1f}). It barely trained: check the learning rate and the gradient reaching it, or "
            "train longer; see first_layer.png.",
            value,
            f"neighbour correlation over {mean + 3 * std:.3f} (3 SD above the shuffled weights)",
        )
    return passed(
        "first_layer",
        f"the first layer ({layer}, {n} filters of {shape}) has spatial structure: neighbouring weights correlate "
        f"{against} (z = {z:.1f}); see first_layer.png.",
        value,
    )
