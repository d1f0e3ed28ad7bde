"""Variable-length samples that a collate function pads batch by batch: `inspect` reads a split in chunks, each
padded to its own longest sample, and the two splits padded to theirs. The chunks and the splits are padded to one
length (the pad id, or -100 for per-token targets) instead of the stage raising on mismatched shapes; a planted leak
is still found across the padding."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from recipe import Recipe, Task
from recipe.data import cat_padded
from recipe.diagnostics.integrity import SplitSample, same_length

VOCAB, PAD = 20, 0


class Sentences(torch.utils.data.Dataset):
    """Token sequences of 3 to 20 ids (1..19) and one long one of `longest`; the label: does id 5 occur. With
    `tags`, one label per token instead (is this id 5)."""

    def __init__(self, n: int, seed: int, longest: int, tags: bool = False, copied_from: Sentences | None = None):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 21, (n,), generator=g).tolist()
        lengths[0] = longest
        self.seqs = [torch.randint(1, VOCAB, (k,), generator=g) for k in lengths]
        if copied_from is not None:  # a third of the samples are training samples
            self.seqs[: n // 3] = copied_from.seqs[: n // 3]
        self.tags = tags

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int):
        s = self.seqs[i]
        return s, (s == 5).long() if self.tags else int((s == 5).any())


def collate(batch):
    xs, ys = zip(*batch, strict=True)
    x = pad_sequence(list(xs), batch_first=True, padding_value=PAD)
    y = pad_sequence(list(ys), batch_first=True, padding_value=-100) if torch.is_tensor(ys[0]) else torch.tensor(ys)
    return x, y


class Bag(nn.Module):
    def __init__(self, per_token: bool = False):
        super().__init__()
        self.per_token = per_token
        self.emb, self.out = nn.Embedding(VOCAB, 8, padding_idx=PAD), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_token:
            return self.out(self.emb(x)).transpose(1, 2)  # (B, 2, T)
        mask = (x != PAD).float()[..., None]
        return self.out((self.emb(x) * mask).sum(1) / mask.sum(1).clamp_min(1))


def task(tags: bool = False, leak: bool = False) -> Task:
    train = Sentences(1500, 0, longest=60, tags=tags)  # two chunks of reading: the first holds the long sample
    val = Sentences(300, 1, longest=30, tags=tags, copied_from=train if leak else None)
    loader = lambda data: torch.utils.data.DataLoader(data, collate_fn=collate)
    return Task(loader(train), loader(val), lambda: Bag(tags), num_classes=2, pad_id=PAD)


def inspect(t: Task, tmp_path) -> dict[str, str]:
    result = Recipe(
        t, run_dir=tmp_path / "run", stages=["inspect"], device="cpu", progress=False, quiet=True,
        config={"inspect": {"label_noise": False}},
    ).run()  # fmt: skip
    return {c.name: c.status for c in result.checks}


def test_batches_padded_to_their_own_length_are_joined_padded_to_the_longest():
    short, long = torch.ones(2, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long)
    joined = cat_padded([short, long], fill=0)
    assert joined.shape == (3, 5) and joined[:2, 3:].eq(0).all() and joined[2].eq(1).all()


def test_variable_length_sentences_are_inspected_and_a_copied_third_is_a_leak(tmp_path):
    clean = inspect(task(), tmp_path / "clean")
    assert "error" not in clean.values() and clean["summary"] == clean["duplicates"] == "pass", clean
    leaked = inspect(task(leak=True), tmp_path / "leak")
    assert leaked["duplicates"] == "fail", leaked


def test_variable_length_per_token_targets_are_padded_with_the_unscored_value(tmp_path):
    t = task(tags=True)
    targets = t.targets("train")
    assert targets.shape == (1500, 60) and (targets == -100).any()  # two reads of 1,024 and 476, one length
    statuses = inspect(t, tmp_path)
    assert "error" not in statuses.values() and statuses["class_balance"] == "pass", statuses


def test_float_splits_of_two_widths_are_not_padded_into_shape():
    """A validation split missing a feature is a bug to see, not a length to pad; token splits are padded."""
    t = task()
    floats = [
        SplitSample(name, torch.randn(4, k), torch.zeros(4), torch.arange(4), 4) for name, k in (("a", 5), ("b", 4))
    ]
    assert [s.inputs.shape[1] for s in same_length(*floats, t)] == [5, 4]
    ids = [
        SplitSample(name, torch.ones(4, k, dtype=torch.long), torch.zeros(4), torch.arange(4), 4)
        for name, k in (("a", 5), ("b", 4))
    ]
    assert [s.inputs.shape[1] for s in same_length(*ids, t)] == [5, 5]


class Series(torch.utils.data.Dataset):
    """Float series of 5 to 19 values and one of `longest`; the label: is the mean positive."""

    def __init__(self, n: int, seed: int, longest: int):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(5, 20, (n,), generator=g).tolist()
        lengths[0] = longest
        self.x = [torch.randn(k, generator=g) for k in lengths]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], int(self.x[i].mean() > 0)


class MeanOfSteps(nn.Module):
    def __init__(self):
        super().__init__()
        self.step, self.out = nn.Linear(1, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.step(x[..., None]).mean(1))


def test_float_splits_padded_to_their_own_lengths_skip_the_row_comparisons_and_say_why(tmp_path):
    """Float series padded per split (40 against 25 values): split_shift, duplicates and target_derived_features
    raised on the mismatch; they skip, naming both shapes and both readings of it."""
    loader = lambda data: torch.utils.data.DataLoader(data, collate_fn=collate)
    t = Task(loader(Series(400, 0, 40)), loader(Series(200, 1, 25)), MeanOfSteps, num_classes=2)
    result = Recipe(
        t, run_dir=tmp_path / "run", stages=["inspect"], device="cpu", progress=False, quiet=True,
        config={"inspect": {"label_noise": False}},
    ).run()  # fmt: skip
    by_name = {c.name: c for c in result.checks}
    assert not [c.name for c in result.checks if c.status == "error"]
    for name in ("split_shift", "duplicates", "target_derived_features"):
        check = by_name[name]
        assert check.status == "skip" and "(40,) per sample and validation inputs (25,)" in check.message
