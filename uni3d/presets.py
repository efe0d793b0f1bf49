"""Model sizes: one typed config and one preset table (docs/method.md §2–3).

The five official scales reuse timm's EVA models by name (``tiny`` … ``giant``), so their
parameter counts equal the official release at ``embed_dim=1024``. The CPU presets reuse the
same timm model with fewer blocks, a narrower width, a coarser tokenization and a mini-PointNet at a
quarter of the official widths, for tests and demos; they are rows in this table, never copied model classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# The size fields of ``EncoderConfig``: those that fix the shapes of the weights (a checkpoint's tensors fit a model
# only when these agree), and the tokenization's, which change no weight.
WEIGHT_SHAPE_FIELDS = ("width", "depth", "num_heads", "embed_dim", "encoder_dim", "pointnet_width")
TOKENIZATION_FIELDS = ("num_group", "group_size")


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to build a Uni3D point encoder."""

    timm_model: str = "eva02_tiny_patch14_224"
    # Overrides passed to ``timm.create_model`` (width, depth, heads for the CPU presets).
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    width: int = 192  # D, the ViT width
    depth: int = 12
    num_heads: int = 3
    embed_dim: int = 1024  # E, the teacher's embedding size (1024 for EVA02-E-14-plus)
    num_group: int = 512  # G, FPS centres
    group_size: int = 64  # K, points per group (kNN)
    encoder_dim: int = 512  # mini-PointNet output channels
    pointnet_width: int = 128  # c: mini-PointNet convs 6 -> c -> 2c, then 4c -> 4c -> encoder_dim (official: 128)
    num_points: int = 10_000  # N the data pipeline samples for this preset
    patch_dropout: float = 0.5  # FLIP patch dropout, training only
    drop_path_rate: float = 0.2  # stochastic depth, linear over blocks, training only
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in (*WEIGHT_SHAPE_FIELDS, *TOKENIZATION_FIELDS):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"EncoderConfig.{name} must be a positive int, got {value!r}")
        if self.width % self.num_heads:
            raise ValueError(f"EncoderConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"EncoderConfig.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"EncoderConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.num_points < max(self.group_size, self.num_group):
            raise ValueError(
                f"EncoderConfig.num_points={self.num_points} is smaller than "
                f"group_size={self.group_size} or num_group={self.num_group}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EncoderConfig fields: {unknown}")
        return cls(**data)

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)


def _official(timm_model: str, width: int, depth: int, num_heads: int) -> EncoderConfig:
    return EncoderConfig(timm_model=timm_model, width=width, depth=depth, num_heads=num_heads)


def _cpu(width: int, depth: int, num_heads: int, num_group: int, group_size: int, num_points: int) -> EncoderConfig:
    # A narrower, shallower eva02_tiny: same block type, same tokenizer, smaller numbers. The mini-PointNet at a
    # quarter of the official widths (c = 32, 128 output channels): at the official widths it is most of a CPU
    # preset's parameters and ~85% of its training step on a CPU core (docs/method.md §9).
    return EncoderConfig(
        timm_model="eva02_tiny_patch14_224",
        timm_kwargs={"embed_dim": width, "depth": depth, "num_heads": num_heads},
        width=width,
        depth=depth,
        num_heads=num_heads,
        num_group=num_group,
        group_size=group_size,
        num_points=num_points,
        encoder_dim=128,
        pointnet_width=32,
        drop_path_rate=0.1,
    )


PRESETS: dict[str, EncoderConfig] = {
    # Official scales (docs/method.md §3 table): timm model, width D, depth, heads.
    "tiny": _official("eva02_tiny_patch14_224", 192, 12, 3),
    "small": _official("eva02_small_patch14_224", 384, 12, 6),
    "base": _official("eva02_base_patch14_448", 768, 12, 12),
    "large": _official("eva02_large_patch14_448", 1024, 24, 16),
    "giant": _official("eva_giant_patch14_560", 1408, 40, 16),
    # CPU presets: `nano` for the laptop demo and unit tests, `micro` for the `cpu` recipe's default. `nano-s` <
    # `nano` < `nano-l` share nano's tokenization and differ only in the ViT, as the official scales do: the CPU
    # sweep's scale axis.
    "nano-s": _cpu(width=32, depth=2, num_heads=2, num_group=32, group_size=16, num_points=512),
    "nano": _cpu(width=64, depth=2, num_heads=2, num_group=32, group_size=16, num_points=512),
    "nano-l": _cpu(width=192, depth=4, num_heads=3, num_group=32, group_size=16, num_points=512),
    "micro": _cpu(width=192, depth=4, num_heads=3, num_group=64, group_size=32, num_points=2048),
}

# Official parameter counts at embed_dim=1024 (docs/method.md §3), checked by the tests.
OFFICIAL_PARAM_COUNTS: dict[str, int] = {
    "tiny": 6_384_449,
    "small": 22_823_681,
    "base": 88_960_617,
    "large": 307_350_313,
    "giant": 1_017_358_057,
}

# The official release names its files by these short scale names.
OFFICIAL_SCALE_ALIASES: dict[str, str] = {"ti": "tiny", "s": "small", "b": "base", "l": "large", "g": "giant"}


def get_preset(name: str, **overrides: Any) -> EncoderConfig:
    """The preset ``name`` (or an official alias such as ``"g"``) with field overrides."""
    key = OFFICIAL_SCALE_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[key].replace(**overrides) if overrides else PRESETS[key]


def preset_for_width(width: int) -> str:
    """The official preset whose ViT width is ``width`` (used to read official checkpoints)."""
    for name in OFFICIAL_PARAM_COUNTS:
        if PRESETS[name].width == width:
            return name
    raise ValueError(
        f"no official Uni3D preset has width {width}; official widths are "
        f"{[PRESETS[n].width for n in OFFICIAL_PARAM_COUNTS]}"
    )
