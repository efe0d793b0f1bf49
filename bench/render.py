"""Benchmark: multi-view rendering of procedural shapes and spheres of ~10k and ~100k faces.

Each mesh is rendered into ``--views`` views (12 by default, as OpenShape) of ``--size`` pixels
by one reused ``pipelines.meshes.render.Renderer`` (EGL: Mesa llvmpipe on CPU machines, the GPU on
NVIDIA nodes); the time per mesh includes the upload, drawing, read-back and release. It prints
ms per mesh and meshes/s per CPU core (meshes/s divided by the cores this process may use; on
llvmpipe the rasteriser uses all of them) as a Markdown table, once with and once without MSAA.

Usage: ``python bench/render.py [--views 12] [--size 224] [--samples 4 0] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import trimesh
from common import machine, time_it

from pipelines.meshes.cameras import RenderConfig
from pipelines.meshes.mesh import Mesh
from pipelines.meshes.render import Renderer
from pipelines.sources.procedural import make_shape

SHAPES = ("chair", "car", "tree", "bookshelf", "mushroom")


def sphere(count: int, colour: str) -> Mesh:
    """A UV sphere of about ``2 * count**2`` faces, coloured per face, per vertex or by a texture."""
    tm = trimesh.creation.uv_sphere(count=[count, count])
    mesh = Mesh(np.float32(tm.vertices), np.int64(tm.faces), source=f"uv_sphere({count})")
    rng = np.random.default_rng(0)
    if colour == "face":
        mesh.face_colors = rng.random((len(tm.faces), 3), dtype=np.float32)
    elif colour == "vertex":
        mesh.vertex_colors = rng.random((len(tm.vertices), 3), dtype=np.float32)
    elif colour == "texture":
        x, y, z = mesh.vertices.T  # equirectangular UVs, glTF convention (v = 0 at the north pole)
        mesh.uv = np.stack([np.arctan2(x, z) / (2 * np.pi) + 0.5, np.arccos(np.clip(y, -1, 1)) / np.pi], 1)
        mesh.textures = [rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)]
        mesh.face_texture = np.zeros(len(tm.faces), np.int32)
    return mesh


def meshes() -> dict[str, Mesh]:
    out = {f"procedural {c}": make_shape(c, 0).to_mesh() for c in SHAPES}
    for count, label in ((50, "10k"), (158, "100k")):
        for colour in ("face", "vertex", "texture"):
            out[f"sphere {label}, {colour} colours"] = sphere(count, colour)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--samples", type=int, nargs="+", default=[4, 0], help="MSAA settings to compare")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device-index", type=int, default=None)
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    todo = meshes()
    results: dict = {"machine": machine(), "views": args.views, "size": args.size, "cores": cores, "runs": {}}
    for samples in args.samples:
        cfg = RenderConfig(num_views=args.views, size=args.size, samples=samples, device_index=args.device_index)
        with Renderer(cfg) as renderer:
            results["gl_renderer"] = renderer.device
            for name, mesh in todo.items():
                seconds = time_it(lambda m=mesh: renderer.render(m), repeats=args.repeats)
                results["runs"][f"{name} | msaa {samples}"] = {
                    "faces": mesh.num_faces,
                    "ms_per_mesh": 1e3 * seconds,
                    "meshes_per_s_per_core": 1 / seconds / cores,
                }
    print(f"# render: {args.views} views at {args.size}x{args.size} on {results['gl_renderer']}; {results['machine']}")
    print("| mesh | MSAA | faces | ms / mesh | meshes / s / core |\n|---|---|---|---|---|")
    for key, r in results["runs"].items():
        name, msaa = key.split(" | ")
        rate = r["meshes_per_s_per_core"]
        print(f"| {name} | {msaa.split()[1]}x | {r['faces']:,} | {r['ms_per_mesh']:.1f} | {rate:.2f} |")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
