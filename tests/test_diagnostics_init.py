"""loss_at_init, output_kind, init_bias: each passes on a clean setup and fires on its planted bugs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recipe import Task
from recipe.diagnostics.init import (
    bias_values,
    final_layer,
    init_bias,
    init_output_bias,
    loss_at_init,
    output_kind,
    output_kind_at_init,
    output_module,
    outputs_at_init,
)
from tests import tiny


class Scaled(tiny.MLP):
    def forward(self, x):
        return super().forward(x) * 50  # logit temperature


class Softmaxed(tiny.MLP):
    def forward(self, x):
        return torch.softmax(super().forward(x), dim=1)


class Rectified(tiny.MLP):
    def forward(self, x):
        return F.relu(super().forward(x))


def _batch(task, n=64):
    return task.sample_batch("train", n, seed=0)


@pytest.mark.parametrize(
    ("make_task", "status", "words"),
    [
        (lambda: tiny.classification(), "pass", "expected about"),
        (lambda: tiny.classification(Scaled), "fail", "scaled too large"),
        (lambda: tiny.classification(loss=lambda o, y: F.cross_entropy(o, y, reduction="sum")), "fail", "summed"),
        (lambda: tiny.classification(loss=lambda o, y: F.nll_loss(torch.softmax(o, 1), y)), "fail", "negative"),
        (lambda: tiny.classification(loss=lambda o, y: -F.cross_entropy(o, y)), "fail", "negative"),
        (lambda: tiny.regression(), "pass", "all-zero output"),
        (lambda: tiny.sequence(), "pass", "ln C"),
    ],
)
def test_loss_at_init(make_task, status, words):
    task = make_task()
    torch.manual_seed(0)
    check = loss_at_init(task.make_model(), task, _batch(task))
    assert check.status == status, check.message
    assert words in check.message


def test_a_negative_likelihood_at_init_is_expected_for_counts_and_a_bug_for_classes():
    """Poisson NLL drops log(y!), so a model whose output bias starts at log(mean count), as 'init well' advises,
    scores below zero on counts of mean 20. Over class labels the same sign is the missing log or a flipped sign."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, tiny.FEATURES, generator=g)
    y = torch.poisson(torch.full((300,), 20.0), generator=g)

    def model():
        net = tiny.MLP(out=1)
        nn.init.constant_(net.head.bias, math.log(20.0))
        return net

    counts = Task(
        (x[:200], y[:200]), (x[200:], y[200:]), model, kind="regression",
        loss=lambda o, t: F.poisson_nll_loss(o.squeeze(-1), t, log_input=True),
    )  # fmt: skip
    check = loss_at_init(counts.make_model(), counts, _batch(counts))
    assert check.status == "skip" and check.value["loss"] < 0 and "Poisson" in check.message, check.message
    flipped = tiny.classification(loss=lambda o, t: -F.cross_entropy(o, t))
    assert loss_at_init(flipped.make_model(), flipped, _batch(flipped)).status == "fail"

    def low_start():  # a log-rate that starts below 0: the loss starts positive (about 10), its floor is not
        net = tiny.MLP(out=1)
        nn.init.constant_(net.head.bias, -0.5)
        return net

    fresh = counts.replace(model=low_start)
    check = loss_at_init(fresh.make_model(), fresh, _batch(fresh))
    assert check.value["loss"] > 0 and check.value["best_constant"] < 0, check.value
    assert check.status == "skip" and "goes below zero" in check.message, check.message


class BiasAtPrior(tiny.MLP):
    """Two classes at 1:20, the output bias at the log class prior: what init_bias advises."""

    def __init__(self):
        super().__init__(out=2)
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.copy_(torch.log(torch.tensor([20 / 21, 1 / 21])))


def _imbalanced() -> Task:
    x, _ = tiny.blobs(840, 0)
    y = (torch.arange(840) % 21 == 0).long()
    return Task((x[:630], y[:630]), (x[630:], y[630:]), BiasAtPrior, num_classes=2)


class SigmoidHead(tiny.MLP):
    def forward(self, x):
        return torch.sigmoid(super().forward(x))


def _proportions() -> Task:
    x, _ = tiny.blobs(400, 0)
    y = torch.sigmoid(x[:, :1] + 0.3 * x[:, 1:2])  # in (0, 1), mean 0.5: far from an all-zero output
    return Task((x[:300], y[:300]), (x[300:], y[300:]), lambda: SigmoidHead(out=1), loss="mse")


class CopiesFeatureZero(tiny.MLP):
    def forward(self, x):
        return 0.01 * super().forward(x) + x[:, :1]


def _copied_at_init() -> Task:
    x, _ = tiny.blobs(400, 0)
    y = x[:, :1] + 0.05 * x[:, 1:2]
    return Task((x[:300], y[:300]), (x[300:], y[300:]), lambda: CopiesFeatureZero(out=1), loss="mse")


@pytest.mark.parametrize(
    ("make_task", "status"),
    [
        (_imbalanced, "pass"),  # 0.19 against ln 2 = 0.69: the prior's entropy, the best constant's loss
        (_proportions, "pass"),  # a sigmoid head starts at 0.5, the targets' middle
        (_copied_at_init, "warn"),  # far below any constant: the output already holds the target at init
    ],
)
def test_a_loss_at_init_far_below_zero_outputs_warns_only_below_the_best_constant(make_task, status):
    task = make_task()
    torch.manual_seed(0)
    check = loss_at_init(task.make_model(), task, _batch(task))
    assert check.value["ratio"] < 0.5 and check.status == status, check.message


def test_loss_at_init_expected_is_ln_c_for_cross_entropy():
    task = tiny.classification()
    check = loss_at_init(task.make_model(), task, _batch(task))
    assert check.expected == pytest.approx(math.log(tiny.CLASSES), rel=1e-6)


def _trained_output(task, steps=150):
    from recipe import fit

    model = fit(task, epochs=None, max_steps=steps, lr=1e-2, progress=False, device="cpu").model.eval()
    batch = task.sample_batch("val", 64, seed=0)
    with torch.no_grad():
        return task.outputs(model, batch)


@pytest.mark.parametrize(
    ("make_task", "status", "words"),
    [
        (lambda: tiny.classification(), "pass", "logits"),
        (lambda: tiny.classification(Softmaxed), "fail", "probabilities"),
        (lambda: tiny.classification(Rectified), "fail", "ever negative"),
        (lambda: tiny.regression(), "pass", "cover"),
        (lambda: tiny.regression(lambda: nn.Sequential(tiny.MLP(out=1), nn.ReLU())), "fail", "negative"),
        (lambda: tiny.sequence(), "pass", "logits"),
    ],
)
def test_output_kind(make_task, status, words):
    task = make_task()
    output, target = _trained_output(task)
    check = output_kind(output, target, task)
    assert check.status == status, check.message
    assert words in check.message


def test_output_kind_catches_sigmoid_before_bce():
    x, y = tiny.blobs(256, 0)
    val = tiny.blobs(128, 1)
    target, val_target = (y == 0).float().unsqueeze(1), (val[1] == 0).float().unsqueeze(1)
    clean = tiny.Task(
        train=(x, target),
        val=(val[0], val_target),
        model=lambda: tiny.MLP(out=1),
        loss="bce_with_logits",
        kind="classification",
    )
    planted = clean.replace(model=lambda: nn.Sequential(tiny.MLP(out=1), nn.Sigmoid()))
    assert output_kind(*_trained_output(clean), clean).status == "pass"
    assert output_kind(*_trained_output(planted), planted).status == "fail"


def test_final_layer_found_through_an_output_transform():
    task = tiny.classification(Scaled)
    name, layer = final_layer(task.make_model(), task, _batch(task, 8))
    assert name == "head" and isinstance(layer, nn.Linear)


def test_bias_values_are_log_priors_and_mean():
    task = tiny.classification()
    y = torch.tensor([0, 0, 0, 1])
    values = bias_values(task, y)
    probs = torch.softmax(values, 0)
    counts = torch.tensor([3.0, 1.0, 0.0, 0.0]) + 1  # add-one smoothing
    assert torch.allclose(probs, counts / counts.sum(), atol=1e-6)
    reg = tiny.regression(offset=5.0)
    assert float(bias_values(reg, reg.targets("train"))[0]) == pytest.approx(
        float(reg.targets("train").mean()), rel=1e-6
    )


def test_init_output_bias_sets_the_head_bias():
    task = tiny.regression(offset=50.0)
    model = task.make_model()
    info = init_output_bias(model, task, "cpu")
    assert info is not None and info["layer"] == "head"
    assert float(model.head.bias.detach()) == pytest.approx(float(task.targets("train").mean()), rel=1e-5)


def _at_prior(task):
    """The task's model with its head's bias initialised from the training targets (log priors / mean)."""
    from recipe.diagnostics.init import bias_values

    values = bias_values(task, task.targets("train"))

    def model():
        net = task.model()
        with torch.no_grad():
            net.head.bias.copy_(values)
        return net

    return task.replace(model=model)


def _imbalanced():
    x, y = tiny.blobs(600, 0)
    keep = torch.cat([torch.nonzero(y == 0).flatten()[:30], torch.nonzero(y != 0).flatten()])
    xb, yb = x[keep], (y[keep] == 0).long()  # about 1:15
    return tiny.Task(train=(xb[:400], yb[:400]), val=(xb[400:], yb[400:]), model=lambda: tiny.MLP(out=2), num_classes=2)


@pytest.mark.parametrize(
    ("make_task", "status"),
    [
        (lambda: tiny.classification(), "pass"),
        (_imbalanced, "warn"),
        (lambda: tiny.regression(), "pass"),
        (lambda: tiny.regression(offset=1000.0), "warn"),
        (lambda: tiny.sequence(), "pass"),  # token frequencies are always skewed: applied, not a warning
        (lambda: _at_prior(_imbalanced()), "pass"),  # the fixed twin: the model's init already sets the prior
        (lambda: _at_prior(tiny.regression(offset=1000.0)), "pass"),
    ],
)
def test_init_bias(make_task, status):
    task = make_task()
    check = init_bias(task, task.make_model, _batch(task), torch.device("cpu"))
    assert check.status == status, check.message
    if status == "warn":
        assert check.value["loss_after"] < check.value["loss_before"]


def test_init_bias_passes_class_ids_reserved_for_later_and_still_warns_imbalance_among_those_that_occur():
    """num_classes=6 with labels 0..3 only (ids 4 and 5 reserved): a uniform init overstates the loss by
    ln 6 - ln 4, which the first steps remove; the labels that occur are balanced. The imbalanced twin, with the
    same two reserved ids, still warns."""
    base = tiny.classification()
    reserved = base.replace(model=lambda: tiny.MLP(out=6))
    reserved.num_classes = 6
    check = init_bias(reserved, reserved.make_model, _batch(reserved), torch.device("cpu"))
    assert check.status == "pass" and check.value["absent_classes"] == [4, 5], check.message
    assert "occur in neither split (4, 5)" in check.message
    imbalanced = _imbalanced().replace(model=lambda: tiny.MLP(out=4))
    imbalanced.num_classes = 4
    check = init_bias(imbalanced, imbalanced.make_model, _batch(imbalanced), torch.device("cpu"))
    assert check.status == "warn" and check.value["absent_classes"] == [2, 3], check.message


def _narrow():
    """A ReLU regression MLP ending in Linear: about one fresh draw in four outputs no negative value."""
    return nn.Sequential(nn.Linear(tiny.FEATURES, 2), nn.ReLU(), nn.Linear(2, 1))


def _verdicts_at_init(task, seeds, draws):
    batch = task.sample_batch("val", 128, seed=0)
    statuses = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        statuses.append(output_kind(*outputs_at_init(task.make_model, task, batch, draws), task).status)
    return statuses


def test_output_kind_judges_the_architecture_not_one_random_init():
    """A fresh ReLU MLP ending in Linear outputs no negative value on some draws; over five draws it never fails."""
    task = tiny.regression(lambda: _narrow())
    one_draw = _verdicts_at_init(task, 50, draws=1)
    assert one_draw.count("fail") > 0  # the false alarm the multi-draw verdict removes
    assert _verdicts_at_init(task, 50, draws=5).count("fail") == 0


@pytest.mark.parametrize(
    ("make_task", "words"),
    [
        (lambda: tiny.classification(Softmaxed), "probabilities"),
        (lambda: tiny.classification(Rectified), "ever negative"),
        (lambda: tiny.regression(lambda: nn.Sequential(_narrow(), nn.ReLU())), "negative"),
    ],
)
def test_output_kind_at_init_fails_an_output_non_linearity_on_every_seed(make_task, words):
    task = make_task()
    assert _verdicts_at_init(task, 10, draws=5) == ["fail"] * 10
    batch = task.sample_batch("val", 128, seed=0)
    assert words in output_kind_at_init(task.make_model, task, batch).message


def test_output_kind_at_init_never_fails_the_narrowest_relu_regression_mlp():
    task = tiny.regression(lambda: nn.Sequential(nn.Linear(tiny.FEATURES, 1), nn.ReLU(), nn.Linear(1, 1)))
    batch = task.sample_batch("val", 128, seed=0)
    statuses = []
    for seed in range(50):
        torch.manual_seed(seed)
        statuses.append(output_kind_at_init(task.make_model, task, batch).status)
    assert statuses == ["pass"] * 50


class ClampedInPlace(tiny.MLP):
    def forward(self, x):
        return self.head(F.relu(self.l2(F.relu(self.l1(x))))).clamp_(min=0)  # same tensor as head's, modified


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (tiny.MLP, ("head", nn.Linear)),
        (Rectified, None),  # a functional relu makes the output
        (lambda: nn.Sequential(tiny.MLP(), nn.ReLU(inplace=True)), ("1", nn.ReLU)),
        (ClampedInPlace, None),  # head's tensor, but clipped in place
        (lambda: nn.Sequential(tiny.MLP(), nn.Softmax(dim=1)), ("1", nn.Softmax)),
    ],
)
def test_output_module_is_the_module_whose_output_is_returned_unchanged(model, expected):
    task = tiny.classification(model)
    found = output_module(task.make_model(), task, _batch(task, 8))
    if expected is None:
        assert found is None
    else:
        assert found is not None and found[0] == expected[0] and isinstance(found[1], expected[1])


def test_output_kind_gives_no_sign_verdict_on_an_output_from_a_linear_layer():
    """Even one draw: a model whose output is a Linear layer's can reach negative values, whatever the init drew."""
    task = tiny.regression(lambda: nn.Sequential(nn.Linear(tiny.FEATURES, 1), nn.ReLU(), nn.Linear(1, 1)))
    batch = task.sample_batch("val", 128, seed=0)
    statuses, bare = [], []
    for seed in range(50):
        torch.manual_seed(seed)
        model = task.make_model()
        outputs, target = outputs_at_init(lambda m=model: m, task, batch, draws=1)
        bare.append(output_kind(outputs, target, task).status)
        statuses.append(output_kind(outputs, target, task, final=output_module(model, task, batch)).status)
    assert bare.count("fail") > 10 and statuses == ["pass"] * 50
    planted = tiny.regression(lambda: nn.Sequential(tiny.MLP(out=1), nn.ReLU()))
    model = planted.make_model()
    check = output_kind(
        *outputs_at_init(planted.make_model, planted, batch), planted, output_module(model, planted, batch)
    )
    assert check.status == "fail" and "ReLU '1'" in check.message


def _class_ids_as_values(scale: float = 1.0) -> Task:
    """Class ids 0..3 regressed as numbers (mean 1.5, 1.3 standard deviations from zero) by a default-initialised
    MLP whose output is multiplied by `scale`."""
    x, y = tiny.blobs(400, 0)
    y = y[:, None].float()

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(tiny.FEATURES, 32), nn.ReLU(), nn.Linear(32, 1), Multiply(scale))

    return Task((x[:300], y[:300]), (x[300:], y[300:]), net, loss="mse")


class Multiply(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


@pytest.mark.parametrize(("scale", "status"), [(1.0, "pass"), (30.0, "fail")])
def test_a_squared_error_at_init_is_judged_by_the_outputs_size_not_its_means_sign(scale, status):
    """Off-centre targets put the loss of a fresh model above the all-zero output's whenever the output's random
    mean has the other sign (1.3x and a warn on some draws); what a mis-scaled layer changes is the output's size."""
    task = _class_ids_as_values(scale)
    batch = _batch(task)
    for seed in range(12):
        torch.manual_seed(seed)
        check = loss_at_init(task.make_model(), task, batch)
        assert check.status == status, (seed, check.message)


class TiedGRU(nn.Module):
    """A token GRU whose output head is its input embedding (tied weights); `std`: the embedding's init."""

    def __init__(self, std: float | None = None, dim: int = 64):
        super().__init__()
        self.emb, self.rnn = nn.Embedding(tiny.VOCAB, dim), nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, tiny.VOCAB, bias=False)
        self.head.weight = self.emb.weight
        if std is not None:
            nn.init.normal_(self.emb.weight, std=std)

    def forward(self, idx):
        return self.head(self.rnn(self.emb(idx))[0])


@pytest.mark.parametrize(("std", "status"), [(None, "fail"), (64**-0.5, "pass")])
def test_loss_at_init_names_a_head_tied_to_an_embedding(std, status):
    """nn.Embedding starts at N(0, 1): a head sharing its weight starts its logits about sqrt(64) = 8x too large, and
    the fix is the embedding's init, not "the default init for the last layer" (the head has no init of its own)."""
    torch.manual_seed(0)
    task = tiny.sequence(lambda: TiedGRU(std))
    check = loss_at_init(task.make_model(), task, _batch(task))
    assert check.status == status, check.message
    if status == "fail":
        assert "tied weights" in check.message and "nn.init.normal_(emb.weight, std=0.12)" in check.message


def test_init_bias_advises_the_log_odds_for_one_binary_logit():
    """One logit under binary cross-entropy takes log(p / (1 - p)), not log p (the advice named the class priors)."""
    task = _imbalanced()
    y = task.targets("train").float()[:, None]
    binary = task.replace(train=(task.train.x, y), val=(task.val.x, task.targets("val").float()[:, None]),
                          model=lambda: tiny.MLP(out=1), loss="bce_with_logits")  # fmt: skip
    check = init_bias(binary, binary.make_model, _batch(binary), torch.device("cpu"))
    assert check.status == "warn" and "log-odds" in check.message and "log p_c" not in check.message, check.message
    check = init_bias(task, task.make_model, _batch(task), torch.device("cpu"))
    assert "log p_c" in check.message
