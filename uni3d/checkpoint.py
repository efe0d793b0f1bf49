"""Checkpoint I/O: our safetensors format and the official release layout.

- Ours: a folder with ``model.safetensors`` (fp32 weights) and ``config.json`` (the encoder
  config plus free-form metadata such as the teacher). Loading never unpickles code.
- Official (docs/method.md §4): ``model.pt`` = ``{'module': flat fp16 state dict}``; read with
  ``torch.load(weights_only=True)`` and loaded strictly into an fp32 model whose preset is
  inferred from the tensor shapes. ``export_official`` writes the same layout.

Initialising a model from a 2D ViT or another run is ``uni3d.init``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from uni3d.encoder import Uni3D
from uni3d.errors import CheckpointError
from uni3d.hub import hub_path, is_hub
from uni3d.presets import EncoderConfig, get_preset, preset_for_width

FORMAT_NAME = "uni3d-ray"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_BLOCK_RE = re.compile(r"point_encoder\.visual\.blocks\.(\d+)\.")


def save_checkpoint(model: Uni3D, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json``; returns the folder."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
        for k, v in model.state_dict().items()
    }
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT_NAME})
    os.replace(tmp, folder / WEIGHTS_FILE)
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "encoder": model.cfg.to_dict(),
        "meta": meta or {},
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def local_path(path: str | os.PathLike) -> Path:
    """A checkpoint's local path: itself, or for an ``hf-hub:`` name the file or folder in the hub's cache."""
    if is_hub(path):
        return hub_path(str(path))
    return Path(path)


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of one of our checkpoints (folder or its ``model.safetensors``; ``hf-hub:`` names too)."""
    path = local_path(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} next to the weights; is this a uni3d-ray checkpoint?")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err
    if config.get("format") != FORMAT_NAME or config.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format {config.get('format')!r} version {config.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}"
        )
    return config


def load_checkpoint(path: str | os.PathLike, **overrides: Any) -> Uni3D:
    """Load one of our checkpoints or an official release file; the preset is inferred.

    ``overrides`` change training-only config fields (e.g. ``patch_dropout=0.0``); shapes come
    from the file. ``path`` may name a file or folder on the Hugging Face Hub (``uni3d.hub``):
    ``hf-hub:BAAI/Uni3D/modelzoo/uni3d-g/model.pt``.
    """
    p = local_path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if p.is_dir() or p.suffix == ".safetensors":
        config = read_checkpoint_config(p)
        try:
            cfg = EncoderConfig.from_dict(config["encoder"])
        except (KeyError, TypeError, ValueError) as err:  # no encoder section, or fields this code does not know
            raise CheckpointError(f"{p}: its config.json has no usable 'encoder' section ({err})") from err
        cfg = cfg.replace(**overrides)
        weights = p / WEIGHTS_FILE if p.is_dir() else p
        try:
            state = load_file(str(weights))
        except Exception as err:  # missing, truncated or not safetensors: name the file
            raise CheckpointError(f"{weights}: not a readable safetensors file ({type(err).__name__}: {err})") from err
        source = str(p)
    else:
        state = _read_official(p)
        cfg = infer_official_config(state, source=str(p)).replace(**overrides)
        source = str(p)
    model = empty_model(cfg)
    load_state_dict_checked(model, state, source)
    return model


def empty_model(cfg: EncoderConfig) -> Uni3D:
    """``Uni3D(cfg)`` without its random initialisation, for a load that then overwrites every parameter.

    Built on the meta device and given memory; the buffers a module computes and checkpoints leave out (timm's
    non-persistent buffers: RoPE bands, EVA's zero key bias) are recomputed by the modules that own them, with
    timm's ``init_non_persistent_buffers``. The random initialisation was most of a load's time: for the ``large``
    preset 2.6 s with it, 0.5-0.6 s without (2 CPU threads, BENCHMARKS.md). A model with a computed buffer whose
    module cannot recompute it, or whose construction reads tensor values, is built the ordinary way."""
    try:
        with torch.device("meta"):
            model = Uni3D(cfg)
    except (NotImplementedError, RuntimeError):  # e.g. ``.item()`` of a meta tensor in some architecture's init
        return Uni3D(cfg)
    persistent = set(model.state_dict())
    modules = dict(model.named_modules())
    owners = {name.rpartition(".")[0] for name, _ in model.named_buffers() if name not in persistent}
    if not all(hasattr(modules[owner], "init_non_persistent_buffers") for owner in owners):
        return Uni3D(cfg)
    model.to_empty(device="cpu")
    for owner in sorted(owners):
        modules[owner].init_non_persistent_buffers()
    return model


def _read_official(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; name the file
        # torch's own message for a refused pickle is a paragraph that suggests weights_only=False: not here
        why = "" if isinstance(err, pickle.UnpicklingError) else ": " + str(err).strip().split("\n")[0][:200]
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint (torch.load of tensors only: {type(err).__name__}{why})"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        obj = obj["module"]
    if not isinstance(obj, dict) or "point_encoder.cls_token" not in obj:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: not an official Uni3D checkpoint (expected {{'module': state dict}} "
            f"with 'point_encoder.*' keys, found {keys})"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_official_config(state: dict[str, Tensor], source: str = "state dict") -> EncoderConfig:
    """The official preset matching the tensor shapes of an official state dict."""
    width = state["point_encoder.cls_token"].shape[-1]
    embed_dim = state["point_encoder.trans2embed.weight"].shape[0]
    encoder_dim = state["point_encoder.encoder2trans.weight"].shape[1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))), default=-1)
    try:
        name = preset_for_width(width)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from err
    pointnet_width = state["point_encoder.encoder.first_conv.0.weight"].shape[0]
    cfg = get_preset(name, embed_dim=embed_dim, encoder_dim=encoder_dim, pointnet_width=pointnet_width)
    if depth != cfg.depth:
        raise CheckpointError(
            f"{source}: width {width} means preset {name!r} with {cfg.depth} blocks, but the file has {depth}"
        )
    return cfg


def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Strict load that lists missing, unexpected and mis-shaped keys in one ``CheckpointError``."""
    missing, unexpected, mismatched = _key_diff(model.state_dict(), state)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}:\n"
            + _describe(missing=missing, unexpected=unexpected, mismatched=mismatched)
        )
    model.load_state_dict(state, strict=True)


def _key_diff(
    expected: dict[str, Tensor], state: dict[str, Tensor], skip: Callable[[str], bool] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """The missing, unexpected and mis-shaped keys of ``state`` against ``expected``; ``skip`` exempts keys."""
    keep = (lambda k: not skip(k)) if skip else (lambda k: True)
    missing = sorted(k for k in expected if k not in state and keep(k))
    unexpected = sorted(k for k in state if k not in expected and keep(k))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape and keep(k)
    ]
    return missing, unexpected, mismatched


def _describe(**groups: list[str]) -> str:
    lines = []
    for label, items in groups.items():
        if items:
            shown = ", ".join(items[:20]) + (f", … ({len(items) - 20} more)" if len(items) > 20 else "")
            lines.append(f"  {label} ({len(items)}): {shown}")
    return "\n".join(lines)


def export_official(model: Uni3D, path: str | os.PathLike) -> Path:
    """Write the official release layout: ``{'module': fp16 state dict}`` via ``torch.save``."""
    state = {
        k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in model.state_dict().items()
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": state}, out)
    return out
