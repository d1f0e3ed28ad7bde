"""Quick models for out-of-fold probabilities: a linear probe on flattened inputs, or on counts of each token id
for token inputs (a bag of words; weight decay picked by out-of-fold log-loss), and the task's own model through
`fit`, each temperature-calibrated on held-out logits, and the FLOP budget that decides whether the task's model is
cheap enough to train k times.

A quick model is evidence only when it learns: `learns` asks that its out-of-fold accuracy beat always predicting
the commonest label by three binomial standard errors. A member that does not is left out of the average (when
another member learns), so a linear probe at chance on signals it cannot separate does not dilute the task model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from recipe.console import doing
from recipe.joined import joined_features, joined_tokens
from recipe.loop import fit
from recipe.task import Task

LINEAR_FEATURES = 4096  # widest flattened input the linear probe takes (a 64x64 RGB image is 12,288)
L2_GRID = (1e-3, 1e-2, 1e-1)  # the probe's weight decay, chosen by out-of-fold log-loss
MIN_PER_CLASS = 10  # median training samples per class below which k-fold probabilities cannot set per-class thresholds
LBFGS_EVALUATIONS = 120  # objective evaluations of one probe solve: 100 L-BFGS iterations and their line searches


def linear_probes(
    x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, l2: torch.Tensor, classes: int, x_other: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every row of `x` and `x_other` from K multinomial logistic regressions solved by one L-BFGS run.

    Problem k trains on the rows where `train[k]` is True, on inputs standardised with those rows' statistics,
    with weight decay `l2[k]` on the standardised weights. The problems share no parameter, so the sum of their
    objectives has each one's optimum as its optimum: one solve replaces K (every fold and every weight decay of
    the grid at once), with one matrix product per step instead of K small ones. Returns (K, n, classes) for `x`
    and (K, len(x_other), classes) for `x_other`.
    """
    mask = train.float()
    counts = mask.sum(1, keepdim=True).clamp_min(1)
    mean = mask @ x / counts  # (K, d): each problem's training rows only
    std = (mask @ x.square() / counts - mean.square()).clamp_min(0).sqrt() * (counts / (counts - 1).clamp_min(1)).sqrt()
    std = std.clamp_min(1e-2 * std.mean(1, keepdim=True) + 1e-12)  # constant features must not explode elsewhere
    w = torch.zeros(len(train), x.shape[1] + 1, classes, device=x.device, requires_grad=True)
    targets = y.to(x.device).expand(len(train), -1)
    opt = torch.optim.LBFGS([w], max_iter=100, history_size=10, line_search_fn="strong_wolfe")

    def logits(rows: torch.Tensor) -> torch.Tensor:
        scaled = w[:, :-1] / std[:, :, None]  # (x - mean) / std @ w  ==  x @ (w / std) - (mean / std) @ w
        bias = w[:, -1] - torch.einsum("kd,kdc->kc", mean, scaled)
        return torch.einsum("nd,kdc->knc", rows, scaled) + bias[:, None]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        losses = F.cross_entropy(logits(x).transpose(1, 2), targets, reduction="none")  # (K, n)
        loss = ((losses * mask).sum(1) / counts[:, 0] + 0.5 * l2 * w[:, :-1].square().sum((1, 2))).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return logits(x), logits(x_other)


def linear_flops(rows: int, features: int, classes: int, problems: int) -> float:
    """About the floating-point operations of one `linear_probes` solve: per evaluation and problem, a (rows x
    features) @ (features x classes) product forward and backward, and a cross-entropy over the logits. Measured
    against it: 0.25 s for digits' 10.6 GFLOP, 70 s for 1,000 classes of 3,000 rows (1.2 TFLOP)."""
    return float(LBFGS_EVALUATIONS * problems * rows * classes * (6 * (features + 1) + 20))


def learns(accuracy: float, chance: float, n: int) -> bool:
    """True when an out-of-fold accuracy on `n` samples beats `chance` (the commonest label's share) by three
    binomial standard errors (one-sided, about 99.9%): the model demonstrably learned something from the inputs."""
    return accuracy > chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1))


def majority_share(labels: torch.Tensor) -> float:
    """Accuracy of always predicting the commonest label."""
    return float(torch.bincount(labels).max() / len(labels)) if len(labels) else 0.0


def fit_model(task: Task, rows: list[int], seed: int, fit_kwargs: dict[str, Any]) -> torch.nn.Module:
    out = fit(
        task.subset("train", rows), **{**fit_kwargs, "batch_size": min(fit_kwargs["batch_size"], len(rows))}, seed=seed
    )
    return out.model.eval()


def model_logits(task: Task, model: torch.nn.Module, split: str, rows: list[int], device: torch.device) -> torch.Tensor:
    parts = [torch.zeros(0, int(task.num_classes or 0))]
    with torch.no_grad():
        for i in range(0, len(rows), 1024):
            logits, _ = task.outputs(model, task.batch(split, rows[i : i + 1024], device))
            parts.append(logits.float().cpu())
    return torch.cat(parts)


def temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
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


class QuickModels:
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
        grid: tuple[float, ...] = L2_GRID,
    ):
        self.task, self.positions, self.labels, self.val_rows = task, positions, labels, val_rows
        self.members, self.fit_kwargs = members, fit_kwargs
        self.classes = int(task.num_classes or 0)
        device = fit_kwargs["device"]
        linear = "linear" in members
        self.x = flat_inputs(task, "train", positions, device) if linear else None
        self.x_val = None if self.x is None else flat_inputs(task, "val", val_rows, device) if val_rows else self.x[:0]
        self.l2 = L2_GRID[1]
        self.grid = grid  # the weight decays the linear probe's first round chooses from
        self.temperatures = dict.fromkeys(members, 1.0)
        self.accuracy: dict[str, float] = {}  # each member's out-of-fold accuracy, measured with `choose`
        self.dropped: list[str] = []  # members left out because they did not learn while another did

    def out_of_fold(
        self, fold: torch.Tensor, val_fold: torch.Tensor, exclude: torch.Tensor, choose: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out probabilities of every training and validation row; training leaves out the rows in `exclude`.
        With `choose`, the linear probe's weight decay is picked by out-of-fold log-loss, the temperatures are
        refitted on the out-of-fold logits, and members that do not learn are dropped when another one does."""
        outs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for member in self.members:
            best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
            l2s = self.grid if member == "linear" and choose else (self.l2,)
            if member == "linear":
                held_out = self._linear(fold, val_fold, exclude, l2s)
            else:
                held_out = [self._model(fold, val_fold, exclude)]
            for l2, (out, out_val) in zip(l2s, held_out, strict=True):
                loss = float(F.cross_entropy(out, self.labels))
                if best is None or loss < best[0]:
                    best = (loss, l2, out, out_val)
            assert best is not None
            if member == "linear":
                self.l2 = best[1]
            if choose:
                self.temperatures[member] = temperature(best[2], self.labels)
                self.accuracy[member] = float((best[2].argmax(1) == self.labels).float().mean())
            outs[member] = (best[2] / self.temperatures[member], best[3] / self.temperatures[member])
        if choose:
            chance = majority_share(self.labels)
            learners = [m for m in self.members if learns(self.accuracy[m], chance, len(self.labels))]
            if learners and learners != self.members:
                self.dropped += [m for m in self.members if m not in learners]
                self.members = learners
        probs = torch.stack([outs[m][0].softmax(1) for m in self.members]).mean(0)
        return probs, torch.stack([outs[m][1].softmax(1) for m in self.members]).mean(0)

    def _linear(
        self, fold: torch.Tensor, val_fold: torch.Tensor, exclude: torch.Tensor, l2s: tuple[float, ...]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out logits of the linear probe for each weight decay in `l2s`: fold k's training and validation rows
        scored by the probe trained on the other folds' kept rows; every (weight decay, fold) pair in one solve."""
        assert self.x is not None and self.x_val is not None
        folds = int(fold.max()) + 1
        train = torch.stack([(fold != k) & ~exclude for k in range(folds)]).repeat(len(l2s), 1)
        decay = torch.tensor(l2s, dtype=self.x.dtype).repeat_interleave(folds)
        device = self.x.device
        logits, logits_val = linear_probes(
            self.x, self.labels, train.to(device), decay.to(device), self.classes, self.x_val
        )
        logits, logits_val = logits.cpu(), logits_val.cpu()
        held_out = []
        for i in range(len(l2s)):
            out, out_val = torch.zeros(len(fold), self.classes), torch.zeros(len(val_fold), self.classes)
            for k in range(folds):
                out[fold == k], out_val[val_fold == k] = (
                    logits[i * folds + k][fold == k],
                    logits_val[i * folds + k][val_fold == k],
                )
            held_out.append((out, out_val))
        return held_out

    def _model(
        self, fold: torch.Tensor, val_fold: torch.Tensor, exclude: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out logits of the task's model: fold k's training and validation rows scored by the model trained on
        the other folds' kept rows."""
        out, out_val = torch.zeros(len(fold), self.classes), torch.zeros(len(val_fold), self.classes)
        device = self.fit_kwargs["device"]
        folds = int(fold.max()) + 1
        for k in range(folds):
            train, test, val = (fold != k) & ~exclude, fold == k, val_fold == k
            with doing("fold", k + 1, folds):
                model = fit_model(
                    self.task, [self.positions[i] for i in train.nonzero().flatten().tolist()], k, self.fit_kwargs
                )
            out[test] = model_logits(
                self.task, model, "train", [self.positions[i] for i in test.nonzero().flatten().tolist()], device
            )
            out_val[val] = model_logits(
                self.task, model, "val", [self.val_rows[i] for i in val.nonzero().flatten().tolist()], device
            )
        return out, out_val


def token_ids(inputs: Any) -> torch.Tensor | None:
    """Token-id inputs as one (batch, ids) integer matrix (one tensor, or several joined); None for other inputs."""
    if isinstance(inputs, torch.Tensor):
        integer = inputs.dim() >= 2 and not (
            inputs.is_floating_point() or inputs.is_complex() or inputs.dtype == torch.bool
        )
        return inputs.reshape(len(inputs), -1).long() if integer else None
    return joined_tokens(inputs)


def token_width(task: Task) -> int:
    """Columns of the bag of tokens: one per id up to the largest id in the first 2,048 training rows, at most
    LINEAR_FEATURES (larger ids share columns, modulo the width)."""
    inputs, _ = task.split_batch(task.batch("train", list(range(min(len(task.train), 2048)))))
    ids = token_ids(inputs)
    return min(int(ids.max()) + 1, LINEAR_FEATURES) if ids is not None and ids.numel() else 1


def bag_of_tokens(ids: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of token ids as log(1 + count) of each id (ids modulo `width`; negative ids, padding markers, as 0)."""
    ids = ids.clamp_min(0) % width
    counts = torch.zeros(len(ids), width, device=ids.device)
    return counts.scatter_add_(1, ids, torch.ones(ids.shape, device=ids.device)).log1p()


def flat_inputs(task: Task, split: str, rows: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """The inputs of these rows as one (rows, features) float matrix; several float tensors are joined, token ids
    become a bag of tokens (`bag_of_tokens`). A NaN or Inf (a missing value the task's model takes: `non_finite`
    passed it) reads as its feature's mean over the rest."""
    inputs, _ = task.split_batch(task.batch(split, rows, device))
    ids = token_ids(inputs)
    if ids is not None:
        return bag_of_tokens(ids, token_width(task))
    joined = joined_features(inputs)
    x = (joined if joined is not None else inputs).reshape(len(rows), -1).float()
    missing = ~torch.isfinite(x)
    if bool(missing.any()):
        mean = torch.where(missing, 0.0, x).sum(0) / (~missing).sum(0).clamp_min(1)
        x = torch.where(missing, mean, x)
    return x


def choose_members(task: Task, probe: str, positions: list[int], batch_size: int, budget_flops: float) -> list[str]:
    """Which quick models to train: see `find_label_issues(probe=...)`."""
    if probe in ("linear", "model"):
        return [probe]
    inputs, _ = task.split_batch(task.batch("train", positions[:2]))
    tokens = token_ids(inputs) is not None  # a bag of tokens, at most LINEAR_FEATURES wide
    inputs = inputs if isinstance(inputs, torch.Tensor) else joined_features(inputs)
    if not tokens and (inputs is None or not (inputs.is_floating_point() and inputs[0].numel() <= LINEAR_FEATURES)):
        return ["model"]
    return (
        ["linear", "model"]
        if probe == "both" or step_flops(task, positions[:batch_size]) <= budget_flops
        else ["linear"]
    )


def step_flops(task: Task, rows: list[int]) -> int:
    """Floating-point operations of one training step (forward and backward) of a fresh model on these rows."""
    model = task.make_model()
    with FlopCounterMode(display=False) as counter:
        output, target = task.outputs(model, task.batch("train", rows))
        task.compute_loss(output, target).backward()
    return counter.get_total_flops()


def linear_budget(
    task: Task, rows: int, classes: int, folds: int, budget: float
) -> tuple[int, tuple[float, ...]] | None:
    """How many scored rows the linear probe affords within `budget` (floating-point operations for its first round;
    a second runs only when the labels look noisy), and the weight decays it chooses from: the whole grid, else its
    middle value alone, on fewer rows down to MIN_PER_CLASS per class; None when even that costs more. Its cost grows
    with rows times classes: 1,000 classes of 20 samples took 8 minutes before this budget."""
    features = flat_inputs(task, "train", [0]).shape[1]
    for grid in (L2_GRID, L2_GRID[1:2]):
        afford = int(budget / linear_flops(1, features, classes, folds * len(grid)))
        if afford >= rows:
            return rows, grid
    return (afford, grid) if afford >= MIN_PER_CLASS * classes else None


def stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
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
