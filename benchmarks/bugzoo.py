"""The public bug zoo: silent bugs planted in otherwise clean tasks, whether `recipe` flags each with its cause,
and whether the same tasks with the bug fixed (twins) and clean tasks of many kinds stay clean.

    python benchmarks/bugzoo.py [--only NAME[,NAME]] [--stages inspect,baseline,overfit] [--no-figures]

Each bug is a small mutation of a clean task: the originals plant into digits MLP/CNN, a causal character model,
diabetes regression and a siamese model on digit pairs; the rest reproduce public reports (cited beside each case) in
tasks of other kinds (benchmarks/zoo_tasks.py: signals, padded tokens, tagging, a BatchNorm ResNet, patient groups, a
Dataset with augmentation, a Transformer LM; benchmarks/zoo_kinds.py: an encoder-decoder, a transformer called with
input_ids and attention_mask, a contrastive encoder, missing values, pixels standardised one by one, a forecaster
of values). Every run uses keep_going, so the table shows every check that fired. A bug counts as flagged with the
right cause when a check built for it (`catches`) shows the expected status with a message that names the mechanism
(`cause`), and a warn case has no unrelated fail. Every bug has a fixed twin; twins and
clean tasks count their fails, errors (a check that raised) and warns. The summary line:

    bugs flagged with the right cause A/B; clean tasks and twins: F fails, E errors, W warns (N cases)

F, E and W count checks over the N clean tasks and twins. The same cases are tests (tests/test_bugzoo.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import zoo_kinds as kinds
from benchmarks import zoo_tabular as tab
from benchmarks import zoo_tasks as zoo
from benchmarks.zoo_planted import (
    BatchSoftmaxMLP,
    ConstantInitMLP,
    ListMLP,
    LoudHeadMLP,
    PeekingConvLM,
    RowGRU,
    SoftmaxMLP,
    charlm_task,
    digits_task,
    imbalanced_digits,
    offset_regression,
    planted_data,
)
from examples import charlm, digits, regression, transfer
from recipe import Recipe, Task
from recipe.check import Check
from recipe.errors import RecipeError

ALL = ("inspect", "baseline", "overfit")
MODEL = ("baseline", "overfit")
PRETRAINED_ONLY = {  # regularize's reference runs and the pretrained rung only (examples/transfer.py's batch size)
    "train": {"batch_size": 50},
    "regularize": {"weight_decays": [], "dropouts": [], "patience": None, "smaller_model": False, "data_fractions": []},
}


@dataclass(frozen=True)
class Case:
    """One zoo entry: a planted bug (`expect` "fail" or "warn"), a clean task or a fixed twin (`expect` "clean").

    `catches` names the checks built to catch the bug and `cause` (a regular expression, case-insensitive) what the
    firing check's message must say to name the mechanism; `twin` names the case that is the same task with the bug
    fixed (a clean task, or an entry of TWINS). A clean task running a superset of a twin's stages stands for it.
    `known_miss` says why no check names this bug's cause yet (the zoo keeps it, honestly, as a miss).
    """

    name: str
    make_task: Callable[[], Task]
    expect: str
    catches: tuple[str, ...] = ()
    cause: str = ""
    twin: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    stages: tuple[str, ...] = MODEL
    known_miss: str = ""


def _bias_at_prior() -> nn.Module:
    """The fix for the imbalanced task: the output bias starts at the log class prior (1:10)."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        model[-1].bias.copy_(torch.log(torch.tensor([10 / 11, 1 / 11])))
    return model


def _imbalanced_fixed() -> Task:
    task = imbalanced_digits()
    task.model = task.models["model"] = _bias_at_prior
    return task


DIGITS = "clean digits MLP"
SEQ2SEQ = "clean encoder-decoder, teacher forcing"
MASKED_INPUTS = "clean transformer, input_ids + attention_mask"
VALUE_FORECASTER = "clean forecaster of values, an output per step"
BUGS = [
    Case(
        "labels shuffled",
        lambda: digits_task(digits.MLP, shuffle_labels=True),
        "fail",
        ("input_independent",),
        "aligned|shuffled",
        DIGITS,
    ),
    Case(
        "softmax before cross-entropy",
        lambda: digits_task(SoftmaxMLP),
        "fail",
        ("output_kind", "overfit_batch"),
        "probabilit|softmax",
        DIGITS,
    ),
    Case(
        "final layer weights x100",
        lambda: digits_task(LoudHeadMLP),
        "fail",
        ("loss_at_init",),
        "final layer|scaled too large",
        DIGITS,
    ),
    Case(
        "view instead of permute (mixes samples)",
        lambda: digits_task(lambda: RowGRU(planted=True)),
        "fail",
        ("batch_independence",),
        "sample",
        "digits row-GRU, permute",
    ),
    Case(
        "Conv1d padded on both sides (sees the future)",
        lambda: charlm_task(PeekingConvLM, "charlm-peeking", chars=60_000),
        "fail",
        ("causal",),
        "future|later",
        "causal char ConvLM",
    ),
    Case(
        "layer kept in a plain Python list",
        lambda: digits_task(ListMLP),
        "fail",
        ("params_update",),
        "not registered",
        DIGITS,
    ),
    Case(
        "learning rate 10",
        lambda: digits_task(digits.MLP),
        "fail",
        ("loss_decreases", "non_finite"),
        "learning rate|lr",
        DIGITS,
        {"train": {"lr": 10.0}},
    ),
    Case(
        "regression targets with mean 1000",
        offset_regression,
        "warn",
        ("init_bias",),
        "standardise the targets",
        "clean regression MLP",
    ),
    Case(
        "1:10 class imbalance, default init",
        imbalanced_digits,
        "warn",
        ("init_bias",),
        "imbalanced.*log class prior",
        "1:10 imbalance, output bias at the log prior",
    ),
    *(
        Case(name, lambda bug=bug: planted_data(bug), expect, catches, cause, DIGITS, stages=("inspect",))
        for name, bug, expect, catches, cause in (
            ("NaN in 1% of training inputs", "nan", "fail", ("non_finite",), "NaN"),
            ("raw 0..255 pixel scale", "raw", "warn", ("input_stats",), "unit scale"),
            ("5% of validation rows copied from training", "leak", "fail", ("duplicates",), "also occur in training"),
            ("20% of training labels flipped", "noise", "warn", ("label_noise",), "labels (look )?wrong"),
            ("one class missing from training", "missing_class", "fail", ("target_range",), "never in training"),
            ("five training samples scaled x100", "outliers", "warn", ("outliers",), "unit or scale"),
            (
                "validation standardised with its own statistics",
                "val_own_scaling",
                "fail",
                ("split_shift",),
                "own statistics|scaled or shifted",
            ),
        )
    ),
    # ---- reproduced from public reports (the report beside each case) ----
    # Dropout(0.9) where TF's keep_prob=0.9 was meant: https://github.com/bonlime/keras-deeplab-v3-plus/issues/4
    Case(
        "dropout p=0.9 meant as keep probability",
        lambda: digits_task(lambda: digits.MLP(dropout=0.9)),
        "warn",
        ("dropout_rates",),
        "keep",
        "digits MLP, dropout 0.1",
    ),
    # key-padding mask built as `seq != pad` (True = ignore in PyTorch):
    # https://github.com/jadore801120/attention-is-all-you-need-pytorch/issues/148
    Case(
        "inverted src_key_padding_mask",
        lambda: zoo.padded(zoo.MaskedTransformer, inverted=True),
        "fail",
        ("padding_invariance",),
        "pad",
        "clean TransformerEncoder, padding mask",
    ),
    # mean pooling over padding positions: https://github.com/huggingface/sentence-transformers/issues/230
    Case(
        "mean-pool over padding positions",
        lambda: zoo.padded(zoo.MaskedTransformer, pool_padding=True),
        "fail",
        ("padding_invariance",),
        "pad",
        "clean TransformerEncoder, padding mask",
    ),
    # a GRU run over padded batches without packing: https://stackoverflow.com/questions/51030782
    Case(
        "GRU over padding without packing",
        lambda: zoo.padded(zoo.PaddedGRU, pack=False),
        "fail",
        ("padding_invariance",),
        "pad",
        "clean padded GRU",
    ),
    # sliding windows cut before a random split:
    # https://discuss.pytorch.org/t/splitting-time-series-data-that-has-a-sliding-window/177419
    Case(
        "overlapping windows split at random",
        lambda: zoo.forecast("random"),
        "fail",
        ("time_leakage",),
        "overlap|window|shift",
        "clean forecasting windows, split by time",
        stages=("inspect",),
    ),
    # images of one patient on both sides of the split: https://github.com/UCSD-AI4H/COVID-CT/issues/11
    Case(
        "same patient in both splits",
        lambda: tab.patients("random"),
        "fail",
        ("group_leak",),
        "group",
        "clean group-split tabular",
        stages=("inspect",),
    ),
    # target encoding with each row's own label: https://github.com/scikit-learn-contrib/category_encoders/issues/167
    Case(
        "target encoding with each row's own label",
        lambda: tab.target_encoded("in_sample"),
        "fail",
        ("target_derived_features",),
        "feature 30.*own label",
        "out-of-fold target encoding",
        stages=("inspect",),
    ),
    # random train transforms left on validation data: https://discuss.pytorch.org/t/data-transformation-for-training-and-validation-data/32507
    Case(
        "random augmentation on the validation Dataset",
        lambda: zoo.digits_dataset(val_augment=True),
        "fail",
        ("eval_data_deterministic",),
        "random|augment|differ",
        "clean digits Dataset, train-only augmentation",
        stages=("inspect",),
    ),
    # in-place normalisation of the stored data in __getitem__: https://github.com/facebookresearch/pycls/pull/21
    Case(
        "in-place normalisation in __getitem__",
        lambda: zoo.digits_dataset(inplace=True),
        "fail",
        ("eval_data_deterministic",),
        "in.place|differ|change",
        "clean digits Dataset, train-only augmentation",
        stages=("inspect",),
    ),
    # every weight initialised to one constant: https://stats.stackexchange.com/questions/45087
    Case(
        "constant weight initialisation",
        lambda: digits_task(ConstantInitMLP),
        "fail",
        ("init_symmetry",),
        "identical|symmetr",
        DIGITS,
    ),
    # labels 1..C with C classes ("Target 10 is out of bounds"): https://discuss.pytorch.org/t/why-the-loss-function-can-be-apply-on-different-size-tensors/23032
    Case(
        "labels 1..C instead of 0..C-1",
        lambda: digits_task(digits.MLP, offset_labels=True),
        "fail",
        ("task_validation", "target_range"),
        "0\\.\\.9|remap",
        DIGITS,
    ),
    # softmax over the batch axis: https://github.com/DeepReinforcementLearning/DeepReinforcementLearningInAction/issues/32
    Case(
        "log-softmax over the batch axis (dim=0)",
        lambda: digits_task(BatchSoftmaxMLP),
        "fail",
        ("batch_independence",),
        "sample",
        DIGITS,
    ),
    # (batch, seq, feature) fed to an RNN built without batch_first:
    # https://theneuralbase.com/pytorch/learn/intermediate/input-shape-for-rnns-seq-batch-features/
    Case(
        "GRU without batch_first on (B, T, C) input",
        lambda: zoo.waves(zoo.WaveGRU, batch_first=False),
        "fail",
        ("batch_independence",),
        "sample",
        "wave GRU, batch_first=True",
    ),
    # a TransformerEncoder language model with no causal mask: https://github.com/pytorch/tutorials/issues/2478
    Case(
        "TransformerEncoder LM without a causal mask",
        lambda: zoo.language_model(causal=False),
        "fail",
        ("causal",),
        "future|later",
        "Transformer LM, causal mask",
    ),
    # (B, 1) output against (B,) targets in a custom MSE: https://github.com/deepset-ai/FARM/issues/229
    Case(
        "custom MSE broadcasting (B, 1) against (B,)",
        lambda: tab.diabetes_custom_mse(broadcast=True),
        "fail",
        ("overfit_batch", "loss_decreases", "loss_at_init"),
        "broadcast|shape",
        "custom MSE, matching shapes",
    ),
    # HWC images turned to CHW with view instead of permute: https://openillumi.com/?p=83529
    Case(
        "HWC image read as CHW with view",
        lambda: zoo.colour_digits(view=True),
        "fail",
        (),
        "channel|permute",
        "colour digits, permute",
        known_miss="no check is built for it: a fixed permutation of each sample's pixels leaves every dependency "
        "and statistic intact, and the CNN still learns (95% against 99%)",
    ),
    # the recipe's step 1: "initialized your weights from a pretrained checkpoint but didn't use the original mean"
    Case(
        "pretrained weights fed pixels 0-16 where they saw 0-1",
        lambda: transfer.make_task(pixel_scale=16),
        "fail",
        ("pretrained_inputs",),
        "not normalised as in pretraining",
        "pretrained weights fed pixels 0-1, as in pretraining",
        PRETRAINED_ONLY,
        stages=("regularize",),
    ),
    # one class's labels scrambled in training (the recipe's "look at the mistakes"; cleanlab's per-class noise)
    Case(
        "70% of class 3's training labels scrambled",
        lambda: planted_data("scrambled_class"),
        "warn",
        ("prediction_errors",),
        "class 3 recall.*mislabelled",
        "digits MLP through complexify",
        stages=("complexify",),
    ),
    # a siamese model that encodes its first input twice (an original: two inputs, one of them never used)
    Case(
        "siamese model encodes one input twice",
        lambda: zoo.digit_pairs(same_input=True),
        "warn",
        ("batch_independence",),
        "ignores it",
        "clean siamese digit pairs",
        stages=ALL,
    ),
    # a Sigmoid before BCEWithLogitsLoss: https://github.com/Turoad/lanedet/issues/32
    Case(
        "sigmoid before BCE-with-logits",
        lambda: tab.breast_cancer_bce(sigmoid=True),
        "fail",
        ("output_kind",),
        "sigmoid",
        "cancer BCE on logits",
    ),
    # teacher forcing with the decoder input left unshifted: the decoder is handed the token it must predict
    Case(
        "decoder input not shifted (teacher forcing)",
        lambda: kinds.seq2seq(shifted=False),
        "fail",
        ("target_leak",),
        "not shifted",
        SEQ2SEQ,
        stages=ALL,
    ),
    # nn.Transformer called without tgt_mask: the decoder attends to later target tokens
    Case(
        "decoder without its causal mask",
        lambda: kinds.seq2seq(causal_decoder=False),
        "fail",
        ("causal",),
        "sees the future",
        SEQ2SEQ,
        stages=ALL,
    ),
    # a Hugging Face style model that never passes attention_mask on: it attends to and averages the padding
    # a forecaster with an output per step whose convolution is padded on both sides (padding="same"): position t
    # reads the values at t+1 and t+2, and the value at t+1 is its target
    Case(
        "forecaster padded on both sides",
        lambda: kinds.value_forecaster(sees_future=True),
        "fail",
        ("causal",),
        "sees the future",
        VALUE_FORECASTER,
        stages=ALL,
    ),
    Case(
        "attention_mask never used",
        lambda: kinds.attention_mask_inputs(ignore_mask=True),
        "fail",
        ("padding_invariance",),
        "reads its padding",
        MASKED_INPUTS,
        stages=ALL,
    ),
]
CLEAN = [
    Case(DIGITS, lambda: digits.make_task("mlp"), "clean", stages=ALL),
    Case("clean digits CNN", lambda: digits.make_task("cnn"), "clean", stages=ALL),
    Case(
        "clean causal char model",
        lambda: charlm_task(lambda: charlm.GPT(len(charlm.VOCAB), 64), "charlm-gpt"),
        "clean",
        stages=ALL,
    ),
    Case("clean regression MLP", regression.make_task, "clean", stages=ALL),
    # kinds the bundled examples lack (benchmarks/zoo_tasks.py)
    Case("clean Conv1d wave classifier", zoo.waves, "clean", stages=ALL),
    Case("clean padded GRU", zoo.padded, "clean", stages=ALL),
    Case("clean TransformerEncoder, padding mask", lambda: zoo.padded(zoo.MaskedTransformer), "clean", stages=ALL),
    Case("clean token tagger", zoo.tagging, "clean", stages=ALL),
    Case("clean BatchNorm ResNet", zoo.resnet, "clean", stages=ALL),
    Case("clean group-split tabular", tab.patients, "clean", stages=ALL),
    Case("clean digits Dataset, train-only augmentation", zoo.digits_dataset, "clean", stages=ALL),
    Case("clean forecasting windows, split by time", zoo.forecast, "clean", stages=ALL),
    Case("clean siamese digit pairs", zoo.digit_pairs, "clean", stages=ALL),
    Case(SEQ2SEQ, kinds.seq2seq, "clean", stages=ALL),
    Case(MASKED_INPUTS, kinds.attention_mask_inputs, "clean", stages=ALL),
    Case("clean contrastive two-view encoder", kinds.contrastive, "clean", stages=ALL),
    Case("clean tabular model imputing its missing values", kinds.missing_values, "clean", stages=ALL),
    Case("clean digits MLP, pixels standardised one by one", kinds.standardised_digits, "clean", stages=ALL),
    Case(VALUE_FORECASTER, kinds.value_forecaster, "clean", stages=ALL),
]
ORIGINAL_CLEAN = CLEAN[:4]  # these also show no warn (tests/test_bugzoo.py)
TWINS = [  # fixed twins that are not clean tasks above
    Case("digits row-GRU, permute", lambda: digits_task(lambda: RowGRU(planted=False)), "clean"),
    Case("causal char ConvLM", lambda: charlm_task(charlm.ConvLM, "charlm-conv", chars=60_000), "clean"),
    Case("1:10 imbalance, output bias at the log prior", _imbalanced_fixed, "clean"),
    Case("digits MLP, dropout 0.1", lambda: digits_task(lambda: digits.MLP(dropout=0.1)), "clean"),
    Case("out-of-fold target encoding", tab.target_encoded, "clean", stages=("inspect",)),
    Case("wave GRU, batch_first=True", lambda: zoo.waves(zoo.WaveGRU), "clean"),
    Case("Transformer LM, causal mask", zoo.language_model, "clean"),
    Case("custom MSE, matching shapes", tab.diabetes_custom_mse, "clean"),
    Case("cancer BCE on logits", tab.breast_cancer_bce, "clean"),
    Case("colour digits, permute", zoo.colour_digits, "clean"),
    Case(
        "pretrained weights fed pixels 0-1, as in pretraining",
        transfer.make_task,
        "clean",
        config=PRETRAINED_ONLY,
        stages=("regularize",),
    ),
    Case("digits MLP through complexify", lambda: planted_data("clean"), "clean", stages=("complexify",)),
]
CASES = BUGS + CLEAN + TWINS


@dataclass
class Outcome:
    case: Case
    checks: list[Check]
    seconds: float

    def fired(self, status: str) -> list[str]:
        return [c.name for c in self.checks if c.status == status]

    @property
    def catching(self) -> list[Check]:
        """The checks built for this bug that showed the expected status and whose message names the cause."""
        return [
            c
            for c in self.checks
            if c.name in self.case.catches
            and c.status == self.case.expect
            and re.search(self.case.cause, c.message, re.IGNORECASE)
        ]

    @property
    def right_cause(self) -> bool:
        """A bug flagged by a check built for it, naming the mechanism (and, for a warn case, no unrelated fail)."""
        unrelated_fail = any(c.status == "fail" and c.name not in self.case.catches for c in self.checks)
        return bool(self.catching) and not (self.case.expect == "warn" and unrelated_fail)

    @property
    def verdict(self) -> str:
        if self.case.expect == "clean":
            if self.fired("fail"):
                return "FALSE ALARM"
            return "ERROR" if self.fired("error") else ("clean (warns)" if self.fired("warn") else "clean")
        if self.right_cause:
            return "flagged"
        missed = "OTHER CAUSE" if self.fired("fail") or self.fired("warn") else "MISSED"
        return f"{missed} (known)" if self.case.known_miss else missed


def run_case(
    case: Case, stages: tuple[str, ...] | None = None, run_dir: Path | None = None, figures: bool = True
) -> Outcome:
    """Run one case with keep_going (`figures=False`: no plots drawn, the verdicts alike). A task the recipe
    refuses before training (a `RecipeError`) becomes one fail named `task_validation`; anything else escaping the
    run becomes one `error` named `run`."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # the table is the output
        start = time.perf_counter()
        try:
            result = Recipe(
                case.make_task(),
                run_dir=run_dir or Path(tmp) / "run",
                stages=list(stages or case.stages),
                device="cpu",
                keep_going=True,
                config=case.config,
                progress=False,
                quiet=True,
                figures=figures,
            ).run()
            checks = list(result.checks)
        except RecipeError as exc:
            checks = [Check("task_validation", "fail", message=str(exc))]
        except Exception as exc:  # the zoo reports a crash as an error, it does not stop
            checks = [Check("run", "error", message=f"{type(exc).__name__}: {exc}")]
        return Outcome(case, checks, time.perf_counter() - start)


def _row(out: Outcome, kind: str) -> tuple[str, ...]:
    shown = [f"{c.name}:{c.status}" for c in out.checks if c.status in ("fail", "error", "warn")]
    cause = "-"
    if kind == "bug":
        cause = f"yes ({out.catching[0].name})" if out.right_cause else "no"
    return (out.case.name, kind, out.case.expect, out.verdict, cause, ", ".join(shown) or "-", f"{out.seconds:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated case names (substring match)")
    parser.add_argument("--stages", help="comma-separated stages for every case (default: each case's own)")
    parser.add_argument("--no-figures", action="store_true", help="draw no plots (faster; the verdicts are alike)")
    args = parser.parse_args(argv)
    chosen = [c for c in CASES if not args.only or any(o in c.name for o in args.only.split(","))]
    stages = tuple(args.stages.split(",")) if args.stages else None
    rows, outcomes = [], {}
    for case in chosen:
        out = outcomes[case.name] = run_case(case, stages, figures=not args.no_figures)
        kind = "bug" if case in BUGS else ("clean" if case in CLEAN else "twin")
        rows.append(_row(out, kind))
        print(f"  {case.name}: {out.verdict}", file=sys.stderr, flush=True)
    header = ("case", "kind", "expect", "verdict", "right cause", "fired (fail, error, warn)", "s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    bugs = [o for o in outcomes.values() if o.case.expect != "clean"]
    controls = [o for o in outcomes.values() if o.case.expect == "clean"]
    right = sum(o.right_cause for o in bugs)
    counts = {s: sum(len(o.fired(s)) for o in controls) for s in ("fail", "error", "warn")}
    missing_twins = sorted({o.case.twin for o in bugs} - set(outcomes))
    print(
        f"bugs flagged with the right cause {right}/{len(bugs)}; clean tasks and twins: {counts['fail']} fails, "
        f"{counts['error']} errors, {counts['warn']} warns ({len(controls)} cases)"
    )
    if missing_twins and not args.only:
        print(f"twins not found: {missing_twins}")
    good = not counts["fail"] and not counts["error"] and (not bugs or right >= 0.9 * len(bugs))
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
