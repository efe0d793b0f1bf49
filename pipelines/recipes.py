"""Named pretraining recipes: one row per recipe, applied before ``--set`` overrides.

``uni3d-ti`` … ``uni3d-g`` mirror the official recipe (spec §6: AdamW 1e-3, weight decay 0.1, layer
decay 0.95, 10,000 warmup steps then cosine, 200 epochs, 48 shapes per GPU, seed 4096, DeepSpeed ZeRO-1,
gradient clipping 5.0, drop path 0.2 from the preset) with bf16 in place of fp16. Only the giant recipe is
published; the smaller scales use it unchanged. The worker count is a starting point for one 8-GPU node:
set ``num_workers`` to the GPUs you have. ``cpu`` is the small recipe of the demo and the tests: the
``micro`` encoder on two CPU workers, fp32, short warmup.
"""

from __future__ import annotations

from typing import Any

_OFFICIAL: dict[str, Any] = {
    "strategy": "deepspeed",
    "zero_stage": 1,
    "precision": "bf16",
    "use_gpu": True,
    "num_workers": 8,
    "worker_cpus": 8.0,
    "batch_size": 48,
    "epochs": 200,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "layer_decay": 0.95,
    "warmup_steps": 10_000,
    "grad_clip": 5.0,
    "seed": 4096,
    "shuffle_buffer": 4096,
    "log_every": 50,
    "checkpoint_every": 2_000,
    "eval_every": 2_000,
}

RECIPES: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": "micro",
        "strategy": "deepspeed",
        "zero_stage": 1,
        "precision": "fp32",
        "use_gpu": False,
        "num_workers": 2,
        "worker_cpus": 0.5,  # Ray Data's read tasks need a whole CPU of the two
        "batch_size": 16,
        "epochs": 4,
        "lr": 1e-3,
        "warmup_steps": 20,
        "log_every": 10,
        "checkpoint_every": 100,
        "eval_every": 100,
    },
    "uni3d-ti": {**_OFFICIAL, "model": "tiny"},
    "uni3d-s": {**_OFFICIAL, "model": "small"},
    "uni3d-b": {**_OFFICIAL, "model": "base"},
    "uni3d-l": {**_OFFICIAL, "model": "large"},
    "uni3d-g": {**_OFFICIAL, "model": "giant"},
}


def get_recipe(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {sorted(RECIPES)}")
    return dict(RECIPES[name])
