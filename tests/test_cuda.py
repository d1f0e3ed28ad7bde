"""CUDA paths: run on a GPU machine, skipped elsewhere (`pytest -m cuda` selects them)."""

from __future__ import annotations

import pytest
import torch

from recipe import Recipe, TaskError, fit
from tests import tiny

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_fit_on_cuda_keeps_data_resident_and_trains():
    task = tiny.classification()
    out = fit(task, epochs=3, batch_size=32, lr=3e-3, device="cuda", progress=False)
    assert out.setup["data_path"].startswith("in-memory tensors (resident on cuda")
    assert out.setup["optimizer_kernel"] == "fused"
    assert next(out.model.parameters()).is_cuda
    assert out.step_losses[-1] < out.step_losses[0]


def test_auto_precision_is_bf16_autocast_where_supported():
    out = fit(tiny.classification(), epochs=1, device="cuda", progress=False)
    expected = "bf16 autocast" if torch.cuda.is_bf16_supported() else "fp32"
    assert out.setup["precision"] == expected


def test_auto_device_picks_cuda():
    out = fit(tiny.classification(), epochs=1, device="auto", progress=False)
    assert out.setup["device"].startswith("cuda")


def test_labels_out_of_range_never_reach_a_device_assert():
    task = tiny.classification()
    task.num_classes = 2
    with pytest.raises(TaskError, match="num_classes=2"):
        fit(task, epochs=1, device="cuda", progress=False)


def test_recipe_runs_on_cuda(tmp_path):
    result = Recipe(
        tiny.classification(),
        run_dir=tmp_path,
        stages=["baseline", "overfit"],
        device="cuda",
        progress=False,
        quiet=True,
    ).run()
    assert result.ok, [c.message for c in result.failures]


def test_sequence_checks_on_cuda(tmp_path):
    result = Recipe(
        tiny.sequence(), run_dir=tmp_path, stages=["baseline"], device="cuda", progress=False, quiet=True
    ).run()
    statuses = {c.name: c.status for c in result.checks}
    assert statuses["causal"] == "pass" and statuses["batch_independence"] == "pass"
