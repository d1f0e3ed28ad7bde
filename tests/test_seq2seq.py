"""An encoder-decoder trained with teacher forcing: the model takes (source, decoder input), the targets are one
token per decoder position. The decoder input must be the targets shifted right ([BOS] + y[:-1]) and the decoder
causal; the encoder may read its whole source. Two classic bugs, each with its fixed twin: the decoder input left
unshifted (it holds the token it predicts) and a decoder without its causal mask.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.zoo_kinds import seq2seq
from recipe import Recipe, Task
from recipe.diagnostics.causal import causal
from recipe.diagnostics.target_leak import target_leak

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def task(shifted: bool = True, causal_decoder: bool = True) -> Task:
    return seq2seq(shifted, causal_decoder, n=600)


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
