"""Batched training augmentation of coloured point clouds, on the input's device.

Follows docs/method.md §6 (Uni3D, arXiv 2310.06773, the official pretraining augmentation). On xyz, in order:
unit-sphere normalisation; one scale U(0.8, 1.25) per cloud; one shift U(-0.1, 0.1) per axis per
cloud; a small rotation about z, then y, then x with angles N(0, 0.06²) clipped to ±0.18 rad (as the official
code composes it: the points as rows times Rz·Ry·Rx); a full
rotation about the up axis y with angle U(0, 2π). Then, with probability 0.5 per cloud, the rgb of
every point is replaced by 0.4 (the colour a shape without colour gets, docs/method.md §1).

All clouds are processed at once (no Python loop over the batch) and the input is never modified
in place: batches may be zero-copy views (e.g. from Ray Data). Rotation matrices act on column
vectors, p' = R p, right-handed: a rotation by +90° about y maps +x to -z and +z to +x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_AXES = ("x", "y", "z")


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.1
    rot_sigma: float = 0.06
    rot_clip: float = 0.18
    up_rotation: bool = True
    color_drop_prob: float = 0.5
    color_fill: float = 0.4

    def __post_init__(self) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        for name in ("shift", "rot_sigma", "rot_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.color_drop_prob <= 1:
            raise ValueError(f"color_drop_prob must be in [0, 1], got {self.color_drop_prob}")


def normalize_unit_sphere(xyz: Tensor) -> Tensor:
    """Centre each cloud on its centroid and scale it so its farthest point has norm 1.

    Accepts (N, 3) or (B, N, 3). A degenerate cloud (all points equal) becomes all zeros.
    """
    if xyz.ndim not in (2, 3) or xyz.shape[-1] != 3 or xyz.shape[-2] == 0:
        raise ValueError(f"xyz must have shape (N, 3) or (B, N, 3) with N > 0, got {tuple(xyz.shape)}")
    centred = xyz - xyz.mean(dim=-2, keepdim=True)  # (..., N, 3)
    radius = centred.norm(dim=-1).amax(dim=-1)  # (...,)
    # clamp avoids 0/0 for a single-point or collapsed cloud
    return centred / radius.clamp(min=torch.finfo(xyz.dtype).tiny)[..., None, None]


def rotation_matrices(angles: Tensor, axis: str) -> Tensor:
    """Right-handed rotations by ``angles`` (B,) radians about ``axis`` ('x', 'y' or 'z'): (B, 3, 3)."""
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {_AXES}, got {axis!r}")
    if angles.ndim != 1:
        raise ValueError(f"angles must have shape (B,), got {tuple(angles.shape)}")
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(angles), torch.zeros_like(angles)
    if axis == "x":
        rows = ((one, zero, zero), (zero, c, -s), (zero, s, c))
    elif axis == "y":
        rows = ((c, zero, s), (zero, one, zero), (-s, zero, c))
    else:
        rows = ((c, -s, zero), (s, c, zero), (zero, zero, one))
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)  # (B, 3, 3)


def _uniform(low: float, high: float, size: int, gen: torch.Generator | None, like: Tensor) -> Tensor:
    """U(low, high) samples of shape (size,), drawn on the generator's device, returned on ``like``'s."""
    device = gen.device if gen is not None else like.device
    u = torch.rand(size, generator=gen, device=device, dtype=like.dtype)
    return (low + (high - low) * u).to(like.device)


def _small_rotation(cfg: AugmentConfig, batch: int, gen: torch.Generator | None, like: Tensor) -> Tensor:
    """The official perturbation, (B, 3, 3) acting on column vectors: the official code multiplies the points, as
    rows, by ``Rz @ Ry @ Rx`` of clipped Gaussian angles, which is ``(Rz @ Ry @ Rx)ᵀ`` on columns: a rotation about
    z first, then y, then x, each by the negated angle."""
    device = gen.device if gen is not None else like.device
    angles = torch.randn(3, batch, generator=gen, device=device, dtype=like.dtype) * cfg.rot_sigma
    angles = angles.clamp(-cfg.rot_clip, cfg.rot_clip).to(like.device)  # (3, B)
    rx, ry, rz = (rotation_matrices(a, axis) for a, axis in zip(angles, _AXES, strict=True))
    return (rz @ ry @ rx).transpose(1, 2)


def augment(pc: Tensor, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Augment a batch of point clouds (B, N, 6) (xyz, rgb) or (B, N, 3); returns a new tensor.

    Disabled steps (scale (1, 1), shift 0, rot_sigma 0, up_rotation False, color_drop_prob 0) are
    skipped, so with all of them off the xyz equals `normalize_unit_sphere` exactly. Geometry is
    computed in float32 (float64 inputs stay float64) and cast back to the input dtype.
    """
    cfg = cfg or AugmentConfig()
    if pc.ndim != 3 or pc.shape[-1] not in (3, 6) or pc.shape[1] == 0:
        raise ValueError(f"pc must have shape (B, N, 6) or (B, N, 3) with N > 0, got {tuple(pc.shape)}")
    batch = pc.shape[0]
    work = pc[..., :3].to(torch.float64 if pc.dtype == torch.float64 else torch.float32)
    xyz = normalize_unit_sphere(work)  # (B, N, 3)

    if tuple(cfg.scale) != (1.0, 1.0):
        xyz = xyz * _uniform(*cfg.scale, batch, generator, xyz)[:, None, None]
    if cfg.shift > 0:
        shift = _uniform(-cfg.shift, cfg.shift, batch * 3, generator, xyz).view(batch, 1, 3)
        xyz = xyz + shift
    rot: Tensor | None = None
    if cfg.rot_sigma > 0 and cfg.rot_clip > 0:
        rot = _small_rotation(cfg, batch, generator, xyz)
    if cfg.up_rotation:
        up = rotation_matrices(_uniform(0.0, 2 * math.pi, batch, generator, xyz), "y")
        rot = up if rot is None else up @ rot
    if rot is not None:
        xyz = xyz @ rot.transpose(1, 2)  # rows are points: p' = R p  <=>  P' = P Rᵀ

    out = pc.clone()  # never write into the caller's (possibly shared) tensor
    out[..., :3] = xyz.to(pc.dtype)
    if pc.shape[-1] == 6 and cfg.color_drop_prob > 0:
        drop = _uniform(0.0, 1.0, batch, generator, xyz) < cfg.color_drop_prob  # (B,)
        fill = torch.full_like(out[..., 3:], cfg.color_fill)  # (B, N, 3)
        out[..., 3:] = torch.where(drop[:, None, None], fill, out[..., 3:])
    return out
