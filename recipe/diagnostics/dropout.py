"""Dropout rates: each dropout in the model as the user's factory builds it, and the ones that drop most units.

Why: recipe step 5 (regularize, "dropout"): `p` is the probability of *dropping* a unit. `nn.Dropout(p=0.9)` written
for "keep 90%" drops 90% of the activations in training, which the model then fights instead of the task. Rates up to
0.5 are the usual range (0.5 for hidden units in Srivastava et al., 2014); above it is rare and worth a look, and
p = 1 zeroes everything. The training-mode / eval-mode loss gap at initialisation shows the effect.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, warned
from recipe.task import Task


def dropout_modules(model: nn.Module) -> dict[str, float]:
    """Every dropout rate in the model by module name: dropout modules, and the `dropout=` of attention and RNNs."""
    rates: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            rates[name or "model"] = float(module.p)
        elif isinstance(module, nn.MultiheadAttention | nn.RNNBase) and module.dropout:
            rates[f"{name or 'model'}.dropout"] = float(module.dropout)
    return rates


def _loss(model: nn.Module, task: Task, batch: Any, training: bool) -> float:
    model.train(training)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return float(task.compute_loss(*task.outputs(model, batch)))


def dropout_rates(model: nn.Module, task: Task, batch: Any, warn_above: float = 0.5) -> Check:
    """Catches dropout rates confused with keep-probabilities (`nn.Dropout(p=0.9)` meant as "keep 90%") and dropout
    that zeroes everything (p = 1); reports every rate in the model.

    Why: recipe step 5: dropout's `p` is the drop probability; above 0.5 is rare, and the loss in training mode
    rises far above the loss in eval mode when most units are dropped.
    """
    name = "dropout_rates"
    rates = dropout_modules(model)
    if not rates:
        return passed(name, "no dropout modules in the model (functional dropout inside forward is not listed).")
    high = {k: p for k, p in rates.items() if p > warn_above}
    value: dict[str, Any] = {"rates": rates}
    if not any(rates.values()):
        return passed(name, f"{len(rates)} dropout module(s), all off (p=0).", value)
    if not high:
        listed = ", ".join(f"{k} p={p:g}" for k, p in list(rates.items())[:6])
        return passed(name, f"{len(rates)} dropout rate(s), none above {warn_above:g}: {listed}.", value)
    try:
        value["train_loss"], value["eval_loss"] = _loss(model, task, batch, True), _loss(model, task, batch, False)
        gap = f" At init the loss is {value['train_loss']:.3g} in training mode vs {value['eval_loss']:.3g} in eval."
    except Exception:  # the gap is supporting evidence only; a model that cannot be probed still has its rates read
        gap = ""
    listed = ", ".join(f"{k} p={p:g}" for k, p in list(high.items())[:4])
    drop_all = [k for k, p in high.items() if p >= 1]
    if drop_all:
        return failed(
            name,
            f"dropout with p=1 ({', '.join(drop_all[:4])}) zeroes every activation in training: nothing flows through "
            f"it.{gap} p is the drop probability; set it to the share you want to drop.",
            value,
            f"p <= {warn_above:g}",
        )
    return warned(
        name,
        f"{len(high)} dropout rate(s) above {warn_above:g}: {listed}.{gap} p is the probability of dropping a unit; "
        f"p={max(high.values()):g} drops {max(high.values()):.0%} of them. If you meant to keep that share, use "
        f"p={1 - max(high.values()):.2g}.",
        value,
        f"p <= {warn_above:g}",
    )
