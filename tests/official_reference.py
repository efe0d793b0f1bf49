"""A literal transcription of the official Uni3D inference path, for parity tests only.

It follows the official code's structure (per-cloud FPS as the CUDA kernel does it, kNN from the
|a|²-2ab+|b|² expansion, grouping by flat indexing, the forward of ``PointcloudEncoder``) so that
our batched implementation can be checked against it on the same weights and inputs.
"""

from __future__ import annotations

import numpy as np
import torch


def kernel_fps(points: np.ndarray, num_samples: int) -> np.ndarray:
    """The CUDA ``furthest_point_sampling`` kernel, one cloud, sequential semantics."""
    n = points.shape[0]
    temp = np.full(n, 1e10, dtype=np.float32)
    out = np.zeros(num_samples, dtype=np.int64)
    old = 0
    for j in range(1, num_samples):
        best, besti = -1.0, 0
        x1, y1, z1 = points[old]
        for k in range(n):
            x2, y2, z2 = points[k]
            if x2 * x2 + y2 * y2 + z2 * z2 <= 1e-3:
                continue
            d = (x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1) + (z2 - z1) * (z2 - z1)
            d2 = min(d, temp[k])
            temp[k] = d2
            if d2 > best:
                best, besti = d2, k
        old = besti
        out[j] = old
    return out


def square_distance(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    b, n, _ = src.shape
    m = dst.shape[1]
    dist = -2 * torch.matmul(src, dst.permute(0, 2, 1))
    dist += torch.sum(src**2, -1).view(b, n, 1)
    dist += torch.sum(dst**2, -1).view(b, 1, m)
    return dist


def official_group(xyz: torch.Tensor, color: torch.Tensor, num_group: int, group_size: int):
    batch, num_points, _ = xyz.shape
    fps_idx = torch.stack([torch.from_numpy(kernel_fps(c.numpy().astype(np.float32), num_group)) for c in xyz])
    center = torch.stack([xyz[b, fps_idx[b]] for b in range(batch)])
    idx = square_distance(center, xyz).topk(group_size, dim=-1, largest=False, sorted=False).indices
    idx = (idx + torch.arange(batch).view(-1, 1, 1) * num_points).view(-1)
    nbr = xyz.reshape(batch * num_points, -1)[idx].view(batch, num_group, group_size, 3)
    nbr_color = color.reshape(batch * num_points, -1)[idx].view(batch, num_group, group_size, 3)
    return center, torch.cat((nbr - center.unsqueeze(2), nbr_color), dim=-1)


@torch.no_grad()
def official_encode(model, pc: torch.Tensor) -> torch.Tensor:
    """``PointcloudEncoder.forward`` of the official code, run on our module's weights (eval mode)."""
    pe = model.point_encoder
    center, features = official_group(pc[..., :3], pc[..., 3:], pe.cfg.num_group, pe.cfg.group_size)
    tokens = pe.encoder2trans(pe.encoder(features))
    cls_tokens = pe.cls_token.expand(tokens.size(0), -1, -1)
    cls_pos = pe.cls_pos.expand(tokens.size(0), -1, -1)
    x = torch.cat((cls_tokens, tokens), dim=1) + torch.cat((cls_pos, pe.pos_embed(center)), dim=1)
    x = pe.visual.pos_drop(x)
    for blk in pe.visual.blocks:
        x = blk(x)
    x = pe.visual.norm(x[:, 0, :])
    x = pe.visual.fc_norm(x)
    return pe.trans2embed(x)
