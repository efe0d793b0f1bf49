"""A vectorised OFF reader (OFF, COFF, NOFF, STOFF and variants; ASCII), keeping vertex and face colours.

trimesh's OFF reader drops COFF vertex colours and per-face colours, so OFF files are read here:
the header counts are checked against ``MeshLimits`` before anything is parsed, numbers are parsed
per block with numpy (no Python loop per vertex or face), and polygons are fan-triangulated.
"""

from __future__ import annotations

import re

import numpy as np

from pipelines.meshes.guard import MeshLimits, check_counts
from pipelines.meshes.mesh import NO_COLOR, MeshError, MeshPart, unit_colors

# --- OFF -----------------------------------------------------------------------------------------

# [ST][C][N]OFF, then "V F [E]"; ModelNet writes "OFF490 518 0" with no line break.
_OFF_HEADER = re.compile(rb"\s*(ST)?(C)?(N)?OFF([ \t]+BINARY)?\s*(\d+)\s+(\d+)(?:[ \t]+\d+)?")
_WHITESPACE = bytes.maketrans(b"\r\n\t", b"   ")


def read_off(data: bytes, name: str, limits: MeshLimits) -> MeshPart:
    if b"#" in data:
        data = re.sub(rb"#[^\n]*", b"", data)
    header = _OFF_HEADER.match(data[: limits.max_header_bytes])
    if header is None:
        raise MeshError(f"{name}: not an OFF file (no 'OFF' keyword followed by vertex and face counts)")
    if header.group(4):
        raise MeshError(f"{name}: binary OFF is not supported")
    nv, nf = int(header.group(5)), int(header.group(6))
    check_counts(nv, nf, limits, name, "header claims")
    body = data[header.end() :]
    ends = _line_ends(body)
    if len(ends) < nv + nf:
        raise MeshError(
            f"{name}: truncated: header claims {nv} vertices and {nf} faces, but only {len(ends)} lines follow"
        )
    split = ends[nv - 1] if nv else 0
    values = _numbers(body[:split], np.float64)
    per_vertex = values.size // max(nv, 1)
    if nv and (values.size != nv * per_vertex or per_vertex < 3):
        raise MeshError(f"{name}: OFF vertex lines have differing or too few values")
    vertices = values.reshape(nv, per_vertex)
    faces, face_colors = _off_faces(body[split : ends[nv + nf - 1] if nf else split], nf, name)
    part = MeshPart(vertices[:, :3], faces, face_colors=face_colors)
    first = 3 + 3 * bool(header.group(3))  # colours follow the normals
    n_color = per_vertex - first - 2 * bool(header.group(1))
    if header.group(2) and n_color in (3, 4):  # one value would be a colour-map index: ignored
        part.vertex_colors = unit_colors(vertices[:, first : first + 3])
    return part


def _line_ends(body: bytes) -> np.ndarray:
    """Byte offsets ``(L,)`` one past the end of each line holding anything but whitespace."""
    buf = np.frombuffer(body, np.uint8)
    ends = np.append(np.flatnonzero(buf == 10), buf.size)
    starts = np.concatenate([[0], ends[:-1] + 1])
    filled = starts < ends
    visible = np.zeros(ends.size, bool)  # bool add = any: a visible byte between consecutive starts
    visible[filled] = np.add.reduceat(buf > 32, starts[filled]) if filled.any() else []
    return ends[visible]


def _numbers(block: bytes, dtype: type) -> np.ndarray:
    """Every whitespace-separated number of ``block`` in one C-level parse; a non-number raises ValueError."""
    flat = block.translate(_WHITESPACE)
    return np.loadtxt([flat], dtype=dtype, ndmin=1, comments=None) if flat.strip() else np.zeros(0, dtype)


def _off_face_lengths(block: bytes, values: np.ndarray, nf: int, name: str) -> np.ndarray:
    """Values per face line ``(F,)``: guessed in one check when all lines are alike, else counted."""
    if nf and values.size and np.isfinite(values[0]):
        n = int(values[0])
        for stride in (n + 1, n + 4, n + 5):  # no colour, RGB, RGBA
            if stride > 1 and values.size == nf * stride and (values[::stride] == n).all():
                return np.full(nf, stride)
    buf = np.frombuffer(block, np.uint8)
    space = buf <= 32
    starts = ~space
    starts[1:] &= space[:-1]  # first byte of each value
    counts = np.bincount(np.cumsum(buf == 10)[starts])
    return counts[counts > 0]  # values per non-empty line: exactly the F face lines


def _off_faces(block: bytes, nf: int, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse and fan-triangulate the F face lines: ``(T, 3)`` faces and their ``(T, 3)`` colours or None."""
    try:
        tokens = _numbers(block, np.int64)  # integers parse ~5x faster than floats
    except ValueError:
        tokens = _numbers(block, np.float64)  # colours written as floats
    lengths = _off_face_lengths(block, tokens, nf, name)
    starts = np.cumsum(lengths) - lengths  # index of each face's vertex count
    n = tokens[starts].astype(np.int64)
    extra = lengths - 1 - n  # values after the indices: 3 or 4 = a colour
    if (n < 3).any() or (extra < 0).any():
        raise MeshError(f"{name}: malformed OFF face line (fewer than 3 vertices or missing indices)")
    fan = n - 2
    face = np.repeat(np.arange(n.size), fan)
    k = np.arange(face.size) - np.repeat(np.cumsum(fan) - fan, fan)  # triangle number in its polygon
    first = starts[face] + 1
    tri = tokens[np.stack([first, first + 1 + k, first + 2 + k], axis=1)]
    if (tri != np.floor(tri)).any():
        raise MeshError(f"{name}: OFF face indices are not integers")
    colored = (extra == 3) | (extra == 4)
    if not colored.any():
        return tri.astype(np.int64), None
    colors = np.full((n.size, 3), NO_COLOR)
    at = (starts + 1 + n)[colored, None] + np.arange(3)
    colors[colored] = unit_colors(tokens[at])
    return tri.astype(np.int64), colors[face]
