"""Leaks that survive a sample-level split: validation windows that are shifted copies of training windows, and
features computed from the target.

Why: recipe step 1 ("become one with the data") and the evaluation skeleton of step 2: the validation score must
measure generalisation to unseen samples. Windows cut from one series with overlap and then split at random put the
same stretch of signal in both splits, shifted by a few steps; a target encoding computed with each row's own label
predicts that label in training and nothing in validation. Both are invisible to an exact-duplicate check.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm, rankdata

from recipe.check import Check, failed, passed, skipped, warned
from recipe.data import fixed_indices
from recipe.diagnostics.integrity import SplitSample
from recipe.joined import describe_parts
from recipe.task import Task

MAX_TRAIN, MAX_VAL = 20_000, 2_000  # rows compared by time_leakage (sampled beyond)
MIN_LENGTH = 8  # shorter rows are too short to tell a shift from a coincidence
MAX_TABULAR = 2_000  # rows per split ranked by target_derived_features (sampled beyond): z is already sharp
MAX_SHIFT = 128  # shifts tried: sliding windows with a stride up to this are found


def _rows(sample: SplitSample, limit: int, seed: int) -> list[tuple[torch.Tensor, int]]:
    """The inputs as (rows, length) integer codes (float bits for floats), at most `limit` rows, once per axis that
    can be a time axis of at least MIN_LENGTH steps, with the values one step spans: (B, L) as it is; (B, A, F)
    with time along A (windows of a multivariate series, steps of F values) and along F (channels first, each
    row read step by step across the A channels). Empty when the inputs are neither."""
    x = sample.inputs
    if x is None or x.dim() < 2 or x.dim() > 3 or x.shape[0] == 0:
        return []
    if len(x) > limit:
        x = x[torch.tensor(sorted(fixed_indices(len(x), limit, seed)))]
    if x.is_floating_point():
        x = (x.float() + 0.0).view(torch.int32)  # + 0.0 makes -0.0 and 0.0 one code
    x = x.long()
    if x.dim() == 2:
        return [(x, 1)]
    steps, values = x.shape[1], x.shape[2]
    layouts = [(x.reshape(len(x), -1), values)] if steps >= MIN_LENGTH else []
    return layouts + ([(x.transpose(1, 2).reshape(len(x), -1), steps)] if values >= MIN_LENGTH else [])


def _int64(values: list[int]) -> torch.Tensor:
    return torch.tensor([v - 2**64 if v >= 2**63 else v for v in values], dtype=torch.int64)


class _RollingHash:
    """Polynomial hashes modulo 2^64 (int64 arithmetic wraps) of every prefix and suffix of each row, each in O(1)
    from one cumulative sum: hash(x[a:b]) = r^-a * sum_{a<=t<b} x[t] r^t."""

    def __init__(self, rows: torch.Tensor, seed: int):
        length = rows.shape[1]
        r = int(torch.randint(2**40, 2**62, (1,), generator=torch.Generator().manual_seed(seed))) | 1  # odd: invertible
        self.powers = _int64([pow(r, t, 2**64) for t in range(length)])
        self.inverse = _int64([pow(r, -t, 2**64) for t in range(length)])
        self.sums = torch.cat([torch.zeros(len(rows), 1, dtype=torch.int64), (rows * self.powers).cumsum(1)], 1)

    def prefix(self, length: int) -> torch.Tensor:
        return self.sums[:, length]

    def suffix(self, start: int) -> torch.Tensor:
        return (self.sums[:, -1] - self.sums[:, start]) * self.inverse[start]


def _informative(rows: torch.Tensor, pad: int | None, min_real: int) -> torch.Tensor:
    """Rows with at least 3 distinct values, none of them (nor padding) filling half the row: a one-hot block, a
    sparse count vector or a run of padding matches its own shifts by construction, not by leaking."""
    ordered = rows.sort(1).values
    distinct = (ordered[:, 1:] != ordered[:, :-1]).sum(1) + 1
    mode = rows.mode(1).values
    dominant = (rows == mode[:, None]).sum(1) * 2 >= rows.shape[1]
    informative = (distinct >= 3) & ~dominant
    return informative & ((rows != pad).sum(1) >= min_real) if pad is not None else informative


class _Chance:
    """A bigram model of the training rows, to tell an overlap that chance repetition explains (a periodic or
    low-entropy stream repeats itself) from one too improbable to recur by chance. Fitted on one transition per row,
    the middle one, so windows that overlap within the training split do not count one stretch many times."""

    def __init__(self, train: torch.Tensor, alpha: float = 0.5):
        middle = train.shape[1] // 2
        first, second = train[:, middle - 1], train[:, middle]
        self.alphabet = max(int(torch.unique(train[: max(1, 200_000 // train.shape[1])]).numel()), 2)
        self.singles, self.single_counts = torch.unique(first, return_counts=True)
        self.pairs, self.pair_counts = torch.unique(_pair_keys(first, second), return_counts=True)
        self.alpha = alpha

    def bits(self, rows: torch.Tensor) -> torch.Tensor:
        """-log2 P(row) under the model, per row (the first value uniform over the alphabet)."""
        pair = _count(self.pairs, self.pair_counts, _pair_keys(rows[:, :-1], rows[:, 1:]))
        single = _count(self.singles, self.single_counts, rows[:, :-1])
        p = (pair + self.alpha) / (single + self.alpha * self.alphabet)
        return -torch.log2(p).sum(1) + math.log2(self.alphabet)


def _pair_keys(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a * 1_000_003 + b  # wraps in int64: a hash of the pair


def _count(keys: torch.Tensor, counts: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    at = torch.searchsorted(keys, query.contiguous()).clamp_max(len(keys) - 1)
    return torch.where(keys[at] == query, counts[at], 0).double()


def shifted_copies(
    train: torch.Tensor, val: torch.Tensor, seed: int = 0, pad: int | None = None, step: int = 1
) -> torch.Tensor:
    """Per validation row, whether it equals a training row shifted by k whole steps of `step` values (1 <= k <=
    min(steps / 2, MAX_SHIFT)) on their whole overlap (val[k:] == train[:-k] or val[:-k] == train[k:]), an overlap
    `_informative` enough, and too improbable under the training rows' bigram model to recur by chance among all the
    rows and shifts compared."""
    length = train.shape[1]
    hashed_train, hashed_val = _RollingHash(train, seed), _RollingHash(val, seed)
    found = torch.zeros(len(val), dtype=torch.bool)
    chance, shifts = _Chance(train), min(length // step // 2, MAX_SHIFT)
    trials_bits = math.log2(len(train) * 2 * shifts) + 10  # expected chance matches per row below 2^-10
    for k in (step * j for j in range(1, shifts + 1)):
        pairs = (
            (hashed_val.suffix(k), hashed_train.prefix(length - k), val[:, k:], train[:, :-k]),  # val starts later
            (hashed_val.prefix(length - k), hashed_train.suffix(k), val[:, :-k], train[:, k:]),  # val starts earlier
        )
        for keys, hashes, later, earlier in pairs:
            table, order = torch.sort(hashes)
            at = torch.searchsorted(table, keys.contiguous()).clamp_max(len(table) - 1)
            rows = ((table[at] == keys) & ~found).nonzero().flatten()
            overlap = later[rows]
            same = (overlap == earlier[order[at[rows]]]).all(1)  # confirm: a hash match is not proof
            same &= _informative(overlap, pad, length // 2) & (chance.bits(overlap) >= trials_bits)
            found[rows[same]] = True
    return found


def time_leakage(
    train: SplitSample, val: SplitSample, pad_id: int | None = None, warn_share: float = 0.1, fail_share: float = 0.3
) -> Check:
    """Catches overlapping windows of one series split at random: validation samples whose content is a training
    sample's content shifted by a few positions, over at least half their length.

    Why: a model scored on windows it has mostly seen in training measures memory, not forecasting. Windows that
    overlap within a split are fine; across the split they are a leak. The fix is to split the series by time first.
    """
    name = "time_leakage"
    if train.parts:  # positions in several tensors joined end to end are no time axis
        return skipped(name, f"the inputs are {describe_parts(train.parts)}, not one series or sequence.")
    if train.inputs is None or val.inputs is None or train.inputs.shape[1:] != val.inputs.shape[1:]:
        return skipped(name, "inputs are not rows of one shape (sequences, series or feature vectors).")
    layouts = list(zip(_rows(train, MAX_TRAIN, 0), _rows(val, MAX_VAL, 1), strict=True))
    if not layouts:
        return skipped(name, f"inputs of shape {tuple(train.inputs.shape[1:])} have no axis of {MIN_LENGTH} steps.")
    if layouts[0][0][0].shape[1] < MIN_LENGTH:
        return skipped(name, f"rows of {layouts[0][0][0].shape[1]} values are too short to tell a shift from chance.")
    pad = pad_id if pad_id is not None and not train.inputs.is_floating_point() else None
    found = torch.zeros(len(layouts[0][1][0]), dtype=torch.bool)  # a validation row found along any time axis
    for (x_train, step), (x_val, _) in layouts:
        found |= shifted_copies(x_train, x_val, pad=pad, step=step)
    count, share = int(found.sum()), float(found.float().mean())
    value = {"shifted_copies": count, "val_rows_compared": len(found), "share": share}
    seen = (
        f"{count} of {len(x_val)} validation samples ({share:.0%}) are training samples shifted by a few positions: "
        "overlapping windows cut from one series were split at random, so the model is scored on stretches it "
        "trained on. Split the series by time first (train = the earlier part, validation = the later part), then "
        "cut windows within each part."
    )
    if share >= fail_share and count >= 5:
        return failed(name, seen, value, f"< {warn_share:.0%} shifted copies")
    if share >= warn_share and count >= 5:
        return warned(name, seen, value, f"< {warn_share:.0%} shifted copies")
    return passed(name, f"{count} of {len(x_val)} validation samples are shifted copies of training ones.", value)


def _sample(x: torch.Tensor, y: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.tensor(fixed_indices(len(x), limit, 0))
    return x[rows], y[rows]


def _associations(
    ranks: torch.Tensor, y: torch.Tensor, train: torch.Tensor, classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each feature's association with the target within the rows of a split (a row of `train`: 1 for the rows in
    it) and within the other rows, from the pooled, centred ranks: |rank correlation| with a numeric target, the
    correlation ratio with class ids. Sums over a split are matrix products; over the other rows, whole minus part."""

    def split(column: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        column = column if column.dim() == 2 else column[:, None]
        inside = train[:, rows] @ column[rows]
        return inside, column[rows].sum(0, keepdim=True) - inside

    (n1, n2), (s1, s2), (q1, q2) = split(torch.ones_like(ranks[:, 0])), split(ranks), split(ranks**2)
    var1, var2 = (q1 - s1**2 / n1).clamp_min(1e-12), (q2 - s2**2 / n2).clamp_min(1e-12)
    if classes is None:
        t = torch.from_numpy(rankdata(y.numpy())).double()
        t -= t.mean()
        (c1, c2), (t1, t2), (u1, u2) = split(ranks * t[:, None]), split(t), split(t**2)
        r1 = (c1 - s1 * t1 / n1) / (var1 * (u1 - t1**2 / n1).clamp_min(1e-12)).sqrt()
        r2 = (c2 - s2 * t2 / n2) / (var2 * (u2 - t2**2 / n2).clamp_min(1e-12)).sqrt()
        return r1.abs().clamp_max(1 - 1e-9), r2.abs().clamp_max(1 - 1e-9)
    between1, between2 = -(s1**2) / n1, -(s2**2) / n2  # + sum over classes of (class sum)^2 / class count
    for c in range(classes):
        rows = (y == c).nonzero().flatten()
        (k1, k2), (m1, m2) = split(torch.ones_like(ranks[:, 0]), rows), split(ranks, rows)
        between1, between2 = between1 + m1**2 / k1.clamp_min(1), between2 + m2**2 / k2.clamp_min(1)
    return (between1 / var1).clamp(0, 1 - 1e-9).sqrt(), (between2 / var2).clamp(0, 1 - 1e-9).sqrt()


def _gaps(ranks: torch.Tensor, y: torch.Tensor, train: torch.Tensor, classes: int | None) -> torch.Tensor:
    """Fisher z of the training association minus the validation one, per split (row of `train`) and feature."""
    inside, outside = _associations(ranks, y, train, classes)
    return torch.atanh(inside) - torch.atanh(outside)


def _gap_z(
    ranks: torch.Tensor, y: torch.Tensor, n_train: int, classes: int | None, draws: int
) -> tuple[torch.Tensor, float]:
    """Per feature, the observed gap (the first `n_train` rows against the rest) in units of the gaps of `draws`
    random splits of the same sizes: from their median, scaled by their upper tail's spread (a correlation ratio's
    gap is skewed); and the largest such z any random split reached."""
    g = torch.Generator().manual_seed(0)
    observed = (torch.arange(len(y)) < n_train).double()
    shuffled = torch.stack([observed[torch.randperm(len(y), generator=g)] for _ in range(draws)])
    null = _gaps(ranks, y, shuffled, classes)
    centre = null.median(0).values
    spread = ((null - centre).clamp_min(0) ** 2).mean(0).mul(2).sqrt().clamp_min(1e-9)
    z = (_gaps(ranks, y, observed[None], classes)[0] - centre) / spread
    return z, float(((null - centre) / spread).max())


def target_derived_features(
    train: SplitSample,
    val: SplitSample,
    task: Task,
    z_fail: float = 6.0,
    z_warn: float = 4.5,
    draws: int = 200,
    min_spread: int = 10,
) -> Check:
    """Catches a feature computed from the target (a target encoding that includes each row's own label): far more
    related to the target in training than in validation, beyond what the split sizes explain.

    Why: a real feature relates to the target alike in both splits, up to sampling noise; so the rows, pooled and
    split again at random with the same sizes (`draws` times), give each feature's null distribution of the gap in
    association (Fisher z of train minus validation), small splits and many classes included (a correlation ratio
    over 10 classes from 50 rows is 0.43 on pure noise). A gap counts in standard errors of that null, and the
    largest of many features' gaps is judged after Bonferroni's correction for the features tested, and only when
    it also exceeds every random split's largest. Features with fewer than `min_spread` rows off their most common
    value in a split are left out: a few nonzero pixels swing the gap by chance, not by a leak. A leak singles a
    feature out: a gap the features share comes from how the splits were drawn (a trending series split by time),
    so with five features or more a gap counts from their median, in units of their robust spread.
    """
    name = "target_derived_features"
    x, xv = train.inputs, val.inputs
    if x is None or xv is None or x.dim() != 2 or not x.is_floating_point() or task.kind == "sequence":
        return skipped(name, "applies to tabular inputs (a float feature vector per sample).")
    y, yv = train.targets.reshape(len(x), -1), val.targets.reshape(len(xv), -1)
    if len(x) > MAX_TABULAR:
        x, y = _sample(x, y, MAX_TABULAR)
    if len(xv) > MAX_TABULAR:
        xv, yv = _sample(xv, yv, MAX_TABULAR)
    if y.shape[1] != 1 or len(x) < 20 or len(xv) < 20:
        return skipped(name, "needs one target per sample and at least 20 samples per split.")
    classes = task.num_classes if task.kind == "classification" and not y.is_floating_point() else None
    pooled, target = torch.cat([x, xv]).double(), torch.cat([y, yv])[:, 0]
    mode = pooled.mode(0).values
    tested = ((x != mode).sum(0) >= min_spread) & ((xv != mode).sum(0) >= min_spread)
    if not tested.any():
        return skipped(name, f"no feature varies in at least {min_spread} rows of each split.")
    ranks = torch.from_numpy(rankdata(pooled[:, tested].numpy(), axis=0)).double()
    ranks -= ranks.mean(0)
    z, null_max = _gap_z(ranks, target, len(x), classes, draws)
    features, worst = tested.nonzero().flatten(), int(z.argmax())
    count = int(tested.sum())
    # a gap the features share is the split's (a temporal split of a trending series: the trend carries every lag's
    # relation in training only), not one feature's: with five features or more, a feature's gap counts against
    # theirs, in units of their robust spread where that is wider than random splits' (1)
    shared, spread = 0.0, 1.0
    if count >= 5:
        shared = max(float(z.median()), 0.0)
        spread = max(1.4826 * float((z - z.median()).abs().median()), 1.0)
    z_max = (float(z[worst]) - shared) / spread
    # Bonferroni over the features tested, read back as the z of a single test with that tail probability
    z_family = float(norm.isf(min(0.5, count * norm.sf(z_max))))
    observed = (torch.arange(len(pooled)) < len(x)).double()[None]
    r_train, r_val = _associations(ranks, target, observed, classes)
    feature, r_t, r_v = int(features[worst]), float(r_train[0, worst]), float(r_val[0, worst])
    value = {
        "feature": feature,
        "train_association": r_t,
        "val_association": r_v,
        "z": z_max,
        "z_family": z_family,
        "features_tested": count,
        "z_random_splits_max": null_max,
        "z_shared": shared,
        "z_spread": spread,
    }
    beyond_shared = (
        f", counted from the features' median gap {shared:.1f} in units of their spread {spread:.1f}"
        if shared >= 1 or spread > 1
        else ""
    )
    seen = (
        f"feature {feature} relates to the target with strength {r_t:.2f} in training but {r_v:.2f} in validation "
        f"({z_max:.1f} standard errors of the gap random splits give{beyond_shared}; {z_family:.1f} after "
        f"allowing for {count} features): it was probably computed from the target, e.g. a target encoding that "
        "includes each row's own label. Compute such features out of fold (from other rows' labels) or drop it."
    )
    beyond_chance = float(z[worst]) > null_max
    if beyond_chance and z_family >= z_fail and r_t >= 0.3 and r_v < r_t / 2:
        return failed(name, seen, value, f"z < {z_warn:g} after allowing for the features tested")
    if beyond_chance and z_family >= z_warn and r_t - r_v >= 0.2:
        return warned(name, seen, value, f"z < {z_warn:g} after allowing for the features tested")
    return passed(
        name,
        f"every feature relates to the target alike in both splits (largest gap: feature {feature}, "
        f"z = {z_max:.1f}{beyond_shared}, {z_family:.1f} after allowing for {count} features).",
        value,
    )
