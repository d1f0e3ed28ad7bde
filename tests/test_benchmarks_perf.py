"""The performance benchmarks run end to end in their quickest CPU mode and print their tables and ratios. Nothing
here is timed: the numbers are only checked to be finite, never compared with a threshold."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks import gpu_throughput, scaling


def test_gpu_throughput_runs_on_a_cpu_with_a_tiny_model(capsys):
    argv = ["--device", "cpu", "--size", "tiny", "--steps", "10", "--repeats", "1", "--max-chars", "60000", "--profile"]
    assert gpu_throughput.main(argv) == 0
    out = capsys.readouterr().out
    for name in ("hand matched", "fit matched", "hand fp32", "fit defaults"):
        row = next(line for line in out.splitlines() if line.startswith(name))
        tokens_per_s, mfu = float(row.split()[2]), row.split()[5]
        assert math.isfinite(tokens_per_s) and tokens_per_s > 0 and mfu == "n/a", row
    ratios = [float(v) for v in re.findall(r"^ratio .*\(tokens/s\): ([\d.]+)", out, flags=re.MULTILINE)]
    assert len(ratios) == 2 and all(math.isfinite(r) and r > 0 for r in ratios), out
    assert "MFU: n/a on CPU" in out
    assert out.count("profile of ") == 2 and "matmul/gemm" in out


@pytest.mark.parametrize(
    ("device_name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10", 125e12),
        ("Tesla T4", None),  # not in the table: "peak unknown"
    ],
)
def test_gpu_throughput_peak_is_taken_from_the_device_name(device_name, peak):
    assert gpu_throughput.peak_flops(device_name) == peak


def test_scaling_runs_at_two_scales(capsys):
    assert scaling.main(["--quick", "--no-label-noise"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"^(inspect|fit) +\d+x ", line)]
    assert [(r[0], r[1]) for r in rows] == [("inspect", "1x"), ("inspect", "4x"), ("fit", "1x"), ("fit", "4x")]
    for row in rows:
        seconds, ratio = float(row[3]), float(row[5].rstrip("x"))
        assert math.isfinite(seconds) and seconds > 0 and math.isfinite(ratio) and ratio > 0, row
    verdicts = [line for line in out.splitlines() if line.startswith(("inspect: ", "fit: "))]
    assert len(verdicts) == 2 and all("linearly" in v for v in verdicts), verdicts
