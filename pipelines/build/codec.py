"""The compact encodings of a build's columns: points as float16 xyz + uint8 rgb, embeddings as float16 rows.

Encoding checks what it is given (finite, inside the unit sphere, colours in [0, 1]) so that a bad shape fails
where it is made, not where it is read; decoding reads whole Arrow columns without a Python loop per row.
The column definitions are in ``pipelines.build.schema``; docs/dataset.md describes the format.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

XYZ_DTYPE = np.dtype("<f2")
EMBED_DTYPE = np.dtype("<f2")
XYZ_MAX_ERROR = 2.0**-11  # half the float16 spacing on [1, 2); 2**-12 inside the unit sphere
RGB_MAX_ERROR = 1.0 / 510.0
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def points_problem(points: np.ndarray, xyz_tol: float) -> str | None:
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
    problem = points_problem(points, xyz_tol)
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


def embeddings_problem(emb: np.ndarray, count: int | None, dim: int) -> str | None:
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        return f"expected a 2-D array, got {getattr(emb, 'shape', type(emb).__name__)}"
    if emb.shape[1] != dim:
        return f"width {emb.shape[1]} != teacher embed_dim {dim}"
    if count is not None and emb.shape[0] != count:
        return f"{emb.shape[0]} embeddings for {count} texts"
    if not np.isfinite(emb).all() or (np.abs(emb) > _FLOAT16_MAX).any():
        return "values are not finite (or overflow float16)"
    return None


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
