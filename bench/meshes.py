"""Benchmark: mesh pipeline stages (load, sample 10,000 points, render 12 views) over shared/meshes/real.

Stages run in order, one file at a time, in this one process and thread; each stage gets the file's
item (its path and the outputs of the earlier stages) and its output is stored under its name for
the next stages. A stage is one entry of ``stages()``. Each
stage/file time is the median of ``--repeats`` runs after one warm-up run (whose output is kept).
Loading and sampling are single-threaded numpy/trimesh code, so meshes/s there is meshes/s per core.
Rendering runs on Mesa's llvmpipe here, which rasterises on several threads: the script sets
``LP_NUM_THREADS=1`` (unless set) so its number is per core too.

Prints a Markdown table per stage (meshes/s per core, ms per mesh: mean, median, max) and, with
``--per-file``, one row per file; then the results as JSON.

Usage: ``python bench/meshes.py [--folder PATH] [--points 10000] [--views 12] [--size 224] [--msaa 4] [--per-file]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

from common import machine, time_it

from pipelines.meshes.cameras import RenderConfig
from pipelines.meshes.load import load_mesh
from pipelines.meshes.render import Renderer
from pipelines.meshes.sampling import sample_points

REAL = Path(__file__).resolve().parents[2] / "shared" / "meshes" / "real"
Stage = Callable[[dict], object]  # item {"path": Path, "<earlier stage>": its output, ...} -> output


def stages(args: argparse.Namespace) -> dict[str, Stage]:
    renderer = Renderer(RenderConfig(num_views=args.views, size=args.size, samples=args.msaa))
    return {
        "load": lambda item: load_mesh(item["path"]),
        "sample": lambda item: sample_points(item["load"], num_points=args.points, seed=0),
        "render": lambda item: renderer.render(item["load"]),
    }


def run_stages(files: list[Path], pipeline: dict[str, Stage], repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per file per stage: ``{stage: {file name: seconds}}``."""
    items = [{"path": path} for path in files]
    seconds: dict[str, dict[str, float]] = {}
    for name, stage in pipeline.items():
        seconds[name] = {}
        for item in items:
            item[name] = stage(item)  # the warm-up run; later stages use its output
            seconds[name][item["path"].name] = time_it(lambda s=stage, i=item: s(i), repeats=repeats, warmup=0)
    return seconds


def summary(per_file: dict[str, float]) -> dict[str, float | str]:
    times = list(per_file.values())
    slowest = max(per_file, key=per_file.get)
    return {
        "meshes_per_s_per_core": len(times) / sum(times),
        "ms_mean": 1e3 * statistics.fmean(times),
        "ms_median": 1e3 * statistics.median(times),
        "ms_max": 1e3 * per_file[slowest],
        "slowest": slowest,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=REAL)
    ap.add_argument("--points", type=int, default=10_000)
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--msaa", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-file", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("LP_NUM_THREADS", "1")  # before the first GL context: per-core rendering numbers

    files = sorted(p for p in args.folder.iterdir() if p.is_file())
    seconds = run_stages(files, stages(args), args.repeats)
    results = {"machine": machine(), "files": len(files), "points": args.points}
    results |= {name: summary(per_file) for name, per_file in seconds.items()}

    print(
        f"# mesh stages: {len(files)} files from {args.folder}, {args.points} points, {args.views} views at "
        f"{args.size}px (MSAA {args.msaa}), on {results['machine']}"
    )
    print("| stage | meshes/s per core | ms / mesh (mean) | median | max (file) |\n|---|---|---|---|---|")
    for name in seconds:
        r = results[name]
        print(
            f"| {name} | {r['meshes_per_s_per_core']:.1f} | {r['ms_mean']:.1f} | {r['ms_median']:.1f} "
            f"| {r['ms_max']:.1f} ({r['slowest']}) |"
        )
    if args.per_file:
        print("\n| file | " + " | ".join(f"{name} ms" for name in seconds) + " |")
        print("|---|" + "---|" * len(seconds))
        for file in seconds[next(iter(seconds))]:
            print(f"| {file} | " + " | ".join(f"{1e3 * seconds[n][file]:.1f}" for n in seconds) + " |")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
