"""Benchmark: multi-view rendering of procedural shapes and spheres of ~10k and ~100k faces.

Each mesh is rendered into ``--views`` views (12 by default, as OpenShape) of ``--size`` pixels
by one reused ``pipelines.meshes.render.Renderer`` (EGL: Mesa llvmpipe on CPU machines, the GPU on
NVIDIA nodes); the time per mesh includes the upload, drawing, read-back and release. It prints
ms per mesh and meshes/s per CPU core (meshes/s divided by the cores this process may use; on
llvmpipe the rasteriser uses all of them) as a Markdown table, once with and once without MSAA.

``--embedding-shift``: instead, how far MSAA moves the teacher's view embeddings. Every procedural category is
rendered (two seeds each) with 4x MSAA and without, the views are embedded by ``--teacher`` (default the random
OpenCLIP stand-in; a real image tower's spec when one is at hand), and the cosine between the two embeddings of
each view is set against the cosines between views that differ (another shape, another camera) for scale.

Usage: ``python bench/render.py [--views 12] [--size 224] [--samples 4 0] [--repeats 5] [--embedding-shift]``
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


def embedding_shift(views: int, size: int, teacher_spec: str) -> dict:
    """Cosines of the teacher's embeddings: a view with MSAA vs without, against other views for scale."""
    import uni3d
    from pipelines.sources.procedural_categories import CATEGORIES

    teacher = uni3d.build_teacher(teacher_spec)
    shapes = [make_shape(c, seed).to_mesh() for c in CATEGORIES for seed in (0, 1)]
    emb = {}
    for samples in (4, 0):
        with Renderer(RenderConfig(num_views=views, size=size, samples=samples)) as renderer:
            images = np.concatenate([renderer.render(m).images for m in shapes])  # (S * V, H, W, 3)
            gl = renderer.device
        emb[samples] = teacher.encode_image(images).reshape(len(shapes), views, -1)  # unit rows
    same = (emb[4] * emb[0]).sum(-1)  # (S, V): each view with and without MSAA
    a = emb[0]
    other_shape = (a[:, None] * a[None]).sum(-1)  # (S, S, V): the same camera, two shapes
    off = ~np.eye(len(shapes), dtype=bool)
    other_view = (a[:, :, None] * a[:, None]).sum(-1)  # (S, V, V): one shape, two cameras
    off_v = ~np.eye(views, dtype=bool)
    return {
        "teacher": teacher.name,
        "gl_renderer": gl,
        "shapes": len(shapes),
        "views": views,
        "msaa_vs_none_mean": float(same.mean()),
        "msaa_vs_none_min": float(same.min()),
        "other_shape_same_camera_mean": float(other_shape[off].mean()),
        "same_shape_other_camera_mean": float(other_view[:, off_v].mean()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--samples", type=int, nargs="+", default=[4, 0], help="MSAA settings to compare")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device-index", type=int, default=None)
    ap.add_argument("--embedding-shift", action="store_true", help="MSAA's effect on the teacher's embeddings")
    ap.add_argument("--teacher", default="openclip-random:tiny-ViT-32", help="image teacher spec (--embedding-shift)")
    args = ap.parse_args(argv)
    if args.embedding_shift:
        r = embedding_shift(args.views, args.size, args.teacher)
        print(f"# MSAA and the view embeddings: {r['shapes']} procedural shapes x {r['views']} views, {r['teacher']}")
        print(f"# on {r['gl_renderer']}; {machine()}")
        print("| embeddings of | mean cosine | mean 1 - cosine |\n|---|---|---|")
        for label, key in (
            ("a view with 4x MSAA and without", "msaa_vs_none_mean"),
            ("two shapes, same camera (no MSAA)", "other_shape_same_camera_mean"),
            ("one shape, two cameras (no MSAA)", "same_shape_other_camera_mean"),
        ):
            print(f"| {label} | {r[key]:.5f} | {1 - r[key]:.2e} |")
        print(f"| (least similar view pair with and without MSAA) | {r['msaa_vs_none_min']:.5f} | |")
        print(json.dumps(r))
        return r

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
