"""`make bench-gpu` (bench/gpu.py) runs end to end at --tiny sizes on the CPU, so that the first GPU machine lent
runs it as it is: every section is measured and lands in the table and its JSON (numbers are not checked here;
they belong to BENCHMARKS.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_gpu_benchmark_runs_every_section_at_tiny_sizes(small_build: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from gpu import main
    finally:
        sys.path.remove(str(ROOT / "bench"))
    out = tmp_path / "bench-gpu.md"
    results = main(["--tiny", "--build", str(small_build), "--work", str(tmp_path), "--out", str(out)])
    assert results["encoder"]["samples_per_s"] > 0 and results["encoder"]["gflop_per_sample"] > 0
    assert 0 < results["grouping"]["eager_share"] < 1  # grouping is part of the step it is compared with
    assert results["towers"]["views_per_s"] > 0 and results["towers"]["texts_per_s"] > 0
    assert results["towers"]["views_gflop_each"] > 0 and results["towers"]["views_mfu"] is None  # no peak on a CPU
    assert results["ray"]["bare_samples_per_s"] > 0 and results["ray"]["ray_samples_per_s"] > 0
    text = out.read_text()
    for row in ("encoder step: nano", "grouping (FPS + kNN), eager", "image tower: tiny-ViT-32", "text tower",
                "bare loop, one process", "Ray Train + Ray Data, 1 worker"):  # fmt: skip
        assert row in text, text
    assert json.loads(out.with_suffix(".json").read_text())["settings"]["preset"] == "nano"
