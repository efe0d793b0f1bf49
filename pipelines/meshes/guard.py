"""Guards for loading untrusted mesh files: size and count limits checked before parsing, and a time budget.

``MeshLimits`` bounds what one file may cost. The checks read only headers (OFF/PLY counts, binary STL
triangle counts, OBJ ``v``/``f`` line counts, GLB/glTF accessor counts) and compare them with the limits
and with the file's real length, so a file claiming 10^12 vertices fails in milliseconds instead of
allocating. The time budget is a watchdog timer that raises an exception asynchronously in the loading
thread, so it works in worker threads too (``signal.alarm`` only works in the main thread). Every failure
is a ``MeshError`` whose message starts with the file path.
"""

from __future__ import annotations

import ctypes
import json
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.meshes.mesh import Mesh, MeshError


@dataclass(frozen=True)
class MeshLimits:
    max_file_bytes: int = 512 * 2**20
    max_vertices: int = 5_000_000
    max_faces: int = 10_000_000
    max_header_bytes: int = 64 * 2**10  # OFF/PLY headers must end within this many bytes
    max_texture_pixels: int = 8192 * 8192
    time_budget_s: float | None = 60.0  # None: no budget


DEFAULT_LIMITS = MeshLimits()


# --- time budget ---------------------------------------------------------------------------------


class _BudgetExceeded(BaseException):
    """Raised asynchronously in the loading thread (BaseException: parsers' ``except Exception`` miss it)."""


def run_with_budget(fn: Callable[[], Mesh], seconds: float | None, name: str) -> Mesh:
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


def check_counts(vertices: int, faces: int, limits: MeshLimits, name: str, what: str) -> None:
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
    check_counts(counts.get("vertex", 0), counts.get("face", 0), limits, name, "header claims")
    need, body = sum(count * per for _, count, per in elements), size - end - len(b"end_header\n")
    if need > body + 1:
        raise MeshError(f"{name}: truncated: the PLY header's counts need at least {need} bytes, file has {body}")


def _check_stl(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    head = _head(path, 84)
    count = int.from_bytes(head[80:84], "little") if size >= 84 else -1
    if count >= 0 and 84 + 50 * count <= size < 84 + 50 * (count + 1):  # binary; tolerate padding
        check_counts(0, count, limits, name, "binary STL header claims")
        return
    if head.lstrip()[:5].lower() != b"solid":
        raise MeshError(
            f"{name}: not a valid STL file: no ASCII 'solid' header, and as binary STL it claims "
            f"{count} triangles ({84 + 50 * count} bytes) but the file has {size} bytes"
        )


def _check_obj(path: Path, size: int, name: str, limits: MeshLimits) -> None:
    data = path.read_bytes()
    count = data.count(b"\nv ") + data.startswith(b"v ")
    check_counts(count, data.count(b"\nf ") + data.startswith(b"f "), limits, name, "has")


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


PRECHECKS = {"ply": _check_ply, "stl": _check_stl, "obj": _check_obj, "glb": _check_glb, "gltf": _check_gltf}
