"""Initialisation before pretraining: scratch, 2D timm checkpoints, other runs (paper §4 ablation)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from conftest import random_cloud
from safetensors.torch import save_file

import uni3d
from uni3d import InitSpec, apply_init, check_init, init_config, parse_init

NANO = uni3d.get_preset("nano", embed_dim=32)


def timm_vit(preset: str, arch: str | None = None) -> torch.nn.Module:
    """A randomly initialised 2D ViT shaped like ``preset``'s (built as ``arch`` if given)."""
    cfg = uni3d.PRESETS[preset]
    return timm.create_model(arch or cfg.timm_model, pretrained=False, **cfg.timm_kwargs)


def write_safetensors(vit: torch.nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return path


def build(spec: InitSpec, cfg: uni3d.EncoderConfig = NANO) -> uni3d.Uni3D:
    model = uni3d.create_model(init_config(spec, cfg))
    apply_init(model, spec)
    return model


def test_parse_init_forms_and_a_bad_one() -> None:
    assert parse_init("scratch") == InitSpec("scratch")
    assert parse_init("timm:/m/eva.safetensors") == InitSpec("timm", "/m/eva.safetensors")
    assert parse_init("timm:vit_small_patch14_dinov2@/m/d.pth") == InitSpec(
        "timm", "/m/d.pth", "vit_small_patch14_dinov2"
    )
    assert parse_init("timm:/m/a@b.pth") == InitSpec("timm", "/m/a@b.pth")  # an '@' inside a path
    assert parse_init("run:runs/short/final") == InitSpec("run", "runs/short/final")
    assert str(parse_init("timm:vit_x@f.pth")) == "timm:vit_x@f.pth"
    for bad in ("dino", "", "timm:", "run:", "timm:vit_x@", "scratch:1"):
        with pytest.raises(ValueError) as err:
            parse_init(bad)
        assert repr(bad) in str(err.value) and "timm:<arch>@<file>" in str(err.value)


def test_a_timm_file_loads_into_the_presets_vit(tmp_path: Path) -> None:
    vit = timm_vit("nano")
    files = [write_safetensors(vit, tmp_path / "vit.safetensors"), tmp_path / "vit.pth"]
    torch.save({"model": vit.state_dict(), "epoch": 3}, files[1])
    for path in files:
        spec = parse_init(f"timm:{path}")
        assert "32 tensors fit the ViT of preset 'nano'" in check_init(spec, NANO)
        torch.manual_seed(1)
        model = uni3d.create_model(NANO)
        lines = apply_init(model, spec)
        assert lines[0].endswith("loaded 32 tensors into the ViT of preset 'nano' " + _sizes(NANO))
        ours = model.point_encoder.visual.state_dict()
        for key, value in vit.state_dict().items():
            assert torch.equal(ours[key], value), (path.name, key)


def _sizes(cfg: uni3d.EncoderConfig) -> str:
    w, d, h, e = cfg.width, cfg.depth, cfg.num_heads, cfg.embed_dim
    return f"({cfg.timm_model}, width {w}, depth {d}, heads {h}, embed_dim {e})"


def test_2d_only_tensors_that_do_not_fit_are_skipped_and_listed(tmp_path: Path) -> None:
    state = timm_vit("nano").state_dict()
    del state["pos_embed"]
    state["patch_embed.proj.weight"] = torch.zeros(64, 3, 16, 16)  # another patch size: resampled by timm
    state["head.weight"] = torch.zeros(10, 64)
    torch.save(state, tmp_path / "vit.pth")
    model = uni3d.create_model(NANO)
    before = model.point_encoder.visual.pos_embed.detach().clone()
    lines = apply_init(model, parse_init(f"timm:{tmp_path / 'vit.pth'}"))
    assert lines[1] == "2D-only tensors skipped (2): head.weight, pos_embed"
    assert torch.equal(model.point_encoder.visual.pos_embed, before)
    assert torch.equal(model.point_encoder.visual.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])


def test_a_file_of_another_preset_is_refused_naming_the_preset_it_fits(tmp_path: Path) -> None:
    torch.save(timm_vit("micro").state_dict(), tmp_path / "micro.pth")
    spec = parse_init(f"timm:{tmp_path / 'micro.pth'}")
    for call in (lambda: check_init(spec, NANO), lambda: apply_init(uni3d.create_model(NANO), spec)):
        with pytest.raises(ValueError) as err:
            call()
        text = str(err.value)
        assert "micro.pth does not fit eva02_tiny_patch14_224 (width 64, depth 2) of preset 'nano'" in text
        assert "unexpected (26): blocks.2.attn.proj.bias" in text  # blocks 2 and 3: 13 tensors each
        assert "blocks.0.attn.qkv.weight: file (576, 192) vs model (192, 64)" in text
        assert re.search(r"the file's ViT \(width 192, depth 4\) fits preset .*'micro'$", text)


def test_a_file_of_no_preset_says_so(tmp_path: Path) -> None:
    wide = timm.create_model("eva02_tiny_patch14_224", pretrained=False, embed_dim=96, depth=2, num_heads=2)
    write_safetensors(wide, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError) as err:
        check_init(parse_init(f"timm:{tmp_path / 'wide.safetensors'}"), NANO)
    assert "mismatched (28): blocks.0.norm1.weight: file (96,) vs model (64,)" in str(err.value)
    assert str(err.value).endswith("the file's ViT (width 96, depth 2) fits no preset")


def test_a_file_of_another_architecture_asks_for_it(tmp_path: Path) -> None:
    torch.save(timm_vit("nano", "vit_small_patch14_dinov2").state_dict(), tmp_path / "dino.pth")
    with pytest.raises(ValueError) as err:
        check_init(parse_init(f"timm:{tmp_path / 'dino.pth'}"), NANO)
    assert "unexpected (8): blocks.0.attn.qkv.bias, blocks.0.ls1.gamma" in str(err.value)
    assert "name its timm architecture as timm:<arch>@" in str(err.value)


@pytest.mark.parametrize(
    "arch", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "vit_base_patch16_clip_224"]
)
def test_a_timm_vision_transformer_trains_as_the_vit(arch: str, tmp_path: Path) -> None:
    vit = timm_vit("nano", arch)
    path = write_safetensors(vit, tmp_path / "vit.safetensors")
    spec = parse_init(f"timm:{arch}@{path}")
    assert f"preset 'nano' ({arch}, width 64" in check_init(spec, NANO)
    model = build(spec).train()
    assert type(model.point_encoder.visual).__name__ == "VisionTransformer"
    for key, value in vit.state_dict().items():
        assert torch.equal(model.point_encoder.visual.state_dict()[key], value), key
    emb = model.encode_pc(random_cloud(3, NANO.num_points, seed=2))
    assert emb.shape == (3, 32) and torch.isfinite(emb).all()
    (emb.square().sum() + model.logit_scale).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0] == []
    frozen = {n.removeprefix("point_encoder.visual.") for n, p in model.named_parameters() if not p.requires_grad}
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight"} <= frozen
    assert ("norm_pre.weight" in frozen) == ("clip" in arch) and ("reg_token" in frozen) == ("reg4" in arch)
    # The saved config records the architecture: the checkpoint reloads as that ViT.
    folder = uni3d.save_checkpoint(model, tmp_path / "ckpt")
    assert uni3d.load_checkpoint(folder).cfg.timm_model == arch


def test_an_architecture_of_other_sizes_names_the_preset_that_fits(tmp_path: Path) -> None:
    path = write_safetensors(timm_vit("nano"), tmp_path / "vit.safetensors")
    tiny = uni3d.get_preset("tiny")  # no timm_kwargs: the architecture's own sizes
    with pytest.raises(ValueError, match=r"\(384, 12, 6\), but preset 'tiny' .* it fits preset 'small'"):
        check_init(parse_init(f"timm:vit_small_patch14_dinov2@{path}"), tiny)
    with pytest.raises(ValueError, match=r"\(512, 12, 8\), but preset 'tiny' .* it fits no preset"):
        init_config(parse_init(f"timm:vit_medium_patch16_gap_256@{path}"), tiny)
    with pytest.raises(ValueError, match="cannot build 'resnet18' as a ViT"):
        init_config(parse_init(f"timm:resnet18@{path}"), tiny)
    model = uni3d.create_model(NANO)
    with pytest.raises(ValueError, match="build the model with uni3d.init_config"):
        apply_init(model, parse_init(f"timm:vit_small_patch14_dinov2@{path}"))


def test_run_init_loads_a_checkpoint_strictly(tmp_path: Path) -> None:
    source = uni3d.create_model(NANO)
    folder = uni3d.save_checkpoint(source, tmp_path / "short" / "final")
    spec = parse_init(f"run:{folder}")
    count = len(source.state_dict())
    assert check_init(spec, NANO) == f"run:{folder}: {count} tensors of preset 'nano' {_sizes(NANO)}, loaded strictly"
    torch.manual_seed(1)
    model = build(spec)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # A run initialised from DINOv2 continues as DINOv2: the checkpoint's ViT architecture is used.
    dino = uni3d.create_model(NANO.replace(timm_model="vit_small_patch14_dinov2"))
    spec = parse_init(f"run:{uni3d.save_checkpoint(dino, tmp_path / 'dino')}")
    assert init_config(spec, NANO).timm_model == "vit_small_patch14_dinov2"
    loaded = build(spec).point_encoder.visual
    assert torch.equal(loaded.blocks[0].attn.qkv.weight, dino.point_encoder.visual.blocks[0].attn.qkv.weight)


def test_run_init_from_an_official_release_file(tmp_path: Path) -> None:
    tiny = uni3d.get_preset("tiny", embed_dim=32)
    source = uni3d.create_model(tiny)
    spec = parse_init(f"run:{uni3d.export_official(source, tmp_path / 'model.pt')}")
    assert "preset 'tiny'" in check_init(spec, tiny)
    model = build(spec, tiny)
    assert torch.equal(model.point_encoder.cls_pos, source.point_encoder.cls_pos.half().float())


def test_run_init_of_another_preset_or_teacher_is_refused(tmp_path: Path) -> None:
    micro = uni3d.save_checkpoint(uni3d.create_model("micro", embed_dim=32), tmp_path / "micro")
    with pytest.raises(ValueError) as err:
        check_init(parse_init(f"run:{micro}"), NANO)
    text = str(err.value)
    assert "the checkpoint is preset 'micro' (eva02_tiny_patch14_224, width 192, depth 4" in text
    assert "the model preset 'nano' (eva02_tiny_patch14_224, width 64, depth 2" in text
    assert "unexpected (26): point_encoder.visual.blocks.2." in text
    assert "point_encoder.cls_token: file (1, 1, 192) vs model (1, 1, 64)" in text
    other_teacher = uni3d.save_checkpoint(uni3d.create_model("nano", embed_dim=48), tmp_path / "e48")
    with pytest.raises(ValueError) as err:
        apply_init(uni3d.create_model(NANO), parse_init(f"run:{other_teacher}"))
    assert "embed_dim 48), the model preset 'nano'" in str(err.value)
    assert "  mismatched (2): point_encoder.trans2embed.weight: file (48, 64) vs model (32, 64)" in str(err.value)


def test_missing_and_unreadable_files_are_refused_naming_the_path(tmp_path: Path) -> None:
    for text in (f"timm:{tmp_path / 'nope.pth'}", f"run:{tmp_path / 'nope'}", f"timm:vit_x@{tmp_path / 'nope.pth'}"):
        with pytest.raises(ValueError, match=re.escape(f"init {text}: {tmp_path / 'nope'}") + ".* does not exist"):
            check_init(parse_init(text), NANO)
    with pytest.raises(ValueError, match="is a folder, not a weights file"):
        check_init(parse_init(f"timm:{tmp_path}"), NANO)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a readable weights file"):
        check_init(parse_init(f"timm:{tmp_path / 'junk.pth'}"), NANO)
    assert check_init(parse_init("scratch"), NANO) == "scratch: random weights"


def test_resolve_makes_the_path_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_init("run:runs/a/final").resolve() == InitSpec("run", str(tmp_path / "runs" / "a" / "final"))
    assert parse_init("scratch").resolve() == InitSpec("scratch")


def test_train_config_takes_init_and_refuses_bad_forms() -> None:
    from pipelines.train.config import RESUME_KEYS, TrainConfig

    assert TrainConfig(data="build").init == "scratch" and "init" in RESUME_KEYS
    with pytest.raises(ValueError, match="init 'dino' is not one of"):
        TrainConfig(data="build", init="dino")
