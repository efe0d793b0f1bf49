"""Benchmark: the dataset build on Ray Data (``pipelines.build.run.run_build``), streaming and spreading.

Sections (``--sections``, default all), each printed as a Markdown table:
- ``scaling``: the image path (procedural shapes, 10,000 points, 12 views at 224x224, the random
  OpenCLIP stand-in as teacher) as a plain single-process loop over the same stage code (the
  baseline), then on a local Ray with 1, 2 and 4 shape workers sharing the same CPUs fairly
  (``--shape-cpus`` split between them, one render thread each), then on a simulated 3-node cluster
  (``ray.cluster_utils.Cluster``, three raylets on this machine) with one shape worker per node.
  Time to first shard, shapes/s, shapes sampled when the first shard landed, rows per actor and node.
- ``memory``: a ``--memory-shapes`` build with renders under a configured object-store bound
  (``resources.object_store_gib``); the object store's use, polled from Ray every 0.25 s, against it.
- ``listing``: a ``--listing-rows`` procedural listing (generated uids), ``--listing-done`` of them already in
  the build (an earlier run's shard), de-duplicated, written, planned and cut into blocks by Ray Data
  (no shape work; ``--no-listing-cut`` stops after the plan): time and the driver's peak resident memory.
- ``storage``: bytes per shape of the build against OpenShape's per-shape ``.npy`` layout.
- ``objaverse``: Objaverse at full scale without the network: a generated fixture in the dataset's own
  layout (``--objaverse-uids`` uids in 160 shards, Sketchfab-like annotations, ~46k LVIS uids) served
  by a local HTTP server; the source downloads and parses the annotations, drops the LVIS shapes
  (``source.lvis=exclude``) and those an existing build already holds (``--objaverse-done`` uids), writes
  the listing, plans and cuts it into blocks. Time per step and the driver's peak resident memory.

Timings are wall time from the pipeline's start (actors' start-up included, listing excluded).
Usage: ``python bench/build.py [--sections scaling memory listing storage objaverse] [--shapes 240]``
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from common import machine

from pipelines.build.codec import decode_embeddings, decode_points_batch
from pipelines.build.config import BuildConfig, ResourceConfig
from pipelines.build.run import listing_dataset, plan_build, renders_views, run_build, select
from pipelines.build.stages import LISTING_SCHEMA, Embedder, ShapeWorker, write_shards
from pipelines.build.store import BuildStore
from pipelines.sources.config import SourceConfig
from pipelines.sources.dispatch import list_shapes

TEACHER = "openclip-random:tiny-ViT-32"
EMBED_CPUS = 0.25


class Sampler:
    """Calls ``probe`` every ``every`` seconds on a thread and keeps the largest value."""

    def __init__(self, probe: Callable[[], int], every: float = 0.25) -> None:
        self.probe, self.every, self.peak = probe, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.probe())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.probe())


def object_store_used() -> int:
    """Bytes in Ray's object store, summed over the cluster's nodes (what ``ray memory --stats-only`` reads)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return int(get_memory_info_reply(get_state_from_address()).store_stats.object_store_bytes_used)


def config(out: str, shapes: int, workers: int, shape_cpus: float, **kw) -> BuildConfig:
    res = ResourceConfig(
        shape_workers=workers,
        shape_worker_cpus=shape_cpus / workers,
        embed_workers=1,
        embed_worker_cpus=EMBED_CPUS,
        **kw.pop("resources", {}),
    )
    return BuildConfig(
        output=out,
        teacher=TEACHER,
        source=SourceConfig(num_shapes=shapes),
        resources=res,
        rows_per_shard=16,
        progress_every_s=1e9,
        **kw,
    )


def loop_baseline(cfg: BuildConfig) -> dict:
    """The same stage code in one process, one batch after another: list, shape, embed, write."""
    shutil.rmtree(cfg.output, ignore_errors=True)
    before = os.environ.get("LP_NUM_THREADS")
    start = time.perf_counter()
    shaper = ShapeWorker(
        num_points=cfg.num_points,
        seed=cfg.seed,
        num_views=renders_views(cfg.teacher, cfg.num_views),
        image_size=cfg.image_size,
        msaa=cfg.msaa,
        context={"teacher_name": None, "up_axis": "y"},
        cpus=os.cpu_count() or 1,  # one process: every core renders
    )
    embedder = Embedder(cfg.teacher)
    rows = [r.to_row() for r in list_shapes(cfg.source, cfg.output)]
    first = None
    for i in range(0, len(rows), cfg.rows_per_shard):
        batch = pa.Table.from_pylist(rows[i : i + cfg.rows_per_shard], schema=LISTING_SCHEMA)
        write_shards(embedder(shaper(batch)), cfg.output)
        first = first or time.perf_counter() - start
    wall = time.perf_counter() - start
    if before is None:  # keep this process's render threads out of the Ray workers started later
        os.environ.pop("LP_NUM_THREADS", None)
    return {
        "run": "plain loop, 1 process (baseline)",
        "wall_s": wall,
        "shapes": len(rows),
        "first_shard_s": first,
        "steady_shapes_per_s": (len(rows) - cfg.rows_per_shard) / (wall - first),
    }


def ray_run(name: str, cfg: BuildConfig) -> dict:
    shutil.rmtree(cfg.output, ignore_errors=True)
    report = run_build(cfg, log=lambda line: None)
    s = report.stats
    return {
        "run": name,
        "wall_s": report.wall_s,
        "shapes": report.shapes,
        "first_shard_s": s.first_shard_s,
        # After the first shard: start-up (actor processes, teacher load) excluded.
        "steady_shapes_per_s": (report.shapes - cfg.rows_per_shard) / (s.last_shard_s - s.first_shard_s),
        "shaped_at_first_shard": s.shaped_at_first_shard,
        "blocks": s.plan["num_blocks"],
        "rows_per_shape_worker": sorted(s.rows_by_worker["shape"].values()),
        "rows_per_node": sorted(s.rows_by_node["shape"].values()),
        "failures": report.failures,
    }


def scaling(args: argparse.Namespace) -> list[dict]:
    out = f"{args.out}/scaling"
    runs = [loop_baseline(config(out, args.shapes, 1, args.shape_cpus))]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    for workers in (1, 2, 4):
        cfg = config(out, args.shapes, workers, args.shape_cpus)
        runs.append(ray_run(f"Ray, {workers} shape worker(s) x {args.shape_cpus / workers:g} CPU", cfg))
    ray.shutdown()
    runs.append(cluster_run(args, out))
    base = runs[0]["steady_shapes_per_s"]
    print(f"\n# build scaling: {args.shapes} procedural shapes, 10,000 points, 12 views at 224^2, on {machine()}")
    print(
        "| run | first shard (s) | shaped at first shard | shapes/s, whole run | shapes/s after the first shard "
        "| vs loop | blocks | rows per shape worker |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r['run']} | {r['first_shard_s']:.1f} | {r.get('shaped_at_first_shard', '-')} / {r['shapes']} | "
            f"{r['shapes'] / r['wall_s']:.2f} | {r['steady_shapes_per_s']:.2f} | "
            f"{r['steady_shapes_per_s'] / base:.2f}x | "
            f"{r.get('blocks', '-')} | {r.get('rows_per_shape_worker', '-')} |"
        )
    return runs


def cluster_run(args: argparse.Namespace, out: str) -> dict:
    from ray.cluster_utils import Cluster

    # 2 logical CPUs per node: Ray Data's listing and repartition tasks need one whole CPU on some node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        cfg = config(out, args.shapes, 3, 0.75)
        return ray_run("simulated 3-node cluster (3 raylets, same 2 cores), 3 shape workers x 0.25 CPU", cfg)
    finally:
        ray.shutdown()
        for node in nodes:
            cluster.remove_node(node)
        cluster.shutdown()


def memory(args: argparse.Namespace) -> dict:
    out = f"{args.out}/memory"
    cfg = config(out, args.memory_shapes, 2, args.shape_cpus, resources={"object_store_gib": args.bound_gib})
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    idle = object_store_used()
    with Sampler(object_store_used) as store:
        run = ray_run("memory", cfg)
    plan = plan_build(cfg, args.memory_shapes)
    ray.shutdown()
    run |= {"peak_object_store": store.peak, "idle_object_store": idle, "plan": plan.to_dict()}
    print(f"\n# build memory: {args.memory_shapes} shapes with renders, on {machine()}")
    print("| shapes | blocks of | per shape in flight | planned hold | bound | peak object store | shapes/s |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {run['shapes']} | {plan.rows_per_block} | {plan.bytes_per_shape / 2**20:.2f} MiB | "
        f"{plan.in_flight_bytes / 2**20:.0f} MiB | {plan.budget_bytes / 2**20:.0f} MiB | "
        f"{store.peak / 2**20:.0f} MiB | {run['shapes'] / run['wall_s']:.2f} |"
    )
    return run


def listing(args: argparse.Namespace) -> dict:
    """List ``--listing-rows`` procedural shapes, ``--listing-done`` of them already built, plan them and let
    Ray Data cut the listing into blocks (``--no-listing-cut``: not cut)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    process = psutil.Process()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg = BuildConfig(output=f"{args.out}/listing", source=SourceConfig(num_shapes=args.listing_rows))
    shutil.rmtree(cfg.output, ignore_errors=True)
    store = BuildStore(cfg.output)
    if args.listing_done:  # an earlier run's shard: only its uid column, which is what a re-run reads
        built = [r.uid for _, r in zip(range(args.listing_done), list_shapes(cfg.source, cfg.output), strict=False)]
        Path(store.path("shards")).mkdir(parents=True)
        pq.write_table(pa.table({"uid": built}), store.path("shards", "earlier.parquet"))
        del built
    renders_views(cfg.teacher, cfg.num_views)  # import the teacher registry before the clock starts
    base_rss = process.memory_info().rss
    times = {}
    with Sampler(lambda: process.memory_info().rss) as rss:
        start = time.perf_counter()
        done = store.done_uids()
        refs = select(list_shapes(cfg.source, cfg.output), done, cfg.shard, None)
        path, total = store.write_listing((r.to_row() for r in refs), LISTING_SCHEMA)
        times["list_s"] = time.perf_counter() - start
        start = time.perf_counter()
        plan = plan_build(cfg, total)
        times["plan_s"] = time.perf_counter() - start
        blocks = rows = 0
        if args.listing_cut:
            start = time.perf_counter()
            ds = listing_dataset(store, path, plan.rows_per_block, cfg.resources.read_cpus)
            for bundle in ds.iter_internal_ref_bundles():
                blocks += len(bundle.blocks)
                rows += bundle.num_rows()
            times["split_s"] = time.perf_counter() - start
    ray.shutdown()
    size = Path(path).stat().st_size
    run = {"listed": args.listing_rows, "already_built": len(done), "to_build": total, "listing_bytes": size}
    run |= {"rows": rows, "blocks": blocks, "rows_per_block": plan.rows_per_block}
    run |= times | {"driver_rss_before": base_rss, "driver_rss_peak": rss.peak}
    cut = f"{times['split_s']:.1f} | {blocks:,} of {plan.rows_per_block}" if args.listing_cut else "not run | -"
    print(f"\n# build listing: {args.listing_rows:,} generated procedural uids, on {machine()}")
    print(
        "| listed | already built | to build | listing file | list + write (s) | plan | cut into blocks (s) | blocks "
        "| driver RSS before | peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.listing_rows:,} | {len(done):,} | {total:,} | {size / 2**20:.1f} MiB | {times['list_s']:.1f} | "
        f"{times['plan_s'] * 1e3:.1f} ms | {cut} | {base_rss / 2**30:.2f} GiB | {rss.peak / 2**30:.2f} GiB |"
    )
    return run


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


def storage(args: argparse.Namespace) -> dict:
    out = Path(f"{args.out}/storage")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_run("storage", config(str(out), 64, 1, args.shape_cpus))
    ray.shutdown()
    disk = sum(p.stat().st_size for p in (out / "shards").glob("*.parquet")) / 64
    npy = openshape_bytes(out, out / "openshape-npy")
    print(f"\n# build storage: bytes per shape on disk, {machine()}")
    print("| ours (Parquet, zstd) | OpenShape .npy | ratio |\n|---|---|---|")
    print(f"| {disk:,.0f} | {npy:,.0f} | {npy / disk:.1f}x |")
    return {"bytes_per_shape": disk, "openshape_bytes_per_shape": npy}


def make_objaverse_fixture(root: Path, num_uids: int, num_lvis: int, seed: int = 0) -> None:
    """Objaverse 1.0's annotation files for ``num_uids`` generated uids, in the Hugging Face layout
    (``pipelines.sources.objaverse``): object-paths, one metadata file per shard, the LVIS annotations."""
    done = root / f".made-{num_uids}-{num_lvis}-{seed}"
    if done.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    (root / "metadata").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    uids = [f"{v:032x}" for v in rng.integers(0, 2**63, size=(num_uids,), dtype=np.int64) * 7919 + 17]
    shards = np.array_split(np.arange(num_uids), 160)
    words = ["chair", "wooden", "old", "lowpoly", "car", "tree", "lamp", "scan", "rigged", "game", "asset", "red"]
    paths = {}
    for s, members in enumerate(shards):
        shard = f"000-{s:03d}"
        meta = {}
        for i in members:
            uid = uids[i]
            paths[uid] = f"glbs/{shard}/{uid}.glb"
            picks = rng.integers(0, len(words), size=5)
            meta[uid] = {
                "uid": uid,
                "name": f"{words[picks[0]]} {words[picks[1]]} {i}",
                "tags": [{"name": words[k]} for k in picks[2:]],
                "categories": [{"name": words[picks[0]]}],
                "description": f"A {words[picks[1]]} {words[picks[0]]} model, number {i}.",
                "license": "by",
            }
        with gzip.open(root / "metadata" / f"{shard}.json.gz", "wt") as f:
            json.dump(meta, f)
    with gzip.open(root / "object-paths.json.gz", "wt") as f:
        json.dump(paths, f)
    lvis: dict[str, list[str]] = {}
    for n, i in enumerate(rng.choice(num_uids, size=num_lvis, replace=False)):
        lvis.setdefault(f"category_{n % 1156}", []).append(uids[i])
    with gzip.open(root / "lvis-annotations.json.gz", "wt") as f:
        json.dump(lvis, f)
    done.touch()


def objaverse(args: argparse.Namespace) -> dict:
    """List the Objaverse fixture as a build does, against an existing build of ``--objaverse-done`` uids."""
    root = Path(args.out) / "objaverse-fixture"
    start = time.perf_counter()
    make_objaverse_fixture(root, args.objaverse_uids, args.objaverse_lvis)
    made_s = time.perf_counter() - start
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    output = f"{args.out}/objaverse-build"
    shutil.rmtree(output, ignore_errors=True)
    # the existing build: the first shards' uids as rows (only the uid column is read to skip them)
    with gzip.open(root / "object-paths.json.gz", "rt") as f:
        built = sorted(json.load(f))[: args.objaverse_done]
    os.makedirs(f"{output}/shards")
    pq.write_table(pa.table({"uid": built}), f"{output}/shards/existing.parquet")
    del built
    process = psutil.Process()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    base_rss = process.memory_info().rss
    source = SourceConfig(kind="objaverse", base_url=url, lvis="exclude", cache_dir=f"{args.out}/objaverse-cache")
    shutil.rmtree(source.cache_dir, ignore_errors=True)
    cfg = BuildConfig(output=output, source=source)
    store = BuildStore(cfg.output)
    renders_views(cfg.teacher, cfg.num_views)  # import the teacher registry before the clock starts
    times = {}
    with Sampler(lambda: process.memory_info().rss) as rss:
        start = time.perf_counter()
        done = store.done_uids()
        times["done_s"] = time.perf_counter() - start
        start = time.perf_counter()
        refs = select(list_shapes(cfg.source, cfg.output), done, cfg.shard, None)
        path, total = store.write_listing((r.to_row() for r in refs), LISTING_SCHEMA)
        times["list_s"] = time.perf_counter() - start
        start = time.perf_counter()
        plan = plan_build(cfg, total)
        times["plan_s"] = time.perf_counter() - start
        start = time.perf_counter()
        blocks = rows = 0
        for bundle in listing_dataset(
            store, path, plan.rows_per_block, cfg.resources.read_cpus
        ).iter_internal_ref_bundles():
            blocks += len(bundle.blocks)
            rows += bundle.num_rows()
        times["split_s"] = time.perf_counter() - start
    ray.shutdown()
    server.shutdown()
    annotations = sum(p.stat().st_size for p in root.rglob("*.json.gz"))
    run = {"uids": args.objaverse_uids, "lvis": args.objaverse_lvis, "already_built": len(done), "listed": total}
    run |= {"rows": rows, "blocks": blocks, "rows_per_block": plan.rows_per_block, "annotation_bytes": annotations}
    run |= times | {"fixture_s": made_s, "driver_rss_before": base_rss, "driver_rss_peak": rss.peak}
    print(f"\n# build listing: Objaverse fixture of {args.objaverse_uids:,} uids on a local server, on {machine()}")
    print(
        "| uids | LVIS dropped | already built | listed | annotations (gz) | read build | "
        "download + parse + list + write | plan | cut into blocks | blocks | driver RSS before | peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.objaverse_uids:,} | {args.objaverse_lvis:,} | {len(done):,} | {total:,} | "
        f"{annotations / 2**20:.0f} MiB | {times['done_s']:.1f} s | {times['list_s']:.1f} s | "
        f"{times['plan_s'] * 1e3:.1f} ms | {times['split_s']:.1f} s | {blocks:,} of {plan.rows_per_block} | "
        f"{base_rss / 2**30:.2f} GiB | {rss.peak / 2**30:.2f} GiB |"
    )
    return run


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


SECTIONS = {"scaling": scaling, "memory": memory, "listing": listing, "storage": storage, "objaverse": objaverse}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    ap.add_argument("--shapes", type=int, default=240)
    ap.add_argument("--shape-cpus", type=float, default=0.75, help="CPUs of the whole shape pool, split fairly")
    ap.add_argument("--memory-shapes", type=int, default=4000)
    ap.add_argument("--bound-gib", type=float, default=0.25, help="resources.object_store_gib of the memory run")
    ap.add_argument("--listing-rows", type=int, default=1_000_000)
    ap.add_argument("--listing-done", type=int, default=100_000, help="of them in an earlier run's shard")
    ap.add_argument("--listing-cut", action=argparse.BooleanOptionalAction, default=True, help="cut into blocks")
    ap.add_argument("--objaverse-uids", type=int, default=800_000, help="uids of the generated Objaverse fixture")
    ap.add_argument("--objaverse-lvis", type=int, default=46_000, help="of them in the LVIS annotations")
    ap.add_argument("--objaverse-done", type=int, default=100_000, help="of them already in the existing build")
    ap.add_argument("--out", default="/tmp/uni3d-bench-build")
    args = ap.parse_args(argv)
    results = {name: SECTIONS[name](args) for name in args.sections}
    print(json.dumps(results, default=str))
    return results


if __name__ == "__main__":
    main()
