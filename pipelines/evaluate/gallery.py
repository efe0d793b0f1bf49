"""Embed users' meshes with a Uni3D checkpoint into a Parquet gallery (``jobs/embed.py``), and read it back.

The shapes come from any build source (a local folder of meshes in any format the loader reads, Objaverse,
procedural); the listing is cut into small blocks as the build's is (``pipelines.build.plan``), loaded and
sampled by the build's ``ShapeWorker`` actors, embedded by ``GalleryEmbedder`` actors that hold the model,
and written by a pool of writer tasks, one shard per batch (as the build writes, so a slow disk or object
store never stalls the embedding actors); ``stats/embed-<time>.json`` records which actor did how many.
A shape that fails is recorded in ``failures/`` with the file and the reason, and the job goes on; a re-run
skips the uids already written (rows or failures), so a stopped job resumes.

Gallery rows: ``uid``, ``source``, ``locator`` (the mesh path), ``category`` (may be null), ``texts``,
``has_color``, ``num_points``, ``xyz``/``rgb`` (the build's cell encoding) and ``embedding`` (float32,
not normalised). ``gallery.json`` records the checkpoint, its teacher and the embedding size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

import uni3d
from pipelines.build.codec import decode_points_batch
from pipelines.build.plan import bytes_per_shape, plan_blocks
from pipelines.build.run import limit_object_store, listing_dataset, object_store_budget
from pipelines.build.schema import FAILURES_SCHEMA
from pipelines.build.stages import LISTING_SCHEMA, ShapeWorker, worker_identity
from pipelines.build.store import SHARDS, BuildStore
from pipelines.evaluate.config import EmbedConfig
from pipelines.settings import ConfigError, MissingInput
from pipelines.sources.dispatch import list_shapes
from pipelines.storage import Location, hub_local, local_copy
from uni3d.hub import is_hub

INFO = "gallery.json"
# One row per shape back to the driver: its failure stage ("" when embedded) and who did the work.
_SUMMARY = ("uid", "stage", "shape_worker", "shape_node", "embed_worker", "embed_node", "writer", "writer_node")
SUMMARY_SCHEMA = pa.schema([(name, pa.string()) for name in _SUMMARY])


def gallery_schema(embed_dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("uid", pa.string()),
            ("source", pa.string()),
            ("locator", pa.string()),
            ("category", pa.string()),
            ("texts", pa.list_(pa.string())),
            ("has_color", pa.bool_()),
            ("num_points", pa.int32()),
            ("xyz", pa.binary()),
            ("rgb", pa.binary()),
            ("embedding", pa.list_(pa.float32(), embed_dim)),
        ]
    )


class GalleryEmbedder:
    """Ray Data actor: sampled shapes -> the same rows with their embeddings (null where a stage failed) and the
    actor that did them. It writes nothing: the writer tasks do (``write_gallery_shard``)."""

    def __init__(self, checkpoint: str, device: str = "auto") -> None:
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
        with local_copy(checkpoint) as path:  # a URI is copied to this node for the load
            self.model = uni3d.load_checkpoint(path).to(self.device).eval()
        self.schema = embedded_schema(self.model.embed_dim)
        self.worker, self.node = worker_identity()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        by_size: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            r["embedding"] = None
            if not r.get("error_stage"):
                by_size.setdefault(int(r["num_points"]), []).append(r)
        for group in by_size.values():  # one forward per point count (the model takes any N)
            cells = {c: pa.array([r[c] for r in group], pa.binary()) for c in ("xyz", "rgb")}
            points = torch.from_numpy(decode_points_batch(cells))
            with torch.no_grad():
                emb = self.model.encode_pc(points.to(self.device)).float().cpu().numpy()
            for r, e in zip(group, emb, strict=True):
                r["embedding"] = e
        out = [{name: r.get(name) for name in self.schema.names} for r in rows]
        for r in out:
            r["embed_worker"], r["embed_node"] = self.worker, self.node
        return pa.Table.from_pylist(out, schema=self.schema)


def embedded_schema(embed_dim: int) -> pa.Schema:
    """What the embedding actors hand the writers: gallery rows, the failure of a shape that failed, who did it."""
    extra = ("error_stage", "error_type", "error_message", "shape_worker", "shape_node", "embed_worker", "embed_node")
    return pa.schema([*gallery_schema(embed_dim), *[(name, pa.string()) for name in extra]])


def write_gallery_shard(batch: pa.Table, output: str) -> pa.Table:
    """A Ray Data task: one gallery shard (and a failures file) per batch, named by its uids; one summary row per
    shape back to the driver. Tasks, not actors, so that a slow disk or object store adds writers instead of
    stalling the embedding actors."""
    rows = batch.to_pylist()
    good = [r for r in rows if not r.get("error_stage")]
    failures = [_failure(r) for r in rows if r.get("error_stage")]
    schema = gallery_schema(batch.schema.field("embedding").type.list_size)
    store = BuildStore(output)
    name = "part-" + hashlib.sha1("\n".join(sorted(r["uid"] for r in rows)).encode()).hexdigest()[:16]
    if failures:
        store.write_table(pa.Table.from_pylist(failures, schema=FAILURES_SCHEMA), "failures", name)
    if good:
        store.write_table(pa.Table.from_pylist(good, schema=schema), SHARDS, name)
    writer, node = worker_identity()
    return pa.table(
        {
            "uid": [r["uid"] for r in rows],
            "stage": [r.get("error_stage") or "" for r in rows],
            **{col: [r.get(col) for r in rows] for col in ("shape_worker", "shape_node", "embed_worker", "embed_node")},
            "writer": [writer] * len(rows),
            "writer_node": [node] * len(rows),
        },
        schema=SUMMARY_SCHEMA,
    )


def _failure(row: dict[str, Any]) -> dict[str, str]:
    return {
        "uid": row["uid"],
        "source": row["source"],
        "stage": row["error_stage"],
        "error_type": row.get("error_type") or "Error",
        "message": row.get("error_message") or "",
    }


def _embed_listing(cfg: EmbedConfig, store: BuildStore, listing: str, total: int, log: Any) -> dict[str, Any]:
    """Stream the listing through the shape and embedding pools; counts per stage, actor and node."""
    plan = plan_blocks(
        total,
        rows_per_shard=cfg.batch_size,
        shape_workers=cfg.shape_workers,
        embed_workers=cfg.embed_workers,
        embed_batch=cfg.batch_size,
        per_shape=bytes_per_shape(cfg.num_points, 0, 0),
        budget_bytes=object_store_budget(cfg.object_store_gib),
    )
    log(f"[embed] plan: {plan.describe()}")
    ds = listing_dataset(store, listing, plan.rows_per_block, cfg.read_cpus)
    context = {"teacher_name": None, "up_axis": cfg.source.up_axis}
    ds = ds.map_batches(
        ShapeWorker,
        batch_format="pyarrow",
        batch_size=plan.rows_per_block,  # one task per block (a larger batch would bundle blocks)
        fn_constructor_kwargs=dict(
            num_points=cfg.num_points, seed=cfg.seed, num_views=0, image_size=224, msaa=1, context=context
        ),
        compute=ray.data.ActorPoolStrategy(size=cfg.shape_workers),
        num_cpus=cfg.shape_worker_cpus,
    )
    ds = ds.map_batches(
        GalleryEmbedder,
        batch_format="pyarrow",
        batch_size=plan.embed_rows,  # whole blocks of batch_size shapes
        fn_constructor_kwargs=dict(checkpoint=cfg.checkpoint),
        compute=ray.data.ActorPoolStrategy(size=cfg.embed_workers),
        num_cpus=cfg.embed_worker_cpus,
        num_gpus=1 if cfg.use_gpu else 0,
    )
    ds = ds.map_batches(  # blocks divide batch_size (the plan), so each batch is one shard's rows
        write_gallery_shard,
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        fn_kwargs=dict(output=cfg.output),
        num_cpus=cfg.writer_cpus,
    )
    ds.context.execution_options.preserve_order = True  # the same meshes give the same gallery shards
    limit_object_store(ds, plan.budget_bytes)
    by_worker: dict[str, Counter[str]] = {"shape": Counter(), "embed": Counter(), "writer": Counter()}
    by_node: dict[str, Counter[str]] = {"shape": Counter(), "embed": Counter(), "writer": Counter()}
    failed = done = 0
    last = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        done += batch.num_rows
        failed += sum(1 for s in batch.column("stage").to_pylist() if s)
        for stage in ("shape", "embed"):
            by_worker[stage].update(batch.column(f"{stage}_worker").to_pylist())
            by_node[stage].update(batch.column(f"{stage}_node").to_pylist())
        by_worker["writer"].update(batch.column("writer").to_pylist())
        by_node["writer"].update(batch.column("writer_node").to_pylist())
        if time.perf_counter() - last >= 10.0 or done == total:
            log(f"[embed] {done}/{total} shapes, {failed} failed")
            last = time.perf_counter()
    return {
        "embedded": done - failed,
        "failed": failed,
        "rows_by_worker": {k: dict(v) for k, v in by_worker.items()},
        "rows_by_node": {k: dict(v) for k, v in by_node.items()},
        "plan": plan.to_dict(),
        "ray_data": ds.stats(),
    }


def run_embed(cfg: EmbedConfig, log: Any = print) -> dict[str, Any]:
    """Embed every shape of ``cfg.source`` not yet in ``cfg.output``; returns counts."""
    model_cfg: dict[str, Any] = {}
    if is_hub(cfg.checkpoint):  # fetched into this node's hub cache (each actor finds it in its own)
        checkpoint: Location | str = cfg.checkpoint
        local = hub_local(cfg.checkpoint)
        if (local / "config.json").is_file():
            model_cfg = uni3d.read_checkpoint_config(local)
    else:
        checkpoint = Location.of(cfg.checkpoint)  # local or a URI
        if (checkpoint / "config.json").is_file():  # ours; an official model.pt records no teacher
            with local_copy(checkpoint / "config.json") as path:
                model_cfg = uni3d.read_checkpoint_config(path)
    teacher = (model_cfg.get("meta") or {}).get("teacher")
    cfg = dataclasses.replace(cfg, checkpoint=str(checkpoint))  # absolute: the actors run in other folders
    store = BuildStore(cfg.output)
    info = {"checkpoint": str(checkpoint), "teacher": teacher}
    info_path = store.path(INFO)
    if store.fs.get_file_info(info_path).is_file:
        with store.fs.open_input_stream(info_path) as f:
            previous = json.loads(f.read())
        if previous.get("checkpoint") != info["checkpoint"]:
            raise ConfigError(
                f"{cfg.output} holds embeddings of {previous.get('checkpoint')}; this run uses {info['checkpoint']}: "
                "embed into another --out"
            )
    done = store.done_uids()
    refs = (r.to_row() for r in list_shapes(cfg.source, cfg.output) if r.uid not in done)
    listing, total = store.write_listing(refs, LISTING_SCHEMA)
    log(f"[embed] {total} shapes to embed ({len(done)} already in {cfg.output})")
    counts: dict[str, Any] = {"embedded": 0, "failed": 0, "rows_by_worker": {}, "rows_by_node": {}}
    if total:
        start = time.perf_counter()
        counts = _embed_listing(cfg, store, listing, total, log)
        log(f"[embed] {counts['embedded']} embedded, {counts['failed']} failed ({time.perf_counter() - start:.1f} s)")
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        record = {k: v for k, v in counts.items() if k != "ray_data"} | {"config": asdict(cfg)}
        store.write_text(f"stats/embed-{stamp}.json", json.dumps(record, indent=2))
        store.write_text(f"stats/embed-{stamp}-ray-data.txt", counts["ray_data"])
    store.remove(listing)
    gallery = read_gallery(cfg.output, with_points=False)
    with store.fs.open_output_stream(info_path) as f:
        f.write(json.dumps({**info, "embed_dim": gallery.embed_dim, "num_shapes": len(gallery)}, indent=2).encode())
    failures = len(store.done_uids()) - len(gallery)
    log(f"[embed] {cfg.output}: {len(gallery)} shapes, {failures} failures (see failures/)")
    return {"shapes": len(gallery), "failures": failures, "this_run": counts}


@dataclass
class Gallery:
    table: pa.Table  # gallery rows (points optional)
    embeddings: np.ndarray  # (N, E) float32
    teacher: str | None
    checkpoint: str | None

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1]) if len(self.embeddings) else 0

    def column(self, name: str) -> list[Any]:
        return self.table.column(name).to_pylist()


def read_gallery(path: str, with_points: bool = True) -> Gallery:
    store = BuildStore(path)
    files = store.shard_files()
    if not files:
        raise MissingInput(f"{path}: no gallery shards under {store.path(SHARDS)} (run jobs/embed.py first)")
    columns = None if with_points else ["uid", "source", "locator", "category", "texts", "embedding"]
    table = pa.concat_tables(pq.read_table(f, columns=columns, filesystem=store.fs) for f in files)
    emb = np.asarray(table.column("embedding").combine_chunks().flatten().to_numpy(), np.float32).reshape(
        table.num_rows, -1
    )
    info: dict[str, Any] = {}
    if store.fs.get_file_info(store.path(INFO)).is_file:
        with store.fs.open_input_stream(store.path(INFO)) as f:
            info = json.loads(f.read())
    return Gallery(table, emb, info.get("teacher"), info.get("checkpoint"))
