"""Named pretraining recipes: YAML files in ``configs/recipes/``, applied before ``--config`` and ``--set``.

``uni3d-ti`` … ``uni3d-g`` inherit ``_official.yaml``, the official recipe (AdamW 1e-3, weight decay 0.1,
layer decay 0.95, 10,000 warmup steps then cosine, 200 epochs, 48 shapes per GPU, seed 4096, DeepSpeed
ZeRO-1, clipping 5.0) with bf16 in place of fp16. ``cpu`` is the small recipe of the demo and the tests.
A recipe file may name another with ``inherit: <name>``; files starting with ``_`` are bases, not recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.settings import CONFIG_ROOT, ConfigError

RECIPE_DIR = CONFIG_ROOT / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def get_recipe(name: str) -> dict[str, Any]:
    """The recipe's fields, its ``inherit`` chain resolved (the file's own fields win)."""
    return _load(name, chain=())


def recipe_file(name: str) -> Path:
    return RECIPE_DIR / f"{name}.yaml"


def _load(name: str, chain: tuple[str, ...]) -> dict[str, Any]:
    path = recipe_file(name)
    if not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}; recipes: {', '.join(recipe_names())} (files in {RECIPE_DIR})")
    if name in chain:
        raise ConfigError(f"recipe {name!r} inherits itself: {' -> '.join((*chain, name))}")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of TrainConfig fields")
    parent = values.pop("inherit", None)
    return {**(_load(parent, (*chain, name)) if parent else {}), **values}
