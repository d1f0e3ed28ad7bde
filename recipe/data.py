"""Splits and batches: the in-memory fast path, the Dataset path, and fixed batches for diagnostics.

A split given as tensors, numpy arrays or a `TensorDataset` becomes a `TensorSplit`: batches are drawn by indexing
tensors that live on the training device, with no DataLoader in the hot path. Any other `Dataset` becomes a
`DatasetSplit` served by a DataLoader. A `DataLoader` given as a split is read for its dataset and, where they
change what a batch holds or how it is loaded, its `collate_fn`, `num_workers` and `worker_init_fn`; the order and the
batch size are the recipe's (seeded shuffling; `train.batch_size`, which `baseline` may search).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    default_collate,
)

from recipe.arrays import as_tensor, several_arrays
from recipe.distributed import shard
from recipe.errors import TaskError

IGNORE_INDEX = -100  # F.cross_entropy's default: targets equal to it are not scored
SCAN_LIMIT = 20_000  # samples read from a Dataset split to infer kind and classes

Batch = Any  # whatever the split yields: a tuple (x, y) for in-memory splits, the collated samples otherwise


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """Apply `fn` to every tensor inside nested tuples, lists and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(tree_map(fn, v) for v in obj)
    return obj


def padded_to(x: torch.Tensor, shape: Sequence[int], fill: float) -> torch.Tensor:
    """`x` right-padded with `fill` along every dimension after the first to `shape` (its per-row shape)."""
    if tuple(x.shape[1:]) == tuple(shape):
        return x
    out = torch.full((len(x), *shape), fill, dtype=x.dtype, device=x.device)
    out[(slice(None), *(slice(0, n) for n in x.shape[1:]))] = x
    return out


def cat_padded(parts: Sequence[torch.Tensor], fill: float) -> torch.Tensor:
    """The rows of several batches as one tensor. Batches that a collate function padded to their own longest
    sample (variable-length sequences) are right-padded with `fill` to the longest of all first."""
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) <= 1:
        return torch.cat(list(parts))
    if len({len(s) for s in shapes}) != 1:
        raise TaskError(f"batches of one split have different numbers of dimensions: {sorted(shapes)}.")
    longest = [max(s[d] for s in shapes) for d in range(len(next(iter(shapes))))]
    return torch.cat([padded_to(p, longest, fill) for p in parts])


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), obj)


def batch_size_of(obj: Any) -> int:
    """Length of the first tensor found in a (nested) batch."""
    if isinstance(obj, torch.Tensor):
        return int(obj.shape[0]) if obj.dim() else 1
    if isinstance(obj, dict):
        obj = list(obj.values())
    for v in obj:
        n = batch_size_of(v)
        if n:
            return n
    return 0


class TensorSplit:
    """A split held as two tensors `x` (inputs) and `y` (targets), indexed directly."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, field: str):
        for part, t in (("inputs", x), ("targets", y)):
            if t.dim() == 0:
                raise TaskError(
                    f"{field}: the {part} are one 0-dim value ({t.item()!r}), not one row per sample; give a tensor "
                    "whose first axis indexes the samples (for one target per sample, shape (N,))."
                )
        if len(x) != len(y):
            raise TaskError(
                f"{field}: inputs have {len(x)} rows but targets have {len(y)}; they must match one to one."
            )
        self.x, self.y = x, y
        self._copies: dict[str, TensorSplit] = {}

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.x.device)
        return self.x[idx], self.y[idx]

    def nbytes(self) -> int:
        return self.x.element_size() * self.x.numel() + self.y.element_size() * self.y.numel()

    def to(self, device: torch.device) -> TensorSplit:
        """This split on `device`; the copy is kept, so repeated training runs move the data once."""
        if self.x.device == device:
            return self
        key = str(device)
        if key not in self._copies:
            self._copies[key] = TensorSplit(self.x.to(device), self.y.to(device), "split")
        return self._copies[key]


class DatasetSplit:
    """A split held as a map-style `Dataset`; batches are collated with `collate_fn` (default: `default_collate`) and
    loaded by `num_workers` processes (None: `default_num_workers`) started with `worker_init_fn`."""

    def __init__(
        self,
        dataset: Dataset,
        field: str,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int | None = None,
        worker_init_fn: Callable[[int], None] | None = None,
    ):
        self.collate_fn = collate_fn or default_collate
        self.num_workers, self.worker_init_fn = num_workers, worker_init_fn
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TaskError(f"{field} must be a map-style Dataset (with __len__ and __getitem__) or a tuple (X, y).")
        self.dataset = dataset
        n = len(dataset)
        try:  # a map-style Dataset serves every index below its __len__: probe the last one, cheaply, once
            if n > 0:
                dataset[n - 1]
        except (IndexError, KeyError) as exc:
            raise TaskError(
                f"{field}: its __len__ says {n} samples but reading sample {n - 1} raised {type(exc).__name__} "
                f"({' '.join(str(exc).split())[:160]}); make __len__ return the number of samples __getitem__ serves."
            ) from exc

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: Sequence[int] | torch.Tensor) -> Batch:
        return self.collate_fn([self.dataset[int(i)] for i in indices])

    def holding(self, dataset: Dataset, field: str) -> DatasetSplit:
        """A split over another dataset (a subset of this one) collated and loaded as this one is."""
        return DatasetSplit(dataset, field, self.collate_fn, self.num_workers, self.worker_init_fn)


class HeldSamples(Dataset):
    """Samples read once from a Dataset and kept as read: a random transform in its `__getitem__` was drawn once."""

    def __init__(self, samples: list[Any]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        return self.samples[index]


Split = TensorSplit | DatasetSplit


def as_split(data: Any, field: str) -> Split:
    """Accept the contract's split forms: a Dataset, a TensorDataset or a tuple (X, y) of tensors / numpy arrays."""
    if data is None:
        if field == "val":  # the recipe judges every change on held-out data, so it never trains without it
            raise TaskError(
                "val is missing: every stage is judged on held-out data. Hold out 10-20% of the training samples "
                "(shuffled) as val, e.g. `train, val = torch.utils.data.random_split(data, [0.85, 0.15])`."
            )
        raise TaskError(f"{field} is missing: pass a Dataset yielding (input, target) or a tuple (X, y).")
    if isinstance(data, TensorSplit | DatasetSplit):
        split = data
    elif isinstance(data, DataLoader):
        split = _from_loader(data, field)
    elif isinstance(data, TensorDataset) and len(data.tensors) == 2:
        split = TensorSplit(data.tensors[0], data.tensors[1], field)
    elif isinstance(data, tuple | list) and len(data) == 2 and not isinstance(data[0], tuple | list | dict):
        x, y = as_tensor(data[0], f"{field}[0] (inputs)"), as_tensor(data[1], f"{field}[1] (targets)")
        split = TensorSplit(x, y, field)
    elif isinstance(data, tuple | list) and len(data) == 2 and several_arrays(data[0], data[1]):
        raise TaskError(
            f"{field}[0] (inputs) is a {type(data[0]).__name__} of {len(data[0])} arrays; a tuple (X, y) takes one "
            "input tensor. For a model of several tensors, pass TensorDataset(a, b, y) and subclass Task: "
            "`split_batch` returns ((batch[0], batch[1]), batch[2]) and `forward` returns model(*inputs)."
        )
    elif isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        split = DatasetSplit(data, field)
    else:
        raise TaskError(
            f"{field} must be a Dataset or a tuple (X, y) of tensors or numpy arrays, got {type(data).__name__}."
        )
    if len(split) == 0:
        raise TaskError(f"{field} is empty (0 samples): every split needs at least one sample; check what built it.")
    return split


def _from_loader(loader: DataLoader, field: str) -> Split:
    """A DataLoader's dataset as a split, keeping its collate_fn, num_workers and worker_init_fn; refused, with the
    one-line alternative, when the recipe cannot index its dataset or would silently drop its sampler."""
    if isinstance(loader.dataset, IterableDataset):
        raise TaskError(
            f"{field} is a DataLoader over an IterableDataset, which cannot be indexed (the recipe draws fixed, "
            f"seeded batches by index); read it once into a list of samples: `{field}=list(loader.dataset)`."
        )
    sampler = loader.batch_sampler.sampler if isinstance(loader.batch_sampler, BatchSampler) else loader.sampler
    if type(sampler) not in (SequentialSampler, RandomSampler):
        raise TaskError(
            f"{field}: the DataLoader draws its samples with a {type(sampler).__name__}, which the recipe would drop "
            f"(it shuffles by its own seeded order); pass the dataset, `{field}=loader.dataset`, and for imbalanced "
            "classes use Task(class_weights='balanced')."
        )
    custom = loader.collate_fn if loader.batch_size is not None and loader.collate_fn is not default_collate else None
    if custom is None and loader.num_workers == 0 and loader.worker_init_fn is None:
        return as_split(loader.dataset, field)  # a TensorDataset keeps the in-memory fast path
    return DatasetSplit(loader.dataset, field, custom, loader.num_workers, loader.worker_init_fn)


def default_num_workers() -> int:
    """DataLoader workers: none on small machines (process start-up costs more than it saves), else half the cores."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


def place(split: Split, device: torch.device) -> tuple[Split, str]:
    """Keep in-memory data on the device when it fits (half the free memory), else pinned on the host."""
    if isinstance(split, DatasetSplit):
        return split, "DataLoader"
    if device.type == "cpu":
        return split, "in-memory tensors (CPU)"
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    if device.type != "cuda" or split.nbytes() < free // 2:
        return split.to(device), f"in-memory tensors (resident on {device})"
    return TensorSplit(split.x.pin_memory(), split.y.pin_memory(), "train"), "in-memory tensors (pinned host)"


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Where each training batch of an epoch of `n` samples starts and ends: `batch_size` each, the last holding the
    rest, except that one sample left over joins the batch before it: a batch of one sample cannot be normalised by
    BatchNorm in training (PyTorch raises), and its gradient is the noisiest of all."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Training batches in an epoch of `n` samples (`batch_bounds`)."""
    return len(batch_bounds(n, batch_size))


def train_batches(
    split: Split,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    num_workers: int | None = None,
    rank: int = 0,
    world: int = 1,
    guard: Callable[[Batch], None] | None = None,
) -> Callable[[], Iterator[Batch]]:
    """Return a function yielding one shuffled epoch of batches on `device`.

    In-memory splits are indexed on the device with a permutation drawn from `generator`; other splits go
    through a DataLoader (pinned memory and non-blocking copies on CUDA). Under data parallelism (`world` > 1) each
    rank takes its shard of the same permutation (every rank seeds `generator` alike).
    """
    bounds = batch_bounds(len(split) // world, batch_size)  # the shard each rank draws from one permutation
    if isinstance(split, TensorSplit):
        x, y, n = split.x, split.y, len(split)

        if x.device != device:  # pinned host memory: copy each batch without blocking

            def copied_epoch() -> Iterator[Batch]:
                perm = shard(torch.randperm(n, generator=generator), rank, world)
                for start, end in bounds:
                    idx = perm[start:end]
                    yield x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)

            return copied_epoch

        def epoch() -> Iterator[Batch]:
            perm = shard(torch.randperm(n, generator=generator), rank, world).to(x.device)
            for start, end in bounds:
                idx = perm[start:end]
                yield x[idx], y[idx]

        return epoch

    workers = num_workers if num_workers is not None else split.num_workers
    workers = default_num_workers() if workers is None else workers
    sampler = _ShardSampler(len(split), generator, rank, world)
    loader = DataLoader(
        split.dataset,
        batch_sampler=_BoundedBatches(sampler, bounds),
        generator=generator,  # its workers' base seed comes from here too, not the global RNG (resume replays it)
        num_workers=workers,
        collate_fn=split.collate_fn,
        worker_init_fn=split.worker_init_fn,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    non_blocking = device.type == "cuda"

    def loader_epoch() -> Iterator[Batch]:
        for batch in loader:
            if guard is not None:
                guard(batch)  # on the host, before the copy
            yield to_device(batch, device, non_blocking)

    return loader_epoch


class _BoundedBatches(torch.utils.data.Sampler[list[int]]):
    """The sampler's order cut at `batch_bounds`."""

    def __init__(self, sampler: torch.utils.data.Sampler[int], bounds: list[tuple[int, int]]):
        self.sampler, self.bounds = sampler, bounds

    def __iter__(self) -> Iterator[list[int]]:
        order = list(self.sampler)
        return iter([order[a:b] for a, b in self.bounds])

    def __len__(self) -> int:
        return len(self.bounds)


class _ShardSampler(torch.utils.data.Sampler[int]):
    """A fresh permutation from `generator` every epoch, this rank's shard of it (all of it with one process)."""

    def __init__(self, n: int, generator: torch.Generator, rank: int, world: int):
        self.n, self.generator, self.rank, self.world = n, generator, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(shard(torch.randperm(self.n, generator=self.generator), self.rank, self.world).tolist())

    def __len__(self) -> int:
        return self.n // self.world


def eval_batches(
    split: Split, batch_size: int, device: torch.device, guard: Callable[[Batch], None] | None = None
) -> Iterator[Batch]:
    """The whole split in order, in batches of `batch_size`, on `device` (`guard` sees Dataset batches on the host)."""
    n = len(split)
    if isinstance(split, TensorSplit):
        for i in range(0, n, batch_size):
            yield to_device((split.x[i : i + batch_size], split.y[i : i + batch_size]), device)
        return
    loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=split.collate_fn)
    for batch in loader:
        if guard is not None:
            guard(batch)
        yield to_device(batch, device)


def fixed_indices(n: int, k: int, seed: int) -> list[int]:
    """`k` distinct indices out of `n`, the same for the same seed: the diagnostics' fixed batches."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[: min(k, n)].tolist()
