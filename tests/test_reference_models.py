"""Reference models and kind inference for tasks the recipe does not ship: token tagging (one class per token, a tag
set unlike the vocabulary) and multi-label targets. The unigram tagger / bigram reference, what `Task` infers, and a
tagger and a multi-label model through inspect, baseline and overfit without a fail or an error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe import Recipe, Task, fit
from recipe.diagnostics.baselines import simple_model
from recipe.errors import TaskError
from recipe.evaluation import Evaluation
from recipe.models import simple_model_factory
from recipe.task import IGNORE_INDEX

VOCAB, TAGS, LENGTH, LABELS = 16, 3, 10, 3


def _tagging_data(n: int, seed: int, pad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids 1..15 tagged low / middle / high by the token itself; with `pad`, rows end in pad id 0 whose
    tags are IGNORE_INDEX."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
    if pad:
        x = x.masked_fill(torch.arange(LENGTH) >= torch.randint(3, LENGTH + 1, (n, 1), generator=g), 0)
    y = torch.bucketize(x, torch.tensor([VOCAB // 3, 2 * VOCAB // 3]))
    return x, y.masked_fill(x == 0, IGNORE_INDEX) if pad else y


class Tagger(nn.Module):
    """Embedding + per-token head, logits (B, TAGS, T): the classes on axis 1, as cross-entropy takes them."""

    def __init__(self, classes_last: bool = False):
        super().__init__()
        self.classes_last = classes_last
        self.embed = nn.Embedding(VOCAB, 16)
        self.head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, TAGS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.embed(ids))
        return logits if self.classes_last else logits.transpose(1, 2)


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _tagging(pad: bool = False, **kwargs) -> Task:
    return Task(_tagging_data(256, 0, pad), _tagging_data(128, 1, pad), Tagger, name="tagging", **kwargs)


def _next_token(shift: int = 1) -> Task:
    def windows(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        stream = torch.randint(0, VOCAB, (64 * LENGTH + 2,), generator=torch.Generator().manual_seed(seed))
        return stream[: 64 * LENGTH].reshape(64, LENGTH), stream[shift : 64 * LENGTH + shift].reshape(64, LENGTH)

    return Task(windows(0), windows(1), LM, name="lm")


def _multilabel() -> Task:
    def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(256, 8, generator=torch.Generator().manual_seed(seed))
        return x, (x[:, :LABELS] > 0).float()  # three independent labels, each read off one feature

    return Task(data(0), data(1), lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, LABELS)),
                loss="bce_with_logits", name="multilabel")  # fmt: skip


# ---- what Task infers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, kind, num_classes",
    [
        (_tagging, "classification", TAGS),  # tags are not the next token: one class per token
        (lambda: _tagging(pad=True), "classification", TAGS),  # ignored (padding) positions aside
        (_next_token, "sequence", VOCAB),  # targets are the inputs shifted by one
        (_multilabel, "classification", LABELS),  # three labels, not one binary label
    ],
)
def test_kind_and_classes_are_inferred(build, kind, num_classes):
    task = build()
    assert (task.kind, task.num_classes) == (kind, num_classes)
    task.validate()


def test_unshifted_next_token_targets_are_not_taken_for_a_sequence_and_the_error_says_what_to_do():
    task = _next_token(shift=0)  # the classic bug: y = x; with an LM's (B, T, V) output
    assert task.kind == "classification"
    with pytest.raises(TaskError, match=r"classes last.*transpose\(1, -1\).*kind='sequence'"):
        task.validate()


def test_a_tagger_with_classes_last_gets_the_layout_hint():
    task = Task(_tagging_data(64, 0), _tagging_data(32, 1), lambda: Tagger(classes_last=True))
    with pytest.raises(TaskError, match=r"\(2, 10, 3\), classes last"):
        task.validate()


def test_binary_bce_keeps_two_classes():
    x = torch.randn(64, 4)
    task = Task((x, (x[:, 0] > 0).float()), (x, (x[:, 0] > 0).float()), lambda: nn.Linear(4, 1), loss="bce_with_logits")
    assert task.num_classes == 2


# ---- the reference models -----------------------------------------------------------------------------------------


def _reference(task: Task):
    inputs, _ = task.split_batch(task.batch("train", [0, 1]))
    output = task.make_model()(inputs)
    made = simple_model_factory(task, inputs, output)
    assert made is not None
    factory, description = made
    assert factory()(inputs).shape == output.shape
    return factory, description


@pytest.mark.parametrize("pad", [False, True])
def test_the_unigram_tagger_learns_a_tagging_task(pad):
    task = _tagging(pad=pad)
    factory, description = _reference(task)
    assert description.startswith("unigram tagger")
    out = fit(task.replace(model=factory), epochs=30, batch_size=64, lr=0.1, progress=False)
    assert out.history[-1]["val_accuracy"] > 0.95  # the tag is a function of the token alone


def test_the_bigram_reference_takes_ids_beyond_its_classes():
    """A sequence task whose output classes are fewer than the input ids (a tagger given kind='sequence')."""
    x, y = _tagging_data(64, 0)
    task = Task((x, y), (x, y), lambda: Tagger(classes_last=True), kind="sequence", num_classes=TAGS)
    factory, description = _reference(task)
    assert description == "bigram table" and factory().table.num_embeddings == VOCAB
    assert _reference(_next_token())[1] == "bigram table"


# ---- through the stages ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, reference", [(_tagging, "unigram tagger"), (_multilabel, "linear model")], ids=["tagger", "multilabel"]
)
def test_new_kinds_run_inspect_baseline_overfit_without_a_fail(build, reference, tmp_path):
    # overfit at lr 1e-2: at its default 1e-3 this clean tagger's loss is still falling after 300 steps (0.70 ->
    # 0.21, accuracy 1.0) and overfit_batch calls that a floor; the same happens with kind="sequence"
    config = {"overfit": {"lr": 1e-2}}
    stages = ["inspect", "baseline", "overfit"]
    result = Recipe(build(), run_dir=tmp_path / "run", stages=stages, keep_going=True, config=config).run()
    bad = [(c.stage, c.name, c.status, c.message) for c in result.checks if c.status in ("fail", "error")]
    assert not bad, bad
    simple = next(c for c in result.checks if c.name == "simple_model")
    assert simple.status == "pass" and simple.value["simple_model"].startswith(reference), simple.message


# ---- simple_model judges only with a reference that learned --------------------------------------------------------


def _evaluation(loss: float, se: float) -> Evaluation:
    return Evaluation(loss=loss, loss_se=se, metric=0.5, metric_se=0.05, n=40)


@pytest.mark.parametrize(
    "simple, status",
    [
        (_evaluation(0.20, 0.02), "warn"),  # the reference learned, the model does not beat the constant
        (_evaluation(1.20, 0.10), "skip"),  # 13% below the constant but within 3 SE: not shown to learn
        (_evaluation(1.38, 0.01), "skip"),  # the reference did not learn either: no evidence, and it says so
    ],
)
def test_simple_model_warns_only_with_a_reference_that_learned(simple, status):
    task = _multilabel()
    constant = _evaluation(1.386, 0.01)
    assert simple_model(constant, simple, 1.386, task, "linear").status == status
