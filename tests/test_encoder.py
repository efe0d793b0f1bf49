"""The encoder over presets: official parameter counts, shapes, gradients, parity, bad inputs (docs/method.md §2–3)."""

from __future__ import annotations

import pytest
import torch
from conftest import random_cloud
from official_reference import official_encode

import uni3d
from uni3d.presets import OFFICIAL_PARAM_COUNTS, PRESETS

CPU_PRESETS = ["nano-s", "nano", "nano-l", "micro"]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(OFFICIAL_PARAM_COUNTS))
def test_official_presets_have_the_official_parameter_count(name: str) -> None:
    with torch.device("meta"):
        model = uni3d.create_model(name)
    assert count(model) == OFFICIAL_PARAM_COUNTS[name]
    assert model.embed_dim == 1024


def test_embed_dim_resizes_only_the_projection() -> None:
    with torch.device("meta"):
        model = uni3d.create_model("base", embed_dim=384)
    assert model.point_encoder.trans2embed.weight.shape == (384, 768)
    assert count(model) == OFFICIAL_PARAM_COUNTS["base"] - 1024 * 769 + 384 * 769


def test_preset_table_matches_timm_models() -> None:
    expected = {
        "tiny": (192, 12, 3),
        "small": (384, 12, 6),
        "base": (768, 12, 12),
        "large": (1024, 24, 16),
        "giant": (1408, 40, 16),
    }
    for name, dims in expected.items():
        cfg = PRESETS[name]
        assert (cfg.width, cfg.depth, cfg.num_heads) == dims
        assert (cfg.num_group, cfg.group_size, cfg.encoder_dim, cfg.num_points) == (512, 64, 512, 10_000)


@pytest.mark.parametrize("name", [*OFFICIAL_PARAM_COUNTS, *CPU_PRESETS])
def test_mini_pointnet_widths_official_and_a_quarter_for_the_cpu_presets(name: str) -> None:
    with torch.device("meta"):
        net = uni3d.create_model(name).point_encoder.encoder
    c, out = (128, 512) if name in OFFICIAL_PARAM_COUNTS else (32, 128)  # docs/method.md §2, §9
    convs = [net.first_conv[0], net.first_conv[3], net.second_conv[0], net.second_conv[3]]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(6, c), (c, 2 * c), (4 * c, 4 * c), (4 * c, out)]
    assert (PRESETS[name].pointnet_width, PRESETS[name].encoder_dim) == (c, out)


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_preset_forward_backward(name: str) -> None:
    model = uni3d.create_model(name, embed_dim=48).train()
    cfg = model.cfg
    pc = random_cloud(3, cfg.num_points, seed=5)
    emb = model.encode_pc(pc)
    assert emb.shape == (3, 48) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    (emb.square().sum() + model.logit_scale).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    no_grad = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    zero_grad = [n for n, p in trainable.items() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert no_grad == [] and zero_grad == []


def test_only_the_unused_2d_tensors_are_frozen() -> None:
    model = uni3d.create_model("nano")
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    # eva02_tiny_patch14_224 is timm's MIM model: no classifier head.
    assert frozen == [
        "point_encoder.visual.cls_token",
        "point_encoder.visual.patch_embed.proj.bias",
        "point_encoder.visual.patch_embed.proj.weight",
        "point_encoder.visual.pos_embed",
    ]
    with torch.device("meta"):
        base = uni3d.create_model("base")
    assert "point_encoder.visual.head.weight" in {n for n, p in base.named_parameters() if not p.requires_grad}


def test_forward_features_shape_with_and_without_patch_dropout() -> None:
    model = uni3d.create_model("nano")
    pc = random_cloud(2, 512)
    model.train()
    assert model.forward_features(pc).shape == (2, 1 + 16, 64)  # 32 groups, half dropped
    model.eval()
    assert model.forward_features(pc).shape == (2, 1 + 32, 64)


def test_eval_is_deterministic_and_batch_independent() -> None:
    model = uni3d.create_model("nano").eval()
    pc = random_cloud(3, 512, seed=6)
    with torch.no_grad():
        full = model.encode_pc(pc)
        single = model.encode_pc(pc[1:2])
    assert torch.allclose(full[1], single[0], atol=1e-5)


@pytest.mark.parametrize("name,num_points", [("nano", 512), ("tiny", 1024)])
def test_matches_the_official_forward(name: str, num_points: int) -> None:
    model = uni3d.create_model(name).eval()
    pc = random_cloud(2, num_points, seed=7)
    pc[0, 10:30, :3] *= 0.01  # points in the FPS skip radius
    with torch.no_grad():
        ours = model.encode_pc(pc)
    theirs = official_encode(model, pc)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4), (ours - theirs).abs().max()


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    pc = random_cloud(2, 512, seed=8)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = uni3d.create_model("nano", grad_checkpointing=ckpt, drop_path_rate=0.0, patch_dropout=0.0)
        model.train()
        model.encode_pc(pc).sum().backward()
        grads.append(model.point_encoder.visual.blocks[0].attn.proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize(
    "pc,match",
    [
        (torch.rand(2, 512, 3), r"shape \(B, N, 6\)"),
        (torch.rand(512, 6), r"shape \(B, N, 6\)"),
        (torch.randint(0, 2, (2, 512, 6)), "floating point"),
        (torch.rand(2, 20, 6), "fewer than the encoder needs"),
        ([[0.0] * 6] * 512, "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(pc: object, match: str) -> None:
    model = uni3d.create_model("nano")
    with pytest.raises(ValueError, match=match):
        model.encode_pc(pc)


def test_nan_points_name_the_batch_row() -> None:
    model = uni3d.create_model("nano")
    pc = random_cloud(3, 512)
    pc[2, 7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf .* rows \[2\]"):
        model.encode_pc(pc)


def test_unknown_preset_and_bad_config() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        uni3d.create_model("huge")
    with pytest.raises(ValueError, match="patch_dropout"):
        uni3d.create_model("nano", patch_dropout=1.5)
    with pytest.raises(ValueError, match="num_points"):
        uni3d.create_model("nano", num_points=8)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_runs_in_bf16() -> None:
    model = uni3d.create_model("tiny").eval()
    pc = random_cloud(2, 2048, seed=9)
    with torch.no_grad():
        cpu = model.encode_pc(pc)
        model.cuda()
        gpu = model.encode_pc(pc.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model.encode_pc(pc.cuda()).float().cpu()
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3)
    cos = torch.nn.functional.cosine_similarity(cpu, bf16, dim=-1)
    assert bool((cos > 0.99).all()), cos
