"""Which teacher: ``TeacherConfig`` and its spec strings, known without importing torch or loading any weights.

A teacher's ``name`` is its spec string, recorded with datasets and checkpoints, so ``parse_teacher(name)``
rebuilds the same teacher. Spec grammar:

    minilm | minilm:all-MiniLM-L6-v2      offline MiniLM text teacher
    openclip                              = openclip:EVA02-E-14-plus/laion2b_s9b_b144k (official)
    openclip:<arch>/<tag>                 open_clip architecture + pretrained tag
    openclip:<arch>@<path>                open_clip architecture + local checkpoint file (.bin/.pt/.safetensors)
    openclip:hf-hub:<org>/<repo>          an open_clip model on the Hugging Face Hub, with its open_clip_config.json
    openclip-random:<arch>[?seed=<int>]   random weights, seed 0 by default

``<arch>`` is an ``open_clip.list_models()`` name or one of ``uni3d.open_clip_weights.TINY_ARCHS``.
``uni3d.teachers.build_teacher`` builds the teacher a spec or config describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

TeacherKind = Literal["minilm", "openclip", "openclip-random"]
OFFICIAL_MODEL, OFFICIAL_PRETRAINED = "EVA02-E-14-plus", "laion2b_s9b_b144k"
MINILM_MODEL = "all-MiniLM-L6-v2"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


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
