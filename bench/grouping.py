"""Benchmark: FPS + kNN grouping on one CPU core (B=16 clouds, N=10,000 points, 512 groups of 64).

Compares, in one run on the same clouds, with torch on one thread:
- ours, CPU kernel: ``uni3d.grouping_cpu`` (numba, one cloud at a time; grid cells prune FPS updates and
  bound the kNN search), official FPS semantics;
- ours, torch loop: the batched, fused FPS+kNN of ``uni3d.tokenizer`` (what GPUs run), official semantics;
- baseline: a straightforward per-cloud loop, the pure-PyTorch FPS found in point-cloud repos
  (per step: distances, masked update, arg-max) with the official near-origin rule, followed by
  a kNN over the full distance matrix;
- fpsample: the ``fpsample`` package's bucket FPS per cloud plus the same kNN, for reference when it is
  installed. It is not the official sequence: its ``start_idx`` picks the point at that position after it has
  sorted the points into its tree, so it starts elsewhere than index 0, and it has no near-origin rule.

Before timing, the script checks that the CPU kernel, the torch loop and the baseline choose identical centres
on every cloud, and that the kernel's groups hold the torch loop's points.

Usage: ``python bench/grouping.py [--batch 16] [--points 10000] [--groups 512] [--group-size 64] [--threads 1]``
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=512)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= clouds the CPU kernel groups at once)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(args.batch, args.points, 3, generator=g)
    xyz = xyz / xyz.norm(dim=-1, keepdim=True).amax(1, keepdim=True)
    pc = torch.cat([xyz, torch.rand(args.batch, args.points, 3, generator=g)], -1)

    # Same centres as the per-cloud loop (official semantics), and the same groups, checked before timing.
    torch_idx, torch_nbrs = farthest_point_sample(pc[..., :3], args.groups, knn=args.group_size, backend="torch")
    assert all(torch.equal(torch_idx[b], loop_fps(pc[b, :, :3], args.groups)) for b in range(args.batch))
    cpu_idx, cpu_nbrs = farthest_point_sample(pc[..., :3], args.groups, knn=args.group_size, backend="cpu")
    assert torch.equal(cpu_idx, torch_idx), "the CPU kernel chose other centres"
    assert torch.equal(cpu_nbrs.sort(-1).values, torch_nbrs.sort(-1).values), "the CPU kernel formed other groups"

    results = {
        "machine": machine(),
        "batch": args.batch,
        "points": args.points,
        "groups": args.groups,
        "group_size": args.group_size,
    }
    runs = {
        "ours, CPU kernel (numba, per cloud, FPS+kNN)": lambda: group_points(pc, args.groups, args.group_size, "cpu"),
        "ours, CPU kernel, FPS only": lambda: farthest_point_sample(pc[..., :3], args.groups, backend="cpu"),
        "ours, torch loop (batched, fused FPS+kNN)": lambda: group_points(pc, args.groups, args.group_size, "torch"),
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
    print(f"# grouping: B={args.batch} N={args.points} G={args.groups} K={args.group_size} on {results['machine']}")
    print("| implementation | ms / cloud | clouds / s | speed-up vs loop |\n|---|---|---|---|")
    for name, r in results.items():
        if isinstance(r, dict):
            r["speedup_vs_loop"] = base / r["s_per_batch"]
            print(f"| {name} | {r['ms_per_cloud']:.1f} | {r['clouds_per_s']:.1f} | {r['speedup_vs_loop']:.1f}x |")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
