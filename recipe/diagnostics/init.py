"""The model at initialisation: loss at init against theory, the kind of output handed to the loss, and the output
bias ("init well"). Why: Karpathy, "verify loss @ init" and "init well" (step 2); catalog M10, M11, L1, L2, L5, L6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import Batch
from recipe.diagnostics.inputs import large_inputs
from recipe.diagnostics.reach import biased_not_clipped, outputs_at_init
from recipe.evaluation import constant_loss
from recipe.output_bias import bias_values, final_layer, init_output_bias, recorded_forward
from recipe.task import IGNORE_INDEX, Task


def reference_loss(task: Task, output: torch.Tensor, target: torch.Tensor) -> float:
    """The loss a healthy fresh model gives: that of an all-zero output (ln C for cross-entropy, mean y² for MSE)."""
    with torch.no_grad():
        return float(task.compute_loss(torch.zeros_like(output), target))


def sums_over_batch(task: Task, output: torch.Tensor, target: torch.Tensor) -> bool:
    """True when the loss is summed over samples: the same samples given twice score twice the loss (exact test)."""
    half = max(1, len(target) // 2)
    zeros, tgt = torch.zeros_like(output[:half]), target[:half]
    with torch.no_grad():
        single = float(task.compute_loss(zeros, tgt))
        double = float(task.compute_loss(torch.cat([zeros, zeros]), torch.cat([tgt, tgt])))
    return single > 0 and abs(double / single - 2) < 1e-3


def _tied_embedding(model: nn.Module) -> tuple[str, int, float] | None:
    """The name, width and weight std of an embedding whose weight a Linear also uses (an output head tied to the
    input embedding), or None."""
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and id(module.weight) in linear_weights:
            return name or "model", module.embedding_dim, float(module.weight.detach().float().std())
    return None


def loss_at_init(model: nn.Module, task: Task, batch: Batch) -> Check:
    """Catches logits scaled too large at init, a loss summed over the batch, and a negative (sign-flipped or
    log-less NLL) loss.

    Why: recipe step 2, "verify loss @ init": a fresh model should score about what an all-zero output scores
    (ln C for C classes); far above it means the output layer is mis-scaled (catalog M11, L6, L2, L5). Far below
    it is right when the output starts at a well-placed constant (a bias at the class prior or the target mean, a
    sigmoid head for targets in (0, 1)): it warns only below half the best constant's loss. A negative loss fails
    over class labels, whose probabilities cannot exceed 1; for regression targets a likelihood can be negative,
    so the check skips. Above it, a squared error is judged by the outputs' spread across samples: where their mean
    starts (a bias, the common component of a cosine similarity) is `init_bias`'s question and a few steps' work,
    not a mis-scaled layer; the ratio read is (mean y^2 + var f) / mean y^2, var f per output column.
    """
    model.eval()
    with torch.no_grad():
        output, target = task.outputs(model, batch)
        measured = float(task.compute_loss(output, target))
    expected = reference_loss(task, output, target)
    value: dict[str, Any] = {
        "loss": measured,
        "expected": expected,
        "ratio": measured / expected if expected > 0 else None,
    }
    if not math.isfinite(measured):
        return failed(
            "loss_at_init",
            f"the loss at init is {measured}: the forward pass already produces NaN/Inf; "
            "look for a log, division or exp of a value that can reach 0 or overflow.",
            value,
            expected,
        )
    if measured < 0 and task.kind == "regression":  # a density's NLL can be: no bug to read from the sign
        return skipped(
            "loss_at_init",
            f"the loss at init is negative ({measured:.4g}), as a likelihood of continuous or count targets can be (a "
            "density above 1, or a constant term left out, as Poisson NLL does): no reference value to compare with.",
        ).replace(value=value)
    if task.kind == "regression" and callable(task.loss) and (floor := constant_loss(task, target, output)) < 0:
        return skipped(  # a likelihood with its constant left out: its level is an offset, a ratio to it says nothing
            "loss_at_init",
            f"the loss at init is {measured:.4g}, but the best constant prediction scores {floor:.4g}: this loss goes "
            "below zero (a likelihood with a constant term left out, as Poisson NLL does), so its ratio to an all-zero "
            f"output's {expected:.4g} says nothing about the init.",
        ).replace(value=value | {"best_constant": floor})
    if measured < 0:
        return failed(
            "loss_at_init",
            f"the loss at init is negative ({measured:.4g}); a likelihood loss cannot be: "
            "the log is missing (NLLLoss fed probabilities or logits) or the sign is flipped. (If your loss "
            "can legitimately be negative, list loss_at_init in baseline.skip.)",
            value,
            expected,
        )
    if sums_over_batch(task, output, target):
        return failed(
            "loss_at_init",
            f"the loss doubles when the batch doubles (loss at init {measured:.4g}): it is "
            "summed over samples, so the effective learning rate scales with the batch. Use a mean reduction.",
            value,
            expected,
        )
    if expected <= 0:
        return skipped("loss_at_init", "no reference value: the loss of an all-zero output is 0 for this loss.")
    ratio = measured / expected
    what = "ln C" if task.loss == "cross_entropy" else "the loss of an all-zero output"
    seen = f"loss at init {measured:.4g} is {ratio:.2f}x"
    if task.loss == "mse" and measured > expected:  # judge the outputs' spread, not where their mean starts
        flat = output.float().reshape(len(output), -1)
        value["output_variance"] = spread = float(flat.var(0, unbiased=False).mean()) if len(flat) > 1 else 0.0
        if (expected + spread) / expected < ratio:
            ratio = (expected + spread) / expected
            seen = f"the outputs' spread at init (variance {spread:.3g}; loss {measured:.4g}) puts it at {ratio:.2f}x"
    large = large_inputs(task.split_batch(batch)[0]) if ratio > 2.0 else None
    if large:  # a default-initialised network carries its inputs' scale through to the logits
        value["large_inputs"] = large
        return failed(
            "loss_at_init",
            f"{seen} the {expected:.4g} a fresh model should give ({what}), "
            f"and the inputs are far from unit scale: {large} A default-initialised network carries that scale "
            "through to its outputs. Standardise the inputs with training statistics (see input_batch); if the "
            "loss is still high, scale down the final layer's init or remove any temperature on the output.",
            value,
            expected,
        )
    if ratio > 2.0 and (tied := _tied_embedding(model)) is not None:
        name, width, std = tied
        return failed(
            "loss_at_init",
            f"{seen} the {expected:.4g} a fresh model should give ({what}): the output layer shares its weight with "
            f"the embedding {name} (tied weights), initialised at std {std:.2g} as nn.Embedding is, so the logits "
            f"start about {std * width**0.5:.2g}x a unit-scale hidden state. Initialise the shared weight small: "
            f"nn.init.normal_({name}.weight, std={width**-0.5:.2g}) (or 0.02, as GPT-2 does).",
            value,
            expected,
        )
    if ratio > 2.0:
        return failed(
            "loss_at_init",
            f"{seen} the {expected:.4g} a fresh model should give ({what}): the final layer's weights or the "
            "logits are scaled too large. Use the default init for the last layer (or scale it down) and remove "
            "any temperature on the output.",
            value,
            expected,
        )
    if ratio < 0.5 and measured >= 0.5 * (floor := constant_loss(task, target, output)):
        return passed(  # a bias at the target mean or the class prior, a bounded head: a constant that scores well
            "loss_at_init",
            f"loss at init {measured:.4g}, below the {expected:.4g} of an all-zero output ({what}) as an output that "
            f"starts at a well-placed constant gives: the best constant prediction scores {floor:.4g} on this batch.",
            value | {"best_constant": floor},
            expected,
        )
    if ratio > 1.25 or ratio < 0.5:
        side = "above" if ratio > 1 else "below"
        return warned(
            "loss_at_init",
            f"{seen} {side} the expected {expected:.4g} "
            f"({what}); check the output layer's init scale and the loss reduction.",
            value,
            expected,
        )
    if "output_variance" in value and measured > 1.25 * expected:  # the excess is the outputs' common offset
        return passed(
            "loss_at_init",
            f"loss at init {measured:.4g} against {expected:.4g} ({what}): the outputs' spread (variance "
            f"{value['output_variance']:.3g}) accounts for {ratio:.2f}x, the rest is where their mean starts "
            "(init_bias's question, learned in a few steps).",
            value,
            expected,
        )
    return passed(
        "loss_at_init", f"loss at init {measured:.4g}, expected about {expected:.4g} ({what}).", value, expected
    )


AFFINE = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding)


def output_module(model: nn.Module, task: Task, batch: Batch) -> tuple[str, nn.Module] | None:
    """The innermost module whose output the model returns unchanged (the same tensor, not modified in place);
    None when a functional operation (F.relu, torch.softmax) or the task's forward makes the output."""
    leaves = [(n, m) for n, m in model.named_modules() if next(m.children(), None) is None]
    output, calls = recorded_forward(model, task, batch, leaves)
    for name, module, out, version in reversed(calls):  # the last one called: nn.ReLU(inplace=True) after Linear
        if out is output:
            return (name, module) if out._version == version else None
    return None


def output_kind(
    output: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    task: Task,
    final: tuple[str, nn.Module] | None = None,
) -> Check:
    """Catches probabilities (softmax/sigmoid outputs) handed to a loss that expects logits, and an output
    non-linearity that cannot reach the targets (ReLU on logits or on signed regression targets).

    Why: the loss at init does not see a softmax before cross-entropy (2.302 vs ln 10 = 2.303, catalog section 2.1);
    the output contract does, exactly (catalog L1, M10). It judges the architecture, not one random draw: given the
    outputs of several fresh initialisations (`outputs_at_init`), it fails only when every one of them breaks the
    contract (one fresh ReLU regression MLP in ten outputs no negative value by chance; five in a row, 1e-5). When
    the output is an affine layer's (`final`, from `output_module`), it can take either sign whatever the draw: no
    sign verdict. Run it on a trained model's output too: trained logits leave [0, 1].
    """
    outs = [output.detach().float()] if isinstance(output, torch.Tensor) else [o.detach().float() for o in output]
    if not all(bool(torch.isfinite(o).all()) for o in outs):
        return skipped("output_kind", "outputs are not finite; see the non-finite check.")
    value: dict[str, Any] = {
        "min": min(float(o.min()) for o in outs),
        "max": max(float(o.max()) for o in outs),
        "draws": len(outs),
    }
    drawn = f" (all {len(outs)} fresh initialisations)" if len(outs) > 1 else ""
    if final is not None:
        value["final_module"] = f"{type(final[1]).__name__} '{final[0]}'"
        drawn += f"; the output comes from {value['final_module']}"
    signed = final is not None and isinstance(final[1], AFFINE)  # a trainable affine map reaches both signs
    if task.loss == "cross_entropy":
        valid = (target != IGNORE_INDEX).unsqueeze(-1) if task.kind == "sequence" else torch.ones(1, dtype=torch.bool)
        deviation = [(o.sum(task.class_dim) - 1).abs() for o in outs]
        value["row_sum_max_deviation"] = max(float(d.max()) for d in deviation)
        if all(bool(((o >= 0) & (o <= 1)).all() and (d < 1e-3).all()) for o, d in zip(outs, deviation, strict=True)):
            return failed(
                "output_kind",
                f"every output row lies in [0, 1] and sums to 1{drawn}: the model returns "
                "probabilities but cross-entropy expects raw logits (it applies log-softmax itself). Remove "
                "the final softmax.",
                value,
                "unnormalised logits of both signs",
            )
        scored = [o[valid.expand_as(o)] for o in outs] if task.kind == "sequence" else outs
        if not signed and all(bool((o >= 0).all()) for o in scored):
            return failed(
                "output_kind",
                f"no output is ever negative{drawn}: a ReLU, sigmoid or abs on the logits clips them; "
                "return the last linear layer's output unchanged.",
                value,
                "logits of both signs",
            )
        return passed("output_kind", "outputs are unnormalised logits, as cross-entropy expects.", value)
    if task.loss == "bce_with_logits":
        if not signed and all(bool(((o >= 0) & (o <= 1)).all()) for o in outs):
            return failed(
                "output_kind",
                f"every output lies in [0, 1]{drawn or ' after training'}: the model applies a sigmoid but "
                "BCEWithLogits applies it again. Return raw logits.",
                value,
                "logits of both signs",
            )
        return passed("output_kind", "outputs are logits of both signs, as BCE-with-logits expects.", value)
    if task.loss in ("mse", "l1"):
        negative_targets = float((target.float() < 0).float().mean())
        value["negative_target_share"] = negative_targets
        if negative_targets > 0.1 and not signed and all(bool((o >= 0).all()) for o in outs):
            return failed(
                "output_kind",
                f"{negative_targets:.0%} of targets are negative but no output is{drawn}: a ReLU or "
                "similar on the output cannot reach them. Remove the output non-linearity.",
                value,
                "outputs covering the target range",
            )
        return passed("output_kind", "outputs can cover the range of the targets.", value)
    return skipped("output_kind", "custom loss: no output contract to check.")


def output_kind_at_init(make_model: Callable[[], nn.Module], task: Task, batch: Batch, draws: int = 5) -> Check:
    """`output_kind` judged on the architecture: the outputs of `draws` fresh initialisations and the module the
    output comes from; a verdict on their sign stands only where the head cannot cross zero (`reach`)."""
    final = output_module(make_model(), task, batch)
    check = output_kind(*outputs_at_init(make_model, task, batch, draws), task, final)
    return biased_not_clipped(check, make_model, task, batch)


def class_weights_amplify(task: Task, target: torch.Tensor, value: dict[str, Any]) -> Check | None:
    """A warn when the task's class weights make the weighted class prior further from uniform than the labels are:
    they weight frequent classes up, the mirror of what class weights are for (weights in the wrong class order)."""
    weights = task.class_weights if task.class_weights is not None else torch.ones(task.num_classes or 2)
    labels_gap = math.log(task.num_classes or 2) - constant_loss(task.replace(class_weights=None), target)
    value.update(label_prior_gap_nats=labels_gap, class_weights=[round(float(w), 4) for w in weights[:16]])
    if labels_gap <= 0.1 or value["prior_gap_nats"] <= labels_gap + 0.1:  # balanced labels, or weights that even out
        return None
    return warned(
        "init_bias",
        f"the class weights push the weighted class prior further from uniform ({value['prior_gap_nats']:.2f} nats) "
        f"than the labels are ({labels_gap:.2f}): frequent classes weigh more, the reverse of balancing. Weights are "
        "read in class-id order (weight[c] for class c): check the order, or use class_weights='balanced' (if frequent "
        "classes are meant to weigh more, list init_bias in baseline.skip).",
        value,
        "class weights that even out the class prior",
    )


def _absent_classes(task: Task, target: torch.Tensor) -> list[int]:
    """Class ids below `num_classes` that occur in neither split's labels (ids reserved for later, say)."""
    if task.loss != "cross_entropy" or task.kind == "sequence" or not task.num_classes:
        return []
    seen = torch.zeros(task.num_classes, dtype=torch.bool)
    for labels in (target, task.targets("val", limit=50_000)):
        valid = labels[(labels >= 0) & (labels < task.num_classes)].long()
        seen[valid] = True
    return (~seen).nonzero().flatten().tolist()


def init_bias(task: Task, model_factory: Any, batch: Batch, device: torch.device) -> Check:
    """Catches imbalanced classes or targets far from zero left to the default init (a "hockey stick" loss curve).

    Why: recipe step 2, "init well": with a 1:10 imbalance or a target mean of 50, set the final bias to the log
    priors / the mean, so the first iterations are not spent learning it. The verdict comes from the data: the loss
    a bias-only model saves at init (ln C minus the label entropy, or mean² against the variance), and from the
    model: a warn needs setting the bias to save at least half of that on a batch (an init already at the prior
    passes).
    """
    target = task.targets("train", limit=50_000)
    values = bias_values(task, target)
    if values is None:
        return skipped("init_bias", "custom loss: no standard output bias to derive.")
    model = model_factory().to(device).eval()
    found = final_layer(model, task, batch)
    if found is None:
        return skipped(
            "init_bias",
            "could not identify the final layer (no module with a bias produces the output); "
            "set its bias to the log class priors / target mean yourself.",
        )
    with torch.no_grad():
        output, tgt = task.outputs(model, batch)
        before = float(task.compute_loss(output, tgt))
        init_output_bias(model, task, device)
        output, tgt = task.outputs(model, batch)
        after = float(task.compute_loss(output, tgt))
    value = {"layer": found[0], "loss_before": before, "loss_after": after}
    if task.loss in ("cross_entropy", "bce_with_logits"):
        uniform = math.log(task.num_classes or 2) if task.loss == "cross_entropy" else math.log(2)
        gap = uniform - constant_loss(task, target)
        value["prior_gap_nats"] = gap
        if task.class_weights is not None and task.kind != "sequence":
            amplified = class_weights_amplify(task, target, value)
            if amplified:
                return amplified
        absent = _absent_classes(task, target)
        # classes declared but in neither split (reserved ids) are learned down in the first steps: the imbalance
        # that matters is among the classes that occur
        imbalance = gap - (math.log(task.num_classes or 2) - math.log((task.num_classes or 2) - len(absent)))
        needed = imbalance > 0.1 and task.kind != "sequence"
        expected_saving = gap
        prior = "log class priors (log p_c)" if task.loss == "cross_entropy" else "positives' log-odds (log p/(1-p))"
        fix = f"set {found[0]}.bias to the {prior} in your model's init"
        why = f"the labels are imbalanced: the class prior saves {gap:.2f} nats over uniform at init"
        if task.class_weights is not None:
            why = f"under the class weights the weighted class prior saves {gap:.2f} nats over uniform at init"
        if absent:
            value["absent_classes"] = absent[:20]
            if not needed:
                return passed(
                    "init_bias",
                    f"{len(absent)} of the {task.num_classes} classes occur in neither split "
                    f"({', '.join(map(str, absent[:8]))}{', ...' if len(absent) > 8 else ''}): their logits are "
                    f"learned down in the first steps, and the classes that occur are balanced enough "
                    f"({imbalance:.2f} nats from uniform).",
                    value,
                )
    else:
        mean, std = float(target.float().mean()), float(target.float().std())
        value.update(target_mean=mean, target_std=std)
        needed = abs(mean) > max(std, 1e-12)
        expected_saving = mean**2 if task.loss == "mse" else abs(mean)
        fix = f"standardise the targets ((y - {mean:.4g}) / {std:.4g}) or set {found[0]}.bias to {mean:.4g}"
        why = f"the targets sit {abs(mean) / max(std, 1e-12):.1f} standard deviations from zero"
    if needed and before - after < 0.5 * expected_saving:  # the model's own init already sits near the prior
        return passed(
            "init_bias",
            f"{why}, and {found[0]}'s initial bias already accounts for it: setting it from the targets changes the "
            f"loss at init only from {before:.4g} to {after:.4g}.",
            value,
        )
    if needed:
        return warned(
            "init_bias",
            f"{why}; with the default init the first steps only learn the bias. For this run "
            f"the bias was set (loss at init {before:.4g} -> {after:.4g}); to fix it for good, {fix}.",
            value,
            "balanced classes / targets centred near zero",
        )
    return passed(
        "init_bias",
        f"final-layer bias {found[0]} set from the training targets (loss at init {before:.4g} -> {after:.4g}).",
        value,
    )
