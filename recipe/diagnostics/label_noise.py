"""Label noise: out-of-fold probabilities from quick models, then confident learning to name the wrong labels.

`find_label_issues` trains quick models k-fold on the training split (a linear probe on the flattened inputs and the
task's own model through `fit`), temperature-calibrates each on its held-out folds and averages them, then runs
confident learning: per-class thresholds (the mean probability a class gets on the samples labelled with it), the
confident joint of given and likely-true labels calibrated to the label counts, and from it the number of wrong
labels. That many samples, lowest probability of their given label first, are the suspects. A second round
retrains without the first round's suspects, so the probabilities no longer imitate the noise they must expose; it
runs only when the first round finds the training labels worse than held-out ones by more than a point.
The fold models also score the validation split, each its share, and confident learning runs there too: what the
same quick models show on held-out data of this difficulty. `label_noise` turns the two rates into a verdict, and
only when the quick models learn: a probe at chance (a linear probe on waveforms) is no evidence about the labels.

Why: recipe step 1, "How noisy are the labels?", and catalog D2; Northcutt, Jiang & Chuang, "Confident Learning:
Estimating Uncertainty in Dataset Labels", JAIR 2021; Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017 (temperature scaling).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from recipe.check import Check, failed, passed, skipped, warned
from recipe.diagnostics.quick_models import (
    L2_GRID,
    MIN_PER_CLASS,
    QuickModels,
    choose_members,
    learns,
    linear_budget,
    majority_share,
    step_flops,
    stratified_folds,
)
from recipe.errors import ConfigError
from recipe.joined import joined_features, joined_tokens
from recipe.reproducibility import resolve_device
from recipe.task import Task

PROBES = ("auto", "linear", "model", "both")
MIN_EXCESS = 0.01  # the smallest excess of training over validation noise the check reports
LINEAR_BUDGET = 4  # the linear probe's first round may take this many times the task model's budget (model_gflop)


@dataclass
class LabelIssues:
    """What `find_label_issues` measured on the training split.

    Attributes:
        estimated_noise_rate: the fraction of training labels confident learning estimates to be wrong.
        indices: training-split indices judged mislabeled, most suspicious first; none when the quick models did
            not learn (their out-of-fold accuracy did not beat the commonest label's share).
        given: the given label of each index.
        predicted: the quick models' predicted label of each index.
        probs: (n, C) out-of-fold probabilities, aligned with `positions`.
        positions: the training indices that were scored (all, or a sample when the split is large).
        baseline_rate: the same estimate on the validation split, each sample scored by one of the same fold models:
            what held-out data of this difficulty shows, with the labels the user evaluates against.
        baseline_samples: how many validation samples `baseline_rate` was measured on.
        agreement: out-of-fold accuracy of the first round's quick models against the given labels.
        chance: accuracy of always predicting the most frequent training label.
        probe: which quick models made the probabilities, e.g. "linear probe + task model, 5-fold, 2 rounds".
        seconds: wall time of the whole search.
        sampled: True when `positions` is a sample of a larger training split.
        val_agreement: when the training labels taught the quick models nothing, their out-of-fold accuracy when
            trained k-fold on the validation split's own labels (can they learn this task at all?); else None.
        val_chance: accuracy of always predicting the most frequent validation label.
        note: why a stronger probe was not tried, when it was not (the task model over the FLOP budget).
    """

    estimated_noise_rate: float
    indices: list[int]
    given: list[int]
    predicted: list[int]
    probs: torch.Tensor
    positions: list[int]
    baseline_rate: float
    baseline_samples: int
    agreement: float
    chance: float
    probe: str
    seconds: float
    sampled: bool
    val_agreement: float | None = None
    val_chance: float = 0.0
    note: str = ""


# ---- confident learning ---------------------------------------------------------------------------------------------


def confident_joint(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (given label i, likely true label j), calibrated so row i sums to the number of samples labelled i.

    A sample counts towards column j when p_j reaches class j's threshold, the mean p_j over the samples labelled j
    (the largest such p_j when several do); samples confident in no class are left out before the rows are
    rescaled to the label counts (Northcutt et al. 2021, eqs. 1-2).
    """
    given = F.one_hot(labels, num_classes).float()
    counts = given.sum(0)
    thresholds = (given * probs).sum(0) / counts.clamp_min(1)
    above = probs >= thresholds - 1e-6
    guess = torch.where(above, probs, torch.full_like(probs, -1.0)).argmax(1)
    keep = above.any(1)
    joint = torch.zeros(num_classes, num_classes, dtype=probs.dtype)
    joint.index_put_((labels[keep], guess[keep]), torch.ones(int(keep.sum()), dtype=probs.dtype), accumulate=True)
    joint.diagonal().clamp_(min=1)  # every class keeps at least one sample it is sure of
    return joint / joint.sum(1, keepdim=True) * counts[:, None]


def confident_learning(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, float]:
    """(suspects, estimated noise rate): the estimated number of wrong labels, taken lowest probability of the given
    label first, among samples whose given label is not the most probable; positions into `probs`, most suspicious
    first."""
    joint = confident_joint(probs, labels, num_classes)
    rate = float(1 - joint.diagonal().sum() / len(labels))
    self_confidence = probs[torch.arange(len(labels)), labels]
    order = self_confidence.argsort()[: round(rate * len(labels))]
    disagrees = probs[order].argmax(1) != labels[order]
    disagrees &= probs[order].max(1).values > self_confidence[order]  # ties keep the given label
    return order[disagrees], rate


def _not_applicable(task: Task) -> str | None:
    """Why confident learning does not apply to this task, or None when it does."""
    if task.kind != "classification":
        return f"the task is {task.kind}; label noise is estimated for single-label classification only"
    if task.loss != "cross_entropy":
        name = task.loss if isinstance(task.loss, str) else "a callable"
        return f"the loss is {name}; confident learning needs one class per sample (cross_entropy)"
    inputs, target = task.split_batch(task.batch("train", [0]))
    if not isinstance(inputs, torch.Tensor) and joined_features(inputs) is None and joined_tokens(inputs) is None:
        return "the inputs are not tensors"
    if target.dim() != 1:
        return "the targets are not one class id per sample"
    counts = torch.bincount(task.targets("train").long().flatten().clamp_min(0))
    typical = int(counts[counts > 0].median()) if bool((counts > 0).any()) else 0
    if typical < MIN_PER_CLASS:
        return (
            f"the training split holds a median of {typical} samples per class; out-of-fold probabilities need about "
            f"{MIN_PER_CLASS} per class to set each class's confidence threshold"
        )
    return None


def _sample(n: int, size: int, generator: torch.Generator) -> list[int]:
    """All of range(n), or a sorted random sample of `size` of them."""
    return list(range(n)) if n <= size else sorted(torch.randperm(n, generator=generator)[:size].tolist())


def find_label_issues(
    task: Task,
    folds: int = 5,
    max_samples: int = 20_000,
    seed: int = 0,
    device: str | torch.device = "cpu",
    *,
    probe: str = "auto",
    rounds: int = 2,
    epochs: int = 10,
    min_steps: int = 100,
    max_steps: int = 500,
    lr: float = 2e-3,
    batch_size: int = 128,
    model_gflop: float | None = None,
) -> LabelIssues | None:
    """Find the training labels that are likely wrong; None when confident learning does not apply to the task.

    Args:
        task: a single-label classification task with cross-entropy loss and tensor inputs.
        folds: k of the k-fold training that makes out-of-sample probabilities.
        max_samples: score a seeded random sample of this many training samples when the split is larger.
        seed: seeds the sample, the folds and every training run.
        device: where the quick models train.
        probe: "linear" (logistic regression on flattened, standardised inputs, or on each token id's count for
            token inputs), "model" (the task's model through `fit`), "both" (their calibrated average), or "auto":
            both, unless training the task's model would cost more than `model_gflop` (then the linear probe) or
            the inputs are neither tokens nor floats of at most 4,096 features (then the task's model). Under
            "auto", a linear probe that does not learn (`learns`) hands the budget to the task's model for one
            round, when one round fits in it. A member that does not learn while another does is left out of the
            average.
        rounds: 2 retrains without the first round's suspects when the first round's training estimate exceeds
            the validation one by more than `MIN_EXCESS` (on clean labels the suspects are hard samples, and
            retraining without them changes nothing but the cost); 1 keeps the first round.
        epochs, min_steps, max_steps, lr, batch_size: the task model's quick training: `epochs` passes, clamped to
            [min_steps, max_steps] optimizer steps, AdamW at `lr`. Batches of 128 at 2e-3 see the samples that
            batches of 64 at 1e-3 would (the linear scaling rule) in half the optimizer steps, and a small model's
            step costs more in framework overhead than in arithmetic: the scan took 0.7x the time on digits.
        model_gflop: the training compute the task's model may take under "auto", all fits together, counted on one
            step by `torch.utils.flop_counter`; default 50 GFLOP on a CPU (seconds), 50,000 on a GPU.
    """
    if probe not in PROBES:
        raise ConfigError(f"probe={probe!r} is not known; use one of {', '.join(PROBES)}.")
    if folds < 2 or rounds < 1:
        raise ConfigError(f"folds must be at least 2 and rounds at least 1, got folds={folds}, rounds={rounds}.")
    if _not_applicable(task) is not None:
        return None
    start = time.perf_counter()
    dev = resolve_device(device)
    task.validate(dev)
    g = torch.Generator().manual_seed(seed)
    positions = _sample(len(task.train), max_samples, g)
    labels = task.targets("train")[positions].long()
    classes = int(task.num_classes or int(labels.max()) + 1)
    steps_per_fold = math.ceil(len(positions) * (folds - 1) / folds / batch_size)
    steps = min(max(epochs * steps_per_fold, min_steps), max_steps)
    fit_kwargs = dict(
        epochs=None,
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        device=dev,
        progress=False,
        evaluate_every_epoch=False,
        log=None,
    )
    gflop = model_gflop if model_gflop is not None else (5e4 if dev.type == "cuda" else 50.0)
    members = choose_members(task, probe, positions, batch_size, gflop * 1e9 / (steps * folds * rounds))
    grid: tuple[float, ...] = L2_GRID
    if "linear" in members:
        afforded = linear_budget(task, len(positions), classes, folds, LINEAR_BUDGET * gflop * 1e9)
        if afforded is None:
            members.remove("linear")
            if not members:
                return None
        else:
            rows, grid = afforded
            if rows < len(positions):
                positions = [positions[i] for i in _sample(len(positions), rows, g)]
                labels = task.targets("train")[positions].long()
    val_rows = _sample(len(task.val), max_samples, g)
    val_labels = task.targets("val")[val_rows].long()
    models = QuickModels(task, positions, labels, val_rows, members, fit_kwargs, grid)

    fold, val_fold = stratified_folds(labels, folds, seed), stratified_folds(val_labels, folds, seed + 1)
    suspects = torch.zeros(len(labels), dtype=torch.bool)
    probs, val_probs = models.out_of_fold(fold, val_fold, suspects, choose=True)
    chance, note = majority_share(labels), ""
    if not learns(_accuracy(probs, labels), chance, len(labels)) and probe == "auto" and members == ["linear"]:
        # the linear probe cannot separate the classes: the task's model gets the whole budget for one round
        cost = step_flops(task, positions[:batch_size]) * steps * folds
        if cost <= gflop * 1e9:
            models = QuickModels(task, positions, labels, val_rows, ["model"], fit_kwargs)
            models.dropped, rounds = ["linear"], 1
            probs, val_probs = models.out_of_fold(fold, val_fold, suspects, choose=True)
        else:
            note = f"one round of the task model's quick training costs {cost / 1e9:.3g} GFLOP, over {gflop:g}"
    agreement = _accuracy(probs, labels)
    found, rate = confident_learning(probs, labels, classes)
    _, baseline = confident_learning(val_probs, val_labels, classes)
    done = 1
    learned = learns(agreement, chance, len(labels))
    # again only while the training labels look worse than held-out ones by more than a point (the check's smallest
    # effect): below that, the suspects are what hard samples look like, and past half the rest is no cleaner
    while learned and done < rounds and baseline + MIN_EXCESS < rate < 0.5:
        suspects[found] = True
        probs, val_probs = models.out_of_fold(fold, val_fold, suspects, choose=False)
        found, rate = confident_learning(probs, labels, classes)
        _, baseline = confident_learning(val_probs, val_labels, classes)
        done += 1
    val_agreement = None
    if not learned:  # a probe at chance names no suspects: its doubts are about itself, not the labels
        found = found[:0]
        val_agreement = _val_agreement(task, val_rows, val_labels, val_fold, models.members, fit_kwargs)
    names = {"linear": "linear probe", "model": "task model"}
    dropped = f" ({' and '.join(names[m] for m in models.dropped)} left out: at chance)" if models.dropped else ""
    return LabelIssues(
        estimated_noise_rate=rate,
        indices=[positions[i] for i in found.tolist()],
        given=labels[found].tolist(),
        predicted=probs[found].argmax(1).tolist(),
        probs=probs,
        positions=positions,
        baseline_rate=baseline,
        baseline_samples=len(val_rows),
        agreement=agreement,
        chance=float(torch.bincount(labels).max() / len(labels)),
        probe=" + ".join(names[m] for m in models.members) + f", {folds}-fold, {done} round{'s' * (done > 1)}{dropped}",
        seconds=time.perf_counter() - start,
        sampled=len(positions) < len(task.train),
        val_agreement=val_agreement,
        val_chance=majority_share(val_labels),
        note=note,
    )


def _accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(1) == labels).float().mean())


def _val_agreement(
    task: Task, rows: list[int], labels: torch.Tensor, fold: torch.Tensor, members: list[str], fit_kwargs: dict
) -> float:
    """Out-of-fold accuracy of the same quick models trained k-fold on the validation split's own labels: whether
    they can learn this task at all, asked only when the training labels taught them nothing."""
    models = QuickModels(task.replace(train=task.val), rows, labels, [], members, fit_kwargs)
    probs, _ = models.out_of_fold(fold, fold[:0], torch.zeros(len(rows), dtype=torch.bool), choose=True)
    return _accuracy(probs, labels)


def label_noise(issues: LabelIssues | None, task: Task) -> Check:
    """Catches wrong training labels (annotation errors, a class map applied to part of the data, shuffled labels):
    confident learning's estimate on the training split, judged against the same estimate on the validation split.

    Why: Northcutt et al., JAIR 2021. The reference is what the same quick models show on held-out labels of the
    same data, not zero: hard samples look mislabeled too (catalog D2: out-of-fold logistic regression disagrees
    with 3.3% of clean digits labels). Its evidence counts only when the quick models learn: their out-of-fold
    accuracy must beat the commonest label's share by 3 binomial standard errors, else the check skips (a probe at
    chance says nothing about the labels) unless the same models learn the validation split's own labels, which
    shows the training labels do not follow the inputs (fail). Warn when the training estimate exceeds the
    validation one by 3 standard errors and by at least 1 point; fail when most training labels look wrong.
    """
    if issues is None:
        reason = _not_applicable(task) or (
            f"a linear probe over {task.num_classes} classes (at least {MIN_PER_CLASS} rows each) and the task "
            "model's quick training both cost more than the scan's compute budget; inspect.label_noise: false turns "
            "it off"
        )
        return skipped("label_noise", f"not applicable: {reason}.")
    n, m = len(issues.positions), issues.baseline_samples
    rate, base = issues.estimated_noise_rate, issues.baseline_rate
    value: dict[str, Any] = {"estimated_noise_rate": rate, "baseline_rate": base, "suspects": len(issues.indices)}
    value |= {"probe": issues.probe, "sampled": issues.sampled, "out_of_fold_accuracy": issues.agreement}
    value |= {"majority_accuracy": issues.chance}
    expected = f"at most the validation split's {base:.1%} plus sampling error"
    if not learns(issues.agreement, issues.chance, n):
        return _no_signal(issues, value)
    seen = (
        f"confident learning estimates {rate:.1%} of {n}{' sampled' * issues.sampled} training labels wrong "
        f"({len(issues.indices)} suspects; {issues.probe}) against {base:.1%} of {m} validation labels"
    )
    r, b = (rate * n + 1) / (n + 2), (base * m + 1) / (m + 2)  # smoothed: 0 of 30 is not known to be exactly 0
    excess, se = rate - base, math.sqrt(r * (1 - r) / n + b * (1 - b) / m)
    if excess >= 0.5:
        return failed(
            "label_noise",
            f"{seen}: most training labels look wrong, {excess:.0%} more than on validation. Check that inputs and "
            "labels are paired (shuffled or sorted separately) and that one class map is used for every split.",
            value,
            expected,
        )
    if excess > max(3 * se, MIN_EXCESS):
        return warned(
            "label_noise",
            f"{seen}: about {excess:.1%} of the training labels look wrong. Look at the suspects in "
            "label_issues.json (most suspicious first), then fix or drop the wrong labels.",
            value,
            expected,
        )
    note = f"; {excess:.1%} more is within sampling error of {m} validation samples" if excess > MIN_EXCESS else ""
    return passed("label_noise", f"{seen}: no more than held-out data of this difficulty{note}.", value, expected)


def _no_signal(issues: LabelIssues, value: dict[str, Any]) -> Check:
    """The verdict when the training labels teach the quick models nothing: a fail only when the same models learn
    the validation split's own labels (they can learn this task, so the training labels do not follow the inputs),
    else a skip: the probe is too weak to judge."""
    n, m = len(issues.positions), issues.baseline_samples
    seen = (
        f"the quick models ({issues.probe}) reach {issues.agreement:.1%} out-of-fold accuracy on {n} training "
        f"labels, no better than always predicting the commonest label ({issues.chance:.1%})"
    )
    value |= {"val_out_of_fold_accuracy": issues.val_agreement, "val_majority_accuracy": issues.val_chance}
    if issues.val_agreement is not None and learns(issues.val_agreement, issues.val_chance, m):
        return failed(
            "label_noise",
            f"{seen}, yet trained on the validation split's own labels they reach {issues.val_agreement:.1%} "
            f"(commonest label {issues.val_chance:.1%}): the training labels do not follow the inputs. Check that "
            "inputs and labels are paired (shuffled or sorted separately) and that one class map is used for every "
            "split.",
            value,
            "out-of-fold accuracy above the commonest label's share",
        )
    on_val = (
        f", and {issues.val_agreement:.1%} on the validation split's own labels"
        if issues.val_agreement is not None
        else ""
    )
    stronger = f"; {issues.note}: pass a larger model_gflop or probe='model'" if issues.note else ""
    return skipped(
        "label_noise",
        f"{seen}{on_val}: a probe that cannot learn the task says nothing about its labels{stronger}.",
    ).replace(value=value)
