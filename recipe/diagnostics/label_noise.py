"""Label noise: out-of-fold probabilities from quick models, then confident learning to name the wrong labels.

`find_label_issues` trains quick models k-fold on the training split (a linear probe on the flattened inputs and the
task's own model through `fit`), temperature-calibrates each on its held-out folds and averages them, then runs
confident learning: per-class thresholds (the mean probability a class gets on the samples labelled with it), the
confident joint of given and likely-true labels calibrated to the label counts, and from it the number of wrong
labels. That many samples, lowest probability of their given label first, are the suspects. A second round
retrains without the first round's suspects, so the probabilities no longer imitate the noise they must expose.
The fold models also score the validation split, each its share, and confident learning runs there too: what the
same quick models show on held-out data of this difficulty. `label_noise` turns the two rates into a verdict.

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
from torch.utils.flop_counter import FlopCounterMode

from recipe.check import Check, failed, passed, skipped, warned
from recipe.errors import ConfigError
from recipe.reproducibility import resolve_device
from recipe.task import Task

PROBES = ("auto", "linear", "model", "both")
_LINEAR_FEATURES = 4096  # widest flattened input the linear probe takes (a 64x64 RGB image is 12,288)
_L2_GRID = (1e-3, 1e-2, 1e-1)  # the probe's weight decay, chosen by out-of-fold log-loss


@dataclass
class LabelIssues:
    """What `find_label_issues` measured on the training split.

    Attributes:
        estimated_noise_rate: the fraction of training labels confident learning estimates to be wrong.
        indices: training-split indices judged mislabeled, most suspicious first.
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


# ---- quick models ---------------------------------------------------------------------------------------------------


def _linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float) -> torch.Tensor:
    """Multinomial logistic regression (weights with a bias row) fitted by L-BFGS on standardised inputs."""
    w = torch.zeros(x.shape[1] + 1, num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=100, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w[:-1] + w[-1], y) + 0.5 * l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _linear_logits(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, classes: int, l2: float):
    """Logits for `x_test` from a probe fitted on standardised `x_train` (statistics of the training rows only)."""
    mean, std = x_train.mean(0), x_train.std(0)
    std = std.clamp_min(1e-2 * float(std.mean()) + 1e-12)  # constant features must not explode on other rows
    w = _linear_probe((x_train - mean) / std, y_train.to(x_train.device), classes, l2)
    return (x_test - mean) / std @ w[:-1] + w[-1]


def _fit_model(task: Task, rows: list[int], seed: int, fit_kwargs: dict[str, Any]) -> torch.nn.Module:
    from recipe.fit import fit  # fit imports the diagnostics package

    out = fit(
        task.subset("train", rows), **{**fit_kwargs, "batch_size": min(fit_kwargs["batch_size"], len(rows))}, seed=seed
    )
    return out.model.eval()


def _model_logits(
    task: Task, model: torch.nn.Module, split: str, rows: list[int], device: torch.device
) -> torch.Tensor:
    parts = [torch.zeros(0, int(task.num_classes or 0))]
    with torch.no_grad():
        for i in range(0, len(rows), 1024):
            logits, _ = task.outputs(model, task.batch(split, rows[i : i + 1024], device))
            parts.append(logits.float().cpu())
    return torch.cat(parts)


def _temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the log-loss of held-out logits (Guo et al. 2017)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


class _QuickModels:
    """The linear probe and/or the task's model, trained k-fold on the scored training sample. The model of fold k
    scores the training rows of fold k and the validation rows dealt to fold k, so both splits are scored alike.
    Each member's logits are divided by its own temperature before the probabilities are averaged."""

    def __init__(
        self,
        task: Task,
        positions: list[int],
        labels: torch.Tensor,
        val_rows: list[int],
        members: list[str],
        fit_kwargs: dict[str, Any],
    ):
        self.task, self.positions, self.labels, self.val_rows = task, positions, labels, val_rows
        self.members, self.fit_kwargs = members, fit_kwargs
        self.classes = int(task.num_classes or 0)
        device = fit_kwargs["device"]
        linear = "linear" in members
        self.x = _flat_inputs(task, "train", positions, device) if linear else None
        self.x_val = _flat_inputs(task, "val", val_rows, device) if linear else None
        self.l2 = _L2_GRID[1]
        self.temperatures = dict.fromkeys(members, 1.0)

    def out_of_fold(
        self, fold: torch.Tensor, val_fold: torch.Tensor, exclude: torch.Tensor, choose: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out probabilities of every training and validation row; training leaves out the rows in `exclude`.
        With `choose`, the linear probe's weight decay is picked by out-of-fold log-loss and the temperatures are
        refitted on the out-of-fold logits."""
        outs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for member in self.members:
            best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
            for l2 in _L2_GRID if member == "linear" and choose else (self.l2,):
                out, out_val = torch.zeros(len(fold), self.classes), torch.zeros(len(val_fold), self.classes)
                for k in range(int(fold.max()) + 1):
                    out[fold == k], out_val[val_fold == k] = self._fold(member, k, fold, val_fold, exclude, l2)
                loss = float(F.cross_entropy(out, self.labels))
                if best is None or loss < best[0]:
                    best = (loss, l2, out, out_val)
            assert best is not None
            if member == "linear":
                self.l2 = best[1]
            if choose:
                self.temperatures[member] = _temperature(best[2], self.labels)
            outs.append((best[2] / self.temperatures[member], best[3] / self.temperatures[member]))
        probs = torch.stack([train.softmax(1) for train, _ in outs]).mean(0)
        return probs, torch.stack([val.softmax(1) for _, val in outs]).mean(0)

    def _fold(
        self, member: str, k: int, fold: torch.Tensor, val_fold: torch.Tensor, exclude: torch.Tensor, l2: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of fold k's training and validation rows from `member` trained on the other folds' kept rows."""
        train, test, val = (fold != k) & ~exclude, fold == k, val_fold == k
        if member == "linear":
            assert self.x is not None and self.x_val is not None
            x_test = torch.cat([self.x[test.to(self.x.device)], self.x_val[val.to(self.x.device)]])
            logits = _linear_logits(self.x[train.to(self.x.device)], self.labels[train], x_test, self.classes, l2)
            return logits[: int(test.sum())].cpu(), logits[int(test.sum()) :].cpu()
        rows = [self.positions[i] for i in train.nonzero().flatten().tolist()]
        model = _fit_model(self.task, rows, k, self.fit_kwargs)
        test_rows = [self.positions[i] for i in test.nonzero().flatten().tolist()]
        val_rows = [self.val_rows[i] for i in val.nonzero().flatten().tolist()]
        device = self.fit_kwargs["device"]
        test_logits = _model_logits(self.task, model, "train", test_rows, device)
        return test_logits, _model_logits(self.task, model, "val", val_rows, device)


def _flat_inputs(task: Task, split: str, rows: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    inputs, _ = task.split_batch(task.batch(split, rows, device))
    return inputs.reshape(len(rows), -1).float()


def _not_applicable(task: Task) -> str | None:
    """Why confident learning does not apply to this task, or None when it does."""
    if task.kind != "classification":
        return f"the task is {task.kind}; label noise is estimated for single-label classification only"
    if task.loss != "cross_entropy":
        name = task.loss if isinstance(task.loss, str) else "a callable"
        return f"the loss is {name}; confident learning needs one class per sample (cross_entropy)"
    inputs, target = task.split_batch(task.batch("train", [0]))
    if not isinstance(inputs, torch.Tensor) or target.dim() != 1:
        return "inputs are not one tensor or targets are not one class id per sample"
    return None


def _sample(n: int, size: int, generator: torch.Generator) -> list[int]:
    """All of range(n), or a sorted random sample of `size` of them."""
    return list(range(n)) if n <= size else sorted(torch.randperm(n, generator=generator)[:size].tolist())


def _stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold id per row; each class is dealt round-robin over the folds in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    offset = 0
    for c in labels.unique():
        rows = (labels == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        fold[rows] = (torch.arange(len(rows)) + offset) % folds
        offset += len(rows)  # the next class starts where this one stopped: folds stay the same size
    return fold


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
    min_steps: int = 200,
    max_steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int = 64,
    model_gflop: float | None = None,
) -> LabelIssues | None:
    """Find the training labels that are likely wrong; None when confident learning does not apply to the task.

    Args:
        task: a single-label classification task with cross-entropy loss and tensor inputs.
        folds: k of the k-fold training that makes out-of-sample probabilities.
        max_samples: score a seeded random sample of this many training samples when the split is larger.
        seed: seeds the sample, the folds and every training run.
        device: where the quick models train.
        probe: "linear" (logistic regression on flattened, standardised inputs), "model" (the task's model through
            `fit`), "both" (their calibrated average), or "auto": both, unless training the task's model would
            cost more than `model_gflop` (then the linear probe) or the inputs are not floats or wider than 4,096
            features (then the task's model).
        rounds: 2 retrains without the first round's suspects; 1 keeps the first round.
        epochs, min_steps, max_steps, lr, batch_size: the task model's quick training: `epochs` passes, clamped to
            [min_steps, max_steps] optimizer steps, AdamW at `lr`.
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
    members = _members(task, probe, positions, batch_size, gflop * 1e9 / (steps * folds * rounds))
    val_rows = _sample(len(task.val), max_samples, g)
    val_labels = task.targets("val")[val_rows].long()
    models = _QuickModels(task, positions, labels, val_rows, members, fit_kwargs)

    fold, val_fold = _stratified_folds(labels, folds, seed), _stratified_folds(val_labels, folds, seed + 1)
    suspects = torch.zeros(len(labels), dtype=torch.bool)
    probs, val_probs = models.out_of_fold(fold, val_fold, suspects, choose=True)
    agreement = float((probs.argmax(1) == labels).float().mean())
    found, rate = confident_learning(probs, labels, classes)
    done = 1
    while done < rounds and rate < 0.5:  # past half, the rest is no cleaner: retraining on it would learn the noise
        suspects[found] = True
        probs, val_probs = models.out_of_fold(fold, val_fold, suspects, choose=False)
        found, rate = confident_learning(probs, labels, classes)
        done += 1
    _, baseline = confident_learning(val_probs, val_labels, classes)
    names = {"linear": "linear probe", "model": "task model"}
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
        probe=" + ".join(names[m] for m in members) + f", {folds}-fold, {done} round{'s' * (done > 1)}",
        seconds=time.perf_counter() - start,
        sampled=len(positions) < len(task.train),
    )


def _members(task: Task, probe: str, positions: list[int], batch_size: int, budget_flops: float) -> list[str]:
    """Which quick models to train: see `find_label_issues(probe=...)`."""
    if probe in ("linear", "model"):
        return [probe]
    inputs, _ = task.split_batch(task.batch("train", positions[:2]))
    if not (inputs.is_floating_point() and inputs[0].numel() <= _LINEAR_FEATURES):
        return ["model"]
    return (
        ["linear", "model"]
        if probe == "both" or _step_flops(task, positions[:batch_size]) <= budget_flops
        else ["linear"]
    )


def _step_flops(task: Task, rows: list[int]) -> int:
    """Floating-point operations of one training step (forward and backward) of a fresh model on these rows."""
    model = task.make_model()
    with FlopCounterMode(display=False) as counter:
        output, target = task.outputs(model, task.batch("train", rows))
        task.compute_loss(output, target).backward()
    return counter.get_total_flops()


def label_noise(issues: LabelIssues | None, task: Task) -> Check:
    """Catches wrong training labels (annotation errors, a class map applied to part of the data, shuffled labels):
    confident learning's estimate on the training split, judged against the same estimate on the validation split.

    Why: Northcutt et al., JAIR 2021. The reference is what the same quick models show on held-out labels of the
    same data, not zero: hard samples look mislabeled too (catalog D2: out-of-fold logistic regression disagrees
    with 3.3% of clean digits labels). Warn when the training estimate exceeds it by 3 standard errors and by at
    least 1 point; fail when the labels teach the quick models nothing or most of them look wrong.
    """
    if issues is None:
        return skipped("label_noise", f"not applicable: {_not_applicable(task)}.")
    n, m = len(issues.positions), issues.baseline_samples
    rate, base = issues.estimated_noise_rate, issues.baseline_rate
    value: dict[str, Any] = {"estimated_noise_rate": rate, "baseline_rate": base, "suspects": len(issues.indices)}
    value |= {"probe": issues.probe, "sampled": issues.sampled}
    expected = f"at most the validation split's {base:.1%} plus sampling error"
    seen = (
        f"confident learning estimates {rate:.1%} of {n}{' sampled' * issues.sampled} training labels wrong "
        f"({len(issues.indices)} suspects; {issues.probe}) against {base:.1%} of {m} validation labels"
    )
    r, b = (rate * n + 1) / (n + 2), (base * m + 1) / (m + 2)  # smoothed: 0 of 30 is not known to be exactly 0
    excess, se = rate - base, math.sqrt(r * (1 - r) / n + b * (1 - b) / m)
    no_signal = issues.agreement <= issues.chance + 3 * math.sqrt(issues.chance * (1 - issues.chance) / n)
    if no_signal or excess >= 0.5:
        why = (
            f"out-of-fold accuracy is {issues.agreement:.1%}, no better than always predicting the commonest label "
            f"({issues.chance:.1%})"
            if no_signal
            else f"most training labels look wrong, {excess:.0%} more than on validation"
        )
        return failed(
            "label_noise",
            f"{seen}: {why}. The labels do not follow the inputs: check that inputs and labels are paired (shuffled "
            "or sorted separately) and that one class map is used for every split.",
            value,
            expected,
        )
    if excess > max(3 * se, 0.01):
        return warned(
            "label_noise",
            f"{seen}: about {excess:.1%} of the training labels look wrong. Look at the suspects in "
            "label_issues.json (most suspicious first), then fix or drop the wrong labels.",
            value,
            expected,
        )
    note = f"; {excess:.1%} more is within sampling error of {m} validation samples" if excess > 0.01 else ""
    return passed("label_noise", f"{seen}: no more than held-out data of this difficulty{note}.", value, expected)
