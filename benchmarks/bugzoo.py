"""The public bug zoo: silent bugs planted in otherwise clean tasks, and whether `recipe` flags them.

    python benchmarks/bugzoo.py [--only NAME[,NAME]] [--stages inspect,baseline,overfit]

Each case is one bug, planted as a small mutation of a clean task (digits MLP/CNN, a causal character model,
diabetes regression). Model and loss bugs run `baseline` and `overfit`, data bugs run `inspect`, and the clean
tasks run all three, each with keep_going, so the table shows every check that fired, not only the first. A bug
counts as flagged when its expected status shows up from a check built for it (a fail; or a warn with no fail, for
the warn cases); a clean task counts as a false alarm when any check fails. The same cases are tests
(tests/test_bugzoo.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples import charlm, digits, regression
from recipe import Recipe, RecipeResult, Task

# ---- planted models ------------------------------------------------------------------------------------------------


class SoftmaxMLP(digits.MLP):
    """Bug: returns probabilities, and the loss (cross-entropy) applies log-softmax again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class LoudHeadMLP(digits.MLP):
    """Bug: the final layer's weights are 100x their default init."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.net[-1].weight.mul_(100)


class RowGRU(nn.Module):
    """Reads each 8x8 digit as 8 rows of 8 pixels with a GRU that expects (T, B, C).

    The bug: `x.view(8, B, 8)` where `x.view(B, 8, 8).permute(1, 0, 2)` was meant, which mixes samples.
    """

    def __init__(self, planted: bool):
        super().__init__()
        self.planted = planted
        self.rnn = nn.GRU(8, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        rows = x.view(8, b, 8) if self.planted else x.view(b, 8, 8).permute(1, 0, 2)
        _, h = self.rnn(rows)
        return self.head(h[-1])


class ListMLP(nn.Module):
    """Bug: the hidden layers live in a plain Python list, so they are never registered or trained."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = [nn.Linear(64, 128), nn.Linear(128, 128)]
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class PeekingConvLM(charlm.ConvLM):
    """Bug: each convolution is padded on both sides, so position t sees tokens t+1 and t+2."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.emb(idx).transpose(1, 2)
        for conv in self.convs:
            h = h + F.gelu(conv(F.pad(h, (self.kernel // 2, self.kernel // 2))))
        return self.head(h.transpose(1, 2))


# ---- tasks ---------------------------------------------------------------------------------------------------------


def _digits(model: Callable[[], nn.Module], shuffle_labels: bool = False, name: str = "digits") -> Task:
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    if shuffle_labels:
        y_train = np.random.default_rng(0).permutation(y_train)
    return Task(train=(x_train, y_train), val=(x_val, y_val), model=model, num_classes=10, name=name)


def _imbalanced_digits() -> Task:
    """Is it a zero? Positives subsampled to exactly 1:10; the MLP keeps PyTorch's default init."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    splits = []
    for x, y in ((x_train, y_train), (x_val, y_val)):
        pos, neg = np.flatnonzero(y == 0), np.flatnonzero(y != 0)
        keep = np.concatenate([pos[: len(neg) // 10], neg])
        splits.append((x[keep], (y[keep] == 0).astype(np.int64)))

    def model() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))

    return Task(train=splits[0], val=splits[1], model=model, num_classes=2, name="digits-imbalanced")


def _offset_regression() -> Task:
    x_train, x_val, y_train, y_val = regression.load_diabetes_split()
    return Task(
        train=(x_train, y_train + 1000.0),
        val=(x_val, y_val + 1000.0),
        model=regression.MLP,
        loss="mse",
        name="diabetes-offset",
    )


def _digits_data(x_train: np.ndarray, x_val: np.ndarray, y_train: np.ndarray, y_val: np.ndarray, name: str) -> Task:
    return Task(
        train=(x_train, y_train), val=(x_val, y_val), model=digits.MLP, num_classes=10, name=name, image_shape=(8, 8)
    )


def _raw_digits(scale: float = 255 / 16) -> tuple[np.ndarray, ...]:
    """The same stratified split as `digits.load_digits_split`, left in raw pixel units (0..16) times `scale`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype(np.float32), y, test_size=0.2, random_state=0, stratify=y
    )
    return x_train * scale, x_val * scale, y_train, y_val


def _planted_data(bug: str) -> Task:
    """Data bugs for `inspect`, each a mutation of the clean, standardised digits split."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    rng = np.random.default_rng(0)
    if bug == "nan":  # a missing-value marker that became NaN in 1% of training rows
        rows = rng.choice(len(x_train), len(x_train) // 100, replace=False)
        x_train[rows, rng.integers(0, 64, len(rows))] = np.nan
    elif bug == "raw":
        x_train, x_val, y_train, y_val = _raw_digits()
    elif bug == "leak":  # 5% of validation rows are copies of training rows
        rows = rng.choice(len(x_val), len(x_val) // 20, replace=False)
        source = rng.choice(len(x_train), len(rows), replace=False)
        x_val[rows], y_val[rows] = x_train[source], y_train[source]
    elif bug == "noise":  # 20% of training labels flipped to another class
        rows = rng.choice(len(y_train), len(y_train) // 5, replace=False)
        y_train = y_train.copy()
        y_train[rows] = (y_train[rows] + rng.integers(1, 10, len(rows))) % 10
    elif bug == "missing_class":  # class 3 never reaches the training split
        keep = y_train != 3
        x_train, y_train = x_train[keep], y_train[keep]
    elif bug == "outliers":  # five samples in different units (x100)
        rows = rng.choice(len(x_train), 5, replace=False)
        x_train[rows] *= 100
    elif bug == "val_own_scaling":  # validation standardised with its own statistics, training left raw
        x_train, x_val, y_train, y_val = _raw_digits(1.0)
        x_val = (x_val - x_val.mean(0)) / np.where(x_val.std(0) > 0, x_val.std(0), 1)
    return _digits_data(x_train, x_val, y_train, y_val, f"digits-{bug}")


def _charlm(model: Callable[[], nn.Module], name: str) -> Task:
    ids = charlm.encode(charlm.stdlib_text(200_000))
    cut = int(0.9 * len(ids))
    return Task(
        train=charlm.windows(ids[:cut], 64),
        val=charlm.windows(ids[cut:], 64),
        model=model,
        kind="sequence",
        num_classes=len(charlm.VOCAB),
        name=name,
        decoder=charlm.decode,
    )


ALL = ("inspect", "baseline", "overfit")


@dataclass(frozen=True)
class Case:
    """One zoo entry. `expect` is "fail" or "warn" for a bug, "clean" for a control."""

    name: str
    make_task: Callable[[], Task]
    expect: str
    catches: tuple[str, ...]  # the checks built to catch it: one of them must show the expected status
    config: dict[str, Any] = field(default_factory=dict)
    stages: tuple[str, ...] = ("baseline", "overfit")


BUGS = [
    Case("labels shuffled", lambda: _digits(digits.MLP, shuffle_labels=True), "fail", ("input_independent",)),
    Case("softmax before cross-entropy", lambda: _digits(SoftmaxMLP), "fail", ("output_kind", "overfit_batch")),
    Case("final layer weights x100", lambda: _digits(LoudHeadMLP), "fail", ("loss_at_init",)),
    Case(
        "view instead of permute (mixes samples)",
        lambda: _digits(lambda: RowGRU(planted=True)),
        "fail",
        ("batch_independence",),
    ),
    Case(
        "Conv1d padded on both sides (sees the future)",
        lambda: _charlm(PeekingConvLM, "charlm-peeking"),
        "fail",
        ("causal",),
    ),
    Case("layer kept in a plain Python list", lambda: _digits(ListMLP), "fail", ("params_update",)),
    Case(
        "learning rate 10",
        lambda: _digits(digits.MLP),
        "fail",
        ("loss_decreases", "non_finite"),
        {"train": {"lr": 10.0}},
    ),
    Case("regression targets with mean 1000", _offset_regression, "warn", ("init_bias",)),
    Case("1:10 class imbalance, default init", _imbalanced_digits, "warn", ("init_bias",)),
    *(
        Case(name, lambda bug=bug: _planted_data(bug), expect, catches, stages=("inspect",))
        for name, bug, expect, catches in (
            ("NaN in 1% of training inputs", "nan", "fail", ("non_finite",)),
            ("raw 0..255 pixel scale", "raw", "warn", ("input_stats",)),
            ("5% of validation rows copied from training", "leak", "fail", ("duplicates",)),
            ("20% of training labels flipped", "noise", "warn", ("label_noise",)),
            ("one class missing from training", "missing_class", "fail", ("target_range",)),
            ("five training samples scaled x100", "outliers", "warn", ("outliers",)),
            ("validation standardised with its own statistics", "val_own_scaling", "fail", ("split_shift",)),
        )
    ),
]
CLEAN = [
    Case("clean digits MLP", lambda: digits.make_task("mlp"), "clean", (), stages=ALL),
    Case("clean digits CNN", lambda: digits.make_task("cnn"), "clean", (), stages=ALL),
    Case(
        "clean causal char model",
        lambda: _charlm(lambda: charlm.GPT(len(charlm.VOCAB), 64), "charlm-gpt"),
        "clean",
        (),
        stages=ALL,
    ),
    Case("clean regression MLP", regression.make_task, "clean", (), stages=ALL),
]
CASES = BUGS + CLEAN


@dataclass
class Outcome:
    case: Case
    result: RecipeResult
    seconds: float

    @property
    def fired(self) -> dict[str, list[str]]:
        return {s: [c.name for c in self.result.checks if c.status == s] for s in ("fail", "warn")}

    @property
    def flagged(self) -> bool:
        """Bug: one of the checks built for it shows the expected status (and a warn case has no fail).
        Clean: True means a false alarm (a failed check)."""
        fired = self.fired
        if self.case.expect == "clean":
            return bool(fired["fail"])
        hit = any(name in fired[self.case.expect] for name in self.case.catches)
        return hit and not (self.case.expect == "warn" and fired["fail"])


def run_case(case: Case, stages: tuple[str, ...] | None = None, run_dir: Path | None = None) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = Recipe(
            case.make_task(),
            run_dir=run_dir or Path(tmp) / "run",
            stages=list(stages or case.stages),
            device="cpu",
            keep_going=True,
            config=case.config,
            progress=False,
            quiet=True,
        ).run()
        return Outcome(case, result, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated case names (substring match)")
    parser.add_argument("--stages", help="comma-separated stages for every case (default: each case's own)")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only.split(","))]
    stages = tuple(args.stages.split(",")) if args.stages else None
    rows = []
    for case in cases:
        out = run_case(case, stages)
        fired = out.fired
        if case.expect == "clean":
            verdict = "FALSE ALARM" if out.flagged else ("clean (warns)" if fired["warn"] else "clean")
        else:
            verdict = "flagged" if out.flagged else "MISSED"
        rows.append(
            (
                case.name,
                case.expect,
                verdict,
                ", ".join(fired["fail"]) or "-",
                ", ".join(fired["warn"]) or "-",
                f"{out.seconds:.1f}",
            )
        )
        print(f"  {case.name}: {verdict}", file=sys.stderr)
    header = ("case", "expect", "verdict", "failed checks", "warned checks", "s")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    bugs = [r for r, c in zip(rows, cases, strict=True) if c.expect != "clean"]
    clean = [r for r, c in zip(rows, cases, strict=True) if c.expect == "clean"]
    flagged = sum(r[2] == "flagged" for r in bugs)
    alarms = sum(r[2] == "FALSE ALARM" for r in clean)
    print(f"flagged {flagged}/{len(bugs)} bugs, false alarms {alarms} on {len(clean)} clean tasks")
    return 0 if flagged == len(bugs) and alarms == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
