"""Looking at the mistakes: which classes the model gets wrong, which validation samples cost it most, and where a
regression's residuals are largest.

Why: Karpathy's recipe, "if your network gives you predictions that are not consistent with what you have seen in
the data, something is off" (step 1) and "visualize prediction dynamics" (step 2); fastai's `plot_top_losses` and
the confusion matrix. This is looking, not gating: the check warns at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import betabinom, binom, norm
from torch import nn

from recipe.check import Check, passed, skipped, warned
from recipe.data import eval_batches
from recipe.evaluation import without_autograd
from recipe.task import Task

BELOW = 3.0  # a class is named when its recall lies this far under the accuracy: 3 SE, one-sided p < 0.00135
P_BELOW = float(norm.sf(BELOW))
MAX_FEATURES = 50  # tabular features binned for a regression's residuals, at most
BINS = 5  # quantile bins per feature


@dataclass
class Predictions:
    """The model's outputs on the whole validation split, on the CPU.

    Attributes:
        output: the model's outputs, in sample order; for a sequence task, the predicted token ids (B, T) (the logits
            over a vocabulary would not fit).
        target: the targets.
        loss: each sample's loss (N,).
        features: the inputs when they are a float matrix (N, F) of tabular features, else None.
    """

    output: torch.Tensor
    target: torch.Tensor
    loss: torch.Tensor
    features: torch.Tensor | None = None


def validation_predictions(task: Task, model: nn.Module, device: torch.device, batch_size: int = 512) -> Predictions:
    """Outputs, targets and per-sample losses over the whole validation split, in eval mode."""
    was_training = model.training
    model.eval()
    outputs, targets, losses = [], [], []
    features: list[torch.Tensor | None] = []
    with without_autograd(model):
        for batch in eval_batches(task.val, batch_size, device):
            output, target = task.outputs(model, batch)
            per_sample = task.loss_per_sample(output.float(), target)
            if per_sample is None:  # a user's loss gives one number per batch: score each sample alone
                per_sample = torch.stack(
                    [task.compute_loss(o[None].float(), t[None]) for o, t in zip(output, target, strict=True)]
                )
            inputs, _ = task.split_batch(batch)
            flat = isinstance(inputs, torch.Tensor) and inputs.is_floating_point() and inputs.dim() == 2
            outputs.append(output.argmax(-1).cpu() if task.kind == "sequence" else output.float().cpu())
            targets.append(target.cpu())
            losses.append(per_sample.float().cpu())
            features.append(inputs.float().cpu() if flat and task.images(inputs) is None else None)
    model.train(was_training)
    matrix = [f for f in features if f is not None]
    tabular = len(matrix) == len(features)
    return Predictions(
        torch.cat(outputs), torch.cat(targets), torch.cat(losses), torch.cat(matrix) if tabular else None
    )


def worst_samples(predictions: Predictions, k: int = 16) -> list[int]:
    """Indices (into the validation split) of the `k` samples with the highest loss, worst first."""
    finite = torch.nan_to_num(predictions.loss, nan=math.inf)
    return finite.topk(min(k, len(finite))).indices.tolist()


def confusion(predictions: Predictions, num_classes: int) -> torch.Tensor:
    """Counts (given class, predicted class) over the validation split, shape (K, K)."""
    given, predicted = predictions.target.long(), predictions.output.argmax(1)
    scored = (given >= 0) & (given < num_classes)  # unscored positions (IGNORE_INDEX) are no class
    given, predicted = given[scored], predicted[scored]
    matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)
    return matrix.index_put_((given, predicted), torch.ones_like(given), accumulate=True)


def prediction_errors(predictions: Predictions, task: Task) -> Check:
    """Names the classes the model gets wrong far more often than the others (a class learned badly: labels of one
    class scrambled or mixed with another, too few examples, a class the inputs cannot tell apart), and for a
    regression the target and feature ranges where its errors are largest.

    Why: the recipe's "look at the mistakes". Each class's errors are compared with what the overall error rate
    gives over the class's validation samples: a class is named when so many errors have a binomial tail
    probability under 0.00135, the one-sided 3-standard-error level (exact, so two errors in one class of a
    near-perfect model are not named as the normal approximation would). Classes differ in difficulty: when the
    other classes' error rates spread beyond binomial noise, the tail is the beta-binomial with that spread (a
    model from five images per class has recalls 0.47-0.91, and the weakest is not an outlier among them).
    It warns: a look, not a verdict. With two classes nothing tells a harder class from a mislabelled one (the
    overall rate averages the two): their recalls are shown and pass.
    Regressions pass and name the bins whose mean loss lies more than 3 standard errors above the overall mean.
    """
    output, target = predictions.output, predictions.target
    if task.kind == "regression":
        return _regression(predictions)
    columns = output.shape[1] if output.dim() == 2 else None
    if (
        task.kind != "classification"
        or target.dim() != 1
        or columns is None
        or task.loss == "bce_with_logits"
        or (
            task.num_classes and columns != task.num_classes  # not a logit per class (ordinal cumulative logits)
        )
    ):
        worst = worst_samples(predictions)
        loss = float(predictions.loss.mean())
        return passed(
            "prediction_errors",
            f"per-class recall applies to one class label per sample; the highest-loss validation samples cost "
            f"{float(predictions.loss[worst[0]]):.4g} against {loss:.4g} on average: look at them.",
            {"loss": loss, "worst": worst},
        )
    matrix = confusion(predictions, output.shape[1])
    n, correct = matrix.sum(1), matrix.diagonal()
    accuracy = float(correct.sum() / n.sum())
    untrained = _no_better_than_constant(output, target, n, accuracy)
    if untrained is not None:
        return skipped(
            "prediction_errors",
            f"cannot judge: the model is no better than a constant prediction on validation ({untrained}), so which "
            "classes it gets wrong says how it leans, not what the classes hold. Train it until it learns (see "
            "capacity and still_improving), then look again.",
        )
    rows: list[dict[str, Any]] = []
    present = [int(c) for c in torch.nonzero(n).flatten()]
    for c in present:
        recall, count, others = float(correct[c] / n[c]), int(n[c]), [o for o in present if o != c]
        off = matrix[c].clone()
        off[c] = 0
        null_se = math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / count)
        errors = count - int(correct[c])
        rows.append(
            {
                "class": c,
                "n": count,
                "share": count / float(n.sum()),
                "recall": recall,
                "se": math.sqrt(recall * (1 - recall) / count),
                "z": (recall - accuracy) / null_se,
                "p": _class_tail(errors, count, 1 - accuracy, [(int(n[o] - correct[o]), int(n[o])) for o in others]),
                "mostly_predicted_as": int(off.argmax()) if int(off.sum()) else None,
            }
        )
    worst = worst_samples(predictions)
    if len(rows) < 3:  # two classes: the pooled rate averages them, so the harder one always sits above it
        value = {"accuracy": accuracy, "classes": rows, "below": [], "worst": worst}
        recalls = ", ".join(f"class {r['class']} {r['recall']:.3f} ± {r['se']:.3f} of {r['n']}" for r in rows)
        return passed(
            "prediction_errors",
            f"recall {recalls}, accuracy {accuracy:.3f}. With two classes the overall error rate is theirs averaged, "
            "so the harder class always lies under it and no other class shows how much classes differ: shown, not "
            "judged. See the confusion matrix and the highest-loss samples.",
            value,
        )
    below = sorted((r for r in rows if r["p"] < P_BELOW), key=lambda r: r["p"])
    value = {"accuracy": accuracy, "classes": rows, "below": [r["class"] for r in below], "worst": worst}
    if not below:
        weakest = min(rows, key=lambda r: r["recall"])
        return passed(
            "prediction_errors",
            f"no class lies more than {BELOW:g} SE under the accuracy {accuracy:.3f}; the weakest, class "
            f"{weakest['class']}, has recall {weakest['recall']:.3f} over {weakest['n']}. See the confusion matrix "
            "and the highest-loss samples.",
            value,
        )
    named = "; ".join(_describe(r) for r in below[:5]) + (f"; and {len(below) - 5} more" if len(below) > 5 else "")
    return warned(
        "prediction_errors",
        f"{len(below)} class(es) are recognised far less often than the accuracy {accuracy:.3f}: {named}. Look at "
        "their training labels and samples (mislabelled, or mixed with the class they are taken for?) and at the "
        "highest-loss samples. A class that is only harder or rarer is learned last: a longer run narrows its gap, and "
        "class weights or more of its samples help a rare one.",
        value,
        f"every class's recall within {BELOW:g} SE of the accuracy",
    )


def _no_better_than_constant(
    output: torch.Tensor, target: torch.Tensor, n: torch.Tensor, accuracy: float
) -> str | None:
    """How a classifier compares with a constant prediction when it does not beat one by 2 standard errors on
    either measure (one whose task has a class's labels scrambled beats it by 2.7 on log-loss only): accuracy
    against the most frequent class's share, or log-loss of its softmax against the class shares' (paired per
    sample; the validation shares are the best constant there). None when it beats one: a model of an imbalanced
    task that learned beats it on log-loss even where its accuracy is the majority's."""
    total = float(n.sum())
    majority = float(n.max()) / total
    if accuracy - majority > 2 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / total):
        return None
    scored = (target >= 0) & (target < output.shape[1])
    y, logits = target[scored].long(), output[scored].double()
    model = -logits.log_softmax(1).gather(1, y[:, None])[:, 0]
    constant = -(n.double() / total).clamp_min(1e-300).log()[y]
    gain = constant - model
    if len(gain) > 1 and float(gain.mean()) > 2 * float(gain.std()) / math.sqrt(len(gain)):
        return None
    return (
        f"accuracy {accuracy:.3f} against {majority:.3f} for the most frequent class, log-loss "
        f"{float(model.mean()):.4g} against {float(constant.mean()):.4g} for the class shares"
    )


def _class_tail(errors: int, count: int, rate: float, others: list[tuple[int, int]]) -> float:
    """P(at least `errors` errors in `count` samples) for a class whose error rate varies around `rate` as the
    other classes' (`others`: their errors and counts) vary beyond binomial noise: a beta-binomial with that spread,
    the binomial when they do not spread (classes differ in difficulty; one class is named only beyond that)."""
    if not errors:
        return 1.0
    e = torch.tensor(others, dtype=torch.float64).reshape(-1, 2)
    spread = 0.0
    if len(e) >= 2:  # two others already show a spread: lines of two of three stdlib modules are alike
        spread = float((e[:, 0] / e[:, 1]).var() - (rate * (1 - rate) / e[:, 1]).mean())
    if spread <= 0 or not 0 < rate < 1:
        return float(binom.sf(errors - 1, count, rate))
    total = max(rate * (1 - rate) / spread - 1, 1e-3)  # alpha + beta of the beta with that mean and variance
    return float(betabinom.sf(errors - 1, count, rate * total, (1 - rate) * total))


def _describe(row: dict[str, Any]) -> str:
    mistaken = "" if row["mostly_predicted_as"] is None else f", mostly taken for class {row['mostly_predicted_as']}"
    right = round(row["recall"] * row["n"])
    share = f", {row['share']:.0%} of the samples"
    return f"class {row['class']} recall {row['recall']:.3f} ± {row['se']:.3f} ({right} of {row['n']}{share}{mistaken})"


def binned_losses(values: torch.Tensor, loss: torch.Tensor, bins: int = BINS) -> list[dict[str, Any]]:
    """Mean loss and its standard error in quantile bins of `values` (ties kept in one bin)."""
    edges = torch.quantile(values.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)).unique()
    which = torch.bucketize(values.double(), edges[1:-1], right=True)
    out = []
    for b in range(len(edges) - 1):
        part = loss[which == b].double()
        if len(part) > 1:
            se = float(part.std() / math.sqrt(len(part)))
            low, high = float(edges[b]), float(edges[b + 1])
            out.append({"low": low, "high": high, "n": len(part), "loss": float(part.mean()), "se": se})
    return out


def residuals(predictions: Predictions) -> torch.Tensor | None:
    """Each sample's mean (prediction - target); None when the output holds other values than one prediction per
    target (a callable loss's quantiles or variance), which have no residual."""
    n = len(predictions.target)
    output, target = predictions.output.float().reshape(n, -1), predictions.target.float().reshape(n, -1)
    return (output - target).mean(1) if output.shape == target.shape else None


def _regression(predictions: Predictions) -> Check:
    loss, n = predictions.loss.double(), len(predictions.loss)
    overall = float(loss.mean())
    columns: dict[str, torch.Tensor] = {"target": predictions.target.reshape(n, -1).float().mean(1)}
    if predictions.features is not None:
        for j in range(min(predictions.features.shape[1], MAX_FEATURES)):
            columns[f"feature {j}"] = predictions.features[:, j]
    bins: list[dict[str, Any]] = []
    for name, values in columns.items():
        for b in binned_losses(values, loss):
            z = (b["loss"] - overall) / b["se"] if b["se"] > 0 else 0.0
            bins.append({"by": name, **b, "z": z})
    worst = sorted((b for b in bins if b["z"] > BELOW), key=lambda b: -b["z"])
    residual = residuals(predictions)
    mean_residual = None if residual is None else float(residual.mean())
    value: dict[str, Any] = {"loss": overall, "mean_residual": mean_residual, "worst_bins": worst[:10]}
    value["worst"] = worst_samples(predictions)
    if not worst:
        return passed(
            "prediction_errors",
            f"no target or feature range has a loss more than {BELOW:g} SE above the mean {overall:.4g}; see the "
            "residuals and the highest-loss samples.",
            value,
        )
    named = "; ".join(
        f"{b['by']} in [{b['low']:.3g}, {b['high']:.3g}]: loss {b['loss']:.4g} ± {b['se']:.2g} (n={b['n']})"
        for b in worst[:3]
    )
    return passed(
        "prediction_errors",
        f"errors are largest where {named}, against {overall:.4g} overall: look there first (a missing feature, "
        "too few samples, a noisier range).",
        value,
    )
