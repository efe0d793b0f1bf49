"""The build's stages as Ray Data batch UDFs: pure per batch, stateful ones as callable classes.

Rows stream through two actor pools and a task pool: ``ShapeWorker`` actors (fetch, load, sample,
render: the mesh never leaves the process that loaded it), ``Embedder`` actors (the teacher: view
images, then texts) and ``write_shards`` tasks (Parquet shards written atomically, failures table;
stateless, so Ray Data runs as many as the cluster has room for). A row that fails keeps its
``error_*`` columns and passes through the later stages untouched, so one bad shape never stops
the job and each failure is recorded with the stage it happened in. Each row also records which
actor (and node) did its shape and teacher work and when, so a build can show how it spread.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from pipelines import faults
from pipelines.build.codec import decode_points, encode_embeddings, encode_points
from pipelines.build.failures import error_is_transient
from pipelines.build.schema import make_row
from pipelines.sources.shapes import ShapeRef, StageError

# The listing the build streams: one row per shape (``ShapeRef.to_row``).
LISTING_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("locator", pa.string()),
        ("category", pa.string()),
        ("texts", pa.list_(pa.string())),
        ("text_groups", pa.list_(pa.int8())),
        ("extra", pa.string()),
    ]
)

# Columns added to the listing by the workers (the listing has uid, source, locator, category, texts, ...).
WORK_COLUMNS: dict[str, pa.DataType] = {
    "has_color": pa.bool_(),
    "num_points": pa.int32(),
    "xyz": pa.binary(),
    "rgb": pa.binary(),
    "images": pa.binary(),  # (K, H, W, 3) uint8, dropped after embedding
    "num_images": pa.int32(),
    "image_size": pa.int32(),
    "pre_view_embeddings": pa.binary(),  # embeddings a source ships (OpenShape), float16
    "pre_text_embeddings": pa.binary(),
    "pre_teacher": pa.string(),
    "view_embeddings": pa.binary(),
    "text_embeddings": pa.binary(),
    "num_views": pa.int32(),
    "teacher": pa.string(),
    "embed_dim": pa.int32(),
    "error_stage": pa.string(),
    "error_type": pa.string(),
    "error_message": pa.string(),
    "error_transient": pa.bool_(),  # failures.error_is_transient: a re-run may pass it
    "seconds": pa.map_(pa.string(), pa.float64()),  # per-stage wall time of this row
    "shape_worker": pa.string(),  # the ShapeWorker actor that did the row, and its node
    "shape_node": pa.string(),
    "shape_done_at": pa.float64(),  # Unix time the row left that actor
    "embed_worker": pa.string(),
    "embed_node": pa.string(),
}

# One row per shape, from the writer to the driver: the summary the build's stats are made of.
SUMMARY_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("stage", pa.string()),  # the stage it failed in, "" when written
        ("seconds", pa.map_(pa.string(), pa.float64())),
        ("shape_worker", pa.string()),
        ("shape_node", pa.string()),
        ("shape_done_at", pa.float64()),
        ("embed_worker", pa.string()),
        ("embed_node", pa.string()),
        ("shard", pa.string()),
        ("written_at", pa.float64()),  # Unix time its shard (or failures file) was written
    ]
)


def worker_identity() -> tuple[str, str]:
    """(actor id, node id) of the calling Ray actor, shortened; ("local", "local") outside Ray."""
    if not ray.is_initialized():
        return "local", "local"
    ctx = ray.get_runtime_context()
    return (ctx.get_actor_id() or f"pid-{os.getpid()}")[:12], ctx.get_node_id()[:12]


def _rows(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.to_pylist()


def _fail(row: dict[str, Any], stage: str, err: BaseException) -> None:
    row.update(error_stage=stage, error_type=type(err).__name__, error_message=str(err)[:2000])
    row["error_transient"] = error_is_transient(stage, err)  # decided here, where the exception is at hand


def _table(rows: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> pa.Table:
    names = [n for n in rows[0] if n not in drop] if rows else []
    fields = [LISTING_SCHEMA.field(n) if n in LISTING_SCHEMA.names else pa.field(n, WORK_COLUMNS[n]) for n in names]
    return pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows], schema=pa.schema(fields))


def _blank(row: dict[str, Any]) -> dict[str, Any]:
    for name in WORK_COLUMNS:
        row.setdefault(name, None)
    row["seconds"] = dict(row.get("seconds") or {})
    return row


class ShapeWorker:
    """Fetch + load + sample + render, one actor holding the renderer (and a downloader)."""

    def __init__(
        self,
        num_points: int,
        seed: int,
        num_views: int,
        image_size: int,
        msaa: int | str,
        context: dict[str, Any],
        cpus: float = 1.0,
    ) -> None:
        self.num_points, self.seed, self.num_views = num_points, seed, num_views
        self.context = dict(context)
        self.renderer = None
        # Mesa's CPU rasteriser starts a thread per core unless told otherwise: hold it to this actor's CPUs,
        # as Ray holds torch to them through OMP_NUM_THREADS, so the actors of a node share it fairly.
        os.environ.setdefault("LP_NUM_THREADS", str(max(1, round(cpus))))
        if num_views > 0:
            from pipelines.meshes.cameras import RenderConfig
            from pipelines.meshes.render import Renderer

            self.renderer = Renderer(RenderConfig(num_views=num_views, size=image_size, samples=msaa))
        self.image_size = image_size
        self.worker, self.node = worker_identity()
        if "objaverse" in self.context:
            from pipelines.sources.download import Downloader

            self.context["downloader"] = Downloader(self.context["objaverse"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipelines.sources.dispatch import materialise

        rows = [_blank(r) for r in _rows(batch)]
        for row in rows:
            ref = ShapeRef.from_row(row)
            try:
                data, seconds = materialise(ref, self.num_points, self.seed, self.context)
            except StageError as err:  # one bad shape never stops the job: record it
                _fail(row, err.stage, err.cause)
                continue
            row["seconds"].update(seconds)
            row.update(encode_points(data.points), has_color=data.has_color)
            if data.texts:
                row.update(texts=data.texts, text_groups=data.text_groups or [0] * len(data.texts))
            if data.view_embeddings is not None:
                row["pre_view_embeddings"] = encode_embeddings(data.view_embeddings)
            if data.text_embeddings is not None:
                row["pre_text_embeddings"] = encode_embeddings(data.text_embeddings)
            row["pre_teacher"] = data.teacher or None
            if self.renderer is not None and data.mesh is not None:
                start = time.perf_counter()
                try:
                    views = self.renderer.render(data.mesh)
                except Exception as err:
                    _fail(row, "render", err)
                    continue
                row["seconds"]["render"] = time.perf_counter() - start
                row.update(images=views.images.tobytes(), num_images=len(views.images), image_size=self.image_size)
        done = time.time()
        for row in rows:
            row.update(shape_worker=self.worker, shape_node=self.node, shape_done_at=done)
        return _table(rows)


class Embedder:
    """The teacher: embeds each shape's rendered views and its texts (float16 in the output)."""

    def __init__(self, teacher: str) -> None:
        from uni3d.teachers import build_teacher

        self.teacher = build_teacher(teacher)
        self.worker, self.node = worker_identity()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [_blank(r) for r in _rows(batch)]
        for row in rows:
            row.update(teacher=self.teacher.name, embed_dim=self.teacher.embed_dim)
            row.update(embed_worker=self.worker, embed_node=self.node)
        todo = [r for r in rows if not r["error_stage"]]
        self._embed_views(todo)
        self._embed_texts([r for r in todo if not r["error_stage"]])
        return _table(rows, drop=("images", "pre_view_embeddings", "pre_text_embeddings"))

    def _embed_views(self, rows: list[dict[str, Any]]) -> None:
        """One teacher call for all rendered views of the batch; shipped embeddings are reused."""
        dim = self.teacher.embed_dim
        start = time.perf_counter()
        shipped = [r for r in rows if r["pre_teacher"] == self.teacher.name and r["pre_view_embeddings"]]
        shipped_ids = {id(r) for r in shipped}
        rendered = [r for r in rows if id(r) not in shipped_ids and r["images"]]
        for row in rows:
            row.update(view_embeddings=b"", num_views=0)
        for row in shipped:
            emb = np.frombuffer(row["pre_view_embeddings"], "<f2").reshape(-1, dim)
            row.update(view_embeddings=row["pre_view_embeddings"], num_views=len(emb))
        if rendered:
            images = [
                np.frombuffer(r["images"], np.uint8).reshape(-1, r["image_size"], r["image_size"], 3) for r in rendered
            ]
            try:
                emb = self.teacher.encode_image(np.concatenate(images))  # (sum K, E)
            except Exception as err:  # the batch failed: record it on each of its shapes
                for row in rendered:
                    _fail(row, "embed_image", err)
                return
            offset = 0
            for row, views in zip(rendered, images, strict=True):
                row.update(view_embeddings=encode_embeddings(emb[offset : offset + len(views)]), num_views=len(views))
                offset += len(views)
        for row in rows:
            row["seconds"]["embed_image"] = (time.perf_counter() - start) / max(1, len(rows))

    def _embed_texts(self, rows: list[dict[str, Any]]) -> None:
        dim = self.teacher.embed_dim
        start = time.perf_counter()
        fresh = [r for r in rows if not (r["pre_teacher"] == self.teacher.name and r["pre_text_embeddings"])]
        texts = [t for r in fresh for t in r["texts"]]
        try:
            emb = self.teacher.encode_text(texts) if texts else np.zeros((0, dim), np.float32)
        except Exception as err:  # a whole batch failed: record it on each of its shapes
            for row in fresh:
                _fail(row, "embed_text", err)
            return
        offset, fresh_ids = 0, {id(r) for r in fresh}
        for row in rows:
            if id(row) in fresh_ids:
                n = len(row["texts"])
                row["text_embeddings"] = encode_embeddings(emb[offset : offset + n])
                offset += n
            else:
                row["text_embeddings"] = row["pre_text_embeddings"]
            row["seconds"]["embed_text"] = (time.perf_counter() - start) / max(1, len(rows))


def write_shards(batch: pa.Table, output: str, fault: dict[str, int] | None = None) -> pa.Table:
    """Write one Parquet shard (atomically, name from its uids) plus a failures file for ``batch``.

    A Ray Data task, not an actor: it holds nothing between batches, so writers grow with the cluster.
    Returns one ``SUMMARY_SCHEMA`` row per shape, which the driver reduces into progress and stats.
    ``fault`` is for tests only (``pipelines.faults.writer_fault``).
    """
    from pipelines.build.store import BuildStore

    good, failures, summary = [], [], []
    uids = sorted(batch.column("uid").to_pylist())
    name = "part-" + hashlib.sha1("\n".join(uids).encode()).hexdigest()[:16]
    for row in _rows(batch):
        stage = row.get("error_stage") or ""
        if not stage:
            try:
                good.append(_schema_row(row))
            except Exception as err:
                stage = "write"
                _fail(row, stage, err)
        if stage:
            failures.append(
                {
                    "uid": row["uid"],
                    "source": row["source"],
                    "stage": stage,
                    "error_type": row.get("error_type") or "Error",
                    "message": row.get("error_message") or "",
                    "transient": row.get("error_transient"),
                }
            )
        summary.append(
            {col: row.get(col) for col in SUMMARY_SCHEMA.names if col not in ("stage", "seconds", "shard")}
            | {"stage": stage, "seconds": dict(row.get("seconds") or []), "shard": name}
        )
    start = time.perf_counter()
    store = BuildStore(output)
    store.write_shard(name, good, failures)
    written_at = time.time()
    if fault:
        faults.after_shard_written(fault, lambda: len(store.shard_files()))
    for s in summary:
        s["seconds"]["write"] = (time.perf_counter() - start) / max(1, len(summary))
        s["written_at"] = written_at
    return pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA)


def _schema_row(row: dict[str, Any]) -> dict[str, Any]:
    dim = row["embed_dim"]
    return make_row(
        uid=row["uid"],
        source=row["source"],
        category=row["category"] or None,
        texts=row["texts"],
        text_groups=row.get("text_groups") or None,
        points=decode_points(row["xyz"], row["rgb"]),
        has_color=row["has_color"],
        teacher=row["teacher"],
        embed_dim=dim,
        text_embeddings=np.frombuffer(row["text_embeddings"], "<f2").astype(np.float32).reshape(-1, dim),
        view_embeddings=np.frombuffer(row["view_embeddings"] or b"", "<f2").astype(np.float32).reshape(-1, dim),
    )
