"""The dataset's Parquet schema, defined once: columns, the compact point/embedding encodings, validation,
the build manifest and the failures table (Uni3D spec §1 input, §5 texts and views, §7 data).

One row is one shape: its uid, source, category and candidate texts (spec §5: name/metadata text, captions,
retrieval texts), ``N`` surface points ``(N, 6)`` (xyz in the unit sphere, rgb in [0, 1], spec §1) and the
frozen teacher's embeddings of its ``K`` rendered views and ``T = len(texts)`` texts. Arrays are stored as
``binary`` cells so that one ``np.frombuffer`` over a column's data buffer decodes a whole batch:

- ``xyz``: ``N*3`` little-endian float16, abs error <= 2**-12 for |x| < 1 (2**-11 up to |x| < 2).
- ``rgb``: ``N*3`` uint8 = round(255 * rgb), abs error <= 1/510; values k/255 round-trip exactly.
- ``view_embeddings`` / ``text_embeddings``: ``K*E`` / ``T*E`` little-endian float16, row-major.

``binary`` (not ``fixed_size_binary``) keeps N and E out of the schema; a ``large_binary`` column (Ray Data
widens a column past 2 GiB per write) is accepted everywhere. pyarrow and numpy only: no Ray here.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipelines.mesh import NO_COLOR  # numpy only

SCHEMA_VERSION = 1
VERSION_KEY = b"uni3d.schema_version"
SOURCES = ("procedural", "local", "objaverse", "openshape")
STAGES = ("list", "fetch", "load", "sample", "render", "embed_image", "embed_text", "write")
XYZ_DTYPE = np.dtype("<f2")
EMBED_DTYPE = np.dtype("<f2")
XYZ_MAX_ERROR = 2.0**-11  # half the float16 spacing on [1, 2); 2**-12 inside the unit sphere
RGB_MAX_ERROR = 1.0 / 510.0
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


SCHEMA = pa.schema(
    [
        _f("uid", pa.string(), "unique key of the shape within a build"),
        _f("source", pa.string(), "where the shape came from: " + " | ".join(SOURCES)),
        _f("category", pa.string(), "plain category name; null where unknown", nullable=True),
        _f("texts", pa.list_(pa.string()), "candidate texts: name/metadata text, captions, retrieval texts"),
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

FAILURES_SCHEMA = pa.schema(
    [
        _f("uid", pa.string(), "the shape that failed"),
        _f("source", pa.string(), "its source"),
        _f("stage", pa.string(), "where it failed: " + " | ".join(STAGES)),
        _f("error_type", pa.string(), "exception class name"),
        _f("message", pa.string(), "exception message, truncated"),
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
    e.g. the first 10 views of spec §5). Padding is zero; ``arange(M) < counts[:, None]`` is the mask.
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
        raise fail("texts", "expected a non-empty list of non-empty strings (the loss draws one, spec §5)")
    if not teacher or not isinstance(embed_dim, int | np.integer) or embed_dim <= 0:
        raise fail("teacher", f"need a teacher name and a positive embed_dim, got {teacher!r}, {embed_dim!r}")
    if problem := _points_problem(points, xyz_tol):
        raise fail("points", problem)
    if not has_color and (points[:, 3:] != np.float32(NO_COLOR)).any():
        raise fail("has_color", f"false, but rgb is not the constant {NO_COLOR} of uncoloured shapes (spec §1)")
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
        "has_color": bool(has_color),
        **encode_points(points, xyz_tol),
        "teacher": teacher,
        "embed_dim": int(embed_dim),
        "num_views": len(view_embeddings),
        "view_embeddings": encode_embeddings(view_embeddings),
        "text_embeddings": encode_embeddings(text_embeddings),
    }


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
    if int(version) != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema version {int(version)}, this code reads {SCHEMA_VERSION}")
    for expected in SCHEMA:
        if expected.name not in schema.names:
            raise ValueError(f"{where}: missing field {expected.name!r}")
        found = schema.field(expected.name).type
        if not _same_type(found, expected.type):
            raise ValueError(f"{where}: field {expected.name!r} has type {found}, expected {expected.type}")
    extra = sorted(set(schema.names) - set(SCHEMA.names))
    if extra:
        raise ValueError(f"{where}: unexpected fields {extra}")
    if check_rows and isinstance(data, pa.Table):
        _check_rows(data, where)


def _check_rows(table: pa.Table, where: str) -> None:
    for f in SCHEMA:
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
    if pc.count_distinct(table.column("uid")).as_py() != table.num_rows:
        raise ValueError(f"{where}: field 'uid' is not unique")


def failure_row(uid: str, source: str, stage: str, error: BaseException, max_chars: int = 2000) -> dict[str, str]:
    """One row of :data:`FAILURES_SCHEMA` for ``error`` raised while processing ``uid`` at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    message = str(error)[:max_chars]
    return {"uid": uid, "source": source, "stage": stage, "error_type": type(error).__name__, "message": message}


def failures_to_table(rows: Iterable[Mapping[str, str]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=FAILURES_SCHEMA)


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
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema version {data.get('schema_version')}, this code reads {SCHEMA_VERSION}")
        bad_stages = sorted(set(data.get("failures", {})) - set(STAGES))
        if bad_stages:
            raise ValueError(f"{where}: unknown failure stages {bad_stages}")
        return cls(**data)


def _resolve(path_or_uri: str | os.PathLike) -> tuple[pafs.FileSystem | None, str]:
    """-> (None, local path) or (a pyarrow filesystem, path within it)."""
    path = os.fspath(path_or_uri)
    if "://" not in path:
        return None, path
    fs, inner = pafs.FileSystem.from_uri(path)
    return (None, inner) if isinstance(fs, pafs.LocalFileSystem) else (fs, inner)


def write_manifest(path_or_uri: str | os.PathLike, manifest: Manifest) -> None:
    """Write ``manifest`` so that readers see the old file or the new one, never a partial one."""
    fs, path = _resolve(path_or_uri)
    payload = manifest.to_json().encode()
    if fs is not None:  # object stores publish an object whole when its upload completes
        with fs.open_output_stream(path) as out:
            out.write(payload)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # same folder, so the rename below stays on one filesystem
    try:
        with open(tmp, "xb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_manifest(path_or_uri: str | os.PathLike) -> Manifest:
    fs, path = _resolve(path_or_uri)
    with (fs or pafs.LocalFileSystem()).open_input_stream(path) as f:
        text = f.read().decode()
    return Manifest.from_json(text, where=os.fspath(path_or_uri))
