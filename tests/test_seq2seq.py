"""An encoder-decoder trained with teacher forcing: the model takes (source, decoder input), the targets are one
token per decoder position. The decoder input must be the targets shifted right ([BOS] + y[:-1]) and the decoder
causal; the encoder may read its whole source. Two classic bugs, each with its fixed twin: the decoder input left
unshifted (it holds the token it predicts) and a decoder without its causal mask.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recipe import Recipe, Task
from recipe.diagnostics.dependencies import causal
from recipe.diagnostics.target_leak import target_leak

VOCAB, LENGTH, BOS = 12, 8, 1
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def reversals(n: int, seed: int, shifted: bool = True) -> torch.utils.data.TensorDataset:
    """Source: random tokens; target: the source reversed; decoder input: the target shifted right (or not)."""
    source = torch.randint(2, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    target = source.flip(1)
    decoder_input = torch.cat([torch.full((n, 1), BOS), target[:, :-1]], 1) if shifted else target
    return torch.utils.data.TensorDataset(source, decoder_input, target)


class Seq2SeqTask(Task):
    def split_batch(self, batch):
        return (batch[0], batch[1]), batch[2]

    def forward(self, model, inputs):
        return model(*inputs)


class Seq2Seq(nn.Module):
    def __init__(self, causal_decoder: bool = True):
        super().__init__()
        self.causal_decoder = causal_decoder
        self.tokens, self.positions = nn.Embedding(VOCAB, 32), nn.Embedding(LENGTH, 32)
        self.transformer = nn.Transformer(32, 4, 1, 1, 64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, source: torch.Tensor, decoder_input: torch.Tensor) -> torch.Tensor:
        where = self.positions(torch.arange(source.shape[1], device=source.device))
        mask = nn.Transformer.generate_square_subsequent_mask(decoder_input.shape[1]) if self.causal_decoder else None
        decoded = self.transformer(
            self.tokens(source) + where,
            self.tokens(decoder_input) + where,
            tgt_mask=mask,
            tgt_is_causal=mask is not None,
        )
        return self.head(decoded)


def task(shifted: bool = True, causal_decoder: bool = True, n: int = 600) -> Seq2SeqTask:
    return Seq2SeqTask(
        reversals(n, 0, shifted), reversals(n // 4, 1, shifted), lambda: Seq2Seq(causal_decoder), kind="sequence"
    )


@pytest.mark.parametrize(("shifted", "status"), [(True, "pass"), (False, "fail")])
def test_target_leak_reads_the_decoder_input_beside_the_source(shifted, status):
    check = target_leak(task(shifted=shifted))
    assert check.status == status, check.message
    if status == "fail":
        assert "not shifted" in check.message and "[BOS] + y[:-1]" in check.message


@pytest.mark.parametrize(("causal_decoder", "status"), [(True, "pass"), (False, "fail")])
def test_causal_perturbs_the_decoder_input_and_lets_the_encoder_read_its_whole_source(causal_decoder, status):
    torch.manual_seed(0)
    t = task(causal_decoder=causal_decoder)
    inputs, target = t.split_batch(t.sample_batch("val", 16, seed=0))
    check = causal(t.make_model(), t, inputs, target=target)
    assert check.status == status, check.message
    if status == "fail":
        assert "of the decoder's input" in check.message and "tgt_mask" in check.message


def test_a_clean_encoder_decoder_runs_the_baseline_without_a_fail(tmp_path):
    result = Recipe(task(), run_dir=tmp_path / "run", stages=["inspect", "baseline"], device="cpu").run()
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["causal"] == statuses["target_leak"] == "pass"
    assert not [c.name for c in result.checks if c.status in ("fail", "error")]
