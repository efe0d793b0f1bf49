"""open_clip models for the teachers: architectures (the tiny test ones included), pretrained tags resolved to
local files, and a text tower loaded from a checkpoint without ever building the image tower.

``load_text_tower`` builds the model on the meta device and materialises only the text tower's tensors from the
file (memory-mapped, so the ~20 GB image tower of EVA02-E-14-plus is never read). open_clip is imported when a
function here runs, never at import.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

TEACHERS_EXTRA = "pip install 'uni3d-ray[teachers]'"

# Small architectures (name -> open_clip base config + create_model overrides) so that the image path runs
# in milliseconds on a CPU. "-ct" uses the custom-text layout (``model.text``) of EVA02-E-14-plus.
_TINY_TOWERS: dict[str, Any] = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=224, layers=2, width=64, head_width=32, patch_size=32),
    text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
)
TINY_ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny-ViT-32": ("ViT-S-32-alt", _TINY_TOWERS),
    "tiny-ViT-32-ct": ("ViT-S-32-alt", {**_TINY_TOWERS, "force_custom_text": True}),
}


def import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(f"OpenCLIP teachers need open_clip_torch: {TEACHERS_EXTRA}") from e
    return open_clip


def resolve_arch(open_clip: Any, arch: str) -> tuple[str, dict[str, Any], int]:
    """``(open_clip base name, create_model overrides, embed_dim)`` of an architecture name."""
    if arch in TINY_ARCHS:
        base, overrides = TINY_ARCHS[arch]
        return base, dict(overrides), int(overrides["embed_dim"])
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}: see open_clip.list_models() or {list(TINY_ARCHS)}")
    return arch, {}, int(cfg["embed_dim"])


def resolve_tag(open_clip: Any, arch: str, tag: str) -> tuple[Path, dict[str, Any]]:
    """Local file of a pretrained tag (hub cache, or a download if the hub is reachable) and its config."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise ValueError(
            f"unknown open_clip pretrained tag {tag!r} for {arch!r} (known: "
            f"{open_clip.list_pretrained_tags_by_model(arch)}); for weights on disk use 'openclip:{arch}@<path>'"
        )
    try:
        path = open_clip.download_pretrained(cfg, prefer_hf_hub=True)
    except Exception as e:  # offline hub, no cache, no network: all end here
        path, reason = "", f"{type(e).__name__}: {e}"
    else:
        reason = "no file returned"
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"weights of openclip:{arch}/{tag} are not on this machine and could not be fetched ({reason}). "
            f"Download them (hub: {cfg.get('hf_hub') or cfg.get('url')}) and pass a local checkpoint path: "
            f"'openclip:{arch}@/path/to/open_clip_pytorch_model.bin' (TeacherConfig.checkpoint)."
        )
    return Path(path), cfg


def read_state_dict(path: Path, keep: Callable[[str], bool]) -> dict[str, Tensor]:
    """The tensors of a checkpoint file whose names pass ``keep``, reading (mapping) only those."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k.removeprefix("module."): f.get_tensor(k) for k in f.keys() if keep(k.removeprefix("module."))}
    # Memory-map zip checkpoints so that the image tower's bytes are never read; legacy files cannot be.
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v.clone() for k, v in state.items() if keep(k)}


def load_text_tower(open_clip: Any, base: str, build_kw: dict[str, Any], path: Path, device: str) -> nn.Module:
    """An open_clip model whose text tower is loaded from ``path`` and whose image tower never exists."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = open_clip.create_model(base, pretrained=None, device="meta", **build_kw)
    model.visual = None
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = read_state_dict(path, keep=lambda k: not k.startswith("visual."))
    if hasattr(model, "text"):  # custom-text layout; checkpoints may use the flat CLIP one
        state = open_clip.model.convert_to_custom_text_state_dict(state)
    for k in ("logit_scale", "logit_bias"):  # scalar vs 1-element, as open_clip.load_checkpoint allows
        if k in state and k in expected:
            state[k] = state[k].reshape(expected[k])
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the text tower of open_clip {base!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)"
        )
    model.load_state_dict(state, assign=True)  # shape mismatches raise here
    for module in model.modules():  # non-persistent causal masks are not in the file: rebuild them
        mask = module._buffers.get("attn_mask")
        if mask is not None and mask.is_meta:
            n = mask.shape[-1]
            module.attn_mask = torch.full((n, n), float("-inf")).triu_(1)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"text-only load left tensors unmaterialised: {left[:5]}")
    model.to(device=device, dtype=torch.float32)
    if build_kw["precision"] in ("fp16", "bf16"):  # open_clip's own mixed precision for its native towers
        dtype = torch.float16 if build_kw["precision"] == "fp16" else torch.bfloat16
        open_clip.convert_weights_to_lp(model, dtype=dtype)
    return model
