"""Losses that do not compare one output with one target: a contrastive loss over two views (it never reads the
target), and a VAE whose target is its own input (it reads the target, and is slow to use its input).

The input-independent baseline exchanges inputs between samples; with a contrastive loss that trains the same task,
and a VAE at 300 steps has not left its collapsed posterior while a linear model already reconstructs. Neither may
fail a correct setup; their planted twins (targets shuffled against the inputs) still fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from recipe import Recipe, Task
from recipe.diagnostics.baselines import input_independent, target_unread
from recipe.errors import TaskError
from recipe.evaluation import Evaluation
from tests import tiny


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order], torch.tensor(d.target)[order], order


def _views(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([x + 0.2 * torch.randn(x.shape, generator=g), x + 0.2 * torch.randn(x.shape, generator=g)], 1)


class PairEncoder(nn.Module):
    """Embeds both views of each sample: output (B, 2, 16), unit length."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.net(views.flatten(0, 1)), dim=-1)
        return z.view(len(views), 2, -1)


def info_nce(z: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
    """Each first view must pick its own second view among the batch's (in-batch negatives); the target is unused."""
    return F.cross_entropy(z[:, 0] @ z[:, 1].T / 0.1, torch.arange(len(z), device=z.device))


def supervised_contrastive(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The same, with every other sample of the same class as a positive too: it reads the target."""
    logits = z[:, 0] @ z[:, 1].T / 0.1
    positives = (target[:, None] == target[None, :]).float()
    return -(logits.log_softmax(1) * positives).sum(1).div(positives.sum(1)).mean()


class VAE(nn.Module):
    """Outputs the reconstruction logits, mu and log-variance, concatenated (64 + 8 + 8)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
        self.dec = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu) if self.training else mu
        return torch.cat([self.dec(z), mu, logvar], 1)


def vae_loss(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    logits, mu, logvar = out[:, :64], out[:, 64:72], out[:, 72:]
    reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
    return (reconstruction + kl).mean()


def _baseline(task: Task, tmp_path, steps: int = 300) -> dict[str, object]:
    config = {"baseline": {"steps": steps}}
    result = Recipe(task, run_dir=tmp_path / "run", stages=["baseline"], device="cpu", keep_going=True, config=config)
    result = result.run()
    return {c.name: c for c in result.checks}


def test_target_unread_names_a_loss_that_never_reads_its_target():
    z = F.normalize(torch.randn(32, 2, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(1))
    contrastive = tiny.classification(loss=info_nce)
    assert "does not read the target" in target_unread(contrastive, z, labels)
    assert "does not read the target" in target_unread(contrastive, z, torch.zeros(32))  # dummy targets, all equal
    assert target_unread(tiny.classification(loss=supervised_contrastive), z, labels) is None
    logits = torch.randn(32, 4)
    assert target_unread(tiny.classification(), logits, labels) is None  # a built-in loss reads its target
    assert target_unread(tiny.classification(loss=lambda o, t: F.cross_entropy(o, t)), logits, labels) is None
    assert target_unread(tiny.classification(loss=lambda o, t: F.cross_entropy(o, t)), logits, labels * 0) is None


def _evaluation(loss: float) -> Evaluation:
    return Evaluation(loss=loss, loss_se=0.01, metric=math.nan, metric_se=math.nan, n=128)


def test_a_model_no_better_than_exchanged_inputs_warns_only_when_the_reference_learned():
    task, same = tiny.classification(), _evaluation(1.386)
    learned = input_independent(same, same, task, constant=1.386, reference=("linear model", _evaluation(0.4)))
    assert learned.status == "warn" and "aligned" in learned.message and "linear model reached 0.4" in learned.message
    at_the_constant = ("linear model", _evaluation(1.34))  # below the input-free run, not clearly below the constant
    assert input_independent(same, same, task, constant=1.386, reference=at_the_constant).status == "fail"
    assert input_independent(same, same, task, reference=("linear model", _evaluation(0.4))).status == "fail"
    assert input_independent(same, same, task, constant=1.386).status == "fail"


def test_a_contrastive_task_is_not_failed_for_ignoring_the_targets_its_loss_never_reads(tmp_path):
    x, y, _ = _digits()
    task = Task((_views(x[:1200], 1), y[:1200]), (_views(x[1200:], 2), y[1200:]), PairEncoder, loss=info_nce)
    checks = _baseline(task, tmp_path)
    assert checks["input_independent"].status == "skip", checks["input_independent"].message
    assert "does not read the target" in checks["input_independent"].message
    assert not [c.name for c in checks.values() if c.status in ("fail", "error")]


def test_a_vae_slow_to_use_its_input_warns_and_one_reconstructing_other_samples_fails(tmp_path):
    x, _, _ = _digits()
    clean = Task((x[:1200], x[:1200]), (x[1200:], x[1200:]), VAE, loss=vae_loss, kind="regression")
    checks = _baseline(clean, tmp_path / "clean")
    assert checks["input_independent"].status in ("pass", "warn"), checks["input_independent"].message
    assert not [c.name for c in checks.values() if c.status in ("fail", "error")]
    others = x[:1200][torch.randperm(1200, generator=torch.Generator().manual_seed(3))]
    planted = Task((x[:1200], others), (x[1200:], x[1200:]), VAE, loss=vae_loss, kind="regression")
    for steps in (300, 1000):  # too short for the input-free run to reach the constant, then long enough
        verdict = _baseline(planted, tmp_path / f"planted{steps}", steps)["input_independent"]
        assert verdict.status == ("skip" if steps == 300 else "fail"), verdict.message


def test_a_classifier_whose_output_is_an_embedding_reports_a_nan_accuracy_instead_of_raising():
    task = tiny.classification(loss=info_nce)
    z = torch.randn(8, 2, 16)
    assert task.metric_per_sample(z, torch.arange(8) % 4).isnan().all()
    assert task.metric_per_sample(torch.randn(8, 4), torch.arange(8) % 4).isfinite().all()


class TupleVAE(VAE):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = super().forward(x)
        return out[:, :64], out[:, 64:72], out[:, 72:]


def test_a_tuple_output_for_a_callable_loss_is_refused_with_the_joined_tensor_that_works(tmp_path):
    """The refusal names the way that runs: the outputs joined in one tensor, split inside the loss (`VAE`)."""
    x, _, _ = _digits()
    tuple_loss = lambda out, target: vae_loss(torch.cat(out, 1), target)
    task = Task((x[:200], x[:200]), (x[200:300], x[200:300]), TupleVAE, loss=tuple_loss, kind="regression")
    with pytest.raises(TaskError, match=r"returned a tuple.*torch\.cat\(\[recon, mu, logvar\], dim=1\)"):
        Recipe(task, run_dir=tmp_path / "run", stages=["inspect"], device="cpu").run()
    assert not (tmp_path / "run").exists()  # refused before anything is written
