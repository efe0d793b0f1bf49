"""The dataset build on Ray Data: list → fetch/load/sample/render → embed → write, streaming.

``run_build`` lists the source on the driver (streamed into a Parquet listing, minus what earlier
runs already wrote), cuts that listing into many small blocks (``pipelines.build.plan``) and
streams them through two actor pools and a pool of writer tasks (``pipelines.build.stages``) whose sizes,
batch sizes and CPU/GPU requests come from ``BuildConfig.resources``: every shape worker has work,
the teacher and the writers start on the first blocks, and Ray Data's backpressure keeps the views
in flight within the object-store budget, on a 2-core laptop or a cluster of CPU and GPU nodes.
Nothing is collected on the driver but one small summary row per shape, reduced as it arrives into
progress lines, the manifest and the run's stats (which actor and node did each stage, when the
first shard landed, Ray Data's own ``Dataset.stats()``) under ``stats/``.

A re-run skips every shape written or recorded as a failure; with ``retry_failures`` it builds again the
failures that may pass (``pipelines.build.failures.failure_is_transient``), whose rows it first removes, so that
each shape ends up once, in a shard or in the failures table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipelines import faults
from pipelines.build.config import BuildConfig, parse_shard
from pipelines.build.failures import failure_is_transient
from pipelines.build.manifest import Manifest
from pipelines.build.plan import BlockPlan, bytes_per_shape, plan_blocks
from pipelines.build.schema import FAILURES_SCHEMA, SCHEMA_VERSION
from pipelines.build.stages import LISTING_SCHEMA, Embedder, ShapeWorker, write_shards
from pipelines.build.store import BuildStore
from pipelines.build.uids import SeenUids, UidSet, uid_keys
from pipelines.settings import ConfigError
from pipelines.sources.dispatch import list_shapes, objaverse_config
from pipelines.sources.shapes import ShapeRef
from pipelines.storage import Location


@dataclass
class BuildStats:
    """How this run spread and streamed, from its summary rows (Ray Data's own report in ``ray_data``)."""

    rows_by_worker: dict[str, dict[str, int]] = field(default_factory=dict)  # "shape" | "embed" -> actor -> rows
    rows_by_node: dict[str, dict[str, int]] = field(default_factory=dict)  # "shape" | "embed" -> node -> rows
    shards_written: int = 0  # shard or failure files written by this run
    first_shard_s: float | None = None  # pipeline start -> first shard (or failures file) written
    last_shard_s: float | None = None  # pipeline start -> last one written
    shaped_at_first_shard: int = 0  # rows the shape stage had finished when the first shard landed
    plan: dict = field(default_factory=dict)  # the BlockPlan
    ray_data: str = ""  # Dataset.stats() of the run


@dataclass
class BuildReport:
    """What one run did (the manifest describes the whole build)."""

    manifest: Manifest
    shapes: int = 0  # shapes processed by this run, written or failed
    failures: dict[str, int] = field(default_factory=dict)  # stage -> shapes this run
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> summed wall time over shapes
    wall_s: float = 0.0  # pipeline wall time, listing excluded
    stats: BuildStats = field(default_factory=BuildStats)
    retried: dict[str, int] = field(default_factory=dict)  # stage of the earlier failure -> shapes built again


@dataclass
class Resume:
    """What earlier runs left: the uids this run skips, and the failures it may build again."""

    done: UidSet  # written, or failed and not to be retried
    retry: dict[str, str]  # uid -> stage of its transient failure; empty unless retry_failures
    transient: int  # transient failures recorded (not written since)
    permanent: int  # the other failures recorded


def resume_state(store: BuildStore, retry_failures: bool) -> Resume:
    """Read the shards' uids and the failures table, classifying each failure as transient or permanent."""
    written = store.shard_uids()
    rows = store.failure_rows()
    kept = written.contains(uid_keys([row["uid"] for row in rows]))  # written since it failed
    failed = [row for row, written_since in zip(rows, kept, strict=True) if not written_since]
    transient = {row["uid"]: row["stage"] for row in failed if failure_is_transient(row)}
    retry = transient if retry_failures else {}
    done = written | UidSet.of(row["uid"] for row in failed if row["uid"] not in retry)
    return Resume(done, retry, len(transient), len(failed) - len(transient))


def in_shard(uid: str, index: int, count: int) -> bool:
    return count == 1 or int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16) % count == index


def select(
    refs: Iterable[ShapeRef], done: UidSet, shard: str, limit: int | None, chunk: int = 10_000
) -> Iterator[ShapeRef]:
    """The refs this run builds: in its shard, not written before, at most ``limit``; duplicates refused.

    The refs are taken ``chunk`` at a time, their uids checked as digests (``pipelines.build.uids``): the driver
    holds 16 bytes per listed uid, not a Python set of strings."""
    index, count = parse_shard(shard)
    seen = SeenUids()
    taken = 0
    refs = iter(refs)
    while batch := list(itertools.islice(refs, chunk)):
        keys = uid_keys([ref.uid for ref in batch])
        again = seen.add(keys)
        if again.any():
            uid = batch[int(np.argmax(again))].uid
            raise ConfigError(f"source lists uid {uid!r} twice; uids must be unique within a build")
        for ref, skip in zip(batch, done.contains(keys), strict=True):
            if skip or not in_shard(ref.uid, index, count):
                continue
            if limit is not None and taken >= limit:
                return
            taken += 1
            yield ref


def renders_views(teacher: str, num_views: int) -> int:
    """Views to render: none for a text-only teacher (nothing could embed them)."""
    from uni3d.teacher_spec import parse_teacher

    cfg = parse_teacher(teacher)
    return 0 if cfg.kind == "minilm" or cfg.text_only else num_views


def check_same_build(store: BuildStore, cfg: BuildConfig) -> None:
    """A re-run must use the teacher and point count of the build it extends."""
    if not store.shard_files():
        return
    previous = json.loads(store.fs.open_input_stream(store.path("_work", "build.json")).read().decode())
    version = previous.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise ConfigError(
            f"{cfg.output} holds a schema version {version} build; this code writes version {SCHEMA_VERSION} "
            "(text groups, docs/dataset.md). Its shards still train and evaluate; build into another output path."
        )
    for key in ("teacher", "num_points"):
        if previous.get(key) != getattr(cfg, key):
            raise ConfigError(
                f"{cfg.output} was built with {key}={previous.get(key)!r}; this run asks for "
                f"{getattr(cfg, key)!r}. Use another output path, or the same {key}."
            )


def check_resources(cfg: BuildConfig) -> None:
    """Fail fast when the actor pools cannot all start next to Ray Data's listing task."""
    available = ray.cluster_resources().get("CPU", 0.0)
    needed = cfg.resources.actor_cpus() + 1.0
    if cfg.resources.check_fits and needed > available + 1e-9:
        raise ConfigError(
            f"the build's actors ask for {cfg.resources.actor_cpus():g} CPUs (resources.shape_workers x "
            f"shape_worker_cpus + embed_workers x embed_worker_cpus) and Ray Data's listing and writer tasks "
            f"need 1 more, but the cluster has {available:g}: lower resources.* (or set resources.check_fits=false "
            "on an autoscaling cluster)"
        )


def object_store_budget(gib: float) -> int:
    """Bytes of object store Ray Data may fill: ``gib`` if set (> 0), never above Ray Data's own default
    of half the cluster's object store (it takes the smaller of the two)."""
    default = int(0.5 * ray.cluster_resources().get("object_store_memory", 0.0))
    configured = int(gib * 2**30)
    return min(configured, default) if configured > 0 else default


def limit_object_store(ds: ray.data.Dataset, budget_bytes: int) -> ray.data.Dataset:
    """Bound what this dataset's execution holds in the object store; Ray Data backpressures beyond it."""
    options = ds.context.execution_options
    options.resource_limits = options.resource_limits.copy(object_store_memory=budget_bytes)
    return ds


def plan_build(cfg: BuildConfig, total: int) -> BlockPlan:
    res = cfg.resources
    return plan_blocks(
        total,
        rows_per_shard=cfg.rows_per_shard,
        shape_workers=res.shape_workers,
        embed_workers=res.embed_workers,
        embed_batch=res.embed_batch,
        per_shape=bytes_per_shape(cfg.num_points, renders_views(cfg.teacher, cfg.num_views), cfg.image_size),
        budget_bytes=object_store_budget(res.object_store_gib),
        rows_per_block=res.rows_per_block,
    )


def run_build(cfg: BuildConfig, log: Callable[[str], None] = print) -> BuildReport:
    check_resources(cfg)
    plan_build(cfg, 0)  # a configuration that cannot fit the object store fails before listing
    store = BuildStore(cfg.output)
    check_same_build(store, cfg)
    store.fs.create_dir(store.path("_work"), recursive=True)
    with store.fs.open_output_stream(store.path("_work", "build.json")) as f:
        f.write(json.dumps(cfg.to_dict() | {"schema_version": SCHEMA_VERSION}, indent=2).encode())

    resume = resume_state(store, cfg.retry_failures)
    refs = select(list_shapes(cfg.source, cfg.output), resume.done, cfg.shard, cfg.limit)
    retried: dict[str, str] = {}  # uid -> stage: the failures this run's listing takes

    def rows(refs: Iterable[ShapeRef]) -> Iterator[dict]:
        for ref in refs:
            if ref.uid in resume.retry:
                retried[ref.uid] = resume.retry[ref.uid]
            yield ref.to_row()

    listing, total = store.write_listing(rows(refs), LISTING_SCHEMA, chunk=10_000)
    store.drop_failures(set(retried))  # before the pipeline: each retried shape lands once, as a row or a failure
    log(
        f"[build] {total} shapes to build ({len(resume.done)} already in {cfg.output}), source={cfg.source.kind}, "
        f"teacher={cfg.teacher}"
    )
    by_stage = Counter(retried.values())
    log_retries(resume, by_stage, cfg.retry_failures, log)
    stats = BuildStats()
    summary: dict = {"failures": Counter(), "seconds": Counter(), "n": 0}
    if total:
        plan = plan_build(cfg, total)
        log(f"[build] plan: {plan.describe()}")
        summary, stats = _run(cfg, store, listing, plan, log)
        summary["retried"] = dict(by_stage)
        _write_stats(store, cfg, summary, stats)
    store.remove(listing)
    manifest = _finish(cfg, store, summary, log)
    return BuildReport(
        manifest,
        summary["n"],
        dict(summary["failures"]),
        dict(summary["seconds"]),
        summary.get("wall", 0.0),
        stats,
        dict(by_stage),
    )


def log_retries(resume: Resume, retried: Counter[str], retry_failures: bool, log: Callable[[str], None]) -> None:
    """Say which failures this run builds again, or that a re-run could."""
    if retry_failures:
        count = sum(retried.values())
        by_stage = f" ({', '.join(f'{stage}: {n}' for stage, n in sorted(retried.items()))})" if count else ""
        left = resume.transient - count  # outside this run's --shard or --limit
        later = f"; {left} transient failures left to other runs (--shard, --limit)" if left else ""
        log(f"[build] retrying {count} transient failures{by_stage}; {resume.permanent} permanent failures kept{later}")
    elif resume.transient:
        log(
            f"[build] {resume.transient} of {resume.transient + resume.permanent} recorded failures may pass on a "
            "re-run (fetch, teacher, shard write): --retry-failures builds them again"
        )


def listing_dataset(store: BuildStore, listing: str, rows_per_block: int, read_cpus: float) -> ray.data.Dataset:
    """The run's listing as a Ray Dataset of blocks of ``rows_per_block`` rows.

    Ray Data reads one small Parquet file as one block whatever ``override_num_blocks`` says, and an
    actor pool runs one task per block, so the listing is re-cut by a streaming repartition: blocks
    flow to the pools as they are cut, and every actor of a pool gets its share.
    """
    ds = ray.data.read_parquet(listing, filesystem=store.fs, num_cpus=read_cpus)
    return ds.repartition(target_num_rows_per_block=rows_per_block, strict=True)


def _pipeline(cfg: BuildConfig, store: BuildStore, listing: str, plan: BlockPlan) -> ray.data.Dataset:
    res = cfg.resources
    context = {"teacher_name": None, "up_axis": cfg.source.up_axis}
    if cfg.source.kind == "objaverse":
        context["objaverse"] = objaverse_config(cfg.source, cfg.output)
        context["keep_downloads"] = cfg.source.keep_downloads
    num_views = renders_views(cfg.teacher, cfg.num_views)
    ds = listing_dataset(store, listing, plan.rows_per_block, res.read_cpus)
    ds = ds.map_batches(
        ShapeWorker,
        batch_format="pyarrow",
        batch_size=min(res.shape_batch, plan.rows_per_block),  # never bundle blocks: one task per block
        fn_constructor_kwargs=dict(
            num_points=cfg.num_points,
            seed=cfg.seed,
            num_views=num_views,
            image_size=cfg.image_size,
            msaa=cfg.msaa,
            context=context,
            cpus=res.shape_worker_cpus,
        ),
        compute=ray.data.ActorPoolStrategy(size=res.shape_workers),
        num_cpus=res.shape_worker_cpus,  # Ray Data places a pool's actors with SPREAD: every node gets some
    )
    ds = ds.map_batches(
        Embedder,
        batch_format="pyarrow",
        batch_size=plan.embed_rows,  # resources.embed_batch rounded up to whole blocks
        fn_constructor_kwargs=dict(teacher=cfg.teacher),
        compute=ray.data.ActorPoolStrategy(size=res.embed_workers),
        num_cpus=res.embed_worker_cpus,
        num_gpus=res.embed_worker_gpus,
    )
    # Teacher outputs are whole blocks that divide a shard (pipelines.build.plan), so Ray Data bundles them
    # into batches of exactly rows_per_shard rows: one shard per batch, with no re-blocking stage (a
    # streaming repartition here would hold a whole CPU and starve the writers of their budget).
    ds = ds.map_batches(
        write_shards,
        batch_format="pyarrow",
        batch_size=cfg.rows_per_shard,
        fn_kwargs=dict(output=cfg.output, fault=faults.writer_fault() or None),  # tests only: $UNI3D_FAULTS
        num_cpus=res.writer_cpus,
    )
    # Blocks keep the listing's order through the pools, so the same listing gives the same shards
    # (names and rows) on every run: builds are reproducible, and so is training on them.
    ds.context.execution_options.preserve_order = True
    return limit_object_store(ds, plan.budget_bytes)


def _run(
    cfg: BuildConfig, store: BuildStore, listing: str, plan: BlockPlan, log: Callable[[str], None]
) -> tuple[dict, BuildStats]:
    failures: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    workers: dict[str, Counter[str]] = {"shape": Counter(), "embed": Counter()}
    nodes: dict[str, Counter[str]] = {"shape": Counter(), "embed": Counter()}
    shaped_at: list[np.ndarray] = []
    shards: set[str] = set()
    first_written, last_written = float("inf"), 0.0
    n, start, start_wall, last = 0, time.perf_counter(), time.time(), time.perf_counter()
    ds = _pipeline(cfg, store, listing, plan)
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        n += batch.num_rows
        stages = [s for s in batch.column("stage").to_pylist() if s]
        failures.update(stages)
        for row_seconds in batch.column("seconds").to_pylist():
            seconds.update(dict(row_seconds or []))
        for stage in ("shape", "embed"):
            workers[stage].update(w for w in batch.column(f"{stage}_worker").to_pylist() if w)
            nodes[stage].update(w for w in batch.column(f"{stage}_node").to_pylist() if w)
        shaped_at.append(batch.column("shape_done_at").to_numpy(zero_copy_only=False))
        shards.update(batch.column("shard").to_pylist())
        faults.after_shards(len(shards), lambda name: Location.of(cfg.output) / "_work" / name)  # $UNI3D_FAULTS
        first_written = min(first_written, pc.min(batch.column("written_at")).as_py())
        last_written = max(last_written, pc.max(batch.column("written_at")).as_py())
        now = time.perf_counter()
        if now - last >= cfg.progress_every_s or n == plan.total:
            rate = n / (now - start)
            eta = (plan.total - n) / rate if rate > 0 else float("inf")
            log(
                f"[build] {n}/{plan.total} shapes, {rate:.2f} shapes/s, ETA {eta:.0f} s, "
                f"failures {sum(failures.values())}, {len(shards)} shards written"
            )
            last = now
    done_at = np.concatenate(shaped_at) if shaped_at else np.zeros(0)
    stats = BuildStats(
        rows_by_worker={k: dict(v) for k, v in workers.items()},
        rows_by_node={k: dict(v) for k, v in nodes.items()},
        shards_written=len(shards),
        first_shard_s=first_written - start_wall if shards else None,
        last_shard_s=last_written - start_wall if shards else None,
        shaped_at_first_shard=int(np.sum(np.nan_to_num(done_at, nan=np.inf) <= first_written)),
        plan=plan.to_dict(),
        ray_data=ds.stats(),
    )
    summary = {"failures": failures, "seconds": seconds, "n": n, "wall": time.perf_counter() - start}
    return summary, stats


def _write_stats(store: BuildStore, cfg: BuildConfig, summary: dict, stats: BuildStats) -> None:
    """``stats/build-<time>.json`` (and Ray Data's report as ``.txt``): what this run did and where."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    record = {
        "shapes": summary["n"],
        "wall_s": summary["wall"],
        "failures": dict(summary["failures"]),
        "seconds_per_stage": dict(summary["seconds"]),
        "retried": summary.get("retried", {}),  # stage of the earlier failure -> shapes built again
        **{k: v for k, v in asdict(stats).items() if k != "ray_data"},
        "config": cfg.to_dict(),
    }
    store.write_text(f"stats/build-{stamp}.json", json.dumps(record, indent=2))
    store.write_text(f"stats/build-{stamp}-ray-data.txt", stats.ray_data)


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
