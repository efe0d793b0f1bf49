"""The dataset build on Ray Data: list → fetch/load/sample/render → embed → write, streaming.

``run_build`` lists the source on the driver (streamed into a Parquet listing, minus what earlier
runs already wrote), then streams that listing through three actor pools (``pipelines.stages``)
whose sizes, batch sizes and CPU/GPU requests come from ``BuildConfig.resources``: the same job
fills a 2-core laptop or a cluster of CPU and GPU nodes. Nothing is collected on the driver but
one small summary row per shape, reduced as it arrives into progress lines and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipelines.build_io import BuildStore
from pipelines.config import BuildConfig, parse_shard
from pipelines.schema import FAILURES_SCHEMA, Manifest
from pipelines.shapes import ShapeRef
from pipelines.sources import list_shapes, objaverse_config
from pipelines.stages import LISTING_SCHEMA, Embedder, ShapeWorker, ShardWriter


@dataclass
class BuildReport:
    """What one run did (the manifest describes the whole build)."""

    manifest: Manifest
    shapes: int = 0  # shapes processed by this run, written or failed
    failures: dict[str, int] = field(default_factory=dict)  # stage -> shapes this run
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> summed wall time over shapes
    wall_s: float = 0.0  # pipeline wall time, listing excluded


def in_shard(uid: str, index: int, count: int) -> bool:
    return count == 1 or int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16) % count == index


def select(refs: Iterable[ShapeRef], done: set[str], shard: str, limit: int | None) -> Iterator[ShapeRef]:
    """The refs this run builds: in its shard, not written before, at most ``limit``; duplicates refused."""
    index, count = parse_shard(shard)
    seen: set[str] = set()
    taken = 0
    for ref in refs:
        if ref.uid in seen:
            raise ValueError(f"source lists uid {ref.uid!r} twice; uids must be unique within a build")
        seen.add(ref.uid)
        if ref.uid in done or not in_shard(ref.uid, index, count):
            continue
        if limit is not None and taken >= limit:
            return
        taken += 1
        yield ref


def renders_views(teacher: str, num_views: int) -> int:
    """Views to render: none for a text-only teacher (nothing could embed them)."""
    from uni3d.teachers import parse_teacher

    cfg = parse_teacher(teacher)
    return 0 if cfg.kind == "minilm" or cfg.text_only else num_views


def check_same_build(store: BuildStore, cfg: BuildConfig) -> None:
    """A re-run must use the teacher and point count of the build it extends."""
    if not store.shard_files():
        return
    previous = json.loads(store.fs.open_input_stream(store.path("_work", "build.json")).read().decode())
    for key in ("teacher", "num_points"):
        if previous.get(key) != getattr(cfg, key):
            raise ValueError(
                f"{cfg.output} was built with {key}={previous.get(key)!r}; this run asks for "
                f"{getattr(cfg, key)!r}. Use another output path, or the same {key}."
            )


def check_resources(cfg: BuildConfig) -> None:
    """Fail fast when the actor pools cannot all start next to Ray Data's listing task."""
    available = ray.cluster_resources().get("CPU", 0.0)
    needed = cfg.resources.actor_cpus() + 1.0
    if cfg.resources.check_fits and needed > available + 1e-9:
        raise ValueError(
            f"the build's actors ask for {cfg.resources.actor_cpus():g} CPUs (resources.shape_workers x "
            f"shape_worker_cpus + embed_workers x embed_worker_cpus + writer_cpus) and Ray Data's listing needs "
            f"1 more, but the cluster has {available:g}: lower resources.* (or set resources.check_fits=false "
            "on an autoscaling cluster)"
        )


def run_build(cfg: BuildConfig, log: Callable[[str], None] = print) -> BuildReport:
    check_resources(cfg)
    store = BuildStore(cfg.output)
    check_same_build(store, cfg)
    store.fs.create_dir(store.path("_work"), recursive=True)
    with store.fs.open_output_stream(store.path("_work", "build.json")) as f:
        f.write(json.dumps(cfg.to_dict(), indent=2).encode())

    done = store.done_uids()
    refs = select(list_shapes(cfg.source, cfg.output), done, cfg.shard, cfg.limit)
    listing, total = store.write_listing((r.to_row() for r in refs), LISTING_SCHEMA, chunk=cfg.rows_per_shard)
    log(
        f"[build] {total} shapes to build ({len(done)} already in {cfg.output}), source={cfg.source.kind}, "
        f"teacher={cfg.teacher}"
    )
    stats = _run(cfg, store, listing, total, log) if total else {"failures": Counter(), "seconds": Counter(), "n": 0}
    store.remove(listing)
    manifest = _finish(cfg, store, stats, log)
    return BuildReport(manifest, stats["n"], dict(stats["failures"]), dict(stats["seconds"]), stats.get("wall", 0.0))


def _pipeline(cfg: BuildConfig, store: BuildStore, listing: str, total: int) -> ray.data.Dataset:
    res = cfg.resources
    context = {"teacher_name": None, "up_axis": cfg.source.up_axis}
    if cfg.source.kind == "objaverse":
        context["objaverse"] = objaverse_config(cfg.source, cfg.output)
    num_views = renders_views(cfg.teacher, cfg.num_views)
    ds = ray.data.read_parquet(
        listing,
        filesystem=store.fs,
        ray_remote_args={"num_cpus": res.read_cpus},
        override_num_blocks=max(1, -(-total // cfg.rows_per_shard)),
    )
    ds = ds.map_batches(
        ShapeWorker,
        batch_format="pyarrow",
        batch_size=res.shape_batch,
        fn_constructor_kwargs=dict(
            num_points=cfg.num_points,
            seed=cfg.seed,
            num_views=num_views,
            image_size=cfg.image_size,
            msaa=cfg.msaa,
            context=context,
        ),
        compute=ray.data.ActorPoolStrategy(size=res.shape_workers),
        num_cpus=res.shape_worker_cpus,
    )
    ds = ds.map_batches(
        Embedder,
        batch_format="pyarrow",
        batch_size=res.embed_batch,
        fn_constructor_kwargs=dict(teacher=cfg.teacher),
        compute=ray.data.ActorPoolStrategy(size=res.embed_workers),
        num_cpus=res.embed_worker_cpus,
        num_gpus=res.embed_worker_gpus,
    )
    return ds.map_batches(
        ShardWriter,
        batch_format="pyarrow",
        batch_size=cfg.rows_per_shard,
        fn_constructor_kwargs=dict(output=cfg.output),
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=res.writer_cpus,
    )


def _run(cfg: BuildConfig, store: BuildStore, listing: str, total: int, log: Callable[[str], None]) -> dict:
    failures: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    n, start, last = 0, time.perf_counter(), time.perf_counter()
    for batch in _pipeline(cfg, store, listing, total).iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            n += 1
            if row["stage"]:
                failures[row["stage"]] += 1
            seconds.update(dict(row["seconds"] or []))
        now = time.perf_counter()
        if now - last >= cfg.progress_every_s or n == total:
            rate = n / (now - start)
            eta = (total - n) / rate if rate > 0 else float("inf")
            log(f"[build] {n}/{total} shapes, {rate:.2f} shapes/s, ETA {eta:.0f} s, failures {sum(failures.values())}")
            last = now
    return {"failures": failures, "seconds": seconds, "n": n, "wall": time.perf_counter() - start}


def _finish(cfg: BuildConfig, store: BuildStore, stats: dict, log: Callable[[str], None]) -> Manifest:
    shards = store.shard_files()
    num_shapes = num_views = num_texts = 0
    teacher, embed_dim = cfg.teacher, 0
    for path in shards:
        table = pq.read_table(path, columns=["num_views", "texts", "teacher", "embed_dim"], filesystem=store.fs)
        num_shapes += table.num_rows
        num_views += pc.sum(table["num_views"]).as_py() or 0
        num_texts += pc.sum(pc.list_value_length(table["texts"])).as_py() or 0
        if table.num_rows:
            teacher, embed_dim = table["teacher"][0].as_py(), table["embed_dim"][0].as_py()
    failures: Counter[str] = Counter()
    for path in store.failure_files():
        failures.update(
            pq.read_table(path, columns=["stage"], filesystem=store.fs, schema=FAILURES_SCHEMA)
            .column("stage")
            .to_pylist()
        )
    manifest = Manifest(
        teacher=teacher,
        embed_dim=embed_dim,
        num_points=cfg.num_points,
        num_shapes=num_shapes,
        num_views=num_views,
        num_texts=num_texts,
        failures=dict(failures),
        config=cfg.to_dict(),
        shards=[store.relative(p) for p in shards],
    )
    store.write_manifest(manifest)
    per_stage = ", ".join(f"{k} {v / max(1, stats['n']) * 1e3:.0f} ms" for k, v in sorted(stats["seconds"].items()))
    log(
        f"[build] this run: {stats['n']} shapes, failures by stage {dict(stats['failures']) or 'none'}; "
        f"mean time per shape by stage: {per_stage or 'n/a'}"
    )
    log(
        f"[build] {cfg.output}: {num_shapes} shapes in {len(shards)} shards, {num_views} view and {num_texts} text "
        f"embeddings ({teacher}, dim {embed_dim}); failures {dict(failures) or 'none'}"
    )
    return manifest
