"""uni3d: the Uni3D model library (arXiv 2310.06773), device-agnostic, CPU and CUDA alike.

```python
import uni3d
model = uni3d.create_model("tiny")                 # official architecture, random init, embed_dim 1024
model = uni3d.create_model("base", embed_dim=384)  # projection sized to another teacher
model = uni3d.load_checkpoint("model.pt")          # an official release file or one of ours
emb = model.encode_pc(pc)                          # (B, N, 6) float32 xyz+rgb -> (B, embed_dim)
```
"""

from __future__ import annotations

import os
from typing import Any

from uni3d.checkpoint import (
    export_official,
    load_2d_weights,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from uni3d.encoder import PointEncoder, Uni3D
from uni3d.presets import OFFICIAL_PARAM_COUNTS, PRESETS, EncoderConfig, get_preset
from uni3d.teachers import (
    MiniLMTeacher,
    OpenClipTeacher,
    RandomOpenClipTeacher,
    Teacher,
    TeacherConfig,
    build_teacher,
    parse_teacher,
)
from uni3d.zeroshot import (
    build_zero_shot_classifier,
    load_templates,
    per_class_accuracy,
    topk_accuracy,
    topk_correct,
    zero_shot_logits,
)

__version__ = "0.1.0"


def create_model(
    name: str | EncoderConfig = "tiny",
    pretrained_2d: str | os.PathLike | None = None,
    **overrides: Any,
) -> Uni3D:
    """Build a Uni3D model from a preset name (or a config) with field overrides.

    ``pretrained_2d`` is a local timm ViT/EVA checkpoint file whose blocks initialise the ViT.
    """
    cfg = name.replace(**overrides) if isinstance(name, EncoderConfig) else get_preset(name, **overrides)
    model = Uni3D(cfg)
    if pretrained_2d is not None:
        load_2d_weights(model, pretrained_2d)
    return model


__all__ = [
    "OFFICIAL_PARAM_COUNTS",
    "PRESETS",
    "EncoderConfig",
    "MiniLMTeacher",
    "OpenClipTeacher",
    "RandomOpenClipTeacher",
    "Teacher",
    "TeacherConfig",
    "build_teacher",
    "build_zero_shot_classifier",
    "load_templates",
    "parse_teacher",
    "per_class_accuracy",
    "topk_accuracy",
    "topk_correct",
    "zero_shot_logits",
    "PointEncoder",
    "Uni3D",
    "create_model",
    "export_official",
    "get_preset",
    "load_2d_weights",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]
