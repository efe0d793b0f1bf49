"""Benchmark: the dataset build end to end on a local Ray (``pipelines.build.run_build``).

Builds procedural shapes at the official 10,000 points, in one run each:
- text path: the MiniLM teacher (no renders);
- image path: 12 views at 224x224 rendered and embedded by the random OpenCLIP stand-in (its compute is
  tiny next to the real EVA02-E-14-plus, so this measures the pipeline, not a teacher);
- the image path again with 2 shape workers instead of 1 (scaling).
Reports shapes/s end to end (pipeline wall time, Ray start and listing excluded), mean seconds per
shape by stage, peak resident memory of all processes (driver + Ray), and bytes per shape on disk
against OpenShape's per-shape ``.npy`` layout holding the same points and embeddings.

Usage: ``python bench/build.py [--shapes 96] [--out /tmp/uni3d-bench-build]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import ray
from common import machine

from pipelines.build import run_build
from pipelines.config import BuildConfig, ResourceConfig, SourceConfig
from pipelines.schema import decode_embeddings, decode_points_batch


class PeakMemory:
    """Samples the summed RSS of this process tree and Ray's processes every 0.2 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if "ray" in cmd or proc.pid == psutil.Process().pid:
                    total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def openshape_bytes(out: Path, folder: Path, limit: int = 16) -> float:
    """Mean size of OpenShape-layout .npy files (float32 xyz, rgb, features) holding our rows' data."""
    table = pq.read_table(out / "shards").slice(0, limit)
    points = decode_points_batch(table)
    dim = table["embed_dim"][0].as_py()
    views, n_views = decode_embeddings(table["view_embeddings"], dim)
    texts, n_texts = decode_embeddings(table["text_embeddings"], dim)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for i, row in enumerate(table.to_pylist()):
        data = {
            "xyz": points[i, :, :3],
            "rgb": points[i, :, 3:],
            "image_feat": views[i, : n_views[i]],
            "text": row["texts"],
            "text_feat": texts[i, : n_texts[i]],
        }
        path = folder / f"{i}.npy"
        np.save(path, data, allow_pickle=True)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def one(name: str, cfg: BuildConfig) -> dict:
    shutil.rmtree(cfg.output, ignore_errors=True)
    with PeakMemory() as mem:
        report = run_build(cfg, log=lambda line: None)
    out = Path(cfg.output)
    disk = sum(p.stat().st_size for p in (out / "shards").glob("*.parquet"))
    n = report.manifest.num_shapes
    return {
        "run": name,
        "shapes": n,
        "failures": report.failures,
        "wall_s": report.wall_s,
        "shapes_per_s": n / report.wall_s,
        "stage_ms": {k: 1e3 * v / n for k, v in sorted(report.seconds.items())},
        "peak_rss_gib": mem.peak / 2**30,
        "bytes_per_shape": disk / n,
        "openshape_bytes_per_shape": openshape_bytes(out, out / "openshape-npy"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=96)
    ap.add_argument("--out", default="/tmp/uni3d-bench-build")
    args = ap.parse_args(argv)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    source = SourceConfig(num_shapes=args.shapes)

    def cfg(tag: str, teacher: str, workers: int) -> BuildConfig:
        res = ResourceConfig(shape_workers=workers, shape_worker_cpus=0.3)  # 2 x 0.3 fit next to the listing task
        return BuildConfig(
            output=f"{args.out}/{tag}",
            teacher=teacher,
            source=source,
            resources=res,
            rows_per_shard=32,
            progress_every_s=1e9,
        )

    runs = [
        one("text path (MiniLM), 1 shape worker", cfg("text", "minilm", 1)),
        one("image path (12 views), 1 shape worker", cfg("img1", "openclip-random:tiny-ViT-32", 1)),
        one("image path (12 views), 2 shape workers", cfg("img2", "openclip-random:tiny-ViT-32", 2)),
    ]
    ray.shutdown()
    print(f"# build: {args.shapes} procedural shapes, 10,000 points, on {machine()}")
    print("| run | shapes/s | ms/shape by stage | peak RSS (GiB) | bytes/shape | OpenShape .npy | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stage_ms"].items())
        ratio = r["openshape_bytes_per_shape"] / r["bytes_per_shape"]
        print(
            f"| {r['run']} | {r['shapes_per_s']:.2f} | {stages} | {r['peak_rss_gib']:.1f} | "
            f"{r['bytes_per_shape']:,.0f} | {r['openshape_bytes_per_shape']:,.0f} | {ratio:.1f}x |"
        )
    print(json.dumps(runs))
    return runs


if __name__ == "__main__":
    main()
