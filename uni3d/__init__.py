"""uni3d: the Uni3D model library (arXiv 2310.06773), device-agnostic, CPU and CUDA alike.

```python
import uni3d
model = uni3d.create_model("tiny")                 # official architecture, random init, embed_dim 1024
model = uni3d.create_model("base", embed_dim=384)  # projection sized to another teacher
model = uni3d.load_checkpoint("model.pt")          # an official release file or one of ours
spec = uni3d.parse_init("timm:vit_small_patch14_dinov2@dinov2_s.safetensors")  # or scratch, run:<checkpoint>
model = uni3d.create_model(uni3d.init_config(spec, uni3d.get_preset("small")))
uni3d.apply_init(model, spec)                      # DINOv2-S blocks in the small preset's ViT
emb = model.encode_pc(pc)                          # (B, N, 6) float32 xyz+rgb -> (B, embed_dim)
```
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Public names and the submodule that defines each. They are imported when first used (PEP 562), so that
# `import uni3d.teachers` in a data worker, or a job's `--help`, does not pay for timm and torchvision.
_EXPORTS = {
    "checkpoint": ["export_official", "load_checkpoint", "read_checkpoint_config", "save_checkpoint"],
    "cost": ["ModelCost", "model_cost"],
    "errors": ["CheckpointError"],
    "encoder": ["PointEncoder", "Uni3D"],
    "init": ["InitSpec", "apply_init", "check_init", "init_config", "load_2d_weights", "parse_init"],
    "presets": ["OFFICIAL_PARAM_COUNTS", "PRESETS", "EncoderConfig", "get_preset"],
    "teacher_spec": ["TeacherConfig", "parse_teacher"],
    "teachers": [
        "MiniLMTeacher",
        "OpenClipTeacher",
        "RandomOpenClipTeacher",
        "Teacher",
        "build_teacher",
        "shared_teacher",
    ],
    "zeroshot": [
        "build_zero_shot_classifier",
        "load_templates",
        "per_class_accuracy",
        "topk_accuracy",
        "topk_correct",
        "zero_shot_logits",
    ],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

if TYPE_CHECKING:
    from uni3d.checkpoint import export_official, load_checkpoint, read_checkpoint_config, save_checkpoint
    from uni3d.cost import ModelCost, model_cost
    from uni3d.encoder import PointEncoder, Uni3D
    from uni3d.errors import CheckpointError
    from uni3d.init import InitSpec, apply_init, check_init, init_config, load_2d_weights, parse_init
    from uni3d.presets import OFFICIAL_PARAM_COUNTS, PRESETS, EncoderConfig, get_preset
    from uni3d.teacher_spec import TeacherConfig, parse_teacher
    from uni3d.teachers import (
        MiniLMTeacher,
        OpenClipTeacher,
        RandomOpenClipTeacher,
        Teacher,
        build_teacher,
        shared_teacher,
    )
    from uni3d.zeroshot import (
        build_zero_shot_classifier,
        load_templates,
        per_class_accuracy,
        topk_accuracy,
        topk_correct,
        zero_shot_logits,
    )


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'uni3d' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"uni3d.{module}"), name)
    globals()[name] = value  # once: later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])


__version__ = "0.1.0"


def create_model(
    name: str | EncoderConfig = "tiny",
    pretrained_2d: str | os.PathLike | None = None,
    **overrides: Any,
) -> Uni3D:
    """Build a Uni3D model from a preset name (or a config) with field overrides.

    ``pretrained_2d`` is a local timm checkpoint file of the config's ViT whose blocks initialise it
    (``init="timm:<file>"``; ``uni3d.init`` has the other initialisations).
    """
    from uni3d.encoder import Uni3D
    from uni3d.init import load_2d_weights
    from uni3d.presets import EncoderConfig, get_preset

    cfg = name.replace(**overrides) if isinstance(name, EncoderConfig) else get_preset(name, **overrides)
    model = Uni3D(cfg)
    if pretrained_2d is not None:
        load_2d_weights(model, pretrained_2d)
    return model


__all__ = [
    "OFFICIAL_PARAM_COUNTS",
    "PRESETS",
    "CheckpointError",
    "EncoderConfig",
    "InitSpec",
    "ModelCost",
    "MiniLMTeacher",
    "OpenClipTeacher",
    "RandomOpenClipTeacher",
    "Teacher",
    "TeacherConfig",
    "build_teacher",
    "shared_teacher",
    "build_zero_shot_classifier",
    "load_templates",
    "parse_init",
    "parse_teacher",
    "per_class_accuracy",
    "topk_accuracy",
    "topk_correct",
    "zero_shot_logits",
    "PointEncoder",
    "Uni3D",
    "apply_init",
    "check_init",
    "create_model",
    "export_official",
    "get_preset",
    "init_config",
    "load_2d_weights",
    "load_checkpoint",
    "model_cost",
    "read_checkpoint_config",
    "save_checkpoint",
]
