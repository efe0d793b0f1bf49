"""The dataset's Parquet schema, defined once: the columns of the shards and of the failures table, the rows, and
their validation (docs/method.md §1 input, §5 texts and views, §7 data).

One row is one shape: its uid, source, category and candidate texts (docs/method.md §5: name/metadata text, captions,
retrieval texts) with the group of each text (:data:`~pipelines.sources.shapes.TEXT_GROUPS`: the loss draws a group,
then a text in it), ``N`` surface points ``(N, 6)`` (xyz in the unit sphere, rgb in [0, 1], docs/method.md §1) and the
frozen teacher's embeddings of its ``K`` rendered views and ``T = len(texts)`` texts. Arrays are stored as
``binary`` cells so that one ``np.frombuffer`` over a column's data buffer decodes a whole batch:

- ``xyz``: ``N*3`` little-endian float16, abs error <= 2**-12 for |x| < 1 (2**-11 up to |x| < 2).
- ``rgb``: ``N*3`` uint8 = round(255 * rgb), abs error <= 1/510; values k/255 round-trip exactly.
- ``view_embeddings`` / ``text_embeddings``: ``K*E`` / ``T*E`` little-endian float16, row-major.

The encodings themselves are in ``pipelines.build.codec``, the manifest in ``pipelines.build.manifest`` and the
failure rows in ``pipelines.build.failures``.

``binary`` (not ``fixed_size_binary``) keeps N and E out of the schema; a ``large_binary`` column (Ray Data
widens a column past 2 GiB per write) is accepted everywhere. pyarrow and numpy only: no Ray here.

Version 2 added ``text_groups``. Version 1 builds still read: there every text is its own group
(``codec.text_groups_column`` fills them in), which weights a shape's texts differently from the recipe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.build.codec import (
    EMBED_DTYPE,
    XYZ_DTYPE,
    embeddings_problem,
    encode_embeddings,
    encode_points,
    points_problem,
)
from pipelines.meshes.mesh import NO_COLOR  # numpy only
from pipelines.sources.shapes import TEXT_GROUPS

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no text_groups (every text its own group)
VERSION_KEY = b"uni3d.schema_version"
SOURCES = ("procedural", "local", "objaverse", "openshape")
STAGES = ("list", "fetch", "load", "sample", "render", "embed_image", "embed_text", "write")


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
    if problem := points_problem(points, xyz_tol):
        raise fail("points", problem)
    if not has_color and (points[:, 3:] != np.float32(NO_COLOR)).any():
        raise fail(
            "has_color", f"false, but rgb is not {NO_COLOR}, the colour of uncoloured shapes (docs/method.md §1)"
        )
    if view_embeddings is None:
        view_embeddings = np.zeros((0, embed_dim), np.float32)
    if problem := embeddings_problem(view_embeddings, None, embed_dim):
        raise fail("view_embeddings", problem)
    if problem := embeddings_problem(text_embeddings, len(texts), embed_dim):
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
    """Group names or indices -> indices into :data:`~pipelines.sources.shapes.TEXT_GROUPS`, one per text; None: all
    "name"."""
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
        raise ValueError(f"{where}: no {VERSION_KEY.decode()} metadata: not written with pipelines.build.schema.SCHEMA")
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
