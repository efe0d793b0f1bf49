"""Load one mesh file (GLB/glTF, OBJ+MTL, PLY, STL, OFF) into one :class:`~pipelines.mesh.Mesh`, safely.

GLB/glTF, OBJ, PLY and STL are parsed by trimesh 5.2 (``process=False``: faces and vertices as in
the file); OFF by a small vectorised reader here, because trimesh's drops COFF vertex colours and
per-face colours. A scene becomes one mesh in world coordinates: every node instancing a geometry
contributes that geometry under the node's world transform.

Colour rule (per geometry, then merged; see ``Mesh`` for the lookup order texture > vertex > face):
- a base-colour texture with UVs -> textured faces; glTF ``baseColorFactor`` is the face colour
  multiplied at lookup; an OBJ ``Kd`` next to a ``map_Kd`` is ignored, as Blender's importer does;
- vertex colours (PLY, COFF, OBJ ``v x y z r g b``, glTF ``COLOR_0`` times ``baseColorFactor``);
- otherwise a face colour: PLY/OFF per-face colour, glTF ``baseColorFactor``, OBJ ``Kd``;
- nothing (trimesh's invented default grey, a glTF material with neither texture nor factor, an MTL
  without ``Kd``) is no colour.
When some geometries of a scene have vertex colours, the others are converted to vertex colours too:
face-coloured ones are unmerged (three vertices per face, each with the face colour) so nothing is
lost; colourless and textured ones get ``NO_COLOR`` (unused on textured faces). Colourless faces in
a partly coloured scene are ``NO_COLOR`` grey; a file with no colour at all has ``has_color False``.

UVs are stored in the glTF convention (u right, v down from the image top). trimesh flips glTF v on
load and keeps OBJ ``vt`` as written, so it holds the OpenGL convention (v up) for both: we store
``(u, 1 - v)``.

Safety (``MeshLimits``): the file size is checked before reading; OFF/PLY header counts, binary STL
triangle counts, OBJ ``v`` line counts and glTF accessor counts are checked against the limits and
against the file size before anything is parsed; textures are size-checked before decoding. The
time budget is a watchdog timer that raises an exception asynchronously in the loading thread, so
it works in worker threads too (``signal.alarm`` only works in the main thread); it interrupts
Python code, so a single long C call (e.g. one numpy parse) finishes first. Every failure is a
``MeshError`` whose message starts with the file path.
"""

from __future__ import annotations

import ctypes
import json
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

from pipelines.mesh import NO_COLOR, Mesh, MeshError

_FORMATS = {".off": "off", ".ply": "ply", ".stl": "stl", ".obj": "obj", ".glb": "glb", ".gltf": "gltf"}


@dataclass(frozen=True)
class MeshLimits:
    max_file_bytes: int = 512 * 2**20
    max_vertices: int = 5_000_000
    max_faces: int = 10_000_000
    max_header_bytes: int = 64 * 2**10  # OFF/PLY headers must end within this many bytes
    max_texture_pixels: int = 8192 * 8192
    time_budget_s: float | None = 60.0  # None: no budget


DEFAULT_LIMITS = MeshLimits()


@dataclass
class _Part:
    """One geometry instance in world coordinates, with its own colour source."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    vertex_colors: np.ndarray | None = None  # (V, 3) in [0, 1]
    face_colors: np.ndarray | None = None  # (F, 3): face colour, or base colour factor if textured
    uv: np.ndarray | None = None  # (V, 2) glTF convention
    texture: int = -1  # index into the scene's texture list


def load_mesh(path: str | Path, limits: MeshLimits = DEFAULT_LIMITS, up_axis: str = "y") -> Mesh:
    """Read ``path`` into one Y-up ``Mesh``; ``up_axis="z"`` rotates a Z-up source: (x, y, z) -> (x, z, -y)."""
    if up_axis not in ("y", "z"):
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    path = Path(path)
    name = str(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MeshError(f"{name}: unsupported file extension {path.suffix!r} (supported: {sorted(_FORMATS)})")
    if not path.exists():
        raise MeshError(f"{name}: no such file")
    if not path.is_file():
        raise MeshError(f"{name}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise MeshError(f"{name}: empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise MeshError(f"{name}: file is {size} bytes, over the limit of {limits.max_file_bytes} bytes")
    mesh = _run_with_budget(lambda: _load(path, fmt, size, limits), limits.time_budget_s, name)
    if up_axis == "z":
        mesh.vertices = np.ascontiguousarray(mesh.vertices[:, [0, 2, 1]] * np.float32([1, 1, -1]))
    return mesh


def _load(path: Path, fmt: str, size: int, limits: MeshLimits) -> Mesh:
    name = str(path)
    try:
        if fmt == "off":
            parts, textures = [_read_off(path.read_bytes(), name, limits)], []
        else:
            _PRECHECKS[fmt](path, size, name, limits)
            scene = trimesh.load_scene(name, file_type=fmt, process=False)
            parts, textures = _scene_parts(scene, name, limits)
        if not parts:
            raise MeshError(f"{name}: no faces (the file holds no triangle geometry)")
        return _clean(_merge(parts, textures, name))
    except MeshError:
        raise
    except MemoryError as exc:
        raise MeshError(f"{name}: ran out of memory while reading the {fmt.upper()} file") from exc
    except Exception as exc:  # any parser failure on a bad file becomes a per-file error
        raise MeshError(f"{name}: could not read the {fmt.upper()} file: {type(exc).__name__}: {exc}") from exc


# --- time budget ---------------------------------------------------------------------------------


class _BudgetExceeded(BaseException):
    """Raised asynchronously in the loading thread (BaseException: parsers' ``except Exception`` miss it)."""


def _run_with_budget(fn: Callable[[], Mesh], seconds: float | None, name: str) -> Mesh:
    if seconds is None:
        return fn()
    thread, lock, state = threading.get_ident(), threading.Lock(), {"armed": True, "fired": False}

    def fire() -> None:
        with lock:  # never inject once the loader has left fn()
            if state["armed"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(_BudgetExceeded))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    start = time.perf_counter()
    try:  # an injected exception is delivered at the latest at timer.cancel(), inside this try
        timer.start()
        try:
            result = fn()
        finally:
            with lock:
                state["armed"] = False
            timer.cancel()
        if state["fired"] or time.perf_counter() - start > seconds:  # swallowed, or one long C call
            raise _BudgetExceeded
        return result
    except _BudgetExceeded:
        raise MeshError(
            f"{name}: loading took longer than the time budget of {seconds:g} s (MeshLimits.time_budget_s)"
        ) from None


# --- checks before parsing -----------------------------------------------------------------------


def _check_counts(vertices: int, faces: int, limits: MeshLimits, name: str, what: str) -> None:
    if vertices > limits.max_vertices:
        raise MeshError(f"{name}: {what} {vertices} vertices, over the limit of {limits.max_vertices}")
    if faces > limits.max_faces:
        raise MeshError(f"{name}: {what} {faces} faces, over the limit of {limits.max_faces}")


def _head(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


# bytes per binary PLY value; every other type (int, float, ...) is 4
_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2}
_PLY_SIZES |= {"double": 8, "float64": 8}


def _check_ply(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    head = _head(path, limits.max_header_bytes)
    if not head.startswith(b"ply"):
        raise MeshError(f"{name}: not a PLY file (missing 'ply' magic)")
    end = head.find(b"end_header")
    if end < 0:
        raise MeshError(f"{name}: PLY header has no end_header in its first {limits.max_header_bytes} bytes")
    ascii_ = b"format ascii" in head[:end]
    elements: list[list] = []  # [name, count, fewest bytes per item]
    for words in (line.split() for line in head[:end].decode("ascii", "replace").splitlines()):
        if words[:1] == ["element"] and len(words) >= 3:
            elements.append([words[1], int(words[2]), 0])
        elif words[:1] == ["property"] and len(words) >= 3 and elements:
            kind = words[2] if words[1] == "list" else words[1]  # a list costs at least its count
            elements[-1][2] += 2 if ascii_ else _PLY_SIZES.get(kind, 4)
    counts = {e[0]: e[1] for e in elements}
    _check_counts(counts.get("vertex", 0), counts.get("face", 0), limits, name, "header claims")
    need, body = sum(count * per for _, count, per in elements), size - end - len(b"end_header\n")
    if need > body + 1:
        raise MeshError(f"{name}: truncated: the PLY header's counts need at least {need} bytes, file has {body}")


def _check_stl(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    head = _head(path, 84)
    count = int.from_bytes(head[80:84], "little") if size >= 84 else -1
    if count >= 0 and 84 + 50 * count <= size < 84 + 50 * (count + 1):  # binary; tolerate padding
        _check_counts(0, count, limits, name, "binary STL header claims")
        return
    if head.lstrip()[:5].lower() != b"solid":
        raise MeshError(
            f"{name}: not a valid STL file: no ASCII 'solid' header, and as binary STL it claims "
            f"{count} triangles ({84 + 50 * count} bytes) but the file has {size} bytes"
        )


def _check_obj(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    data = path.read_bytes()
    count = data.count(b"\nv ") + data.startswith(b"v ")
    _check_counts(count, data.count(b"\nf ") + data.startswith(b"f "), limits, name, "has")


def _check_glb(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    head = _head(path, 20)
    if len(head) < 20 or head[:4] != b"glTF":
        raise MeshError(f"{name}: not a GLB file (missing 'glTF' magic or shorter than its header)")
    version, length, chunk, kind = struct.unpack_from("<IIII", head, 4)
    if version != 2:
        raise MeshError(f"{name}: unsupported GLB version {version} (only glTF 2.0)")
    if length > size:
        raise MeshError(f"{name}: truncated GLB: header declares {length} bytes but the file has {size}")
    if kind != 0x4E4F534A or 20 + chunk > size:  # b"JSON" little-endian
        raise MeshError(f"{name}: GLB has no complete JSON chunk")
    with path.open("rb") as f:
        f.seek(20)
        _check_gltf_json(f.read(chunk), name, limits)


def _check_gltf(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    _check_gltf_json(path.read_bytes(), name, limits)


def _check_gltf_json(raw: bytes, name: str, limits: MeshLimits) -> None:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise MeshError(f"{name}: glTF JSON is not valid: {exc}") from None
    # trimesh allocates zeros for accessors without a bufferView: bound every count
    most = max(limits.max_vertices, 3 * limits.max_faces)
    for i, accessor in enumerate(header.get("accessors", [])):
        count = accessor.get("count", 0)
        if not isinstance(count, int) or not 0 <= count <= most:
            raise MeshError(f"{name}: glTF accessor {i} claims {count} elements (limit {most})")


_PRECHECKS = {"ply": _check_ply, "stl": _check_stl, "obj": _check_obj, "glb": _check_glb, "gltf": _check_gltf}


# --- OFF -----------------------------------------------------------------------------------------

# [ST][C][N]OFF, then "V F [E]"; ModelNet writes "OFF490 518 0" with no line break.
_OFF_HEADER = re.compile(rb"\s*(ST)?(C)?(N)?OFF([ \t]+BINARY)?\s*(\d+)\s+(\d+)(?:[ \t]+\d+)?")
_WHITESPACE = bytes.maketrans(b"\r\n\t", b"   ")


def _read_off(data: bytes, name: str, limits: MeshLimits) -> _Part:
    if b"#" in data:
        data = re.sub(rb"#[^\n]*", b"", data)
    header = _OFF_HEADER.match(data[: limits.max_header_bytes])
    if header is None:
        raise MeshError(f"{name}: not an OFF file (no 'OFF' keyword followed by vertex and face counts)")
    if header.group(4):
        raise MeshError(f"{name}: binary OFF is not supported")
    nv, nf = int(header.group(5)), int(header.group(6))
    _check_counts(nv, nf, limits, name, "header claims")
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
    part = _Part(vertices[:, :3], faces, face_colors=face_colors)
    first = 3 + 3 * bool(header.group(3))  # colours follow the normals
    n_color = per_vertex - first - 2 * bool(header.group(1))
    if header.group(2) and n_color in (3, 4):  # one value would be a colour-map index: ignored
        part.vertex_colors = _unit_colors(vertices[:, first : first + 3])
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
    colors[colored] = _unit_colors(tokens[at])
    return tri.astype(np.int64), colors[face]


def _unit_colors(values: np.ndarray) -> np.ndarray:
    """Colours to float in [0, 1]: integers (or any value > 1) are 0-255, uint16 is 0-65535."""
    if values.dtype == np.uint16:
        return values / 65535.0
    scale = 255.0 if values.dtype.kind in "iu" or values.max(initial=0) > 1 else 1.0
    return np.clip(values.astype(np.float64) / scale, 0.0, 1.0)


# --- trimesh scenes ------------------------------------------------------------------------------


def _scene_parts(scene: trimesh.Scene, name: str, limits: MeshLimits) -> tuple[list[_Part], list[np.ndarray]]:
    """Every node instancing a triangle mesh -> a ``_Part`` in world coordinates, plus the textures."""
    parts, textures, texture_ids = [], [], {}  # id(PIL image) -> index: shared images decoded once
    total_v = total_f = 0
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geom = scene.geometry.get(geometry_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue  # point clouds, lines
        total_v, total_f = total_v + len(geom.vertices), total_f + len(geom.faces)
        _check_counts(total_v, total_f, limits, name, "scene instances")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN vertices are reported by _clean
            vertices = np.asarray(geom.vertices, np.float64) @ transform[:3, :3].T + transform[:3, 3]
        part = _Part(vertices, np.asarray(geom.faces, np.int64))
        visual = geom.visual
        if isinstance(visual, TextureVisuals):
            image = _material_colors(part, visual)
            if image is not None:
                if id(image) not in texture_ids:
                    texture_ids[id(image)] = len(textures)
                    textures.append(_texture_array(image, name, limits))
                part.texture = texture_ids[id(image)]
        elif visual.kind == "vertex":  # kind None = trimesh's invented default grey: no colour
            part.vertex_colors = _unit_colors(np.asarray(visual.vertex_colors)[:, :3])
        elif visual.kind == "face":
            part.face_colors = _unit_colors(np.asarray(visual.face_colors)[:, :3])
        parts.append(part)
    return parts, textures


def _material_colors(part: _Part, visual: TextureVisuals):
    """Fill ``part``'s colours from its material; return the PIL base-colour image if it is textured."""
    material, nf = visual.material, len(part.faces)
    image, factor = None, None
    if isinstance(material, PBRMaterial):
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = _unit_colors(np.asarray(material.baseColorFactor)[:3])
    elif isinstance(material, SimpleMaterial):
        image = material.image
        if "kd" in material.kwargs and image is None:  # Kd next to map_Kd is ignored
            factor = _unit_colors(np.asarray(material.diffuse)[:3])
    uv = visual.uv
    if image is not None and uv is not None and len(uv) == len(part.vertices):
        part.uv = np.column_stack([uv[:, 0], 1.0 - uv[:, 1]])  # trimesh's v-up -> glTF v-down
        part.face_colors = np.tile(np.ones(3) if factor is None else factor, (nf, 1))
        return image
    colors = visual.vertex_attributes.get("color")  # glTF COLOR_0 next to a material
    if colors is not None and len(colors) == len(part.vertices):
        part.vertex_colors = _unit_colors(np.asarray(colors)[:, :3]) * (1.0 if factor is None else factor)
    elif factor is not None:
        part.face_colors = np.tile(factor, (nf, 1))
    return None


def _texture_array(image, name: str, limits: MeshLimits) -> np.ndarray:
    width, height = image.size
    if width * height > limits.max_texture_pixels:
        raise MeshError(f"{name}: texture of {width}x{height} pixels is over the limit of {limits.max_texture_pixels}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)  # RGBA, palette, grey -> RGB


# --- merge and clean -----------------------------------------------------------------------------


def _as_vertex_colored(part: _Part) -> _Part:
    """The part with vertex colours, for scenes where another part has them (module docstring)."""
    if part.vertex_colors is not None:
        return part
    if part.face_colors is not None and part.texture < 0:  # unmerge: three own vertices per face
        return _Part(
            part.vertices[part.faces].reshape(-1, 3),
            np.arange(3 * len(part.faces)).reshape(-1, 3),
            vertex_colors=np.repeat(part.face_colors, 3, axis=0),
            face_colors=part.face_colors,
        )
    part.vertex_colors = np.full((len(part.vertices), 3), NO_COLOR)
    return part


def _merge(parts: list[_Part], textures: list[np.ndarray], name: str) -> Mesh:
    if any(p.vertex_colors is not None for p in parts):
        parts = [_as_vertex_colored(p) for p in parts]
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts])[:-1]
    mesh = Mesh(
        vertices=np.concatenate([p.vertices for p in parts]).astype(np.float32),
        faces=np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)]).astype(np.int64),
        textures=textures,
        source=name,
    )
    if parts[0].vertex_colors is not None:
        mesh.vertex_colors = np.concatenate([p.vertex_colors for p in parts]).astype(np.float32)
    if any(p.face_colors is not None for p in parts):
        fill = [np.full((len(p.faces), 3), NO_COLOR) if p.face_colors is None else p.face_colors for p in parts]
        mesh.face_colors = np.concatenate(fill).astype(np.float32)
    if textures:
        mesh.uv = np.concatenate([np.zeros((len(p.vertices), 2)) if p.uv is None else p.uv for p in parts])
        mesh.uv = mesh.uv.astype(np.float32)
        mesh.face_texture = np.concatenate([np.full(len(p.faces), p.texture, np.int32) for p in parts])
    return mesh


def _clean(mesh: Mesh) -> Mesh:
    """Reject unusable meshes; drop zero-area faces and the vertices no face uses."""
    name, nv, nf = mesh.source, len(mesh.vertices), mesh.num_faces
    if nf == 0:
        raise MeshError(f"{name}: no faces" + (" and no vertices (empty mesh)" if nv == 0 else ""))
    if mesh.faces.min() < 0 or mesh.faces.max() >= nv:
        bad = mesh.faces.max() if mesh.faces.max() >= nv else mesh.faces.min()
        raise MeshError(f"{name}: face indices out of range: index {bad} with {nv} vertices")
    used = np.zeros(nv, bool)
    used[mesh.faces] = True
    nonfinite = int((~np.isfinite(mesh.vertices).all(axis=1) & used).sum())
    if nonfinite:
        raise MeshError(f"{name}: {nonfinite} vertices used by faces have NaN or infinite coordinates")
    tri = mesh.vertices[mesh.faces].astype(np.float64)  # (F, 3, 3)
    double_area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    diagonal2 = np.square(np.ptp(mesh.vertices[used].astype(np.float64), axis=0)).sum()
    good = double_area > 1e-12 * diagonal2  # numerically zero relative to the mesh's size
    if not good.any():
        raise MeshError(f"{name}: all {nf} faces have zero area (degenerate mesh)")
    if not good.all():
        mesh.faces = mesh.faces[good]
        for attr in ("face_colors", "face_texture"):
            if getattr(mesh, attr) is not None:
                setattr(mesh, attr, getattr(mesh, attr)[good])
        used[:] = False
        used[mesh.faces] = True
    if not used.all():  # renumber so that every vertex belongs to a face (bounds, renderers)
        mesh.faces = (np.cumsum(used) - 1)[mesh.faces]
        for attr in ("vertices", "vertex_colors", "uv"):
            if getattr(mesh, attr) is not None:
                setattr(mesh, attr, getattr(mesh, attr)[used])
    return mesh
