"""AdamW parameter groups with layer-wise lr decay, and the warmup + cosine lr schedule.

Follows docs/method.md §6 (Uni3D, arXiv 2310.06773, the official pretraining recipe): AdamW
(0.9, 0.999, eps 1e-8), lr 1e-3, weight decay 0.1; layer-wise lr decay 0.95 on the ViT with
scale = decay^(depth + 1 - layer_id), where layer 0 is the ViT's patch embed / pos embed / cls token,
layer i + 1 is block i and depth + 1 is the rest of the ViT; everything outside the ViT (the point
tokenizer, its position MLP, the projections, logit_scale) has scale 1. Linear warmup, then cosine
to ``min_lr``.

No weight decay, as the official code (docs/method.md §6: "none on biases and 1-D params"): parameters with
ndim <= 1 (norms, biases, q/v biases, the 0-d ``logit_scale``) and names ending in ``.bias``. Everything
else is decayed, the ``(1, 1, D)`` tokens ``cls_token`` and ``cls_pos`` and the ViT's ``pos_embed``
included: the official groups exempt nothing by name (its model defines no ``no_weight_decay`` list).
``OptimConfig.no_decay_names`` exempts more by their last name component when asked (timm's habit of
exempting ``cls_token`` / ``pos_embed``); it is empty by default.

The schedule is indexed by the optimiser step s = 0, 1, ...: the first step already trains at
lr / warmup_steps (not 0), step warmup_steps - 1 at lr, then cosine to ``min_lr`` at total_steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

VIT_PREFIX = "point_encoder.visual."
# ViT parameters that sit before block 0 (layer 0).
_EMBED_NAMES = ("cls_token", "pos_embed", "patch_embed", "mask_token", "reg_token")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float = 0.95
    warmup_steps: int = 10_000
    total_steps: int = 100_000  # placeholder: callers set epochs x steps per epoch
    min_lr: float = 0.0
    no_decay_names: tuple[str, ...] = ()  # extra exemptions by last name component; none officially

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")


def layer_id(name: str, depth: int, vit_prefix: str = VIT_PREFIX) -> int | None:
    """Layer index of a parameter for lr decay: 0 embeddings, i + 1 block i, depth + 1 the rest.

    Returns None for parameters outside the ViT (names not starting with ``vit_prefix``).
    """
    if not name.startswith(vit_prefix):
        return None
    rest = name[len(vit_prefix) :]
    head = rest.split(".", 1)[0]
    if head in _EMBED_NAMES:
        return 0
    if head == "blocks":
        parts = rest.split(".")
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"name {name!r} has no block index after 'blocks.'")
        block = int(parts[1])
        if block >= depth:
            raise ValueError(f"name {name!r} is block {block}, but depth is {depth}")
        return block + 1
    return depth + 1


def _no_decay(name: str, param: nn.Parameter, cfg: OptimConfig) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in cfg.no_decay_names


def param_groups(model: nn.Module, cfg: OptimConfig, depth: int, vit_prefix: str = VIT_PREFIX) -> list[dict]:
    """Group the trainable parameters by (layer id, decay / no decay).

    Each group holds ``params``, ``names``, ``weight_decay``, ``lr_scale`` and ``lr`` (= cfg.lr x
    lr_scale). Parameters outside the ViT share the groups of layer depth + 1 (scale 1), so groups
    are effectively keyed by (lr scale, decay). Frozen parameters (requires_grad False) are skipped.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth, vit_prefix)
        lid = depth + 1 if lid is None else lid
        decay = not _no_decay(name, param, cfg)
        if (lid, decay) not in groups:
            scale = cfg.layer_decay ** (depth + 1 - lid)
            groups[(lid, decay)] = {
                "params": [],
                "names": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_scale": scale,
                "lr": cfg.lr * scale,
                "group_name": f"layer{lid}_{'decay' if decay else 'no_decay'}",
            }
        groups[(lid, decay)]["params"].append(param)
        groups[(lid, decay)]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimConfig, depth: int, vit_prefix: str = VIT_PREFIX) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the extra group keys (names, lr_scale, ...) are kept for logging."""
    groups = param_groups(model, cfg, depth, vit_prefix)
    if not groups:
        raise ValueError("model has no trainable parameters (all have requires_grad False)")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Base lr of optimiser step ``step`` (0-based): linear warmup lr·(step + 1)/warmup_steps, so step 0
    trains at lr/warmup_steps and step warmup_steps - 1 at lr; then cosine to min_lr at total_steps, then flat."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.total_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / (cfg.total_steps - cfg.warmup_steps)  # in [0, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig) -> float:
    """Set every group's lr to lr_at(step) x its lr_scale (1 if absent); return the base lr."""
    base = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = base * group.get("lr_scale", 1.0)
    return base
