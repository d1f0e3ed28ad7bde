"""Models that take several float tensors (a siamese pair, an image with its metadata, a dict of feature groups):
the data checks read the tensors joined, one row of features per sample, and the model probes differentiate
through each tensor. Each clean setup passes; each planted bug beside it is caught, by the check that names it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Recipe, Task, fit
from recipe.diagnostics.dependencies import batch_independence
from recipe.diagnostics.init import loss_at_init
from recipe.diagnostics.inputs import input_stats
from recipe.diagnostics.integrity import read_split
from recipe.diagnostics.reading import augmentation_variance
from recipe.diagnostics.regularization import feature_ablation
from recipe.diagnostics.shift import split_shift
from recipe.diagnostics.splits import duplicates
from recipe.diagnostics.target_leak import target_leak
from recipe.joined import continuous_columns, describe_parts, joined_features, joined_tokens, part_shapes
from recipe.models import simple_model_factory

DIM, CLASSES = 6, 3


def items(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised vectors and a learnable class for each (the argmax of a fixed linear map)."""
    x = torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))
    return x, (x @ torch.randn(DIM, CLASSES, generator=torch.Generator().manual_seed(99))).argmax(1)


def pairs(pool: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`n` pairs drawn with replacement from a pool of `pool` items, labelled 1 when both share a class: each item
    sits in several pairs, as in any pair dataset built from a finite pool."""
    x, y = items(pool, seed)
    g = torch.Generator().manual_seed(seed + 1)
    a, b = torch.randint(0, pool, (n,), generator=g), torch.randint(0, pool, (n,), generator=g)
    return x[a], x[b], (y[a] == y[b]).long()


class PairTask(Task):
    def split_batch(self, batch):
        return (batch[0], batch[1]), batch[2]

    def forward(self, model, inputs):
        return model(*inputs)


class Siamese(nn.Module):
    def __init__(self, bug: str | None = None):
        super().__init__()
        self.bug = bug
        self.enc = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ea, eb = self.enc(a), self.enc(a if self.bug == "same_argument" else b)
        if self.bug == "batch_mean":
            eb = eb - eb.mean(0)  # mixes the samples of the batch
        return self.head(torch.cat([(ea - eb).abs(), ea * eb], 1))


def pair_task(bug: str | None = None, val_scale: float = 1.0) -> PairTask:
    train, val = pairs(150, 600, 0), pairs(50, 300, 10)
    val = (val[0], val[1] * val_scale, val[2])
    if bug == "copied":
        val = tuple(t[:300] for t in train)
    data = lambda t: torch.utils.data.TensorDataset(*t)
    return PairTask(data(train), data(val), lambda: Siamese(bug), num_classes=2, name="pairs")


class WithMeta(nn.Module):
    """A picture-like tensor (1, 2, 3) and two metadata values per sample."""

    def __init__(self):
        super().__init__()
        self.x, self.meta, self.head = nn.Linear(DIM, 16), nn.Linear(2, 8), nn.Linear(24, CLASSES)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(torch.cat([self.x(x.flatten(1)), self.meta(meta)], 1)))


def meta_task(meta_scale: float = 1.0, label_in_meta: bool = False) -> PairTask:
    def split(n: int, seed: int) -> torch.utils.data.TensorDataset:
        x, y = items(n, seed)
        meta = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed + 5)) * meta_scale
        if label_in_meta:
            meta[:, 1] = y.float()
        return torch.utils.data.TensorDataset(x.reshape(n, 1, 2, 3), meta, y)

    return PairTask(split(400, 0), split(200, 1), WithMeta, num_classes=CLASSES, name="with-meta")


def splits(task: Task):
    return read_split(task, "train", 20_000, 0), read_split(task, "val", 20_000, 1)


def test_several_float_tensors_are_joined_in_order_and_others_are_not():
    a, b = torch.ones(4, 1, 2, 3), torch.zeros(4, 2)
    joined = joined_features({"image": a, "meta": (b,)})
    assert joined.shape == (4, 8) and joined[:, :6].eq(1).all() and joined[:, 6:].eq(0).all()
    assert (
        part_shapes((a, b)) == ((1, 2, 3), (2,))
        and describe_parts(part_shapes((a, b))) == "2 tensors: (1, 2, 3) + (2,)"
    )
    assert joined_features(a) is None  # one tensor is read as it is
    assert joined_features((torch.zeros(4, 2, dtype=torch.long),) * 2) is None  # ids alone are tokens
    assert joined_features((a, torch.zeros(3, 2))) is None  # not one sample per row
    assert joined_features((a, "text")) is None
    assert torch.equal(joined_features((a, None, b)), joined)  # an optional part left out (mask=None)


def test_the_splits_of_a_pair_task_are_read_joined_and_its_summary_names_the_parts():
    train, val = splits(pair_task())
    assert train.inputs.shape == (600, 2 * DIM) and train.parts == ((DIM,), (DIM,))
    assert val.inputs.shape == (300, 2 * DIM)


def test_pairs_reusing_a_pool_of_items_show_no_shift_and_a_rescaled_validation_input_fails():
    """Each input is compared on its distinct values: items that recur across pairs would otherwise sit in the
    classifier's training and held-out folds at once, and each split's own pool of items would read as a shift."""
    clean = split_shift(*splits(pair_task()))
    assert clean.status == "pass", clean.message
    bug = split_shift(*splits(pair_task(val_scale=3.0)))
    assert bug.status == "fail" and bug.message.startswith("input 1 of 2 (6,)") and bug.value["input"] == 1


def stacked_pair_task(val_scale: float = 1.0) -> Task:
    """The same pairs held as one tensor (B, 2, DIM), as a siamese model on image pairs takes them."""
    train, val = pairs(150, 600, 0), pairs(50, 300, 10)
    stack = lambda t, scale: (torch.stack([t[0], t[1] * scale], 1), t[2])
    model = lambda: nn.Sequential(nn.Flatten(), nn.Linear(2 * DIM, 2))
    return Task(stack(train, 1.0), stack(val, val_scale), model, num_classes=2, name="stacked pairs")


def test_pairs_held_as_one_tensor_are_compared_item_by_item():
    """Digit pairs (B, 2, 64) drawn from each split's pool warned "the splits are drawn differently" (AUC 0.71):
    pairs sharing an image sat in the classifier's training and held-out folds at once. Items that recur across
    samples are compared once each, as for pairs held as two tensors; a rescaled validation item is still seen."""
    clean = split_shift(*splits(stacked_pair_task()))
    assert clean.status == "pass" and "compared as items" in clean.message, clean.message
    bug = split_shift(*splits(stacked_pair_task(val_scale=3.0)))
    assert bug.status in ("warn", "fail") and "compared as items" in bug.message, bug.message


class NoisyPairs(torch.utils.data.Dataset):
    """Pairs whose training reads get fresh noise on every read (augmentation); validation reads are exact."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], noise: float):
        self.tensors, self.noise = tensors, noise

    def __len__(self) -> int:
        return len(self.tensors[2])

    def __getitem__(self, i: int):
        a, b, y = (t[i] for t in self.tensors)
        return a + self.noise * torch.randn_like(a), b + self.noise * torch.randn_like(b), y


def test_noise_added_on_read_to_training_pairs_is_told_apart_from_a_shift():
    task = PairTask(NoisyPairs(pairs(150, 600, 0), 1.0), NoisyPairs(pairs(150, 300, 10), 0.0), Siamese, num_classes=2)
    noise = augmentation_variance(task)
    assert noise is not None and noise.shape == (2 * DIM,) and 0.8 < float(noise.mean()) < 1.2
    train, val = splits(task)
    unexplained = split_shift(train, val, train_augmented=True)  # the noise widens every feature, as a scale bug does
    assert unexplained.status == "warn" and "offset or scale" in unexplained.message
    check = split_shift(train, val, train_augmented=True, augmentation=noise)
    assert check.status == "pass" and "not once the validation inputs get noise" in check.message, check.message


def test_validation_pairs_copied_from_training_are_duplicates():
    assert duplicates(*splits(pair_task()), pair_task()).status == "pass"
    copied = duplicates(*splits(pair_task("copied")), pair_task("copied"))
    assert copied.status == "fail" and "also occur in training" in copied.message


def test_a_metadata_column_that_is_the_label_is_a_target_leak():
    clean = target_leak(meta_task())
    assert clean.status == "pass", clean.message
    leak = target_leak(meta_task(label_in_meta=True))
    assert leak.status == "fail" and leak.value["best_feature"] == DIM + 1  # the second metadata value
    assert leak.message.startswith("feature 1 of input 1 (2,) is the target itself")


@pytest.mark.parametrize("bug", [None, "same_argument", "batch_mean"])
def test_batch_independence_differentiates_through_each_input(bug):
    task = pair_task(bug)
    inputs, _ = task.split_batch(task.sample_batch("train", 16, 0))
    check = batch_independence(Siamese(bug), task, inputs)
    if bug is None:
        assert check.status == "pass" and "each of its 2 float input tensors" in check.message
    elif bug == "same_argument":  # the second tensor never reaches the output
        assert check.status == "warn" and "input 1 (6,)" in check.message and check.value["inputs_ignored"] == [1]
    else:
        assert check.status == "fail" and "mixes samples" in check.message


def test_a_high_loss_at_init_names_the_inputs_when_they_are_far_from_unit_scale():
    torch.manual_seed(0)
    raw = meta_task(meta_scale=2000.0)
    check = loss_at_init(WithMeta(), raw, raw.sample_batch("train", 64, 0))
    assert check.status == "fail" and "the inputs are far from unit scale" in check.message
    assert check.value["large_inputs"].startswith(("feature 0 of input 1 (2,)", "feature 1 of input 1 (2,)"))
    clean = meta_task()
    assert loss_at_init(WithMeta(), clean, clean.sample_batch("train", 64, 0)).status == "pass"


def test_the_linear_reference_takes_the_inputs_however_the_task_passes_them():
    task = meta_task()
    inputs, _ = task.split_batch(task.sample_batch("train", 8, 0))
    factory, description = simple_model_factory(task, inputs, torch.zeros(8, CLASSES))
    assert "8 flattened inputs joined from 2 tensors" in description
    model = factory()
    assert model(*inputs).shape == model(inputs).shape == model(x=inputs[0], meta=inputs[1]).shape == (8, CLASSES)


def test_a_clean_pair_task_runs_its_data_and_model_checks_without_a_warning(tmp_path):
    result = Recipe(
        pair_task(), run_dir=tmp_path / "run", stages=["inspect", "baseline"], device="cpu", progress=False,
        quiet=True, keep_going=True,
    ).run()  # fmt: skip
    status = {c.name: c for c in result.checks}
    joined = [
        "input_stats", "split_shift", "duplicates", "outliers", "target_derived_features", "label_noise",
        "samples", "input_batch", "batch_independence", "target_leak", "simple_model",
    ]  # fmt: skip
    assert {name: status[name].status for name in joined} == dict.fromkeys(joined, "pass")
    assert "2 tensors: (6,) + (6,)" in status["summary"].message
    assert status["time_leakage"].status == "skip"  # positions across joined tensors are no time axis
    assert not [c for c in result.checks if c.status in ("fail", "error")]


@pytest.mark.parametrize("label_in_meta", [False, True])
def test_input_ablation_shuffles_each_tensor_and_names_one_that_does_not_help(label_in_meta):
    task = meta_task(label_in_meta=label_in_meta)  # the metadata is noise, or holds the label
    model = fit(task, epochs=30, batch_size=64, progress=False, device="cpu", seed=0).model
    inputs, target = task.split_batch(task.sample_batch("val", 200, 0))
    check = feature_ablation(task, model, inputs, target)
    assert check.status == "pass" and check.value["names"] == ["input 0 (1, 2, 3)", "input 1 (2,)"]
    if label_in_meta:
        assert 1 not in check.value["candidates"]
    else:
        assert check.value["candidates"] == [1] and "input 1 (2,) across samples does not hurt" in check.message


def test_inspect_shows_the_pictures_of_an_image_with_metadata(tmp_path):
    task = meta_task()
    result = Recipe(task, run_dir=tmp_path / "run", stages=["inspect"], device="cpu", progress=False, quiet=True).run()
    samples = next(c for c in result.checks if c.name == "samples")
    assert samples.status == "pass" and "training images" in samples.message
    assert (tmp_path / "run" / "01_inspect" / "samples.png").stat().st_size > 0
    assert (tmp_path / "run" / "01_inspect" / "outliers.png").stat().st_size > 0  # the most extreme pictures


# ---- measurements beside category ids: a tabular model with an embedding ---------------------------------------------

SHOPS = 20


class Tabular(nn.Module):
    """Numeric columns through a linear layer, a shop id through an embedding."""

    def __init__(self, ignore_numbers: bool = False):
        super().__init__()
        self.ignore_numbers = ignore_numbers
        self.numbers, self.shop = nn.Linear(DIM, 16), nn.Embedding(SHOPS, 4)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(20, CLASSES))

    def forward(self, numbers: torch.Tensor, shop: torch.Tensor) -> torch.Tensor:
        numbers = torch.zeros_like(numbers) if self.ignore_numbers else numbers
        return self.head(torch.cat([self.numbers(numbers), self.shop(shop)], 1))


def tabular_task(number_scale: float = 1.0, shop_is_label: bool = False, ignore_numbers: bool = False) -> PairTask:
    def split(n: int, seed: int) -> torch.utils.data.TensorDataset:
        x, y = items(n, seed)
        shop = torch.randint(0, SHOPS, (n,), generator=torch.Generator().manual_seed(seed + 7))
        return torch.utils.data.TensorDataset(x * number_scale, y if shop_is_label else shop, y)

    return PairTask(split(500, 0), split(250, 1), lambda: Tabular(ignore_numbers), num_classes=CLASSES, name="tabular")


def test_category_ids_join_as_values_but_are_no_measurements():
    numbers, shop = torch.randn(4, DIM), torch.tensor([3, 0, 19, 7])
    joined = joined_features((numbers, shop))
    assert joined.shape == (4, DIM + 1) and joined[:, -1].tolist() == [3.0, 0.0, 19.0, 7.0]
    assert torch.equal(joined_features((numbers, shop), measurements_only=True), numbers)
    assert continuous_columns((numbers, shop)).tolist() == [True] * DIM + [False]
    assert joined_features((shop, shop)) is None  # ids alone are tokens, not features


def test_a_clean_tabular_task_with_category_ids_runs_clean(tmp_path):
    result = Recipe(
        tabular_task(), run_dir=tmp_path / "run", stages=["inspect", "baseline"], device="cpu", progress=False,
        quiet=True, keep_going=True,
    ).run()  # fmt: skip
    status = {c.name: c for c in result.checks}
    joined = [
        "input_stats", "split_shift", "duplicates", "outliers", "label_noise", "input_batch", "batch_independence",
        "target_leak", "simple_model",
    ]  # fmt: skip
    assert {name: status[name].status for name in joined} == dict.fromkeys(joined, "pass")
    assert "(the float ones)" in status["simple_model"].message  # the linear reference reads no id as a number
    assert not [c for c in result.checks if c.status in ("fail", "error", "warn")], [
        (c.name, c.message) for c in result.checks if c.status in ("fail", "error", "warn")
    ]


def test_raw_numbers_beside_category_ids_are_named_and_the_ids_are_not():
    train, _ = splits(tabular_task(number_scale=1000.0))
    measured = train.measurements()
    assert measured.parts == ((DIM,),) and measured.inputs.shape == (500, DIM)  # the shop id left out
    check, _ = input_stats(measured.inputs, train.scope, measured.parts)
    assert check.status == "warn" and "of input 0 (6,) has mean" in check.message
    clean, _ = splits(tabular_task())
    assert input_stats(clean.measurements().inputs, clean.scope)[0].status == "pass"  # ids 0..19 are not a scale


def test_a_category_column_that_is_the_label_is_a_target_leak():
    leak = target_leak(tabular_task(shop_is_label=True))
    assert leak.status == "fail" and leak.value["best_feature"] == DIM and "feature 0 of input 1 ()" in leak.message


def test_a_model_that_ignores_its_numbers_but_reads_its_ids_warns_and_does_not_fail():
    task = tabular_task(ignore_numbers=True)
    inputs, _ = task.split_batch(task.sample_batch("train", 16, 0))
    check = batch_independence(Tabular(ignore_numbers=True), task, inputs)
    assert check.status == "warn" and "input 0 (6,)" in check.message and check.value["inputs_ignored"] == [0]
    clean = batch_independence(Tabular(), tabular_task(), inputs)
    assert clean.status == "pass" and "each of its 1 float input tensors" in clean.message


# ---- several token tensors: a sentence pair -------------------------------------------------------------------------


class PairOfSentences(nn.Module):
    def __init__(self, vocab: int = 12):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(16, 2)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.emb(a).mean(1), self.emb(b).mean(1)], 1))


def sentence_pairs(copied: bool = False) -> PairTask:
    """Two token sequences per sample; the label: do they hold token 1 twice or more between them."""

    def split(n: int, seed: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        a, b = torch.randint(1, 12, (n, 6), generator=g), torch.randint(1, 12, (n, 6), generator=g)
        return a, b, (((a == 1).sum(1) + (b == 1).sum(1)) >= 2).long()

    train, val = split(300, 0), split(120, 1)
    if copied:
        val = tuple(t[:120] for t in train)
    data = lambda t: torch.utils.data.TensorDataset(*t)
    task = PairTask(data(train), data(val), PairOfSentences, num_classes=2, name="sentence-pairs")
    task.decoder = lambda ids: "".join("abcdefghijkl"[i] for i in ids)
    return task


def test_token_pairs_are_joined_as_ids_for_duplicates_label_noise_and_samples(tmp_path):
    assert joined_tokens((torch.ones(3, 4, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))).shape == (3, 6)
    assert joined_tokens((torch.ones(3, 4, dtype=torch.long), torch.zeros(3, 2))) is None  # a float part: features
    result = Recipe(sentence_pairs(), run_dir=tmp_path / "run", stages=["inspect"], device="cpu", progress=False,
                    quiet=True).run()  # fmt: skip
    status = {c.name: c for c in result.checks}
    assert status["duplicates"].status == status["samples"].status == "pass"
    assert "linear probe" in status["label_noise"].message  # the joined ids' bag of tokens learns the pairs' label
    assert status["label_noise"].status == "pass"
    assert status["split_shift"].status == "skip"  # ids are not measurements
    assert " | " in (tmp_path / "run" / "01_inspect" / "samples.txt").read_text()  # each sentence decoded
    copied = duplicates(*splits(sentence_pairs(copied=True)), sentence_pairs(copied=True))
    assert copied.status == "fail" and "also occur in training" in copied.message
