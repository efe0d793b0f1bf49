"""The dataset's Parquet schema, defined once: columns, the compact point/embedding encodings, validation,
the build manifest and the failures table (docs/method.md §1 input, §5 texts and views, §7 data).

One row is one shape: its uid, source, category and candidate texts (docs/method.md §5: name/metadata text, captions,
retrieval texts) with the group of each text (:data:`TEXT_GROUPS`: the loss draws a group, then a text in it),
``N`` surface points ``(N, 6)`` (xyz in the unit sphere, rgb in [0, 1], docs/method.md §1) and the
frozen teacher's embeddings of its ``K`` rendered views and ``T = len(texts)`` texts. Arrays are stored as
``binary`` cells so that one ``np.frombuffer`` over a column's data buffer decodes a whole batch:

- ``xyz``: ``N*3`` little-endian float16, abs error <= 2**-12 for |x| < 1 (2**-11 up to |x| < 2).
- ``rgb``: ``N*3`` uint8 = round(255 * rgb), abs error <= 1/510; values k/255 round-trip exactly.
- ``view_embeddings`` / ``text_embeddings``: ``K*E`` / ``T*E`` little-endian float16, row-major.

``binary`` (not ``fixed_size_binary``) keeps N and E out of the schema; a ``large_binary`` column (Ray Data
widens a column past 2 GiB per write) is accepted everywhere. pyarrow and numpy only: no Ray here.

Version 2 added ``text_groups``. Version 1 builds still read: there every text is its own group
(:func:`text_groups_column` fills them in), which weights a shape's texts differently from the recipe.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.mesh import NO_COLOR  # numpy only
from pipelines.storage import Location

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no text_groups (every text its own group)
VERSION_KEY = b"uni3d.schema_version"
SOURCES = ("procedural", "local", "objaverse", "openshape")
STAGES = ("list", "fetch", "load", "sample", "render", "embed_image", "embed_text", "write")
XYZ_DTYPE = np.dtype("<f2")
EMBED_DTYPE = np.dtype("<f2")
XYZ_MAX_ERROR = 2.0**-11  # half the float16 spacing on [1, 2); 2**-12 inside the unit sphere
RGB_MAX_ERROR = 1.0 / 510.0
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# The text groups of the recipe (Uni3D paper §3.2, following OpenShape): per shape and step one group is drawn
# uniformly among those the shape has, then one text uniformly within it. "name" holds the name and metadata
# texts (tags, category), "caption" the captions (BLIP and MSFT: one of them is drawn when both exist),
# "retrieval" the texts of retrieved similar images.
TEXT_GROUPS = ("name", "caption", "retrieval")


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


SCHEMA = pa.schema(
    [
        _f("uid", pa.string(), "unique key of the shape within a build"),
        _f("source", pa.string(), "where the shape came from: " + " | ".join(SOURCES)),
        _f("category", pa.string(), "plain category name; null where unknown", nullable=True),
        _f("texts", pa.list_(pa.string()), "candidate texts: name/metadata text, captions, retrieval texts"),
        _f("text_groups", pa.list_(pa.int8()), "group of each text, an index into " + " | ".join(TEXT_GROUPS)),
        _f("has_color", pa.bool_(), "false: the mesh had no colour and rgb is the constant 0.4"),
        _f("num_points", pa.int32(), "N, the number of surface points"),
        _f("xyz", pa.binary(), "(N, 3) float16 little-endian, unit sphere, Y up"),
        _f("rgb", pa.binary(), "(N, 3) uint8 = round(255 * rgb)"),
        _f("teacher", pa.string(), "Teacher.name of the embedding space"),
        _f("embed_dim", pa.int32(), "E, the teacher's embedding width"),
        _f("num_views", pa.int32(), "K, rendered views embedded; 0 = no image target"),
        _f("view_embeddings", pa.binary(), "(K, E) float16 little-endian image embeddings"),
        _f("text_embeddings", pa.binary(), "(T, E) float16 little-endian embeddings of texts, T = len(texts)"),
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode(), b"uni3d.doc": b"docs/dataset.md"},
)
V1_FIELDS = tuple(n for n in SCHEMA.names if n != "text_groups")

FAILURES_SCHEMA = pa.schema(
    [
        _f("uid", pa.string(), "the shape that failed"),
        _f("source", pa.string(), "its source"),
        _f("stage", pa.string(), "where it failed: " + " | ".join(STAGES)),
        _f("error_type", pa.string(), "exception class name"),
        _f("message", pa.string(), "exception message, truncated"),
        _f(
            "transient",
            pa.bool_(),
            "true: may pass on a re-run (retry_failures builds it again); null in tables written before this "
            "column, classified from stage, error_type and message (failure_is_transient)",
            nullable=True,
        ),
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION).encode()},
)


def _points_problem(points: np.ndarray, xyz_tol: float) -> str | None:
    if not isinstance(points, np.ndarray) or points.ndim != 2 or points.shape[1] != 6 or len(points) == 0:
        return f"expected a non-empty (N, 6) array, got {getattr(points, 'shape', type(points).__name__)}"
    if not np.isfinite(points).all():
        return f"{int((~np.isfinite(points)).any(axis=1).sum())} points are not finite"
    radius = float(np.sqrt((points[:, :3].astype(np.float64) ** 2).sum(axis=1).max()))
    if radius > 1.0 + xyz_tol:
        return f"xyz reaches radius {radius:.6g}, outside the unit sphere (tolerance {xyz_tol})"
    rgb = points[:, 3:]
    if rgb.min() < 0.0 or rgb.max() > 1.0:
        return f"rgb spans [{rgb.min():.6g}, {rgb.max():.6g}], outside [0, 1]"
    return None


def encode_points(points: np.ndarray, xyz_tol: float = 1e-3) -> dict[str, Any]:
    """``(N, 6)`` xyz+rgb -> ``{"num_points", "xyz", "rgb"}`` cells; ValueError on values outside the spec."""
    problem = _points_problem(points, xyz_tol)
    if problem:
        raise ValueError(f"points: {problem}")
    xyz = points[:, :3].astype(XYZ_DTYPE)
    rgb = np.rint(points[:, 3:].astype(np.float32) * 255.0).astype(np.uint8)
    return {"num_points": len(points), "xyz": xyz.tobytes(), "rgb": rgb.tobytes()}


def _assemble(xyz: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    out = np.empty((*xyz.shape[:-1], 6), np.float32)  # (..., N, 6)
    out[..., :3] = xyz
    out[..., 3:] = rgb / np.float32(255.0)  # exact division: k/255 comes back bit-equal
    return out


def decode_points(xyz: bytes, rgb: bytes) -> np.ndarray:
    """One row's ``xyz`` and ``rgb`` cells -> ``(N, 6)`` float32."""
    x = np.frombuffer(xyz, XYZ_DTYPE).reshape(-1, 3)
    c = np.frombuffer(rgb, np.uint8).reshape(-1, 3)
    if len(x) != len(c):
        raise ValueError(f"xyz holds {len(x)} points but rgb holds {len(c)}")
    return _assemble(x, c)


def _column(batch: Any, name: str) -> Any:
    if isinstance(batch, pa.Table | pa.RecordBatch):
        return batch.column(name)
    return batch[name]


def _binary_buffers(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """A binary column -> (its cells' bytes back to back as uint8, offsets (B + 1,) int64), zero-copy for Arrow.

    Takes a pyarrow (Chunked)Array of binary / large_binary, or the numpy object array of ``bytes`` that Ray
    Data's ``"numpy"`` batch format gives (one join, then no per-row work).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.chunk(0) if column.num_chunks == 1 else column.cast(pa.large_binary()).combine_chunks()
    if isinstance(column, pa.Array):
        if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
            raise TypeError(f"expected a binary column, got {column.type}")
        if column.null_count:
            raise ValueError(f"binary column has {column.null_count} null cells")
        if len(column) == 0:
            return np.empty(0, np.uint8), np.zeros(1, np.int64)
        _, offsets_buf, data_buf = column.buffers()
        offset_dtype = np.int64 if pa.types.is_large_binary(column.type) else np.int32
        offsets = np.frombuffer(offsets_buf, offset_dtype)[column.offset : column.offset + len(column) + 1]
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
        return data, offsets.astype(np.int64)
    cells = list(column)
    lengths = np.fromiter((len(c) for c in cells), np.int64, len(cells))
    return np.frombuffer(b"".join(cells), np.uint8), np.concatenate([[0], np.cumsum(lengths)])


def decode_points_batch(batch: pa.Table | pa.RecordBatch | Mapping[str, Any]) -> np.ndarray:
    """A batch's ``xyz``/``rgb`` columns -> ``(B, N, 6)`` float32; every row must have the same N."""
    xyz, xyz_off = _binary_buffers(_column(batch, "xyz"))
    rgb, rgb_off = _binary_buffers(_column(batch, "rgb"))
    num_rows = len(xyz_off) - 1
    xyz_len = np.diff(xyz_off)
    n = int(xyz_len[0]) // (3 * XYZ_DTYPE.itemsize) if num_rows else 0
    if (xyz_len != 3 * XYZ_DTYPE.itemsize * n).any() or (np.diff(rgb_off) != 3 * n).any():
        raise ValueError("rows differ in num_points (or xyz/rgb disagree); decode them one by one")
    x = xyz[xyz_off[0] : xyz_off[-1]].view(XYZ_DTYPE).reshape(num_rows, n, 3)
    c = rgb[rgb_off[0] : rgb_off[-1]].reshape(num_rows, n, 3)
    return _assemble(x, c)


def encode_embeddings(embeddings: np.ndarray) -> bytes:
    """``(K, E)`` float -> K*E little-endian float16 bytes."""
    return np.ascontiguousarray(embeddings, dtype=EMBED_DTYPE).tobytes()


def decode_embeddings(column: Any, dim: int, max_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A batch's view or text embeddings -> (padded ``(B, M, dim)`` float32, counts ``(B,)`` int64).

    ``M`` is the largest count in the batch, or ``max_count`` (rows with more keep their first ``max_count``,
    e.g. the first 10 views of docs/method.md §5). Padding is zero; ``arange(M) < counts[:, None]`` is the mask.
    """
    data, offsets = _binary_buffers(column)
    row_bytes = dim * EMBED_DTYPE.itemsize
    lengths = np.diff(offsets)
    if (lengths % row_bytes).any():
        raise ValueError(f"embedding cells are not whole rows of {dim} float16 values")
    counts = lengths // row_bytes  # (B,)
    flat = data[offsets[0] : offsets[-1]].view(EMBED_DTYPE).reshape(-1, dim)  # (sum counts, dim)
    width = int(counts.max(initial=0)) if max_count is None else max_count
    row = np.repeat(np.arange(len(counts)), counts)  # (sum counts,) batch row of each embedding
    slot = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)  # its index within the row
    keep = slot < width
    out = np.zeros((len(counts), width, dim), np.float32)
    out[row[keep], slot[keep]] = flat[keep]
    return out, np.minimum(counts, width)


def _embeddings_problem(emb: np.ndarray, count: int | None, dim: int) -> str | None:
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        return f"expected a 2-D array, got {getattr(emb, 'shape', type(emb).__name__)}"
    if emb.shape[1] != dim:
        return f"width {emb.shape[1]} != teacher embed_dim {dim}"
    if count is not None and emb.shape[0] != count:
        return f"{emb.shape[0]} embeddings for {count} texts"
    if not np.isfinite(emb).all() or (np.abs(emb) > _FLOAT16_MAX).any():
        return "values are not finite (or overflow float16)"
    return None


def make_row(
    *,
    uid: str,
    source: str,
    category: str | None,
    texts: Sequence[str],
    points: np.ndarray,  # (N, 6) float: xyz in the unit sphere, rgb in [0, 1]
    has_color: bool,
    teacher: str,
    embed_dim: int,
    text_embeddings: np.ndarray,  # (len(texts), embed_dim)
    view_embeddings: np.ndarray | None = None,  # (K, embed_dim); None = no renders
    text_groups: Sequence[int | str] | None = None,  # one per text (index or name in TEXT_GROUPS); None: "name"
    xyz_tol: float = 1e-3,
) -> dict[str, Any]:
    """Validate one shape and encode it as a row of :data:`SCHEMA`; ValueError names the uid and the field."""
    if not isinstance(uid, str) or not uid:
        raise ValueError(f"uid must be a non-empty string, got {uid!r}")

    def fail(name: str, problem: str) -> ValueError:
        return ValueError(f"shape {uid!r}: field {name!r}: {problem}")

    if source not in SOURCES:
        raise fail("source", f"{source!r} is not one of {SOURCES}")
    if category is not None and not isinstance(category, str):
        raise fail("category", f"expected a string or None, got {type(category).__name__}")
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise fail("texts", "expected a non-empty list of non-empty strings (the loss draws one, docs/method.md §5)")
    try:
        groups = encode_text_groups(text_groups, len(texts))
    except ValueError as err:
        raise fail("text_groups", str(err)) from None
    if not teacher or not isinstance(embed_dim, int | np.integer) or embed_dim <= 0:
        raise fail("teacher", f"need a teacher name and a positive embed_dim, got {teacher!r}, {embed_dim!r}")
    if problem := _points_problem(points, xyz_tol):
        raise fail("points", problem)
    if not has_color and (points[:, 3:] != np.float32(NO_COLOR)).any():
        raise fail(
            "has_color", f"false, but rgb is not {NO_COLOR}, the colour of uncoloured shapes (docs/method.md §1)"
        )
    if view_embeddings is None:
        view_embeddings = np.zeros((0, embed_dim), np.float32)
    if problem := _embeddings_problem(view_embeddings, None, embed_dim):
        raise fail("view_embeddings", problem)
    if problem := _embeddings_problem(text_embeddings, len(texts), embed_dim):
        raise fail("text_embeddings", problem)
    return {
        "uid": uid,
        "source": source,
        "category": category or None,
        "texts": list(texts),
        "text_groups": groups,
        "has_color": bool(has_color),
        **encode_points(points, xyz_tol),
        "teacher": teacher,
        "embed_dim": int(embed_dim),
        "num_views": len(view_embeddings),
        "view_embeddings": encode_embeddings(view_embeddings),
        "text_embeddings": encode_embeddings(text_embeddings),
    }


def encode_text_groups(groups: Sequence[int | str] | None, num_texts: int) -> list[int]:
    """Group names or indices -> indices into :data:`TEXT_GROUPS`, one per text; None: all "name"."""
    if groups is None:
        return [0] * num_texts
    if isinstance(groups, str) or len(groups) != num_texts:
        raise ValueError(f"expected one group per text ({num_texts}), got {groups!r}")
    out = []
    for g in groups:
        if isinstance(g, str) and g in TEXT_GROUPS:
            out.append(TEXT_GROUPS.index(g))
        elif isinstance(g, int | np.integer) and not isinstance(g, bool) and 0 <= int(g) < len(TEXT_GROUPS):
            out.append(int(g))
        else:
            raise ValueError(f"{g!r} is not a text group; groups are {TEXT_GROUPS} or their indices")
    return out


def schema_version(schema: pa.Schema) -> int:
    """The version a table or file was written with (0 when it carries no version metadata)."""
    return int((schema.metadata or {}).get(VERSION_KEY, b"0"))


def text_groups_column(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(groups, offsets)`` of a batch's texts: flat int8 group per text and per-row offsets into it.

    Version 1 rows have no groups: each text gets its own (``0, 1, 2, ...`` within the row, so a draw over
    groups is a draw over texts, as version 1 training did)."""
    column = _column(batch, "texts")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not isinstance(column, pa.Array):
        column = pa.array(list(column), pa.list_(pa.string()))
    offsets = np.asarray(column.offsets, np.int64)
    offsets = offsets - offsets[0]
    has_groups = isinstance(batch, pa.Table | pa.RecordBatch) and "text_groups" in batch.schema.names
    has_groups = has_groups or (isinstance(batch, Mapping) and "text_groups" in batch)
    if not has_groups:
        return (np.arange(offsets[-1]) - np.repeat(offsets[:-1], np.diff(offsets))).astype(np.int64), offsets
    groups = _column(batch, "text_groups")
    groups = groups.combine_chunks() if isinstance(groups, pa.ChunkedArray) else groups
    if not isinstance(groups, pa.Array):
        groups = pa.array(list(groups), pa.list_(pa.int8()))
    flat = np.asarray(groups.flatten().to_numpy(zero_copy_only=False), np.int64)
    if len(flat) != offsets[-1] or not np.array_equal(np.asarray(groups.offsets) - groups.offsets[0].as_py(), offsets):
        raise ValueError("text_groups and texts disagree: one group per text")
    return flat, offsets


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows from :func:`make_row` -> a table with :data:`SCHEMA` (and its version metadata); uids must be unique."""
    rows = list(rows)
    duplicates = [uid for uid, n in Counter(r["uid"] for r in rows).items() if n > 1]
    if duplicates:
        raise ValueError(f"duplicate uids in one table: {duplicates[:5]}")
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def bytes_per_shape(num_points: int, num_views: int, num_texts: int, embed_dim: int) -> int:
    """Bytes of a row's array cells (points, view and text embeddings) before Parquet compression."""
    return num_points * 3 * (XYZ_DTYPE.itemsize + 1) + (num_views + num_texts) * embed_dim * EMBED_DTYPE.itemsize


def parquet_write_options() -> dict[str, Any]:
    """Keyword arguments for ``pq.write_table``, ``pq.ParquetWriter`` and Ray Data's ``write_parquet``: zstd,
    and neither dictionary encoding nor min/max statistics for the array cells (every cell is unique, and
    their byte-wise min/max would be copied into the footer)."""
    scalars = [f.name + ".list.element" * pa.types.is_list(f.type) for f in SCHEMA if not pa.types.is_binary(f.type)]
    return {"compression": "zstd", "use_dictionary": scalars, "write_statistics": scalars}


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    # Ray Data may widen string/binary (and lists of them) to their 64-bit-offset variants; Parquet reads
    # either back. Both decode the same way.
    wide = {pa.binary(): pa.large_binary(), pa.string(): pa.large_string()}
    if pa.types.is_list(expected):
        if not (pa.types.is_list(found) or pa.types.is_large_list(found)):
            return False
        return _same_type(found.value_type, expected.value_type)
    return found == expected or found == wide.get(expected)


def validate_table(data: pa.Table | pa.Schema, where: str = "table", check_rows: bool = True) -> None:
    """Check a read shard against :data:`SCHEMA` (version, names, types; with ``check_rows`` also nulls and
    cell sizes, vectorised). Raises ValueError naming ``where`` (e.g. the file) and the field."""
    schema = data if isinstance(data, pa.Schema) else data.schema
    version = (schema.metadata or {}).get(VERSION_KEY)
    if version is None:
        raise ValueError(f"{where}: no {VERSION_KEY.decode()} metadata: not written with pipelines.schema.SCHEMA")
    if int(version) not in READABLE_VERSIONS:
        raise ValueError(f"{where}: schema version {int(version)}, this code reads {READABLE_VERSIONS}")
    expected_fields = [f for f in SCHEMA if int(version) > 1 or f.name in V1_FIELDS]
    for expected in expected_fields:
        if expected.name not in schema.names:
            raise ValueError(f"{where}: missing field {expected.name!r}")
        found = schema.field(expected.name).type
        if not _same_type(found, expected.type):
            raise ValueError(f"{where}: field {expected.name!r} has type {found}, expected {expected.type}")
    extra = sorted(set(schema.names) - {f.name for f in expected_fields})
    if extra:
        raise ValueError(f"{where}: unexpected fields {extra}")
    if check_rows and isinstance(data, pa.Table):
        _check_rows(data, where)


def _check_rows(table: pa.Table, where: str) -> None:
    for f in SCHEMA:
        if f.name not in table.schema.names:  # text_groups in version 1
            continue
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"{where}: field {f.name!r} has {table.column(f.name).null_count} nulls")
    n = pc.cast(table.column("num_points"), pa.int64())
    row_bytes = pc.multiply(pc.cast(table.column("embed_dim"), pa.int64()), EMBED_DTYPE.itemsize)
    expected = {  # cell -> bytes it must hold
        "xyz": pc.multiply(n, 3 * XYZ_DTYPE.itemsize),
        "rgb": pc.multiply(n, 3),
        "view_embeddings": pc.multiply(pc.cast(table.column("num_views"), pa.int64()), row_bytes),
        "text_embeddings": pc.multiply(pc.list_value_length(table.column("texts")), row_bytes),
    }
    for name, size in expected.items():
        bad = pc.not_equal(pc.cast(pc.binary_length(table.column(name)), pa.int64()), size)
        if pc.any(bad).as_py():
            uid = table.column("uid").filter(bad)[0].as_py()
            raise ValueError(f"{where}: shape {uid!r}: field {name!r} size disagrees with its counts")
    if "text_groups" in table.schema.names:
        counts = pc.list_value_length(table.column("text_groups"))
        bad = pc.not_equal(counts, pc.list_value_length(table.column("texts")))
        if pc.any(bad).as_py():
            uid = table.column("uid").filter(bad)[0].as_py()
            raise ValueError(f"{where}: shape {uid!r}: field 'text_groups' needs one group per text")
        flat = pc.list_flatten(table.column("text_groups"))
        if len(flat) and (pc.min(flat).as_py() < 0 or pc.max(flat).as_py() >= len(TEXT_GROUPS)):
            raise ValueError(f"{where}: field 'text_groups' has values outside 0..{len(TEXT_GROUPS) - 1}")
    if pc.count_distinct(table.column("uid")).as_py() != table.num_rows:
        raise ValueError(f"{where}: field 'uid' is not unique")


def failure_row(uid: str, source: str, stage: str, error: BaseException, max_chars: int = 2000) -> dict[str, Any]:
    """One row of :data:`FAILURES_SCHEMA` for ``error`` raised while processing ``uid`` at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    message = str(error)[:max_chars]
    return {
        "uid": uid,
        "source": source,
        "stage": stage,
        "error_type": type(error).__name__,
        "message": message,
        "transient": error_is_transient(stage, error),
    }


def failures_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=FAILURES_SCHEMA)


# Which failures a re-run with ``retry_failures`` builds again (docs/dataset.md, "Failures"). Downloads, the
# teacher and the shard writer fail for reasons that pass (a hub answering 503, a teacher out of GPU memory); a
# mesh that does not load, sample or render fails the same way on every run, and so does a row make_row refuses.
TRANSIENT_STAGES = ("fetch", "embed_image", "embed_text", "write")
# The machine's errors, not the input's: transient in every stage (torch's out-of-memory is OutOfMemoryError).
MACHINE_ERRORS = (
    "MemoryError",
    "OutOfMemoryError",
    "TimeoutError",
    "ConnectionError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "ConnectionAbortedError",
    "BrokenPipeError",
)
# Refusals of the input: permanent at fetch (a locator that is no path) and write (make_row's checks).
INPUT_ERRORS = ("ValueError", "MeshError")
# HTTP answers that say the file is not there to fetch: 4xx, but for timeout and rate limit.
RETRIED_4XX = (408, 429)


def is_transient(stage: str, error_types: Sequence[str], http_status: int | None = None) -> bool:
    """Whether a failure at ``stage`` may pass on a re-run.

    ``error_types`` is the exception's class name and, when the exception itself is at hand, its bases'
    (a row read back knows the class name only); ``http_status`` is the server's answer to a fetch."""
    if any(t in MACHINE_ERRORS for t in error_types):
        return True
    if stage not in TRANSIENT_STAGES:
        return False
    if stage in ("embed_image", "embed_text"):
        return True  # the teacher fails whole batches: out of memory, a device error, one bad neighbour
    if any(t in INPUT_ERRORS for t in error_types):
        return False
    return http_status is None or not (400 <= http_status < 500 and http_status not in RETRIED_4XX)


def error_is_transient(stage: str, error: BaseException) -> bool:
    """:func:`is_transient` for an exception: its class and bases, and its ``status`` (``DownloadError``)."""
    status = getattr(error, "status", None)
    names = [cls.__name__ for cls in type(error).__mro__]
    return is_transient(stage, names, status if isinstance(status, int) else None)


def failure_is_transient(row: Mapping[str, Any]) -> bool:
    """A failures-table row: its recorded ``transient``, else (a table written before that column) the rule
    applied to its stage, error type and the last ``HTTP <code>`` in its message (pipelines.download's)."""
    if row.get("transient") is not None:
        return bool(row["transient"])
    message = row.get("message") or ""
    _, found, rest = message.rpartition("HTTP ")
    status = int(rest[:3]) if found and rest[:3].isdigit() else None
    return is_transient(row["stage"], [row.get("error_type") or ""], status)


@dataclass
class Manifest:
    """What a build wrote, next to its shards (``<out>/manifest.json``)."""

    teacher: str
    embed_dim: int
    num_points: int
    num_shapes: int = 0  # rows written
    num_views: int = 0  # view embeddings written, all shapes
    num_texts: int = 0  # text embeddings written, all shapes
    failures: dict[str, int] = field(default_factory=dict)  # stage -> shapes dropped there
    config: dict[str, Any] = field(default_factory=dict)  # the resolved build config
    shards: list[str] = field(default_factory=list)  # shard files, relative to the build root
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        data = json.loads(text)
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"{where}: unknown manifest keys {unknown}, missing keys {missing}")
        if data.get("schema_version") not in READABLE_VERSIONS:
            version = data.get("schema_version")
            raise ValueError(f"{where}: schema version {version}, this code reads {READABLE_VERSIONS}")
        bad_stages = sorted(set(data.get("failures", {})) - set(STAGES))
        if bad_stages:
            raise ValueError(f"{where}: unknown failure stages {bad_stages}")
        return cls(**data)


def write_manifest(path_or_uri: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``manifest`` so that readers see the old file or the new one, never a partial one."""
    Location.of(path_or_uri).write_bytes(manifest.to_json().encode())


def read_manifest(path_or_uri: str | os.PathLike) -> Manifest:
    return Manifest.from_json(Location.of(path_or_uri).read_text(), where=os.fspath(path_or_uri))
