"""Task: kind and class inference, the split forms, validation before training, the hooks and the variants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from recipe import Task, TaskError, fit
from recipe.data import DatasetSplit, TensorSplit
from recipe.evaluation import constant_loss
from tests.conftest import VOCAB, TinyDataset, TinyLM, TinyMLP, gaussian_points

# ---- inference ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "kind", "num_classes", "metric"),
    [
        ("classification_task", "classification", 3, "accuracy"),
        ("dataset_task", "classification", 3, "accuracy"),
        ("regression_task", "regression", None, "mae"),
        ("sequence_task", "sequence", VOCAB, "accuracy"),
    ],
)
def test_fixture_kind_classes_and_metric(request, fixture, kind, num_classes, metric):
    task = request.getfixturevalue(fixture)
    task.validate()
    assert (task.kind, task.num_classes, task.metric_name) == (kind, num_classes, metric)


def _sequence_data():
    starts = torch.arange(20).reshape(-1, 1) % VOCAB
    tokens = (starts + torch.arange(5)) % VOCAB
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize(
    ("build", "kind", "num_classes"),
    [
        pytest.param(lambda x, y: Task((x, y), (x, y), TinyMLP), "classification", 3, id="int-labels"),
        pytest.param(
            lambda x, y: Task((x, x[:, :1]), (x, x[:, :1]), lambda: TinyMLP(out=1), loss="mse"),
            "regression",
            None,
            id="float-targets",
        ),
        pytest.param(
            lambda x, y: Task((x, y), (x, y), TinyMLP, num_classes=5), "classification", 5, id="num-classes-given-wider"
        ),
        pytest.param(
            lambda x, y: Task((x, y), (x, y.float()), TinyMLP, kind="classification"),
            "classification",
            3,
            id="kind-given",
        ),
        pytest.param(
            lambda x, y: Task(_sequence_data(), _sequence_data(), TinyLM),
            "sequence",
            VOCAB,
            id="token-ids-inferred-as-sequence",
        ),
        pytest.param(
            lambda x, y: Task(
                (x, (y == 0).float()), (x, (y == 0).float()), lambda: TinyMLP(out=1), loss="bce_with_logits"
            ),
            "classification",
            2,
            id="bce-inferred-classification",
        ),
    ],
)
def test_kind_and_num_classes_inferred(build, kind, num_classes):
    x, y = gaussian_points(40)
    task = build(x, y)
    assert (task.kind, task.num_classes) == (kind, num_classes)


def test_numpy_inputs_are_converted_float64_to_float32_and_ints_to_int64():
    x, y = gaussian_points(40)
    task = Task((x.double().numpy(), y.int().numpy()), (x.double().numpy(), y.numpy().astype(np.uint8)), TinyMLP)
    assert task.train.x.dtype == torch.float32 and task.val.x.dtype == torch.float32
    assert task.train.y.dtype == torch.int64 and task.val.y.dtype == torch.int64
    task.validate()  # a float32 model accepts them


@pytest.mark.parametrize(
    ("data", "split_type"),
    [
        pytest.param(lambda x, y: (x, y), TensorSplit, id="tuple-of-tensors"),
        pytest.param(lambda x, y: [x.numpy(), y.numpy()], TensorSplit, id="list-of-arrays"),
        pytest.param(lambda x, y: TensorDataset(x, y), TensorSplit, id="TensorDataset-fast-path"),
        pytest.param(lambda x, y: TinyDataset(x, y), DatasetSplit, id="map-style-Dataset"),
    ],
)
def test_split_forms(data, split_type):
    x, y = gaussian_points(40)
    task = Task(data(x, y), data(x, y), TinyMLP)
    assert isinstance(task.train, split_type) and len(task.train) == 40
    inputs, target = task.split_batch(task.batch("train", [3, 1]))
    assert torch.equal(inputs, x[[3, 1]]) and torch.equal(target, y[[3, 1]])


# ---- validation: every malformed part is a TaskError naming it, before training ---------------------------------


class SameInstance:
    def __init__(self):
        self.model = TinyMLP()

    def __call__(self):
        return self.model


class ReturnsTuple(TinyMLP):
    def forward(self, x):
        return self.net(x), x


def _labels_with(y, index, value):
    y = y.clone()
    y[index] = value
    return y


def _per_sample_cross_entropy(output, target):
    return F.cross_entropy(output, target, reduction="none")


class NarrowLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Embedding(VOCAB, 4), nn.Linear(4, 3))

    def forward(self, tokens):
        return self.net(tokens)


def _targets_with_nan(x):
    y = x[:, :1].clone()
    y[7] = float("nan")
    return y


def case(name, build, match, bug=None, raises=None):
    """One row of BAD_TASKS; `bug` marks a known defect (strict xfail)."""
    marks = [pytest.mark.xfail(strict=True, raises=raises, reason=f"BUG: {bug}")] if bug else []
    return pytest.param(build, match, id=name, marks=marks)


BAD_TASKS = [
    # id, builder(x, y) -> Task, regex the TaskError message must match
    case(
        "labels-out-of-range",
        lambda x, y: Task((x, _labels_with(y, 3, 7)), (x, y), TinyMLP, num_classes=3),
        r"train targets span 0\.\.7 but num_classes=3",
    ),
    case(
        "negative-labels",
        lambda x, y: Task((x, y), (x, _labels_with(y, 0, -1)), TinyMLP, num_classes=3),
        r"val targets span -1\.\.2",
    ),
    case(
        "float-labels-cross-entropy",
        lambda x, y: Task((x, y.float()), (x, y.float()), TinyMLP, kind="classification"),
        r"train targets are torch\.float32 .*integer class ids",
    ),
    case(
        "regression-with-the-default-loss",
        lambda x, y: Task((x, x), (x, x), TinyMLP, kind="regression"),
        r"kind='regression' with loss='cross_entropy' \(the default loss\).*loss='mse'",
    ),
    case(
        "soft-labels-custom-loss",
        lambda x, y: Task(
            (x, y.float()),
            (x, y.float()),
            TinyMLP,
            kind="classification",
            loss=lambda o, t: (o[:, 0] - t).square().mean(),
        ),
        r"with a custom loss \(its accuracy is argmax\) needs integer class ids.*soft targets.*kind='regression'",
    ),
    case(
        "binary-float-labels-custom-loss",
        lambda x, y: Task(
            (x, (y[:, None] > 0).float()),
            (x, (y[:, None] > 0).float()),
            lambda: nn.Sequential(TinyMLP(), nn.Linear(2, 1), nn.Sigmoid()),
            kind="classification",
            loss=lambda o, t: F.binary_cross_entropy(o, t),
        ),
        r"train targets are torch.float32 0/1 values.*loss='bce_with_logits' on logits \(drop a final Sigmoid.*"
        r"kind='regression'",
    ),
    case(
        "float-labels-cross-entropy-kind-omitted",
        lambda x, y: Task((x, y.float()), (x, y.float()), TinyMLP),
        r"integer class ids",
    ),
    case("empty-train", lambda x, y: Task((x[:0], y[:0]), (x, y), TinyMLP), r"train is empty"),
    case("empty-val-dataset", lambda x, y: Task((x, y), TinyDataset(x[:0], y[:0]), TinyMLP), r"val is empty"),
    case("missing-val", lambda x, y: Task((x, y), None, TinyMLP), r"val is missing"),
    case("not-data", lambda x, y: Task(5, (x, y), TinyMLP), r"train must be a Dataset or a tuple"),
    case(
        "object-array",
        lambda x, y: Task((x.numpy().astype(object), y), (x, y), TinyMLP),
        r"train\[0\] \(inputs\) is a numpy array of dtype object",
    ),
    case(
        "class-ids-in-a-column",
        lambda x, y: Task((x, y[:, None]), (x, y[:, None]), TinyMLP),
        r"targets have shape \(2, 1\): one class id per sample held in a column.*y\.squeeze\(1\)",
    ),
    case(
        "string-labels",
        lambda x, y: Task((x, np.array(["cat", "dog", "owl"])[y.numpy() % 3]), (x, y), TinyMLP),
        r"train\[1\] \(targets\) holds strings \('(cat|dog|owl)', \.\.\.\); encode them as integer class ids",
    ),
    case(
        "several-input-arrays",
        lambda x, y: Task(((x, x.numpy()), y), (x, y), TinyMLP),
        r"train\[0\] \(inputs\) is a tuple of 2 arrays; a tuple \(X, y\) takes one input.*TensorDataset\(a, b, y\)",
    ),
    case(
        "length-mismatch",
        lambda x, y: Task((x, y[:10]), (x, y), TinyMLP),
        r"train: inputs have 40 rows but targets have 10",
    ),
    case("factory-same-instance", lambda x, y: Task((x, y), (x, y), SameInstance()), r"same nn\.Module instance twice"),
    case("factory-not-module", lambda x, y: Task((x, y), (x, y), lambda: "net"), r"factory returned str"),
    case("model-not-callable", lambda x, y: Task((x, y), (x, y), "TinyMLP"), r"model must be a zero-argument callable"),
    case(
        "module-instead-of-factory",
        lambda x, y: Task((x, y), (x, y), TinyMLP()),
        r"model.*(factory|callable)",
        raises=TypeError,
    ),
    case("model-returns-tuple", lambda x, y: Task((x, y), (x, y), ReturnsTuple), r"returned a tuple.*override forward"),
    case(
        "model-crashes",
        lambda x, y: Task((x, y), (x, y), lambda: TinyMLP(inputs=5)),
        r"model failed on a batch of 2 training samples: RuntimeError",
    ),
    case(
        "mse-output-B1-target-B",
        lambda x, y: Task((x, x[:, 0]), (x, x[:, 0]), lambda: TinyMLP(out=1), loss="mse"),
        r"output has shape \(2, 1\) but targets have shape \(2,\); mse would broadcast",
    ),
    case(
        "head-narrower-than-classes",
        lambda x, y: Task((x, y), (x, y), lambda: TinyMLP(out=2)),
        r"output has shape \(2, 2\) .*num_classes=3 need \(2, 3\)",
    ),
    case(
        "sequence-head-narrower",
        lambda x, y: Task(_sequence_data(), _sequence_data(), NarrowLM, kind="sequence"),
        r"output has shape \(2, 4, 3\) .*need \(2, 4, 7\)",
    ),
    case(
        "loss-not-scalar",
        lambda x, y: Task((x, y), (x, y), TinyMLP, loss=_per_sample_cross_entropy),
        r"loss returned \(2,\); it must return a scalar",
    ),
    case(
        "nan-targets",
        lambda x, y: Task((x, _targets_with_nan(x)), (x, x[:, :1]), lambda: TinyMLP(out=1), loss="mse"),
        r"train targets contain NaN or Inf \(first rows \[7\]\)",
    ),
    case(
        "inf-targets-dataset",
        lambda x, y: Task((x, x[:, :1]), TinyDataset(x, x[:, :1] / 0), lambda: TinyMLP(out=1), loss="mse"),
        r"val targets contain NaN or Inf",
    ),
    case("unknown-loss", lambda x, y: Task((x, y), (x, y), TinyMLP, loss="hinge"), r"loss='hinge' is not known"),
    case("unknown-kind", lambda x, y: Task((x, y), (x, y), TinyMLP, kind="ranking"), r"kind='ranking' is not known"),
    case(
        "num-classes-zero", lambda x, y: Task((x, y), (x, y), TinyMLP, num_classes=0), r"num_classes must be a positive"
    ),
    case(
        "dict-batches-without-hook",
        lambda x, y: Task(DictDataset(x, y), DictDataset(x, y), TinyMLP),
        r"batches are dicts \(keys 'features', 'label', 'id'\): subclass Task and override split_batch",
    ),
]


@pytest.mark.parametrize(("build", "match"), BAD_TASKS)
def test_bad_task_raises_task_error_before_training(build, match):
    x, y = gaussian_points(40)
    logged = []
    with pytest.raises(TaskError, match=match):
        fit(build(x, y), epochs=1, batch_size=8, device="cpu", progress=False, log=logged.append)
    assert logged == []  # nothing trained


def test_replace_revalidates_the_variant(classification_task):
    classification_task.validate()
    narrow = classification_task.replace(model=lambda: TinyMLP(out=2))
    with pytest.raises(TaskError, match=r"need \(2, 3\)"):
        narrow.validate()


# ---- hooks a subclass overrides ---------------------------------------------------------------------------------


class DictDataset(TinyDataset):
    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i], "id": i}


class DictTask(Task):
    def split_batch(self, batch):
        return batch["features"], batch["label"]


def test_subclass_with_dict_batches_trains_through_fit():
    x, y = gaussian_points(200)
    task = DictTask(DictDataset(x[:150], y[:150]), DictDataset(x[150:], y[150:]), TinyMLP)
    assert (task.kind, task.num_classes) == ("classification", 3)
    out = fit(task, epochs=4, batch_size=32, lr=1e-2, device="cpu", progress=False)
    assert out.setup["data_path"] == "DataLoader"
    assert sum(out.step_losses[-5:]) < 0.8 * sum(out.step_losses[:5])
    assert out.history[-1]["val_accuracy"] > 0.5


class TwoInputTask(Task):
    """A model with two inputs and a dict output: overrides forward (and split_batch) only."""

    def split_batch(self, batch):
        x, y = batch
        return (x[:, :4], x[:, 4:]), y

    def forward(self, model, inputs):
        return model(*inputs)["logits"]


class TwoInputNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, left, right):
        return {"logits": self.a(left) + self.b(right)}


def test_subclass_overriding_forward_validates_and_exchanges_nested_inputs_together():
    from recipe.diagnostics.baselines import exchanged_inputs

    x, y = gaussian_points(40)
    task = TwoInputTask((x, y), (x, y), TwoInputNet)
    task.validate()
    model = task.make_model()
    exchanged, _ = exchanged_inputs(task).outputs(model, task.batch("train", [0, 1]))
    swapped = x[[1, 0]]  # two samples: each gets the other's inputs, both parts of them
    assert torch.allclose(exchanged, model(swapped[:, :4], swapped[:, 4:])["logits"])


# ---- variants ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["classification_task", "dataset_task"])
def test_subset_holds_exactly_the_indices(request, fixture):
    task = request.getfixturevalue(fixture)
    part = task.subset("train", [5, 0, 9])
    assert len(part.train) == 3 and len(part.val) == len(task.val)
    assert type(part.train) is type(task.train)
    x_part, y_part = part.split_batch(part.batch("train", [0, 1, 2]))
    x_full, y_full = task.split_batch(task.batch("train", [5, 0, 9]))
    assert torch.equal(x_part, x_full) and torch.equal(y_part, y_full)
    assert len(task.train) == 150  # the original is untouched


def test_replace_input_transform_applies_it_and_leaves_the_original(classification_task):
    model = classification_task.make_model()
    batch = classification_task.batch("val", [0, 1, 2])
    zeroed, target = classification_task.replace(input_transform=torch.zeros_like).outputs(model, batch)
    assert torch.equal(zeroed, model(torch.zeros(3, 8)))
    assert torch.equal(target, batch[1])
    normal, _ = classification_task.outputs(model, batch)
    assert classification_task.input_transform is None and torch.equal(normal, model(batch[0]))


def test_an_input_transform_lives_in_the_variant_class_and_keeps_the_users_forward(classification_task):
    class Scaled(Task):  # a user's hook: forward runs on the transformed inputs
        def forward(self, model, inputs):
            return model(inputs * 2)

    task = Scaled(classification_task.train, classification_task.val, classification_task.model, num_classes=3)
    model, batch = task.make_model(), task.batch("val", [0, 1, 2])
    shifted = task.replace(input_transform=lambda x: x + 1)
    assert isinstance(shifted, Scaled) and type(task) is Scaled  # the plain task's class tests for no transform
    assert torch.equal(shifted.outputs(model, batch)[0], model((batch[0] + 1) * 2))
    again = shifted.replace(input_transform=lambda x: x - 1)  # replaced, not stacked
    assert torch.equal(again.outputs(model, batch)[0], model((batch[0] - 1) * 2))
    plain = again.replace(input_transform=None)
    assert type(plain) is Scaled and torch.equal(plain.outputs(model, batch)[0], model(batch[0] * 2))


def test_replace_converts_splits_and_rejects_unknown_attributes(classification_task):
    x, y = gaussian_points(10)
    variant = classification_task.replace(train=(x.numpy(), y.numpy()))
    assert isinstance(variant.train, TensorSplit) and len(variant.train) == 10
    assert len(classification_task.train) == 150
    with pytest.raises(TypeError, match="no attribute 'modle'"):
        classification_task.replace(modle=TinyMLP)
    with pytest.raises(TypeError, match="no attribute 'forward'"):  # a hook, not data
        classification_task.replace(forward=None)


def test_replace_augment_sets_the_augmentation_and_keeps_the_hook(classification_task):
    flipped = classification_task.replace(augment=lambda x: -x)
    x = torch.ones(2, 2)
    assert torch.equal(flipped.augment(x), -x) and torch.equal(classification_task.augment(x), x)
    assert torch.equal(flipped.replace(augment=None).augment(x), x)  # None: no augmentation, the hook still runs


def test_sample_batch_is_fixed_by_the_seed(classification_task):
    a = classification_task.sample_batch("train", 8, seed=3)
    b = classification_task.sample_batch("train", 8, seed=3)
    c = classification_task.sample_batch("train", 8, seed=4)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and len(a[0]) == 8


# ---- losses and metrics against references ----------------------------------------------------------------------


_G = torch.Generator().manual_seed(0)


@pytest.mark.parametrize(
    ("loss", "output", "target"),
    [
        ("cross_entropy", torch.randn(6, 4, generator=_G), torch.tensor([0, 1, 2, 3, 0, 1])),
        ("mse", torch.randn(6, 2, generator=_G), torch.randn(6, 2, generator=_G)),
        ("l1", torch.randn(6, 2, generator=_G), torch.randn(6, 2, generator=_G)),
        ("bce_with_logits", torch.randn(6, 3, generator=_G), torch.randint(0, 2, (6, 3), generator=_G).float()),
    ],
)
def test_loss_per_sample_averages_to_compute_loss(loss, output, target):
    x, y = gaussian_points(10)
    task = Task((x, y), (x, y), TinyMLP, loss=loss, num_classes=4)
    per_sample = task.loss_per_sample(output, target)
    assert per_sample.shape == (6,)
    assert torch.allclose(per_sample.mean(), task.compute_loss(output, target))


def test_sequence_loss_and_accuracy_skip_ignored_positions(sequence_task):
    output = torch.randn(2, 3, VOCAB, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[1, 2, -100], [3, -100, -100]])
    per_sample = sequence_task.loss_per_sample(output, target)
    expected = [F.cross_entropy(output[0, :2], target[0, :2]), F.cross_entropy(output[1, :1], target[1, :1])]
    assert torch.allclose(per_sample, torch.stack(expected))
    hits = sequence_task.metric_per_sample(output, target)
    want = [(output[0, :2].argmax(-1) == target[0, :2]).float().mean(), (output[1, 0].argmax() == 3).float()]
    assert torch.allclose(hits, torch.stack(want))


@pytest.mark.parametrize(
    ("loss", "target", "expected"),
    [
        ("cross_entropy", torch.tensor([0, 0, 1, 1]), math.log(2)),
        ("cross_entropy", torch.tensor([2, 2, 2, 2]), 0.0),
        ("mse", torch.tensor([[1.0], [3.0]]), 1.0),
        ("l1", torch.tensor([[0.0], [1.0], [5.0]]), 5 / 3),  # median 1: (1 + 0 + 4) / 3
        ("bce_with_logits", torch.tensor([[1.0], [0.0]]), math.log(2)),
    ],
)
def test_constant_loss_is_the_best_constant_prediction(loss, target, expected):
    x, y = gaussian_points(10)
    task = Task((x, y), (x, y), TinyMLP, loss=loss)
    assert constant_loss(task, target) == pytest.approx(expected, abs=1e-6)


def test_targets_are_read_once_per_split_and_reread_for_new_data():
    class Counting(torch.utils.data.Dataset):
        reads = 0

        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            Counting.reads += 1
            return self.x[i], self.y[i]

    x, y = gaussian_points(40)
    task = Task(Counting(x, y), (x, y), TinyMLP, num_classes=3)
    task.targets("train")
    before = Counting.reads
    task.targets("train")
    task.replace(input_transform=torch.zeros_like).targets("train")
    assert Counting.reads == before  # same data: no second pass over the Dataset
    new = task.replace(train=Counting(x[:20], y[:20]))
    probe = 1  # building a split reads its last sample once: a __len__ that overstates the data is refused there
    assert len(new.targets("train")) == 20 and Counting.reads == before + probe + 20


def test_subset_keeps_the_groups_of_the_samples_it_keeps_and_new_data_drops_them():
    x, y = gaussian_points(40)
    groups = ([i // 4 for i in range(40)], [100 + i for i in range(40)])
    task = Task((x, y), (x, y), TinyMLP, num_classes=3, groups=groups)
    part = task.subset("train", [0, 5, 39])
    assert part.groups == ([0, 1, 9], groups[1])
    part.validate()  # the group ids match the subset's samples
    assert task.replace(train=(x[:10], y[:10])).groups is None
    assert task.replace(model=TinyMLP).groups == groups


def test_reading_targets_moves_no_random_generator():
    """A Dataset that augments on every read: recipe's own pass over its targets must not shift training's draws."""

    class Noisy(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i] + torch.randn_like(self.x[i]), self.y[i]

    x, y = gaussian_points(40)
    task = Task(Noisy(x, y), (x, y), TinyMLP, num_classes=3)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    task.targets("train", limit=30)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.bool])
def test_class_ids_of_any_integer_dtype_train_as_int64_ids_do(dtype):
    """int32 ids (a CSV read by numpy on some platforms), uint8 and bool labels are the same classes: the built-in
    losses take them as int64 (they raised "expected target dtype to be Long")."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long()
    runs = {}
    for name, labels in (("int64", y), ("other", y.to(dtype))):
        task = Task((x[:80], labels[:80]), (x[80:], labels[80:]), lambda: nn.Linear(6, 2), num_classes=2)
        runs[name] = fit(task, epochs=2, batch_size=16, device="cpu", seed=0, progress=False).history[-1]
    assert runs["other"]["val_loss"] == pytest.approx(runs["int64"]["val_loss"])


def test_pandas_frames_are_read_as_their_arrays():
    pd = pytest.importorskip("pandas")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=g)
    frame, labels = pd.DataFrame(x.double().numpy(), columns=["a", "b", "c"]), pd.Series((x[:, 0] > 0).long().numpy())
    task = Task((frame[:40], labels[:40]), (frame[40:], labels[40:]), lambda: nn.Linear(3, 2))
    assert task.train.x.dtype == torch.float32 and torch.allclose(task.train.x, x[:40])
    assert task.kind == "classification" and task.num_classes == 2


def test_a_list_of_two_samples_is_a_dataset_not_inputs_and_targets():
    """Two (input, target) pairs look like (X, y) with X a tuple; their second item is a pair, not an array of
    targets, so the list reads as a Dataset of two samples."""
    x, y = torch.randn(2, 3), torch.tensor([0, 1])
    task = Task([(x[0], y[0]), (x[1], y[1])], (x, y), lambda: nn.Linear(3, 2), num_classes=2)
    assert len(task.train) == 2 and torch.equal(task.targets("train"), y)


def test_a_target_that_is_not_one_tensor_is_refused_with_a_way_to_pack_it():
    """Labels with per-sample weights, returned as a tuple by split_batch, crashed validation with an
    AttributeError; the error now names the target's type and how to join the parts."""

    class Weighted(Task):
        def split_batch(self, batch):
            return batch[0], (batch[1], batch[2])

    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    data = TensorDataset(x, y, torch.ones(40))
    task = Weighted(
        data, data, lambda: nn.Linear(3, 2), kind="classification", num_classes=2, loss=lambda o, t: o.sum()
    )
    with pytest.raises(
        TaskError, match=r"split_batch returned a target of type tuple.*torch\.stack\(\[y\.float\(\), weight\], 1\)"
    ):
        task.validate()


def test_groups_need_one_id_per_sample_of_their_split():
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    task = Task((x, y), (x[:10], y[:10]), lambda: nn.Linear(3, 2), groups=(list(range(40)), list(range(9))))
    with pytest.raises(TaskError, match=r"groups\[val\] has 9 group ids but the val split has 10 samples"):
        task.validate()
