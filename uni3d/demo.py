"""A short tour of the model library: presets, embedding, checkpoints (``make tour``).

Prints the preset table with parameter counts (the official scales built on the meta device,
so nothing large is allocated), embeds a batch of coloured point clouds with a CPU preset, and
round-trips the model through our checkpoint format and the official release layout.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

import uni3d
from uni3d.presets import OFFICIAL_PARAM_COUNTS, PRESETS, preset_for_width


def sphere_and_cube(batch: int, num_points: int) -> torch.Tensor:
    """Alternating red spheres and blue cube surfaces: ``(B, N, 6)``."""
    g = torch.Generator().manual_seed(0)
    sphere = torch.randn(num_points, 3, generator=g)
    sphere = sphere / sphere.norm(dim=-1, keepdim=True)
    cube = torch.rand(num_points, 3, generator=g) * 2 - 1
    face = torch.randint(0, 3, (num_points,), generator=g)
    cube[torch.arange(num_points), face] = torch.sign(torch.randn(num_points, generator=g))
    cube = cube / cube.norm(dim=-1).max()
    red, blue = torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])
    clouds = [
        torch.cat([sphere, red.expand(num_points, 3)], -1),
        torch.cat([cube, blue.expand(num_points, 3)], -1),
    ]
    return torch.stack([clouds[i % 2] for i in range(batch)])


def main() -> None:
    print("Uni3D presets (official scales at embed_dim=1024)")
    print(f"{'preset':<7} {'timm model':<26} {'width':>5} {'depth':>5} {'groups':>6} {'params':>15} {'official':>15}")
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in uni3d.create_model(name).parameters())
        official = f"{OFFICIAL_PARAM_COUNTS[name]:,}" if name in OFFICIAL_PARAM_COUNTS else "(CPU preset)"
        print(
            f"{name:<7} {cfg.timm_model:<26} {cfg.width:>5} {cfg.depth:>5} {cfg.num_group:>6} {n:>15,} {official:>15}"
        )

    model = uni3d.create_model("micro", embed_dim=384).eval()
    pc = sphere_and_cube(8, model.cfg.num_points)
    start = time.perf_counter()
    with torch.no_grad():
        emb = model.encode_pc(pc)
    took = time.perf_counter() - start
    emb = torch.nn.functional.normalize(emb, dim=-1)
    print(
        f"\nmicro preset: embedded {pc.shape[0]} clouds of {pc.shape[1]} points -> {tuple(emb.shape)} "
        f"in {took:.2f} s on {torch.get_num_threads()} CPU threads"
    )

    with tempfile.TemporaryDirectory() as tmp:
        ours = uni3d.save_checkpoint(model, Path(tmp) / "micro", meta={"teacher": "none"})
        official = uni3d.export_official(uni3d.create_model("tiny"), Path(tmp) / "uni3d-ti.pt")
        back = uni3d.load_checkpoint(ours).eval()
        tiny = uni3d.load_checkpoint(official)
        with torch.no_grad():
            same = torch.allclose(torch.nn.functional.normalize(back.encode_pc(pc), dim=-1), emb, atol=1e-6)
        size = official.stat().st_size / 2**20
        scale = math.exp(tiny.logit_scale.item())
        print(
            f"checkpoint round trip: ours -> identical embeddings: {same}; official layout "
            f"({size:.1f} MiB fp16) -> preset {preset_for_width(tiny.cfg.width)!r} ({tiny.cfg.timm_model}), "
            f"logit scale {scale:.2f}"
        )


if __name__ == "__main__":
    main()
