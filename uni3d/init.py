"""Initialising a model before pretraining: from scratch, from a 2D ViT checkpoint, or from one of our runs.

The Uni3D paper (arXiv 2310.06773, §4, the initialisation ablation) trains the same point encoder from
random weights and from 2D ViTs (DINO, CLIP, EVA). An init spec says which:

- ``scratch``: random weights.
- ``timm:<file>``: a 2D ViT checkpoint in timm's format (``.safetensors``, or a ``.pth``/``.bin`` state
  dict, possibly under ``{"model": ...}`` or ``{"state_dict": ...}``) loaded into the preset's own ViT.
- ``timm:<arch>@<file>``: the same, with the ViT built as timm architecture ``<arch>`` (e.g.
  ``vit_small_patch14_dinov2``) instead of the preset's; its width, depth and heads must be the preset's.
- ``run:<checkpoint>``: the weights of a ``uni3d.save_checkpoint`` folder or an official release
  ``model.pt``, loaded strictly into a model of the same architecture.

A 2D file goes through the architecture's own timm ``checkpoint_filter_fn`` (so OpenCLIP, DINOv2 and EVA
layouts load too). Every block tensor must fit; the 2D-only tensors (patch embed, 2D position embedding,
cls/register tokens, head), frozen and unused on point tokens, are loaded where they fit and listed where
not. ``check_init`` reads only names and shapes and builds the model on the meta device, so it costs no
memory even for ``giant``.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from uni3d.checkpoint import (
    WEIGHTS_FILE,
    _describe,
    _key_diff,
    infer_official_config,
    load_state_dict_checked,
    read_checkpoint_config,
)
from uni3d.encoder import _UNUSED_2D_PREFIXES, Uni3D, build_vit
from uni3d.presets import PRESETS, TOKENIZATION_FIELDS, WEIGHT_SHAPE_FIELDS, EncoderConfig

INIT_FORMS = ("scratch", "timm:<file>", "timm:<arch>@<file>", "run:<checkpoint>")
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.")


@dataclass(frozen=True)
class InitSpec:
    """A parsed init spec: ``kind`` is scratch | timm | run; ``arch`` overrides the preset's timm model."""

    kind: str
    path: str = ""
    arch: str = ""

    def __str__(self) -> str:
        if self.kind == "timm":
            return f"timm:{self.arch}@{self.path}" if self.arch else f"timm:{self.path}"
        return f"run:{self.path}" if self.kind == "run" else "scratch"

    def resolve(self) -> InitSpec:
        """The same spec with an absolute path (workers may run in another folder)."""
        if self.kind == "scratch":
            return self
        return InitSpec(self.kind, str(Path(self.path).expanduser().resolve()), self.arch)


def parse_init(spec: str) -> InitSpec:
    """Parse ``scratch``, ``timm:<file>``, ``timm:<arch>@<file>`` or ``run:<checkpoint>``."""
    kind, sep, rest = spec.strip().partition(":")
    if kind == "scratch" and not sep:
        return InitSpec("scratch")
    if kind == "run" and rest:
        return InitSpec("run", rest)
    if kind == "timm" and rest:
        arch, at, path = rest.partition("@")
        if not at or "/" in arch:  # an '@' inside a path is not an architecture
            return InitSpec("timm", rest)
        if arch and path:
            return InitSpec("timm", path, arch)
    raise ValueError(f"init {spec!r} is not one of {', '.join(INIT_FORMS)}")


def init_config(spec: InitSpec, cfg: EncoderConfig) -> EncoderConfig:
    """The config to build the model with: ``cfg`` with the ViT architecture the init needs.

    ``timm:<arch>@...`` builds ``<arch>`` (with the preset's ``timm_kwargs``) and ``run:`` the
    checkpoint's timm model; either must have the preset's sizes, else the error names the preset
    that would fit.
    """
    if spec.kind == "timm" and spec.arch:
        built = _vit_sizes(spec, cfg)
        if built != (cfg.width, cfg.depth, cfg.num_heads):
            raise ValueError(
                f"init {spec}: timm model {spec.arch!r} has (width, depth, heads) {built}, but "
                f"{_name(cfg)} has {(cfg.width, cfg.depth, cfg.num_heads)}; it {_fits(_presets_for(*built))}"
            )
        return cfg.replace(timm_model=spec.arch)
    if spec.kind == "run":
        return _run_state(spec, _existing(spec), cfg, meta=True)[0]
    return cfg


def check_init(spec: InitSpec, model_cfg: EncoderConfig) -> str:
    """Check, from names and shapes only, that ``spec`` fits ``model_cfg``; a one-line description."""
    if spec.kind == "scratch":
        return "scratch: random weights"
    path = _existing(spec)
    if spec.kind == "run":
        cfg, state = _run_state(spec, path, model_cfg, meta=True)
        return f"{spec}: {len(state)} tensors of {_name(cfg)}, loaded strictly"
    cfg = init_config(spec, model_cfg)
    with torch.device("meta"):
        vit = build_vit(cfg)
    loaded, skipped = _fit_2d(vit, _read_2d(vit, path, meta=True), cfg, path)
    return f"{spec}: {len(loaded)} tensors fit the ViT of {_name(cfg)}; {len(skipped)} 2D-only tensors skipped"


def apply_init(model: Uni3D, spec: InitSpec) -> list[str]:
    """Load the init's weights into ``model`` (built with ``init_config``); the lines to print."""
    if spec.kind == "scratch":
        return ["scratch: random weights"]
    path = _existing(spec)
    if spec.kind == "run":
        cfg, state = _run_state(spec, path, model.cfg, meta=False)
        if cfg.timm_model != model.cfg.timm_model:
            raise ValueError(
                f"init {spec}: the checkpoint's ViT is {cfg.timm_model}, the model's {model.cfg.timm_model}; "
                "build the model with uni3d.init_config(spec, cfg)"
            )
        load_state_dict_checked(model, state, f"init {spec}")
        return [f"{spec}: loaded {len(state)} tensors of {_name(model.cfg)} strictly"]
    if spec.arch and spec.arch != model.cfg.timm_model:
        raise ValueError(
            f"init {spec}: the model's ViT is {model.cfg.timm_model}, not {spec.arch}; "
            "build the model with uni3d.init_config(spec, cfg)"
        )
    loaded, skipped = _load_2d(model, path)
    lines = [f"{spec}: loaded {len(loaded)} tensors into the ViT of {_name(model.cfg)}"]
    if skipped:
        lines.append(f"2D-only tensors skipped ({len(skipped)}): {', '.join(skipped)}")
    return lines


def load_2d_weights(model: Uni3D, path: str | os.PathLike) -> list[str]:
    """Initialise the ViT from a local timm checkpoint file (``timm:<file>``); returns the keys loaded."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"2D checkpoint {path} does not exist")
    return _load_2d(model, p)[0]


def _load_2d(model: Uni3D, path: Path) -> tuple[list[str], list[str]]:
    vit = model.point_encoder.visual
    state = _read_2d(vit, path, meta=False)
    loaded, skipped = _fit_2d(vit, state, model.cfg, path)
    vit.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return loaded, skipped


def _existing(spec: InitSpec) -> Path:
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise ValueError(f"init {spec}: {path} does not exist")
    if spec.kind == "timm" and not path.is_file():
        raise ValueError(f"init {spec}: {path} is a folder, not a weights file")
    return path


def _read_tensors(path: Path, meta: bool) -> dict[str, Tensor]:
    """A weights file's tensors (``meta``: only names and shapes), out of a {"model"/"state_dict"/"module"} wrapper."""
    try:
        if path.suffix == ".safetensors":
            if not meta:
                return load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        try:  # mmap: nothing is read until a tensor is used
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format
    except Exception as err:  # unpickling and header errors come in many types; name the file
        raise ValueError(f"{path}: not a readable weights file ({type(err).__name__}: {err})") from err
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    obj = obj if isinstance(obj, dict) else {}
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no state dict of tensors")
    return {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in tensors.items()} if meta else tensors


def _read_2d(vit: nn.Module, path: Path, meta: bool) -> dict[str, Tensor]:
    """The file's tensors renamed and resampled by timm's ``checkpoint_filter_fn`` for ``vit``'s architecture."""
    filter_fn = getattr(sys.modules[type(vit).__module__], "checkpoint_filter_fn", None)
    raw = _read_tensors(path, meta)
    if filter_fn is None:
        return raw
    try:
        return filter_fn(dict(raw), vit)
    except Exception as err:
        if meta:  # an op without a meta kernel (e.g. resampling a patch embed): convert the real tensors
            return _read_2d(vit, path, meta=False)
        raise ValueError(f"{path}: {type(vit).__module__}.checkpoint_filter_fn cannot convert it ({err})") from err


def _fit_2d(vit: nn.Module, state: dict[str, Tensor], cfg: EncoderConfig, path: Path) -> tuple[list[str], list[str]]:
    """(keys to load, 2D-only keys skipped); every other key must fit, else a ValueError lists them."""
    expected = vit.state_dict()
    is_2d = lambda k: k.startswith(_UNUSED_2D_PREFIXES)  # noqa: E731
    missing, unexpected, mismatched = _key_diff(expected, state, skip=is_2d)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"2D checkpoint {path} does not fit {cfg.timm_model} (width {cfg.width}, depth {cfg.depth}) of "
            f"{_name(cfg)}:\n"
            + _describe(missing=missing, unexpected=unexpected, mismatched=mismatched)
            + f"\n  {_fits_hint(state, cfg, path)}"
        )
    loaded = sorted(k for k, v in state.items() if k in expected and v.shape == expected[k].shape)
    skipped = sorted(k for k in set(state) | set(expected) if is_2d(k) and k not in loaded)
    return loaded, skipped


def _fits_hint(state: dict[str, Tensor], cfg: EncoderConfig, path: Path) -> str:
    norm = state.get("blocks.0.norm1.weight")
    depth = 1 + max((int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))), default=-1)
    if norm is None or norm.ndim != 1:
        return "the file has no ViT blocks of timm's layout: it fits no preset"
    width = norm.shape[0]
    if (width, depth) == (cfg.width, cfg.depth):
        return (
            f"its width {width} and depth {depth} are the model's, so its blocks are not {cfg.timm_model}'s: "
            f"name its timm architecture as timm:<arch>@{path}"
        )
    return f"the file's ViT (width {width}, depth {depth}) {_fits(_presets_for(width, depth))}"


def _run_state(spec: InitSpec, path: Path, cfg: EncoderConfig, meta: bool) -> tuple[EncoderConfig, dict[str, Tensor]]:
    """(config to build, state) for ``run:``: ``cfg`` with the checkpoint's timm model; sizes must agree."""
    if path.is_dir() or path.suffix == ".safetensors":
        source = EncoderConfig.from_dict(read_checkpoint_config(path)["encoder"])
        state = _read_tensors(path / WEIGHTS_FILE if path.is_dir() else path, meta)
    else:
        state = _read_tensors(path, meta)
        if "point_encoder.cls_token" not in state:
            raise ValueError(f"init {spec}: {path} is neither a uni3d-ray checkpoint nor an official Uni3D model.pt")
        source = infer_official_config(state, source=str(path))
    same = all(getattr(source, f) == getattr(cfg, f) for f in WEIGHT_SHAPE_FIELDS)
    target = cfg.replace(timm_model=source.timm_model, timm_kwargs=source.timm_kwargs) if same else cfg
    with torch.device("meta"):
        expected = Uni3D(target).state_dict()
    missing, unexpected, mismatched = _key_diff(expected, state)
    if not same or missing or unexpected or mismatched:
        raise ValueError(
            f"init {spec}: the checkpoint is {_name(source)}, the model {_name(cfg)}:\n"
            + _describe(missing=missing, unexpected=unexpected, mismatched=mismatched)
        )
    return target, state


def _vit_sizes(spec: InitSpec, cfg: EncoderConfig) -> tuple[int, int, int]:
    try:
        with torch.device("meta"):
            vit = timm.create_model(spec.arch, pretrained=False, **cfg.timm_kwargs)
        return vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads
    except (RuntimeError, TypeError, AttributeError) as err:  # unknown name, kwargs it lacks, not a ViT
        raise ValueError(f"init {spec}: cannot build {spec.arch!r} as a ViT with {cfg.timm_kwargs}: {err}") from err


def _presets_for(width: int, depth: int, num_heads: int | None = None) -> list[str]:
    """The presets whose ViT has these sizes (several presets may share one ViT)."""
    return [
        name for name, p in PRESETS.items() if (p.width, p.depth) == (width, depth) and num_heads in (None, p.num_heads)
    ]


def _fits(names: list[str]) -> str:
    return f"fits preset {' or '.join(map(repr, names))}" if names else "fits no preset"


def _name(cfg: EncoderConfig) -> str:
    """E.g. ``preset 'nano' (eva02_tiny_patch14_224, width 64, depth 2, heads 2, embed_dim 1024)``."""
    # embed_dim is the teacher's, not the preset's
    keys = [k for k in (*WEIGHT_SHAPE_FIELDS, *TOKENIZATION_FIELDS) if k != "embed_dim"]
    names = [name for name, p in PRESETS.items() if all(getattr(p, k) == getattr(cfg, k) for k in keys)]
    sizes = f"{cfg.timm_model}, width {cfg.width}, depth {cfg.depth}, heads {cfg.num_heads}, embed_dim {cfg.embed_dim}"
    return f"preset {names[0]!r} ({sizes})" if names else f"no preset ({sizes})"
