"""The Uni3D point encoder: tokenizer + timm EVA blocks + projection (docs/method.md §2–3).

``Uni3D`` mirrors the official module tree (``logit_scale``, ``point_encoder.encoder``,
``point_encoder.visual`` = a whole timm EVA model, …) so official checkpoints load strictly. Any timm
``VisionTransformer`` works as ``visual`` too (``EncoderConfig.timm_model``, e.g. a DINOv2 or CLIP ViT).
The ViT's 2D-only tensors (patch embed, 2D pos embed, ViT cls token, head) exist for that layout
but are unused, so they are frozen: every trainable parameter receives a gradient.
"""

from __future__ import annotations

import math

import timm
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from uni3d.presets import EncoderConfig
from uni3d.tokenizer import MiniPointNet, PatchDropout, check_point_cloud, gelu_mlp, group_points

# timm EVA / VisionTransformer tensors that only the 2D image path uses: the point path runs pos_drop,
# blocks, norm and fc_norm, as the official one does, so a CLIP ViT's norm_pre and a MAP head are unused too.
_UNUSED_2D_PREFIXES = (
    "patch_embed.",
    "head.",
    "pos_embed",
    "cls_token",
    "reg_token",
    "mask_token",
    "rope.",
    "norm_pre.",
    "attn_pool.",
)


def build_vit(cfg: EncoderConfig) -> nn.Module:
    """The timm ViT named by the config (an EVA for the presets), random weights; ``uni3d.init`` loads 2D ones."""
    vit = timm.create_model(cfg.timm_model, pretrained=False, drop_path_rate=cfg.drop_path_rate, **cfg.timm_kwargs)
    built = (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads)
    if built != (cfg.width, cfg.depth, cfg.num_heads):
        raise ValueError(
            f"timm model {cfg.timm_model!r} with {cfg.timm_kwargs} has (width, depth, heads)={built}, "
            f"but the config says {(cfg.width, cfg.depth, cfg.num_heads)}"
        )
    for name, param in vit.named_parameters():
        if name.startswith(_UNUSED_2D_PREFIXES):
            param.requires_grad_(False)
    return vit


class PointEncoder(nn.Module):
    """Point cloud ``(B, N, 6)`` -> unnormalised embedding ``(B, embed_dim)``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MiniPointNet(cfg.encoder_dim, cfg.pointnet_width)
        self.encoder2trans = nn.Linear(cfg.encoder_dim, cfg.width)
        self.trans2embed = nn.Linear(cfg.width, cfg.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, cfg.width))
        self.pos_embed = gelu_mlp(3, 128, cfg.width)
        self.patch_dropout = PatchDropout(cfg.patch_dropout)
        self.visual = build_vit(cfg)

    def tokenize(self, pc: Tensor) -> Tensor:
        """Point cloud -> tokens with positions added, CLS first: ``(B, 1 + G, D)``."""
        features, centres = group_points(pc, self.cfg.num_group, self.cfg.group_size)
        dtype = self.encoder2trans.weight.dtype  # grouping runs in fp32; the network in its own dtype
        tokens = self.encoder2trans(self.encoder(features.to(dtype)))  # (B, G, D)
        pos = self.pos_embed(centres.to(dtype))  # (B, G, D)
        batch = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)
        return tokens + pos

    def forward_features(self, pc: Tensor) -> Tensor:
        """Point cloud -> the ViT's output tokens ``(B, 1 + G', D)`` (G' < G under patch dropout)."""
        x = self.visual.pos_drop(self.patch_dropout(self.tokenize(pc)))
        for block in self.visual.blocks:  # called without RoPE, as the official model does
            if self.cfg.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def forward_head(self, tokens: Tensor) -> Tensor:
        """ViT tokens -> embedding: CLS token, ``norm`` (Identity here), ``fc_norm``, projection."""
        x = self.visual.fc_norm(self.visual.norm(tokens[:, 0]))
        return self.trans2embed(x)

    def forward(self, pc: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(pc))


class Uni3D(nn.Module):
    """The trainable Uni3D model: point encoder plus the contrastive loss's learned logit scale."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # 0-dim, as official
        self.point_encoder = PointEncoder(cfg)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def check_input(self, pc: object) -> None:
        check_point_cloud(pc, self.cfg.group_size, self.cfg.num_group)

    def forward_features(self, pc: Tensor) -> Tensor:
        self.check_input(pc)
        return self.point_encoder.forward_features(pc)

    def encode_pc(self, pc: Tensor) -> Tensor:
        """``(B, N, 6)`` float xyz+rgb -> ``(B, embed_dim)`` unnormalised embedding."""
        self.check_input(pc)
        return self.point_encoder(pc)

    def forward(self, pc: Tensor) -> Tensor:
        return self.encode_pc(pc)
