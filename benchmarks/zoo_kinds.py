"""Zoo tasks of kinds added after the first zoo: an encoder-decoder trained with teacher forcing, a transformer
called Hugging Face style (`model(input_ids=..., attention_mask=...)`), a contrastive two-view encoder whose loss
never reads the target, a tabular model that imputes its own missing values, digits standardised column by column
(a StandardScaler), and a forecaster with an output per time step. Each is small enough for the zoo's tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_breast_cancer
from torch import nn

from benchmarks.zoo_tasks import PAD, MaskedTransformer, _split, token_data
from examples import digits
from recipe import Task

# ---- an encoder-decoder trained with teacher forcing ----------------------------------------------------------------

SEQ_VOCAB, SEQ_LENGTH, BOS = 12, 8, 1


def reversals(n: int, seed: int, shifted: bool = True) -> torch.utils.data.TensorDataset:
    """Source: random tokens; target: the source reversed; decoder input: the target shifted right ([BOS] + y[:-1]),
    or (`shifted=False`, the planted bug) the target itself."""
    source = torch.randint(2, SEQ_VOCAB, (n, SEQ_LENGTH), generator=torch.Generator().manual_seed(seed))
    target = source.flip(1)
    decoder_input = torch.cat([torch.full((n, 1), BOS), target[:, :-1]], 1) if shifted else target
    return torch.utils.data.TensorDataset(source, decoder_input, target)


class Seq2SeqTask(Task):
    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        return (batch[0], batch[1]), batch[2]

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(*inputs)


class Seq2Seq(nn.Module):
    """nn.Transformer over (source, decoder input); `causal_decoder=False` plants a decoder without its tgt_mask."""

    def __init__(self, causal_decoder: bool = True):
        super().__init__()
        self.causal_decoder = causal_decoder
        self.tokens, self.positions = nn.Embedding(SEQ_VOCAB, 32), nn.Embedding(SEQ_LENGTH, 32)
        self.transformer = nn.Transformer(32, 4, 1, 1, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, SEQ_VOCAB)

    def forward(self, source: torch.Tensor, decoder_input: torch.Tensor) -> torch.Tensor:
        where = self.positions(torch.arange(source.shape[1], device=source.device))
        length = decoder_input.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=source.device)
        mask = mask if self.causal_decoder else None
        decoded = self.transformer(
            self.tokens(source) + where,
            self.tokens(decoder_input) + where,
            tgt_mask=mask,
            tgt_is_causal=mask is not None,
        )
        return self.head(decoded)


def seq2seq(shifted: bool = True, causal_decoder: bool = True, n: int = 1200) -> Seq2SeqTask:
    return Seq2SeqTask(
        reversals(n, 0, shifted), reversals(n // 4, 1, shifted), lambda: Seq2Seq(causal_decoder),
        kind="sequence", name="seq2seq",
    )  # fmt: skip


# ---- a transformer called with input_ids and attention_mask ---------------------------------------------------------


class MaskedInputsTask(Task):
    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        ids, mask, y = batch
        return {"input_ids": ids, "attention_mask": mask}, y

    def forward(self, model: nn.Module, inputs: Any) -> torch.Tensor:
        return model(**inputs)


class AttentionMaskTransformer(MaskedTransformer):
    """`MaskedTransformer` reading its padding from the attention mask (1 at real tokens); `ignore_mask=True` plants
    a model that never passes it on (no key-padding mask, a mean over every position)."""

    def __init__(self, ignore_mask: bool = False):
        super().__init__(pool_padding=ignore_mask)
        self.ignore_mask = ignore_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        pad = attention_mask == 0
        h = self.emb(input_ids) + self.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
        h = self.encoder(h, src_key_padding_mask=None if self.ignore_mask else pad)
        if self.pool_padding:
            return self.head(h.mean(1))
        real = (~pad).unsqueeze(-1).float()
        return self.head((h * real).sum(1) / real.sum(1).clamp_min(1))


def attention_mask_inputs(ignore_mask: bool = False) -> MaskedInputsTask:
    """The padded-token task of zoo_tasks, its batches as {input_ids, attention_mask} (no pad id declared)."""
    x, y = token_data()
    tr, va = _split(len(y), 0.25, seed=2)
    split = lambda rows: torch.utils.data.TensorDataset(x[rows], (x[rows] != PAD).long(), y[rows])
    return MaskedInputsTask(
        split(tr), split(va), lambda: AttentionMaskTransformer(ignore_mask), kind="classification", num_classes=3,
        name="attention-mask",
    )  # fmt: skip


# ---- a contrastive two-view encoder ---------------------------------------------------------------------------------


class TwoViewEncoder(nn.Module):
    """Embeds both views of each sample: output (B, 2, 16), unit length."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(views.flatten(0, 1)), dim=-1).view(len(views), 2, -1)


def info_nce(z: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    """Each first view picks its own second view among the batch's (in-batch negatives); the labels are unused."""
    return F.cross_entropy(z[:, 0] @ z[:, 1].T / 0.1, torch.arange(len(z), device=z.device))


def contrastive() -> Task:
    """Two noisy views of each digit, the digit's class kept as the (unread) target."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    g = torch.Generator().manual_seed(0)

    def views(x: np.ndarray) -> torch.Tensor:
        t = torch.tensor(x)
        return torch.stack(
            [t + 0.2 * torch.randn(t.shape, generator=g), t + 0.2 * torch.randn(t.shape, generator=g)], 1
        )

    return Task(
        (views(x_train), torch.tensor(y_train)), (views(x_val), torch.tensor(y_val)), TwoViewEncoder, loss=info_nce,
        name="contrastive",
    )  # fmt: skip


# ---- missing values imputed by the model; digits through a StandardScaler ------------------------------------------


class Imputing(nn.Module):
    """Reads a missing (NaN) input as 0 beside an indicator column per feature."""

    def __init__(self, features: int = 30):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * features, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([torch.nan_to_num(x), torch.isnan(x).float()], 1))


def missing_values(rate: float = 0.05) -> Task:
    """breast_cancer standardised with the training statistics, `rate` of the values then missing (NaN)."""
    data = load_breast_cancer()
    x, y = torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    x = (x - x[:455].mean(0)) / x[:455].std(0)
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < rate] = float("nan")
    return Task((x[:455], y[:455]), (x[455:], y[455:]), Imputing, name="missing-values")


def standardised_digits() -> Task:
    """Digits with each pixel standardised by its training mean and deviation, as scikit-learn's StandardScaler does
    (pixels lit in a handful of training images land 10-40 deviations out), the digits MLP."""
    x_train, x_val, y_train, y_val = digits.load_digits_split()
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)  # a pixel blank in every training image stays 0
    scale = lambda a: ((a - mean) / std).astype(np.float32)
    return Task(
        (scale(x_train), y_train), (scale(x_val), y_val), digits.MLP, num_classes=10, image_shape=(8, 8),
        name="digits-standardised",
    )  # fmt: skip


# ---- a forecaster of values, an output per time step ----------------------------------------------------------------


class ConvForecaster(nn.Module):
    """(B, T) -> (B, T): the next value from the last five, by a convolution padded on the left. Padded on both
    sides (`sees_future`, the default of `padding="same"`), position t reads t+1 and t+2: its own target."""

    def __init__(self, sees_future: bool = False):
        super().__init__()
        self.pad = (2, 2) if sees_future else (4, 0)
        self.conv, self.head = nn.Conv1d(1, 16, 5), nn.Conv1d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(F.pad(x[:, None], self.pad))))[:, 0]


def value_forecaster(sees_future: bool = False, length: int = 32) -> Task:
    """Noisy sine waves of random phase and frequency; inputs the first `length` values, targets the same series one
    step on (y[:, t] = x[:, t + 1])."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(length + 1).float()
    waves = torch.sin((0.2 + 0.2 * torch.rand(1000, 1, generator=g)) * t + 6.28 * torch.rand(1000, 1, generator=g))
    waves = waves + 0.1 * torch.randn(waves.shape, generator=g)
    x, y = waves[:, :-1], waves[:, 1:]
    return Task(
        (x[:800], y[:800]), (x[800:], y[800:]), lambda: ConvForecaster(sees_future), loss="mse",
        name="value-forecaster",
    )  # fmt: skip
