"""Checkpoints: our safetensors format, the official release layout, 2D initialisation (docs/method.md §4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import random_cloud
from official_reference import official_encode
from safetensors.torch import save_file

import uni3d
from uni3d.checkpoint import infer_official_config


def embed(model: uni3d.Uni3D, pc: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval().encode_pc(pc)


def test_our_format_round_trips(tmp_path: Path) -> None:
    model = uni3d.create_model("nano", embed_dim=32)
    folder = uni3d.save_checkpoint(model, tmp_path / "ckpt", meta={"teacher": "minilm", "step": 7})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = uni3d.load_checkpoint(folder)
    assert loaded.cfg == model.cfg
    pc = random_cloud(2, 512)
    assert torch.equal(embed(model, pc), embed(loaded, pc))
    assert uni3d.read_checkpoint_config(folder / "model.safetensors")["meta"] == {
        "teacher": "minilm",
        "step": 7,
    }
    # Training-only fields may be overridden at load time; shapes may not change.
    assert uni3d.load_checkpoint(folder, patch_dropout=0.0).cfg.patch_dropout == 0.0


def write_official_file(model: uni3d.Uni3D, path: Path) -> Path:
    """An official release file as the official training wrote it: {'module': fp16 state dict}."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"module": state}, path)
    return path


def test_official_file_loads_strictly_and_matches_the_official_forward(tmp_path: Path) -> None:
    source = uni3d.create_model("tiny")
    path = write_official_file(source, tmp_path / "model.pt")
    loaded = uni3d.load_checkpoint(path)
    assert loaded.cfg.timm_model == "eva02_tiny_patch14_224" and loaded.embed_dim == 1024
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # The fp16 weights arrive exactly (fp16 -> fp32 is exact).
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, source.state_dict()[key].half().to(value.dtype)), key
    pc = random_cloud(1, 1024, seed=11)
    assert torch.allclose(embed(loaded, pc), official_encode(loaded, pc), atol=1e-5, rtol=1e-4)


def test_export_official_round_trips(tmp_path: Path) -> None:
    model = uni3d.create_model("tiny", embed_dim=512)
    path = uni3d.export_official(model, tmp_path / "out" / "model.pt")
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["module"]
    assert raw["module"]["point_encoder.cls_pos"].dtype == torch.float16
    assert "logit_scale" in raw["module"] and "point_encoder.visual.fc_norm.weight" in raw["module"]
    loaded = uni3d.load_checkpoint(path)
    assert loaded.embed_dim == 512
    assert torch.equal(loaded.point_encoder.cls_pos, model.point_encoder.cls_pos.half().float())


def test_official_preset_is_inferred_from_shapes() -> None:
    for name in ("small", "large", "giant"):
        with torch.device("meta"):
            state = uni3d.create_model(name).state_dict()
        assert infer_official_config(state).timm_model == uni3d.PRESETS[name].timm_model


def test_mismatched_checkpoint_lists_the_keys(tmp_path: Path) -> None:
    model = uni3d.create_model("tiny")
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    del state["point_encoder.encoder2trans.bias"]
    state["point_encoder.extra.weight"] = torch.zeros(3)
    state["point_encoder.pos_embed.0.weight"] = torch.zeros(128, 4)
    torch.save({"module": state}, tmp_path / "bad.pt")
    with pytest.raises(uni3d.CheckpointError) as err:
        uni3d.load_checkpoint(tmp_path / "bad.pt")
    text = str(err.value)
    assert "bad.pt" in text
    assert "missing (1): point_encoder.encoder2trans.bias" in text
    assert "unexpected (1): point_encoder.extra.weight" in text
    assert "point_encoder.pos_embed.0.weight: file (128, 4) vs model (128, 3)" in text


def test_official_file_with_wrong_depth_is_refused(tmp_path: Path) -> None:
    state = uni3d.create_model("tiny").state_dict()
    state = {k: v for k, v in state.items() if ".blocks.11." not in k}
    torch.save({"module": state}, tmp_path / "short.pt")
    with pytest.raises(uni3d.CheckpointError, match="12 blocks, but the file has 11"):
        uni3d.load_checkpoint(tmp_path / "short.pt")


class NotAllowed:  # an arbitrary pickled object: weights_only loading must refuse it
    pass


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(uni3d.CheckpointError, match="does not exist"):
        uni3d.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(uni3d.CheckpointError, match="junk.pt: not a readable torch checkpoint"):
        uni3d.load_checkpoint(tmp_path / "junk.pt")
    torch.save({"module": {"x": NotAllowed()}}, tmp_path / "code.pt")
    with pytest.raises(uni3d.CheckpointError, match="code.pt: not a readable torch checkpoint"):
        uni3d.load_checkpoint(tmp_path / "code.pt")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(uni3d.CheckpointError, match="not an official Uni3D checkpoint"):
        uni3d.load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "plain").mkdir()
    with pytest.raises(uni3d.CheckpointError, match="no config.json"):
        uni3d.load_checkpoint(tmp_path / "plain")
    (tmp_path / "plain" / "config.json").write_text("{not json")
    with pytest.raises(uni3d.CheckpointError, match="config.json: not valid JSON"):
        uni3d.load_checkpoint(tmp_path / "plain")
    folder = uni3d.save_checkpoint(uni3d.create_model("nano"), tmp_path / "cut")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(uni3d.CheckpointError, match="model.safetensors: not a readable safetensors file"):
        uni3d.load_checkpoint(folder)


def test_config_with_unknown_field_is_refused(tmp_path: Path) -> None:
    folder = uni3d.save_checkpoint(uni3d.create_model("nano"), tmp_path / "c")
    config = json.loads((folder / "config.json").read_text())
    config["encoder"]["num_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(uni3d.CheckpointError, match=r"unknown EncoderConfig fields: \['num_layers'\]"):
        uni3d.load_checkpoint(folder)


def test_a_checkpoint_from_before_pointnet_width_loads_at_the_official_width(tmp_path: Path) -> None:
    """Checkpoints written before ``pointnet_width`` existed (CPU presets then had the official mini-PointNet)."""
    model = uni3d.create_model("nano", embed_dim=32, pointnet_width=128, encoder_dim=512)
    folder = uni3d.save_checkpoint(model, tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["encoder"]["pointnet_width"]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = uni3d.load_checkpoint(folder)
    assert loaded.cfg.pointnet_width == 128 and loaded.cfg == model.cfg
    pc = random_cloud(2, 512)
    assert torch.equal(embed(model, pc), embed(loaded, pc))


def nano_vit(width: int = 64) -> torch.nn.Module:
    return timm.create_model("eva02_tiny_patch14_224", pretrained=False, embed_dim=width, depth=2, num_heads=2)


def test_2d_initialisation_loads_the_blocks(tmp_path: Path) -> None:
    vit = nano_vit()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    model = uni3d.create_model("nano", pretrained_2d=tmp_path / "vit.safetensors")
    ours = model.point_encoder.visual.state_dict()
    for key in (
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.fc2.weight",
        "fc_norm.weight",
        "patch_embed.proj.weight",
    ):
        assert torch.equal(ours[key], vit.state_dict()[key]), key
    # A .pth file saved by torch works as well.
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    again = uni3d.create_model("nano", pretrained_2d=tmp_path / "vit.pth")
    assert torch.equal(again.point_encoder.visual.blocks[1].norm1.weight, vit.blocks[1].norm1.weight)


def test_2d_checkpoint_of_another_width_lists_what_does_not_fit(tmp_path: Path) -> None:
    torch.save(nano_vit(width=96).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError) as err:
        uni3d.create_model("nano", pretrained_2d=tmp_path / "wide.pth")
    text = str(err.value)
    assert "wide.pth does not fit eva02_tiny_patch14_224 (width 64, depth 2)" in text
    assert "blocks.0.attn.qkv.weight: file (288, 96) vs model (192, 64)" in text


@pytest.mark.parametrize("preset", ["nano", "tiny"])
def test_a_loaded_model_has_the_saved_tensors_and_the_computed_buffers(
    tmp_path: Path, preset: str, monkeypatch
) -> None:
    # the load builds the model without its random init (meta device): every parameter and stored buffer comes from
    # the file, the buffers checkpoints leave out (RoPE bands, EVA's zero key bias) are recomputed as built, and
    # the frozen 2D-only parameters stay frozen
    import timm.models.eva

    saved = uni3d.create_model(preset, embed_dim=64)
    folder = uni3d.save_checkpoint(saved, tmp_path / "c")
    stored = set(saved.state_dict())
    computed = [name for name, _ in saved.named_buffers() if name not in stored]
    assert any(".rope." in n for n in computed) and any(n.endswith("attn.k_bias") for n in computed)
    for build in ("meta", "ordinary"):  # ordinary: a computed buffer whose module cannot recompute it
        if build == "ordinary":
            monkeypatch.delattr(timm.models.eva.EvaAttention, "init_non_persistent_buffers")
        loaded = uni3d.load_checkpoint(folder)
        for kind in ("named_parameters", "named_buffers"):
            want, got = dict(getattr(saved, kind)()), dict(getattr(loaded, kind)())
            assert want.keys() == got.keys()
            for name, tensor in want.items():
                assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), (build, name)
        assert {n: p.requires_grad for n, p in loaded.named_parameters()} == {
            n: p.requires_grad for n, p in saved.named_parameters()
        }


def test_the_tour_shows_the_official_counts_and_both_round_trips(capsys) -> None:
    # `make tour` (uni3d.demo): what the README's first look at the library prints
    from uni3d.demo import main

    main()
    out = capsys.readouterr().out
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.split()[:1] and line.split()[0] in uni3d.PRESETS
    }
    assert rows.keys() == uni3d.PRESETS.keys()
    for name, count in uni3d.OFFICIAL_PARAM_COUNTS.items():
        assert rows[name][-2:] == [f"{count:,}", f"{count:,}"], rows[name]
    assert "ours -> identical embeddings: True" in out and "-> preset 'tiny' (eva02_tiny_patch14_224)" in out
