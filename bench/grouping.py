"""Benchmark: FPS + kNN grouping on one CPU core (B=16 clouds, N=10,000 points, 512 groups of 64).

Clouds (``--clouds``): ``gaussian`` (the default): Gaussian points scaled into the unit ball, a solid whose density
falls off towards its rim; ``surface``: points sampled on the surfaces of 16 primitive meshes (boxes, spheres,
cylinders, capsules, cones, tori; trimesh), scaled into the unit ball, as users' meshes give.

Compares, in one run on the same clouds, with torch on one thread:
- ours, CPU kernel: ``uni3d.grouping_cpu`` through ``group_points`` (numba, one cloud at a time; grid cells prune
  FPS updates and bound the kNN search; the kernel also gathers the groups), official FPS semantics;
- ours, torch loop: the batched, fused FPS+kNN of ``uni3d.tokenizer`` (what GPUs run), official semantics;
- baseline: a straightforward per-cloud loop, the pure-PyTorch FPS found in point-cloud repos
  (per step: distances, masked update, arg-max) with the official near-origin rule, followed by
  a kNN over the full distance matrix;
- fpsample: the ``fpsample`` package's bucket FPS per cloud plus the same kNN, for reference when it is
  installed. It is not the official sequence: its ``start_idx`` picks the point at that position after it has
  sorted the points into its tree, so it starts elsewhere than index 0, and it has no near-origin rule.

Before timing, the script checks that the CPU kernel, the torch loop and the baseline choose identical centres
on every cloud, and that each of the kernel's groups holds points at the same distances as the torch loop's (the
same points, except where distinct points tie at the 64th distance: it counts those groups).

Usage: ``python bench/grouping.py [--clouds gaussian|surface] [--batch 16] [--points 10000] [--groups 512]
[--group-size 64] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from common import machine, time_it

from uni3d.tokenizer import NEAR_ORIGIN_SQ, farthest_point_sample, group_points


def loop_fps(xyz: torch.Tensor, num: int) -> torch.Tensor:
    """Per-cloud FPS, one point set ``(N, 3)`` at a time, official semantics."""
    valid = xyz.square().sum(-1) > NEAR_ORIGIN_SQ
    dist = torch.full((xyz.shape[0],), 1e10)
    idx = torch.zeros(num, dtype=torch.long)
    far = 0
    for i in range(1, num):
        d = ((xyz - xyz[far]) ** 2).sum(-1)
        mask = d < dist
        dist[mask] = d[mask]
        far = int(torch.where(valid, dist, -1.0).argmax())
        idx[i] = far
    return idx


def knn(xyz: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(centres, xyz)  # (G, N)
    return d.topk(k, dim=-1, largest=False).indices


def baseline(pc: torch.Tensor, groups: int, k: int) -> list[torch.Tensor]:
    out = []
    for cloud in pc:
        xyz = cloud[:, :3]
        centres = xyz[loop_fps(xyz, groups)]
        nbr = knn(xyz, centres, k)
        out.append(torch.cat([xyz[nbr] - centres[:, None], cloud[nbr, 3:]], -1))
    return out


def with_fpsample(pc: torch.Tensor, groups: int, k: int) -> list[torch.Tensor]:
    import fpsample

    out = []
    for cloud in pc:
        xyz = cloud[:, :3]
        idx = fpsample.bucket_fps_kdline_sampling(xyz.numpy(), groups, h=7, start_idx=0).astype(np.int64)
        centres = xyz[torch.from_numpy(idx)]
        nbr = knn(xyz, centres, k)
        out.append(torch.cat([xyz[nbr] - centres[:, None], cloud[nbr, 3:]], -1))
    return out


def surface_clouds(batch: int, points: int, seed: int = 0) -> torch.Tensor:
    """``(batch, points, 3)``: points on the surfaces of primitive meshes, scaled into the unit ball."""
    import trimesh

    rng = np.random.default_rng(seed)
    makers = [
        lambda: trimesh.creation.box(extents=rng.uniform(0.2, 1.0, 3)),
        lambda: trimesh.creation.icosphere(subdivisions=3, radius=rng.uniform(0.5, 1.0)),
        lambda: trimesh.creation.cylinder(radius=rng.uniform(0.1, 0.5), height=rng.uniform(0.5, 2.0)),
        lambda: trimesh.creation.capsule(radius=rng.uniform(0.1, 0.4), height=rng.uniform(0.5, 2.0)),
        lambda: trimesh.creation.cone(radius=rng.uniform(0.2, 0.6), height=rng.uniform(0.5, 1.5)),
        lambda: trimesh.creation.torus(major_radius=1.0, minor_radius=rng.uniform(0.05, 0.4)),
    ]
    clouds = []
    for b in range(batch):
        mesh = makers[b % len(makers)]()
        xyz, _ = trimesh.sample.sample_surface(mesh, points, seed=seed + b)
        xyz = xyz - xyz.mean(0)
        clouds.append(xyz / np.linalg.norm(xyz, axis=1).max())
    return torch.from_numpy(np.stack(clouds)).float()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clouds", choices=("gaussian", "surface"), default="gaussian")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= clouds the CPU kernel groups at once)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    if args.clouds == "surface":
        xyz = surface_clouds(args.batch, args.points)
    else:
        xyz = torch.randn(args.batch, args.points, 3, generator=g)
        xyz = xyz / xyz.norm(dim=-1, keepdim=True).amax(1, keepdim=True)
    pc = torch.cat([xyz, torch.rand(args.batch, args.points, 3, generator=g)], -1)

    # Same centres as the per-cloud loop (official semantics), and the same groups, checked before timing.
    torch_idx, torch_nbrs = farthest_point_sample(pc[..., :3], args.groups, knn=args.group_size, backend="torch")
    assert all(torch.equal(torch_idx[b], loop_fps(pc[b, :, :3], args.groups)) for b in range(args.batch))
    cpu_idx, cpu_nbrs = farthest_point_sample(pc[..., :3], args.groups, knn=args.group_size, backend="cpu")
    assert torch.equal(cpu_idx, torch_idx), "the CPU kernel chose other centres"
    # groups: the same distances (distinct points at exactly the 64th distance may swap: a surface cloud has some)
    centres = pc[..., :3].gather(1, cpu_idx.unsqueeze(-1).expand(-1, -1, 3)).unsqueeze(2)

    def dists(nbrs: torch.Tensor) -> torch.Tensor:
        points = pc[..., :3].gather(1, nbrs.flatten(1).unsqueeze(-1).expand(-1, -1, 3)).view(*nbrs.shape, 3)
        d = (points - centres).square()
        return (d[..., 0] + d[..., 1] + d[..., 2]).sort(-1).values

    assert torch.equal(dists(cpu_nbrs), dists(torch_nbrs)), "the CPU kernel formed other groups"
    same = (cpu_nbrs.sort(-1).values == torch_nbrs.sort(-1).values).all(-1)
    print(f"groups with the same points as the torch loop's: {int(same.sum())} of {same.numel()} (others: ties)")

    results = {
        "machine": machine(),
        "clouds": args.clouds,
        "batch": args.batch,
        "points": args.points,
        "groups": args.groups,
        "group_size": args.group_size,
    }
    groups, k = args.groups, args.group_size
    runs = {
        "ours, CPU kernel (numba, per cloud, FPS+kNN+gather)": lambda: group_points(pc, groups, k, "cpu"),
        "ours, CPU kernel, FPS only": lambda: farthest_point_sample(pc[..., :3], args.groups, backend="cpu"),
        "ours, torch loop (batched, fused FPS+kNN, then gather)": lambda: group_points(pc, groups, k, "torch"),
        "ours, torch loop, FPS only": lambda: farthest_point_sample(pc[..., :3], args.groups, backend="torch"),
        "baseline (per-cloud loop)": lambda: baseline(pc, args.groups, args.group_size),
    }
    try:
        import fpsample  # noqa: F401

        runs["fpsample bucket FPS (kd-line, h=7) + kNN (not the official sequence)"] = lambda: with_fpsample(
            pc, args.groups, args.group_size
        )
    except ImportError:
        pass
    for name, fn in runs.items():
        repeats = args.repeats if "baseline" not in name else max(1, args.repeats // 2)
        seconds = time_it(fn, repeats=repeats)
        results[name] = {
            "s_per_batch": seconds,
            "ms_per_cloud": 1e3 * seconds / args.batch,
            "clouds_per_s": args.batch / seconds,
        }
    base = results["baseline (per-cloud loop)"]["s_per_batch"]
    sizes = f"B={args.batch} N={args.points} G={groups} K={k}"
    print(f"# grouping: {args.clouds} clouds, {sizes} on {results['machine']}")
    print("| implementation | ms / cloud | clouds / s | speed-up vs loop |\n|---|---|---|---|")
    for name, r in results.items():
        if isinstance(r, dict):
            r["speedup_vs_loop"] = base / r["s_per_batch"]
            print(f"| {name} | {r['ms_per_cloud']:.1f} | {r['clouds_per_s']:.1f} | {r['speedup_vs_loop']:.1f}x |")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
