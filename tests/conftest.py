"""Shared test set-up: hermetic (no hub look-ups), seeded, GPU tests skipped without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def random_cloud(batch: int, num_points: int, seed: int = 0) -> torch.Tensor:
    """Points in the unit ball with colours in [0, 1]: ``(B, N, 6)`` float32."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, num_points, 3, generator=g)
    xyz = xyz / xyz.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    rgb = torch.rand(batch, num_points, 3, generator=g)
    return torch.cat([xyz, rgb], dim=-1)
