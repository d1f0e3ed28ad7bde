"""Stage `inspect`: become one with the data, before a single gradient step.

    "The first step to training a neural net is to not touch any neural net code at all and instead begin by
    thoroughly inspecting your data. [...] Outliers especially almost always uncover some bugs in data quality or
    preprocessing." — Karpathy, A Recipe for Training Neural Networks, step 1.

Read both splits through the task's hooks (all of them, or a fixed sample of large ones), then check what they
hold: finite values, targets in range, classes split alike, inputs at a sane scale, training and validation from
one distribution with no shared samples (nor windows shifted across the split), no feature computed from the target,
validation samples that read the same twice, outliers, and labels a quick out-of-fold model doubts. Plots and tables
of all of it go to 01_inspect/ for a person to look at.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from recipe import plots
from recipe.check import Check, passed, skipped
from recipe.config import require
from recipe.context import Context
from recipe.diagnostics.groups import group_leak
from recipe.diagnostics.inputs import input_stats, scaled_by_model
from recipe.diagnostics.integrity import (
    SplitSample,
    class_counts,
    different_widths,
    finite_loss_on,
    finite_rows,
    is_class_task,
    non_finite_data,
    read_split,
    same_length,
    sequence_data,
    summary,
    whole_split,
)
from recipe.diagnostics.label_noise import find_label_issues, label_noise
from recipe.diagnostics.leakage import target_derived_features, time_leakage
from recipe.diagnostics.outliers import outliers
from recipe.diagnostics.reading import augmentation_variance, eval_data_deterministic, training_reads_vary
from recipe.diagnostics.shift import split_shift
from recipe.diagnostics.splits import duplicates
from recipe.diagnostics.targets import class_balance, target_range
from recipe.errors import ConfigError
from recipe.stage import Stage, StageSettings
from recipe.task import Task


@dataclass(frozen=True)
class InspectSettings(StageSettings):
    """Settings of the `inspect` stage.

    Args:
        max_samples: samples read from each split; larger splits are sampled (the messages say so).
        label_noise: run the out-of-fold label-noise scan (the only check here that trains).
        folds: folds of that scan.
        outlier_z: robust z-score beyond which a sample is an outlier.
        shift_fail_auc: domain-classifier AUC at which the train/validation shift fails.
        pad_id: the padding token id of a sequence task, if it pads.
        samples_per_class: pictures per class in samples.png.
    """

    max_samples: int = 20_000
    label_noise: bool = True
    folds: int = 5
    outlier_z: float = 8.0
    shift_fail_auc: float = 0.9
    pad_id: int | None = None
    samples_per_class: int = 8

    def __post_init__(self) -> None:
        require(self, "inspect", counts=["max_samples", "samples_per_class"], positive=["outlier_z"])
        require(self, "inspect", non_negative=["pad_id"])
        if self.folds < 2 or not 0.5 < self.shift_fail_auc <= 1:
            key, want = ("folds", "an integer >= 2") if self.folds < 2 else ("shift_fail_auc", "in (0.5, 1]")
            raise ConfigError(f"inspect.{key}={getattr(self, key)!r} is out of range: it must be {want}.")


class InspectData(Stage):
    """Look at the data as the model will receive it; every check here runs before any model is trained."""

    name = "inspect"
    settings_cls = InspectSettings
    settings: InspectSettings

    def run(self, ctx: Context) -> list[Check]:
        s, task = self.settings, ctx.task
        train = read_split(task, "train", s.max_samples, ctx.seed)
        val = read_split(task, "val", s.max_samples, ctx.seed + 1)
        train, val = same_length(train, val, task)  # variable-length samples padded per split: one width for both
        # an in-memory split is scanned whole for NaN/Inf (a vectorised pass), whatever its size
        whole = [whole_split(task, p.name) if p.sampled else p for p in (train, val)]
        checks = [ctx.check(self._summary, ctx, train, val)]
        copes = finite_loss_on(task, ctx.device)  # a model built to take missing values passes, saying so
        checks.append(ctx.check(non_finite_data, whole[0] or train, whole[1] or val, copes, name="non_finite"))
        train, val = finite_rows(train), finite_rows(val)  # what follows describes the finite rows
        checks.append(ctx.check(target_range, train, val, task))
        checks.append(ctx.check(self._class_balance, ctx, train, val))
        checks.append(ctx.check(self._input_stats, ctx, train))
        checks.append(ctx.check(group_leak, task))
        augmented = training_reads_vary(task, seed=ctx.seed)  # a Dataset augmenting on read differs by design
        apart = different_widths(train, val)  # the checks that compare the splits row against row cannot
        checks.append(
            skipped("split_shift", apart)
            if apart
            else ctx.check(
                split_shift,
                train,
                val,
                fail_auc=s.shift_fail_auc,
                seed=ctx.seed,
                groups=task.groups,
                train_augmented=augmented,
                augmentation=augmentation_variance(task, seed=ctx.seed) if augmented else None,
            )
        )
        checks.append(skipped("duplicates", apart) if apart else ctx.check(self._duplicates, ctx, train, val))
        checks.append(ctx.check(time_leakage, train, val, pad_id=s.pad_id if task.pad_id is None else task.pad_id))
        checks.append(
            skipped("target_derived_features", apart) if apart else ctx.check(target_derived_features, train, val, task)
        )
        checks.append(ctx.check(eval_data_deterministic, task, seed=ctx.seed))
        checks.append(ctx.check(self._outliers, ctx, train))
        finite = checks[1].status not in ("fail", "error")  # a pass may still hold values the model handles
        checks.append(
            ctx.check(self._label_noise, ctx)
            if finite
            else skipped("label_noise", "needs finite inputs; fix non_finite.")
        )
        if task.kind == "sequence":
            checks.append(ctx.check(sequence_data, train, val, task, pad_id=s.pad_id))
        checks.append(ctx.check(self._samples, ctx, train, val))
        return [_say_sampled(c, train, val) for c in checks]

    def _summary(self, ctx: Context, train: SplitSample, val: SplitSample) -> Check:
        check = ctx.check(summary, train, val, ctx.task)
        table = {
            "columns": ["split", "size", "read", "input shape", "input dtype", "target shape", "target range"],
            "rows": [
                [
                    name,
                    row["size"],
                    row["read"],
                    row["input_parts"] or str(row["input_shape"]),
                    row["input_dtype"],
                    str(row["target_shape"]),
                    f"{row['target_min']:g}..{row['target_max']:g}" if row["target_min"] is not None else "-",
                ]
                for name, row in ((n, check.value[n]) for n in ("train", "val"))
            ],
        }
        return check.replace(artifacts=(ctx.save_json("summary.table.json", table),))

    def _class_balance(self, ctx: Context, train: SplitSample, val: SplitSample) -> Check:
        check = ctx.check(class_balance, train, val, ctx.task, seed=ctx.seed)
        if check.status == "skip" or not ctx.task.num_classes:
            return check
        counts = {p.name: class_counts(p, ctx.task.num_classes).tolist() for p in (train, val)}
        figure = ctx.save_figure("class_balance.png", lambda: plots.class_histogram(counts, "Labels per split"))
        return check.replace(artifacts=(figure,))

    def _input_stats(self, ctx: Context, train: SplitSample) -> Check:
        measured = _measured(train)  # category ids have no scale
        check, stats = input_stats(measured.inputs, train.scope, measured.parts)
        if check.status == "warn":  # the model may scale its inputs itself
            inputs, _ = ctx.task.split_batch(ctx.task.sample_batch("train", 256, ctx.seed, ctx.device))
            check = scaled_by_model(check, ctx.task, inputs)
        if not stats or "mean" not in stats:
            return check
        unit = "channel" if train.inputs is not None and train.inputs.dim() == 4 else "feature"
        ctx.learn(input_scale="ok" if check.status == "pass" else "far from unit scale")
        artifacts = (
            ctx.save_json("input_stats.json", stats),
            ctx.save_figure(
                "input_stats.png", lambda: plots.feature_ranges(stats, "Training inputs per " + unit, unit)
            ),
        )
        return check.replace(artifacts=artifacts)

    def _duplicates(self, ctx: Context, train: SplitSample, val: SplitSample) -> Check:
        check = ctx.check(duplicates, train, val, ctx.task)
        if check.value:
            return check.replace(artifacts=(ctx.save_json("duplicates.json", check.value),))
        return check

    def _outliers(self, ctx: Context, train: SplitSample) -> Check:
        check, info = outliers(_measured(train), z_warn=self.settings.outlier_z)
        if not info:
            return check
        values, z = info["values"], info["z"]
        median = float(values.median())
        scale = float((values - median).abs().median() * 1.4826) or 1.0
        marks = {"median": median, f"z = ±{self.settings.outlier_z:g}": median + self.settings.outlier_z * scale}
        artifacts = [
            ctx.save_figure(
                "outliers_histogram.png",
                lambda: plots.histogram(values, "Per-sample statistic", info["statistic"], marks),
            ),
            ctx.save_json("outliers.json", info["table"]),
        ]
        top = info["top"][:16]
        pictures = _pictures(ctx.task, train)
        images = pictures[top] if pictures is not None else None
        if images is not None:
            labels = [f"#{int(train.indices[i])} z={float(z[i]):+.1f}" for i in top.tolist()]
            artifacts.append(
                ctx.save_figure(
                    "outliers.png", lambda: plots.image_grid(images, labels, "Most extreme training samples")
                )
            )
        return check.replace(artifacts=tuple(artifacts))

    def _label_noise(self, ctx: Context) -> Check:
        if not self.settings.label_noise:
            return skipped("label_noise", "turned off (inspect.label_noise: false).")

        issues = find_label_issues(
            ctx.task, folds=self.settings.folds, max_samples=self.settings.max_samples, seed=ctx.seed, device=ctx.device
        )
        check = label_noise(issues, ctx.task)
        if issues is None:
            return check
        ctx.learn(label_noise_rate=round(issues.estimated_noise_rate, 4), suspect_labels=len(issues.indices))
        ctx.learn(label_issues={"indices": issues.indices, "predicted": issues.predicted})  # regularize tries them
        record = {
            "estimated_noise_rate": issues.estimated_noise_rate,
            "indices": issues.indices,
            "given": issues.given,
            "predicted": issues.predicted,
            "baseline_rate": issues.baseline_rate,
            "probe": issues.probe,
        }
        artifacts: list[str | None] = [ctx.save_json("label_issues.json", record)]
        shown = issues.indices[:32]
        images = ctx.task.images(ctx.task.split_batch(ctx.task.batch("train", shown))[0]) if shown else None
        if images is not None:
            labels = [f"#{i}: {g} → {p}?" for i, g, p in zip(shown, issues.given, issues.predicted, strict=False)]
            title = "Labels the out-of-fold model doubts (given → predicted)"
            artifacts.append(ctx.save_figure("label_issues.png", lambda: plots.image_grid(images.cpu(), labels, title)))
        return check.replace(seconds=issues.seconds, artifacts=tuple(artifacts))

    def _samples(self, ctx: Context, train: SplitSample, val: SplitSample) -> Check:
        """The data a person should scan before training: pictures per class, decoded text, or histograms."""
        task, x = ctx.task, train.inputs
        if x is None:
            return skipped("samples", "inputs are not a single tensor; override _samples in a subclass.")
        images = _pictures(task, train) if ctx.figures else None
        if images is not None:
            return self._image_samples(ctx, train, images)
        if not x.is_floating_point() and task.decoder is not None:
            rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.seed))[:8]
            columns = [c for _, c, _ in train.part_columns()] or [slice(None)]  # several tensors: each decoded
            texts = [" | ".join(task.decode(row[c].reshape(-1).tolist()) or "" for c in columns) for row in x[rows]]
            path = ctx.save_text("samples.txt", "\n\n---\n\n".join(texts))
            return passed("samples", f"decoded training samples in samples.txt; the first: {texts[0][:80]!r}.").replace(
                artifacts=(path,)
            )
        if not ctx.figures:
            return skipped("samples", "figures are off (figures=False): no samples.png of the data to look at.")
        if not x.is_floating_point():
            return skipped("samples", "token inputs without a decoder; pass Task(decoder=...) to read them.")
        flat_train, flat_val = (
            x.reshape(len(x), -1).float(),
            val.inputs.reshape(len(val.inputs), -1).float() if val.inputs is not None else x,
        )
        features = list(range(min(flat_train.shape[1], 11)))
        target = (train.targets.float(), val.targets.float()) if task.kind == "regression" else None
        fig = partial(
            plots.feature_histograms,
            flat_train,
            flat_val,
            features,
            "Feature distributions, train vs validation",
            target,
        )
        figure = ctx.save_figure("samples.png", fig)
        return passed("samples", f"histograms of the first {len(features)} features per split in samples.png.").replace(
            artifacts=(figure,)
        )

    def _image_samples(self, ctx: Context, train: SplitSample, images: torch.Tensor) -> Check:
        task, per_class = ctx.task, self.settings.samples_per_class
        g = torch.Generator().manual_seed(ctx.seed)
        if is_class_task(task) and task.num_classes and task.num_classes <= 20:
            rows: list[int] = []
            labels: list[str] = []
            for c in range(task.num_classes):
                members = (train.targets == c).nonzero().flatten()
                pick = members[torch.randperm(len(members), generator=g)[:per_class]].tolist()
                rows += pick
                labels += [f"class {c}"] * len(pick)
            columns = per_class
        else:
            rows = torch.randperm(len(images), generator=g)[:32].tolist()
            labels = [_target_label(train.targets[i]) for i in rows]
            columns = 8
        fig = partial(
            plots.image_grid, images[rows], labels, "Random training samples and their labels", columns=columns
        )
        path = ctx.save_figure("samples.png", fig)
        return passed("samples", f"{len(rows)} random training images, by class, in samples.png.").replace(
            artifacts=(path,)
        )


def _measured(sample: SplitSample) -> SplitSample:
    """The float columns of joined inputs (`SplitSample.measurements`); token ids alone are read as they are."""
    measured = sample.measurements()
    return measured if measured.inputs is not None else sample


def _pictures(task: Task, sample: SplitSample) -> torch.Tensor | None:
    """The split's inputs as pictures (B, C, H, W) for a person to look at, or None: the task's own reading of one
    tensor, or the first of several joined tensors that holds pictures (float, C x H x W, 1 or 3 channels)."""
    if sample.inputs is None:
        return None
    if not sample.parts:
        return task.images(sample.inputs)
    for shape, columns, continuous in sample.part_columns():
        if sample.inputs is not None and continuous and len(shape) == 3 and shape[0] in (1, 3):
            return sample.inputs[:, columns].reshape(len(sample.inputs), *shape)
    return None


def _target_label(target: torch.Tensor) -> str:
    return f"{float(target):g}" if target.numel() == 1 else ""


def _say_sampled(check: Check, train: SplitSample, val: SplitSample) -> Check:
    """Name the sample in the message of a check that saw only part of a large split."""
    states_its_scope = (
        check.name in ("summary", "non_finite", "group_leak", "eval_data_deterministic")
        or "random sample of" in check.message
    )
    if not (train.sampled or val.sampled) or check.status == "skip" or states_its_scope:
        return check
    return check.replace(message=f"{check.message} (Read {train.scope} training and {val.scope} validation samples.)")
