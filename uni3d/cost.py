"""Model cost: parameter counts and forward FLOPs per sample of a preset, without allocating it.

The model and its input are built on PyTorch's ``meta`` device, so even ``giant`` (1B parameters)
costs about two seconds and no memory on a laptop. The forward is the model's own
(``PointEncoder.forward``, eval mode: no patch dropout) at the preset's tokenization (G groups of
K points). FPS and kNN run shape-only on ``meta``; they have no matmuls, so
``torch.utils.flop_counter.FlopCounterMode`` (which counts matmuls, convolutions and attention, as
``bench/encoder.py`` does) gives them no FLOPs, exactly as it does on a real point cloud.

Attention is counted through PyTorch's math SDPA backend: the counter has no formula for the fused
CPU kernel, so on a CPU the fused path would silently count zero attention FLOPs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelCost:
    """What one preset costs: parameters and forward FLOPs of one sample."""

    preset: str
    embed_dim: int
    num_params: int  # trainable (requires_grad): what the optimiser updates
    num_params_total: int  # trainable + frozen 2D-only tensors, as the official counts
    flops_per_sample: float  # forward pass, one sample, eval mode

    @property
    def gflops_per_sample(self) -> float:
        return self.flops_per_sample / 1e9


def count_forward_flops(model: nn.Module, pc: torch.Tensor) -> int:
    """FLOPs of ``model.point_encoder(pc)`` in eval mode (math attention), for ``pc`` on any device."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            # point_encoder, not encode_pc: the input check reads values, which meta tensors lack
            model.point_encoder(pc)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


@functools.lru_cache(maxsize=64)
def model_cost(
    preset: str,
    embed_dim: int,
    num_points: int | None = None,
    timm_model: str | None = None,
) -> ModelCost:
    """Parameters and forward FLOPs per sample of ``create_model(preset, embed_dim=embed_dim, ...)``.

    ``num_points`` and ``timm_model`` are config overrides as the sweep passes them; the number of
    points changes only FPS/kNN, which count no FLOPs, so the FLOPs stay at the preset's G x K.
    """
    from uni3d import create_model  # uni3d/__init__ imports this module

    overrides: dict[str, object] = {"embed_dim": embed_dim}
    if num_points is not None:
        overrides["num_points"] = num_points
    if timm_model is not None:
        overrides["timm_model"] = timm_model
    with torch.device("meta"):
        model = create_model(preset, **overrides)
        pc = torch.empty(1, model.cfg.num_points, 6)  # (1, N, 6): one sample
    params = list(model.parameters())
    return ModelCost(
        preset=preset,
        embed_dim=embed_dim,
        num_params=sum(p.numel() for p in params if p.requires_grad),
        num_params_total=sum(p.numel() for p in params),
        flops_per_sample=float(count_forward_flops(model, pc)),
    )


__all__ = ["ModelCost", "count_forward_flops", "model_cost"]
