"""Tests of the optimiser groups (layer-wise lr decay, no-decay rules) and the lr schedule (docs/method.md §6)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from uni3d.optim import OptimConfig, build_optimizer, layer_id, lr_at, param_groups, set_lr

DEPTH = 3


class FakePointEncoder(nn.Module):
    """The parameter names of the real model: a timm EVA as `visual` plus the point-side modules."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = timm.create_model(
            "eva02_tiny_patch14_224", pretrained=False, embed_dim=32, depth=DEPTH, num_heads=2, num_classes=0
        )
        self.encoder = nn.Sequential(nn.Conv1d(6, 8, 1), nn.BatchNorm1d(8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 32))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, 32))
        self.pos_embed = nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 32))
        self.encoder2trans = nn.Linear(8, 32)
        self.trans2embed = nn.Linear(32, 16)
        # As the real model: the 2D patch embed is unused and frozen.
        self.visual.patch_embed.requires_grad_(False)


class FakeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.point_encoder = FakePointEncoder()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


@pytest.fixture(scope="module")
def groups() -> list[dict]:
    return param_groups(FakeModel(), OptimConfig(), depth=DEPTH)


def _group_of(groups: list[dict], name: str) -> dict:
    (group,) = [g for g in groups if name in g["names"]]
    return group


@pytest.mark.parametrize(
    ("name", "scale"),
    [
        ("point_encoder.visual.blocks.0.attn.qkv.weight", 0.95**3),
        ("point_encoder.visual.blocks.2.mlp.fc2.weight", 0.95**1),
        ("point_encoder.visual.cls_token", 0.95**4),
        ("point_encoder.visual.pos_embed", 0.95**4),
        ("point_encoder.visual.fc_norm.weight", 1.0),
        ("point_encoder.cls_token", 1.0),
        ("point_encoder.pos_embed.0.weight", 1.0),
        ("point_encoder.encoder.0.weight", 1.0),
        ("point_encoder.trans2embed.weight", 1.0),
        ("logit_scale", 1.0),
    ],
)
def test_layer_decay_scale(groups: list[dict], name: str, scale: float) -> None:
    group = _group_of(groups, name)
    assert group["lr_scale"] == pytest.approx(scale)
    assert group["lr"] == pytest.approx(1e-3 * scale)


@pytest.mark.parametrize(
    ("name", "decayed"),
    [
        ("point_encoder.visual.blocks.1.attn.qkv.weight", True),
        ("point_encoder.visual.blocks.1.attn.proj.bias", False),
        ("point_encoder.visual.blocks.1.attn.q_bias", False),  # 1-D, name not ending in .bias
        ("point_encoder.visual.blocks.1.norm1.weight", False),
        # (1, 1, D) / (1, N, D) tokens are not 1-D: decayed, as the official groups (docs/method.md §6) do
        ("point_encoder.visual.cls_token", True),
        ("point_encoder.visual.pos_embed", True),
        ("point_encoder.cls_token", True),
        ("point_encoder.cls_pos", True),
        ("point_encoder.pos_embed.0.weight", True),  # a Linear weight of the position MLP
        ("point_encoder.encoder.0.weight", True),
        ("point_encoder.encoder.1.weight", False),  # BatchNorm
        ("logit_scale", False),  # 0-d
    ],
)
def test_weight_decay_rules(groups: list[dict], name: str, decayed: bool) -> None:
    assert _group_of(groups, name)["weight_decay"] == (0.1 if decayed else 0.0)


def test_each_trainable_param_in_exactly_one_group() -> None:
    model = FakeModel()
    groups = param_groups(model, OptimConfig(), depth=DEPTH)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert len(grouped) == len(set(grouped)) == len(trainable)
    assert set(grouped) == trainable
    assert frozen and not frozen & set(grouped)  # patch_embed is frozen and absent
    names = [n for g in groups for n in g["names"]]
    assert "point_encoder.visual.patch_embed.proj.weight" not in names
    assert all(len(g["names"]) == len(g["params"]) for g in groups)
    # One group per (layer id, decay) for layer ids 0..depth+1, less layer 0's no-decay group: with
    # patch_embed frozen, layer 0 holds only the (decayed) tokens.
    assert len(groups) == 2 * (DEPTH + 2) - 1
    assert not [g for g in groups if g["group_name"] == "layer0_no_decay"]


def test_layer_id() -> None:
    assert layer_id("point_encoder.visual.patch_embed.proj.weight", 12) == 0
    assert layer_id("point_encoder.visual.blocks.11.norm1.weight", 12) == 12
    assert layer_id("point_encoder.visual.norm.weight", 12) == 13
    assert layer_id("point_encoder.cls_token", 12) is None
    assert layer_id("vit.blocks.0.x", 12, vit_prefix="vit.") == 1
    with pytest.raises(ValueError, match="depth"):
        layer_id("point_encoder.visual.blocks.12.norm1.weight", 12)


def test_build_optimizer_keeps_group_settings() -> None:
    model = FakeModel()
    cfg = OptimConfig(warmup_steps=10, total_steps=100)
    opt = build_optimizer(model, cfg, depth=DEPTH)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-8 for g in opt.param_groups)
    assert base_and_scaled(opt, 4, cfg) == (pytest.approx(5e-4), pytest.approx(5e-4 * 0.95**4))
    # A step runs with the extra group keys present.
    model.logit_scale.grad = torch.ones(())
    before = model.logit_scale.item()
    opt.step()
    assert model.logit_scale.item() < before


def base_and_scaled(opt: torch.optim.Optimizer, step: int, cfg: OptimConfig) -> tuple[float, float]:
    base = set_lr(opt, step, cfg)
    layer0 = [g for g in opt.param_groups if "point_encoder.visual.cls_token" in g["names"]][0]
    return base, layer0["lr"]


def test_extra_no_decay_names() -> None:
    groups = param_groups(FakeModel(), OptimConfig(no_decay_names=("cls_token", "cls_pos")), depth=DEPTH)
    assert _group_of(groups, "point_encoder.cls_pos")["weight_decay"] == 0.0
    assert _group_of(groups, "point_encoder.visual.pos_embed")["weight_decay"] == 0.1


def test_schedule_values() -> None:
    cfg = OptimConfig(lr=1e-3, warmup_steps=100, total_steps=1100, min_lr=1e-5)
    assert lr_at(0, cfg) == pytest.approx(1e-5)  # the first step trains at lr / warmup, not 0
    assert lr_at(49, cfg) == pytest.approx(5e-4)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(1e-3)
    # Half-way through the cosine: min + (max - min) / 2.
    assert lr_at(600, cfg) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    # A quarter through: cos(pi/4) = sqrt(2)/2.
    assert lr_at(350, cfg) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.sqrt(2) / 2))
    assert lr_at(1100, cfg) == pytest.approx(1e-5)
    assert lr_at(5000, cfg) == pytest.approx(1e-5)
    assert lr_at(1099, cfg) > 1e-5


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"warmup_steps": 200, "total_steps": 100}, "warmup_steps"),
        ({"lr": -1e-3}, "lr"),
        ({"min_lr": 1.0}, "min_lr"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
    ],
)
def test_bad_config_raises(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        OptimConfig(**kwargs)


def test_bad_step_raises() -> None:
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, OptimConfig())
