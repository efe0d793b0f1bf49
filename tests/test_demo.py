"""The demo's pipeline at a small size: build, pretrain with DeepSpeed on 2 CPU workers, evaluate held-out
zero-shot. It must learn: held-out top-1 well above chance, results and pictures written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_the_demo_learns_at_a_small_size(tmp_path: Path) -> None:
    import ray

    from jobs.demo import main

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    try:
        summary = main(["--out", str(tmp_path), "--shapes", "420", "--points", "512", "--epochs", "10"])
    finally:
        ray.shutdown()
    assert summary["classes"] >= 12 and summary["chance_top1"] == pytest.approx(100 / summary["classes"])
    assert summary["top1"] > 3 * summary["chance_top1"], summary  # measured 46% (chance 7.7%) at this size
    results = tmp_path / "results"
    for name in ("training_curves.png", "accuracy_per_class.png", "build_confusion.png"):
        assert (results / name).stat().st_size > 5000, name
    assert json.loads((results / "build.json").read_text())["num_samples"] == summary["heldout_shapes"]
