"""Probes speak the task's language: a perturbation stays a valid input (token ids, padding, masks, several input
tensors), and hooks read nested tensors, packed sequences, tuples and dicts without raising."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe import Recipe, fit
from recipe.diagnostics.activations import activation_stats
from recipe.diagnostics.baselines import evaluate_exchanged, exchange_samples, exchanged_inputs, input_independent
from recipe.diagnostics.causal import causal
from recipe.diagnostics.dependencies import batch_independence
from recipe.diagnostics.inputs import token_distance
from recipe.diagnostics.integrity import read_split, sequence_data
from recipe.diagnostics.target_leak import target_leak
from recipe.evaluation import evaluate
from recipe.models import simple_model_factory
from recipe.task import IGNORE_INDEX
from tests import new_kinds, tiny

CPU = torch.device("cpu")


# ---- the input-independent baseline: inputs exchanged between samples ---------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7, 64])
def test_exchange_gives_every_sample_another_samples_inputs_and_moves_a_samples_parts_together(n):
    ids = torch.arange(n).unsqueeze(1).expand(n, 5)
    inputs = {"ids": ids, "lengths": torch.arange(n), "shared": torch.ones(n + 1, 2)}
    torch.manual_seed(n)
    out = exchange_samples(inputs)
    source = out["lengths"]
    assert sorted(source.tolist()) == list(range(n))  # a permutation: every input is used once
    assert bool((source != torch.arange(n)).all())  # no sample keeps its own
    assert torch.equal(out["ids"][:, 0], source)  # ids and lengths of one sample move together
    assert torch.equal(out["shared"], inputs["shared"])  # not per-sample: left alone


def test_exchange_keeps_padded_token_rows_valid():
    ids = new_kinds.padded_tokens(32, 0)
    out = exchange_samples(ids)
    assert sorted(map(tuple, out.tolist())) == sorted(map(tuple, ids.tolist()))  # the same rows: none all-pad
    assert new_kinds.PackedGRU()(out).shape == (32, 2)  # packing raised on the zeroed ids


def test_evaluate_exchanged_returns_per_sample_losses_in_the_splits_order():
    task = tiny.classification()

    class Constant(nn.Module):  # ignores its input: exchanging changes nothing, so the losses must match one to one
        def __init__(self):
            super().__init__()
            self.bias = nn.Parameter(torch.tensor([0.5, -0.2, 0.1, 0.0]))

        def forward(self, x):
            return self.bias.expand(len(x), -1)

    model = Constant()
    real = evaluate(task, model, task.val, CPU, batch_size=50)
    other = evaluate_exchanged(exchanged_inputs(task), model, CPU, seed=0)
    assert torch.allclose(real.per_sample_loss, other.per_sample_loss)
    assert input_independent(real, other, task).status == "fail"


@pytest.mark.parametrize("labels", ["aligned", "shuffled"])
def test_input_independent_on_a_validation_split_sorted_by_class(labels):
    """Sorted validation data must not leak through the exchange (it is evaluated in a random order), and a model
    trained on shuffled labels still fails."""
    clean = tiny.classification()
    order = clean.val.y.argsort()
    task = clean.replace(val=(clean.val.x[order], clean.val.y[order]))
    if labels == "shuffled":
        y = task.train.y[torch.randperm(len(task.train.y), generator=torch.Generator().manual_seed(0))]
        task = task.replace(train=(task.train.x, y))
    other = exchanged_inputs(task)
    runs = [fit(t, epochs=None, max_steps=200, lr=3e-3, progress=False, device="cpu") for t in (task, other)]
    real, exchanged = evaluate(task, runs[0].model, task.val, CPU), evaluate_exchanged(other, runs[1].model, CPU, 0)
    assert input_independent(real, exchanged, task).status == ("pass" if labels == "aligned" else "fail")


# ---- hooks on unusual module outputs ------------------------------------------------------------------------------


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return {"logits": self.linear(x)}


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner, self.head = DictOut(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.inner(x)["logits"]))


@pytest.mark.parametrize(
    ("factory", "inputs", "layer_type"),
    [
        (new_kinds.PaddedTransformer, new_kinds.padded_tokens(16, 0), "Linear"),  # nested tensor inside, eval mode
        (new_kinds.PackedGRU, new_kinds.padded_tokens(16, 0), "GRU"),  # a (PackedSequence, h) tuple
        (Wrapped, torch.randn(8, 4), "Linear"),  # a dict from a submodule
    ],
    ids=["nested", "packed_tuple", "dict"],
)
def test_activation_stats_read_unusual_outputs_without_raising(factory, inputs, layer_type):
    task = new_kinds.padded_gru()
    stats = activation_stats(factory(), task, inputs)
    assert any(r["type"] == layer_type for r in stats)
    assert all(r["std"] == r["std"] for r in stats)  # no NaN from padding read as activations


def test_the_transformer_fast_path_really_yields_a_nested_tensor():
    """The case the hook must survive: in eval mode with a padding mask the encoder layers see a nested tensor."""
    model = new_kinds.PaddedTransformer().eval()
    seen = []
    model.encoder.layers[0].register_forward_hook(lambda m, a, out: seen.append(out.is_nested))
    with torch.no_grad():
        model(new_kinds.padded_tokens(8, 0))
    assert seen == [True]


# ---- sequence probes: padding kept, tags told from next tokens ---------------------------------------------------


def test_token_distance_tells_next_token_targets_from_tags():
    lm = tiny.sequence()
    x, y = lm.split_batch(lm.sample_batch("train", 64, 0))
    tagging = new_kinds.token_tagging()
    xt, yt = tagging.split_batch(tagging.sample_batch("train", 64, 0))
    assert token_distance(x, y) < 0.2 < 0.5 < token_distance(xt, yt, new_kinds.PAD)


def test_causal_and_target_leak_skip_a_tagging_task_and_still_judge_a_language_model():
    tagging = new_kinds.token_tagging()
    x, y = tagging.split_batch(tagging.sample_batch("train", 7, 1))

    class BiGRU(nn.Module):  # a bidirectional tagger reads the whole sentence, as it may
        def __init__(self):
            super().__init__()
            self.embed, self.gru = nn.Embedding(new_kinds.VOCAB, 8), nn.GRU(8, 8, batch_first=True, bidirectional=True)
            self.head = nn.Linear(16, new_kinds.TAGS)

        def forward(self, ids):
            return self.head(self.gru(self.embed(ids))[0])

    assert causal(BiGRU(), tagging, x, target=y).status == "skip"
    assert target_leak(tagging).status == "skip"
    lm = tiny.sequence()
    xs, ys = lm.split_batch(lm.sample_batch("train", 7, 1))
    assert causal(tiny.CausalAttention(), lm, xs, target=ys).status == "pass"
    assert target_leak(lm).status == "pass"


def test_causal_perturbation_never_turns_a_real_token_into_padding():
    task = new_kinds.token_tagging()
    ids = torch.tensor([[1, 15, 2, 0, 0], [15, 15, 15, 15, 0]])  # 15 + 1 wraps to 0, the pad id
    task.pad_id = 0
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(new_kinds.VOCAB, new_kinds.TAGS)

        def forward(self, ids):
            seen.append(ids.clone())
            return self.embed(ids)

    causal(Recorder(), task, ids)
    for batch in seen:
        assert torch.equal(batch == 0, ids == 0)  # padding stays padding, and only padding is the pad id


@pytest.mark.parametrize("vocab_bug", [False, True])
def test_sequence_data_reads_a_tagging_task_as_tags_and_still_fails_ids_past_a_language_models_vocabulary(vocab_bug):
    tagging = new_kinds.token_tagging()
    train, val = (read_split(tagging, split, 1000, 0) for split in ("train", "val"))
    assert sequence_data(train, val, tagging, pad_id=new_kinds.PAD).status == "pass"  # 16 ids, 3 tags: no bug
    lm = tiny.sequence()
    lm.num_classes = tiny.VOCAB - 3 if vocab_bug else tiny.VOCAB  # an embedding too small for the ids
    train, val = (read_split(lm, split, 1000, 0) for split in ("train", "val"))
    assert sequence_data(train, val, lm).status == ("fail" if vocab_bug else "pass")


def test_bigram_reference_covers_an_input_vocabulary_larger_than_the_tags():
    task = new_kinds.token_tagging()
    x, _ = task.split_batch(task.sample_batch("train", 16, 0))
    factory, _ = simple_model_factory(task, x, torch.zeros(16, new_kinds.LENGTH, new_kinds.TAGS))
    assert factory()(x).shape == (16, new_kinds.LENGTH, new_kinds.TAGS)


def test_batch_independence_on_packed_and_masked_token_models():
    for make, task in ((new_kinds.PackedGRU, new_kinds.padded_gru()), (new_kinds.PaddedTransformer, None)):
        task = task or new_kinds.transformer_classifier()
        x, _ = task.split_batch(task.sample_batch("train", 7, 0))
        assert batch_independence(make(), task, x).status == "pass"


# ---- end to end: kinds the recipe does not ship -----------------------------------------------------------------

# the label-noise scan trains the model per fold (20-30 s here); it passes on these tasks with its defaults too
FAST = {"inspect": {"label_noise": False}, "baseline": {"steps": 150, "seed_steps": 5}}


@pytest.mark.parametrize("kind", sorted(new_kinds.NEW_KINDS))
def test_new_kinds_run_inspect_baseline_overfit_without_error_or_fail(kind, tmp_path):
    task = new_kinds.NEW_KINDS[kind]()
    result = Recipe(
        task, run_dir=tmp_path / kind, stages=["inspect", "baseline", "overfit"], keep_going=True, config=FAST,
        progress=False, quiet=True, device="cpu",
    ).run()  # fmt: skip
    bad = [(c.stage, c.name, c.status, c.message) for c in result.checks if c.status in ("fail", "error", "warn")]
    assert bad == []
    names = {c.name for c in result.checks}
    assert {"input_independent", "activations", "batch_independence", "overfit_batch"} <= names
    assert next(c for c in result.checks if c.name == "input_independent").status == "pass"


def test_tagging_targets_ignore_padding():
    task = new_kinds.token_tagging()
    x, y = task.split_batch(task.sample_batch("train", 32, 0))
    assert bool(((x == new_kinds.PAD) == (y == IGNORE_INDEX)).all())
