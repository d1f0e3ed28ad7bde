"""Tasks of kinds the project had not run, each a correct setup that used to crash a probe or fail a check:
quantile regression under a callable pinball loss (three outputs per target), per-pixel segmentation, a training
split smaller than the default batch, a model that returns a dict of outputs. Each runs clean now; the planted bug
beside it is still caught."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes, load_wine
from torch import nn

from recipe import Recipe, Task
from recipe.diagnostics.baselines import input_independent
from recipe.diagnostics.search import seed_variance
from recipe.errors import TaskError
from recipe.evaluation import Evaluation
from recipe.models import reference_task, simple_model_factory
from tests import tiny

QUANTILES = torch.tensor([0.1, 0.5, 0.9])


def pinball(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The quantile loss of three quantiles at once: output (B, 3) against target (B,)."""
    d = target[:, None] - output
    return torch.maximum(QUANTILES * d, (QUANTILES - 1) * d).mean()


def quantile_task(standardise: bool, shuffle: bool = False) -> Task:
    """Diabetes progression, three quantiles; sklearn's inputs come scaled to std 0.05 (`standardise` undoes it)."""
    x, y = (torch.tensor(a, dtype=torch.float32) for a in load_diabetes(return_X_y=True))
    y = (y - y.mean()) / y.std()
    if standardise:
        x = (x - x[:350].mean(0)) / x[:350].std(0)
    y_train = y[:350][torch.randperm(350, generator=torch.Generator().manual_seed(0))] if shuffle else y[:350]
    return Task(
        (x[:350], y_train),
        (x[350:], y[350:]),
        lambda: nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3)),
        loss=pinball,
        kind="regression",
        metrics={"median_mae": lambda o, t: float((o[:, 1] - t).abs().mean())},
    )


def run(task: Task, tmp_path, stages=None, seed=0):
    return Recipe(
        task, run_dir=tmp_path / "run", stages=stages, device="cpu", progress=False, quiet=True, keep_going=True,
        seed=seed,
    ).run()  # fmt: skip


def test_a_quantile_regression_runs_every_stage_with_its_own_metric(tmp_path):
    """Three outputs per target have no mean absolute error: it is nan (not a crash in every evaluation), the
    residual plot is left out, and the user's metric is what the runs report."""
    result = run(quantile_task(standardise=True), tmp_path)
    bad = [(c.stage, c.name, c.status, c.message) for c in result.checks if c.status in ("fail", "error")]
    assert bad == []
    errors = next(c for c in result.checks if c.stage == "complexify" and c.name == "prediction_errors")
    assert errors.status == "pass" and errors.value["mean_residual"] is None
    assert not any(a.endswith("residuals.png") for a in errors.artifacts)
    seeds = next(c for c in result.checks if c.name == "seed_variance")
    assert seeds.status in ("pass", "warn") and math.isnan(seeds.value["mean"])


@pytest.mark.parametrize("seed", [0, 1])
def test_input_independent_does_not_fail_a_run_too_short_to_learn_the_constant(tmp_path, seed):
    """On sklearn's unscaled inputs, 300 steps at 3e-4 do not take either run to the constant prediction: the
    comparison only says which run got further (seed 0 failed with "does not use its inputs")."""
    result = run(quantile_task(standardise=False), tmp_path, ["baseline"], seed)
    check = next(c for c in result.checks if c.name == "input_independent")
    assert check.status in ("pass", "skip"), check.message
    if check.status == "skip":
        assert "too short to judge" in check.message and "standardise" in check.message


def test_input_independent_still_fails_shuffled_labels_under_a_callable_loss(tmp_path):
    """Cross-entropy as a callable: the input-free run reaches the label prior within the budget, so the guard
    above stays out of the way and shuffled labels fail as they do under the built-in loss."""
    from examples.digits import make_task

    task = make_task("mlp")
    y = task.train.y[torch.randperm(len(task.train.y), generator=torch.Generator().manual_seed(0))]
    task = task.replace(train=(task.train.x, y), loss=lambda output, target: F.cross_entropy(output, target))
    result = run(task, tmp_path, ["baseline"])
    check = next(c for c in result.checks if c.name == "input_independent")
    assert check.status == "fail" and "does not use its inputs" in check.message


def test_input_independent_skips_only_while_the_input_free_run_is_short_of_the_constant():
    from examples.digits import make_task

    task = make_task("mlp")
    same = Evaluation(loss=2.30, loss_se=0.01, metric=0.1, metric_se=0.02, n=360)
    learning = [2.31 - 0.09 * i / 299 for i in range(300)]  # the real run trained (its loss fell, not far below 2.30)
    reached = [2.31 - 0.01 * min(i, 50) / 50 for i in range(300)]  # shuffled labels: the constant, 2.30, in 50 steps
    short = [2.9 - 0.3 * i / 300 for i in range(300)]  # still 0.3 above it
    assert input_independent(same, same, task, learning, reached, 2.30).status == "fail"
    check = input_independent(same, same, task, learning, short, 2.30)
    assert check.status == "skip" and "2.6" in check.message
    assert input_independent(same, same, task, learning, short, math.nan).status == "fail"  # no constant: as before


def segmentation_task() -> Task:
    """Two 4x4 squares (class 1 bright, class 2 dark) on 12x12 noise; a class per pixel."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = torch.randn(n, 1, 12, 12, generator=g) * 0.3, torch.zeros(n, 12, 12, dtype=torch.long)
        for i in range(n):
            for c, sign in ((1, 1.0), (2, -1.0)):
                r, k = torch.randint(0, 9, (2,), generator=g).tolist()
                y[i, r : r + 4, k : k + 4], x[i, 0, r : r + 4, k : k + 4] = c, sign
        return x, y

    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))

    return Task(split(256), split(64), net, num_classes=3)


def test_a_segmentation_models_prediction_dynamics_average_over_pixels(tmp_path):
    """`_prediction_quality` averaged a (B, H, W) map over H only: the figure raised on a (16, 12, 30) array."""
    result = run(segmentation_task(), tmp_path, ["baseline"])
    check = next(c for c in result.checks if c.name == "loss_decreases")
    assert check.status == "pass" and check.artifacts[0].endswith("_baseline/prediction_dynamics.png")


def test_a_split_smaller_than_the_batch_runs_every_stage(tmp_path):
    """60 training samples against the default batch of 64: tune's seed re-runs asked for 64 and raised."""
    x, y = load_wine(return_X_y=True)
    x = torch.tensor((x - x.mean(0)) / x.std(0), dtype=torch.float32)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], torch.tensor(y)[order]
    task = Task(
        (x[:60], y[:60]), (x[60:100], y[60:100]), lambda: nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))
    )
    result = run(task, tmp_path)
    assert [c for c in result.checks if c.status in ("fail", "error")] == []
    assert {c.stage for c in result.checks} >= {"complexify", "regularize", "tune"}
    assert next(c for c in result.checks if c.name == "seed_variance").status in ("pass", "warn")


def test_seed_variance_reads_a_metric_that_is_nan():
    attempts = [{"trial": 3, "trial_loss": 0.2, "losses": [0.21, 0.22], "metrics": [math.nan, math.nan],
                 "runner_up": None, "verdict": None}]  # fmt: skip
    check = seed_variance(attempts, "mae")
    assert check.status == "pass" and check.value["loss_std"] == pytest.approx(statistics.stdev([0.21, 0.22]))
    assert "mae" not in check.message


def test_the_mean_absolute_error_is_nan_only_when_output_and_target_differ_in_shape():
    task = quantile_task(standardise=True)
    assert torch.isnan(task.metric_per_sample(torch.zeros(4, 3), torch.ones(4))).all()
    assert torch.equal(task.metric_per_sample(torch.zeros(4, 1), torch.ones(4)), torch.ones(4))  # (B, 1) and (B,)
    assert torch.equal(task.metric_per_sample(torch.zeros(4, 2), torch.ones(4, 2)), torch.ones(4))


def wide_sparse_task() -> Task:
    """A bag of 5,000 binary words (2% present), the label a noisy vote of 500 of them: a linear model and an MLP
    learn it (about 67% against 50%), and an MLP memorises its 1,600 training rows within the 300-step short run."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2000, 5000, generator=g) < 0.02).float()
    w = torch.zeros(5000)
    w[:500] = torch.randn(500, generator=g)
    y = (x @ w + 0.1 * torch.randn(2000, generator=g) > 0).long()

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(5000, 64), nn.ReLU(), nn.Linear(64, 2))

    return Task((x[:1600], y[:1600]), (x[1600:], y[1600:]), net)


def test_a_model_that_memorised_wide_data_uses_its_inputs_by_its_accuracy(tmp_path):
    """Its confident mistakes put its validation loss above the input-free model's (0.710 against 0.692), which
    failed the check with "does not use its inputs"; its accuracy, 0.67 against 0.53, says it does."""
    result = run(wide_sparse_task(), tmp_path, ["baseline"])
    check = next(c for c in result.checks if c.name == "input_independent")
    assert check.status == "pass" and "on accuracy" in check.message
    assert check.value["gain"] < 0 < check.value["accuracy_gain"] - 3 * check.value["accuracy_gain_se"]


def test_input_independent_reads_the_metric_only_when_it_shows_a_clear_gain():
    from examples.digits import make_task

    task, regression = make_task("mlp"), quantile_task(standardise=True)
    learning = [2.31 * 0.999**i for i in range(300)]

    def ev(loss: float, metric: float, se: float | None = 0.02) -> Evaluation:
        return Evaluation(loss=loss, loss_se=0.01, metric=metric, metric_se=se, n=400)

    assert input_independent(ev(0.71, 0.67), ev(0.69, 0.53), task, learning).status == "pass"
    assert input_independent(ev(0.71, 0.56), ev(0.69, 0.53), task, learning).status == "fail"  # within 3 SE
    assert input_independent(ev(0.71, 0.67, None), ev(0.69, 0.53, None), task, learning).status == "fail"
    assert input_independent(ev(0.71, 0.40), ev(0.69, 0.53), regression, learning).status == "pass"  # lower mae
    assert input_independent(ev(0.71, math.nan), ev(0.69, math.nan), regression, learning).status == "fail"


def few_wide_task(shuffle: bool = False) -> Task:
    """120 training samples of 3,000 Gaussian features (an expression profile), the label the sign of the sum of
    20 of them: real, but too weak for 120 samples to show; an MLP memorises them within the short run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 3000, generator=g)
    y = (x[:, :20].sum(1) > 0).long()
    y_train = y[:120][torch.randperm(120, generator=g)] if shuffle else y[:120]

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(3000, 32), nn.ReLU(), nn.Linear(32, 2))

    return Task((x[:120], y_train), (x[120:], y[120:]), net)


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_model_that_memorised_without_generalising_warns_instead_of_failing(tmp_path, shuffle):
    """Memorised (training loss near 0 against the constant's 0.69) with a validation loss above the input-free
    run's: "does not use its inputs" is false, and shuffled labels cannot be told from too few samples for the
    features, so both warn and name both readings."""
    result = run(few_wide_task(shuffle), tmp_path, ["baseline"])
    check = next(c for c in result.checks if c.name == "input_independent")
    assert check.status == "warn" and "memorised" in check.message and "misaligned" in check.message
    assert check.value["train_loss_real"] < 0.1 and check.value["gain"] < 0


def test_input_independent_fails_only_a_run_that_did_not_memorise():
    """Below the constant by 5% of it (and beyond the noise of its last steps) the run memorised: a model that reads
    its inputs; shuffled labels on digits end within 1% of the constant in the short run."""
    from examples.digits import make_task

    task = make_task("mlp")
    same = Evaluation(loss=2.30, loss_se=0.01, metric=0.1, metric_se=0.02, n=360)
    reached = [2.31 - 0.01 * min(i, 50) / 50 for i in range(300)]  # the input-free run reached the constant, 2.30
    for end, status in ((2.25, "fail"), (2.2, "fail"), (2.1, "warn"), (1.25, "warn"), (0.01, "warn")):
        fitted = [2.31 - (2.31 - end) * i / 299 for i in range(300)]
        assert input_independent(same, same, task, fitted, reached, 2.30).status == status, end


def categorical_task() -> Task:
    """Six binary risk factors (64 possible rows) and an outcome drawn from a logistic model of them: every row
    repeats, identical rows carry different outcomes, and the all-zero row is one of the 64, held by about 30."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (2500, 6), generator=g).float()
    p = torch.sigmoid(x @ torch.tensor([1.5, -1.0, 2.0, 0.5, -1.5, 1.0]) - 1.2)
    y = (torch.rand(2500, generator=g) < p).long()

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))

    return Task((x[:2000], y[:2000]), (x[2000:], y[2000:]), net)


def test_binary_features_repeat_and_conflict_by_necessity(tmp_path):
    """Both warned: 50 groups of identical inputs with different labels ('check those labels') and 24 all-zero
    rows at z = -32 ('a blank sample')."""
    result = run(categorical_task(), tmp_path, ["inspect"])
    checks = {c.name: c for c in result.checks}
    assert checks["duplicates"].status == "pass" and checks["duplicates"].value["possible_inputs"] == 64
    assert checks["outliers"].status == "skip" and "7 distinct values" in checks["outliers"].message
    assert not [c for c in result.checks if c.status in ("warn", "fail", "error")]


def test_categorical_columns_with_more_combinations_than_rows_repeat_by_chance():
    """Six categorical columns of 3, 5, 7, 4, 10 and 2 values: 8,400 combinations, more than the 2,400 training rows,
    yet two random rows agree with probability 1/8,400, so a quarter of them repeat by chance (a birthday bound), and
    their labels, drawn from a logistic model, conflict. It warned 'check those labels'."""
    from recipe.diagnostics.integrity import read_split
    from recipe.diagnostics.splits import duplicates

    g = torch.Generator().manual_seed(0)
    cards = [3, 5, 7, 4, 10, 2]
    x = torch.stack([torch.randint(0, c, (3000,), generator=g) for c in cards], 1)
    logit = 2.0 * (x[:, 0] == 1) - 1.5 * (x[:, 2] > 3) + (x[:, 4] % 2) - 0.3
    y = (torch.rand(3000, generator=g) < torch.sigmoid(logit)).long()
    task = Task((x[:2400], y[:2400]), (x[2400:], y[2400:]), lambda: nn.Linear(6, 2))
    check = duplicates(read_split(task, "train", 20_000, 0), read_split(task, "val", 20_000, 1), task)
    assert check.value["conflicting_label_groups"] and check.value["repeats_by_chance"] == pytest.approx(0.25, abs=0.02)
    assert check.status == "pass" and "by chance" in check.message, check.message


def test_a_conflicting_duplicate_among_continuous_inputs_still_warns(tmp_path):
    x, y = torch.randn(400, 6, generator=torch.Generator().manual_seed(0)), torch.arange(400) % 2
    x[1], y[1] = x[0], 1 - y[0]
    task = Task((x[:300], y[:300]), (x[300:], y[300:]), lambda: nn.Linear(6, 2))
    result = run(task, tmp_path, ["inspect"])
    check = next(c for c in result.checks if c.name == "duplicates")
    assert check.status == "warn" and "carry different labels" in check.message


# ---- a forward hook written for a model that returns a dict ----------------------------------------------------------


class DictOutput(Task):
    """The user's model returns {"logits": ..., "features": ...}; the hook picks the logits."""

    def forward(self, model, inputs):
        return model(inputs)["logits"]


class LogitsAndFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Linear(tiny.FEATURES, 32), nn.ReLU()), nn.Linear(32, tiny.CLASSES)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(h), "features": h}


class Rescaled(Task):
    """A hook that prepares the inputs: any model, recipe's reference included, is called on x / 4."""

    def forward(self, model, inputs):
        return model(inputs / 4)


def test_the_reference_model_skips_a_forward_hook_written_for_the_users_model_only(tmp_path):
    base = tiny.classification()
    dict_task = DictOutput(base.train, base.val, LogitsAndFeatures, num_classes=tiny.CLASSES)
    inputs, _ = dict_task.split_batch(dict_task.sample_batch("train", 8, 0))
    output = dict_task.forward(dict_task.make_model(), inputs)
    factory, _ = simple_model_factory(dict_task, inputs, output)
    reference = reference_task(dict_task, factory, inputs, output)
    assert type(reference).forward is Task.forward  # the hook would index the reference's tensor with "logits"
    assert reference.forward(factory(), inputs).shape == output.shape
    rescaled = Rescaled(base.train, base.val, tiny.MLP, num_classes=tiny.CLASSES)
    kept = reference_task(rescaled, factory, inputs, output)
    assert type(kept) is Rescaled  # a hook that takes any model still prepares the reference's inputs

    checks = {c.name: c for c in run(dict_task, tmp_path, stages=["baseline"]).checks}
    assert checks["simple_model"].status == "pass", checks["simple_model"].message


# ---- an ordinal classifier with K - 1 cumulative logits --------------------------------------------------------------


def cumulative_logits(output, target):
    """CORAL: output k is the logit of "label > k"."""
    levels = (target[:, None] > torch.arange(output.shape[1], device=target.device)[None]).float()
    return F.binary_cross_entropy_with_logits(output, levels)


def test_a_classifier_without_a_logit_per_class_runs_the_short_runs(tmp_path):
    """Five ordered levels predicted by four cumulative logits: the prediction dynamics read the first output, not
    the probability of a class the output has no logit for (which raised in loss_decreases)."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1200, 8, generator=g)
    y = torch.bucketize(x @ torch.linspace(-1, 1, 8), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    task = Task(
        (x[:1000], y[:1000]), (x[1000:], y[1000:]),
        lambda: nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4)),
        loss=cumulative_logits, num_classes=5,
    )  # fmt: skip
    checks = {c.name: c for c in run(task, tmp_path, stages=["baseline"]).checks}
    assert checks["loss_decreases"].status == "pass", checks["loss_decreases"].message
    assert not [c.name for c in checks.values() if c.status == "error"]


# ---- soft targets: the error's advice is a setup that runs -------------------------------------------------------


def test_soft_class_targets_are_refused_with_advice_that_runs(tmp_path):
    """Probability targets under the built-in cross-entropy are refused before training; the message's advice
    (kind='regression' with a callable cross-entropy) runs clean. Its earlier advice, kind='regression' alone,
    was itself refused."""
    base = tiny.classification()
    soft = lambda split: (split.x, F.one_hot(split.y, tiny.CLASSES).float() * 0.9 + 0.1 / tiny.CLASSES)
    with pytest.raises(TaskError, match="callable loss") as refused:
        Task(soft(base.train), soft(base.val), tiny.MLP, num_classes=tiny.CLASSES).validate("cpu")
    assert "F.cross_entropy(output, target)" in str(refused.value)
    advised = Task(
        soft(base.train), soft(base.val), tiny.MLP, kind="regression", loss=lambda o, t: F.cross_entropy(o, t)
    )
    result = run(advised, tmp_path, stages=["inspect", "baseline", "overfit"])
    assert [(c.name, c.status) for c in result.checks if c.status in ("fail", "error")] == []


def test_lazy_layers_get_their_shapes_before_any_check_reads_their_parameters(tmp_path):
    """`nn.LazyLinear` has no weight shape until its first forward pass; params_update, loss_decreases and
    complexify's parameter count read the parameters of a fresh model first, and raised."""
    task = tiny.classification(model=lambda: nn.Sequential(nn.LazyLinear(32), nn.ReLU(), nn.LazyLinear(tiny.CLASSES)))
    model = task.make_model()
    assert sum(p.numel() for p in model.parameters()) == tiny.FEATURES * 32 + 32 + 32 * tiny.CLASSES + tiny.CLASSES
    result = Recipe(
        task, run_dir=tmp_path / "run", stages=["baseline"], device="cpu", progress=False, quiet=True,
        keep_going=True,
    ).run()  # fmt: skip
    status = {c.name: c.status for c in result.checks}
    assert status["params_update"] == status["loss_decreases"] == "pass", status
    assert "error" not in status.values() and "fail" not in status.values(), status


def test_a_float64_task_gets_a_float64_linear_reference(tmp_path):
    """Data and model in double precision: the linear reference was float32 and raised on the float64 inputs."""
    x, y = tiny.blobs(256, 0)
    xv, yv = tiny.blobs(128, 1)
    task = Task((x.double(), y), (xv.double(), yv), lambda: tiny.MLP().double(), num_classes=tiny.CLASSES)
    result = Recipe(
        task, run_dir=tmp_path / "run", stages=["baseline"], device="cpu", progress=False, quiet=True,
        keep_going=True,
    ).run()  # fmt: skip
    simple = next(c for c in result.checks if c.name == "simple_model")
    assert simple.status == "pass", simple.message


def test_a_spectrally_normalised_mlp_is_not_failed_for_growing_its_margins_slowly(tmp_path):
    """Spectral normalisation bounds the logits; one batch's loss falls slowly and noisily (1.0 -> 0.85 over
    the last 150 of 300 steps), which overfit_batch read as a plateau and failed. It gets the longer budget and
    is still falling at its end (a skip); a tanh on the same model's logits still fails."""
    from sklearn.datasets import load_digits
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    x, y = (torch.tensor(a) for a in load_digits(return_X_y=True))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order].float() / 16, y[order]  # pixels in [0, 1]
    x_train, x_val, y_train, y_val = x[:1400], x[1400:], y[:1400], y[1400:]

    def net(bounded: bool) -> nn.Module:
        layers = [spectral_norm(nn.Linear(64, 64)), nn.ReLU(), weight_norm(nn.Linear(64, 10))]
        return nn.Sequential(*layers, *([nn.Tanh()] if bounded else []))

    for bounded, statuses in ((False, ("pass", "skip")), (True, ("fail",))):
        task = Task((x_train, y_train), (x_val, y_val), lambda b=bounded: net(b), num_classes=10)
        result = run(task, tmp_path / str(bounded), ["overfit"])
        check = next(c for c in result.checks if c.name == "overfit_batch")
        assert check.status in statuses, check.message


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated in favour of compile
def test_a_torchscript_model_trains_and_its_hook_probes_skip(tmp_path):
    """A ScriptModule takes no forward hooks: finding the output layer for the initial bias raised inside every fit
    (seed, loss_decreases, init_bias, output_kind, complexify's rungs), and `activations` raised. Now the bias is
    left as it is, `activations` skips saying why, and nothing raises."""
    task = tiny.classification(lambda: torch.jit.script(tiny.MLP()))
    result = run(task, tmp_path, ["baseline"])
    statuses = {c.name: c.status for c in result.checks}
    assert "error" not in statuses.values() and "fail" not in statuses.values(), result.checks
    assert statuses["activations"] == "skip" and statuses["loss_decreases"] == "pass"


class StepwiseLinear(nn.Module):
    """A linear map of each time step's channels, then one linear read of all steps: it reads its inputs, but cannot
    tell a wave's frequency at a random phase, so in the short run it memorises without generalising."""

    def __init__(self):
        super().__init__()
        self.step, self.out = nn.Linear(3, 16), nn.Linear(16 * 64, 4)

    def forward(self, x):
        return self.out(torch.relu(self.step(x.transpose(1, 2))).flatten(1))


def waves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three noisy channels of one of four frequencies at random phases, channels first (B, 3, 64)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    t = torch.arange(64).float()
    phase = torch.rand(n, 3, 1, generator=g) * 6.28
    return torch.sin((0.1 + 0.08 * y.float())[:, None, None] * t + phase) + 0.5 * torch.randn(n, 3, 64, generator=g), y


def test_a_model_unsuited_to_its_task_that_memorised_warns(tmp_path):
    """Its training loss ended at about 1.27 against the constant's 1.386 (8% below, beyond noise) while its
    validation loss sat above the input-free run's: it reads its inputs, and the check says so instead of failing."""
    result = run(Task(waves(1200, 0), waves(300, 1), StepwiseLinear), tmp_path, ["baseline"])
    check = next(c for c in result.checks if c.name == "input_independent")
    assert check.status == "warn" and "memorised" in check.message, check.message
    assert check.value["gain"] < 0 and check.value["train_loss_real"] < 0.95 * 1.386
