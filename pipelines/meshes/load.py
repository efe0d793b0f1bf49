"""Load one mesh file (GLB/glTF, OBJ+MTL, PLY, STL, OFF) into one :class:`~pipelines.meshes.mesh.Mesh`, safely.

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

Safety: ``pipelines.meshes.guard`` checks sizes and header counts before anything is parsed and
enforces a per-file time budget; OFF is read by ``pipelines.meshes.off_format``. Every failure is a
``MeshError`` whose message starts with the file path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

from pipelines.meshes.guard import DEFAULT_LIMITS, PRECHECKS, MeshLimits, check_counts, run_with_budget
from pipelines.meshes.mesh import NO_COLOR, Mesh, MeshError, MeshPart, unit_colors
from pipelines.meshes.off_format import read_off

__all__ = ["DEFAULT_LIMITS", "MeshLimits", "load_mesh"]

_FORMATS = {".off": "off", ".ply": "ply", ".stl": "stl", ".obj": "obj", ".glb": "glb", ".gltf": "gltf"}


def load_mesh(path: str | Path, limits: MeshLimits = DEFAULT_LIMITS, up_axis: str = "y") -> Mesh:
    """Read ``path`` into one Y-up ``Mesh``; ``up_axis="z"`` rotates a Z-up source: (x, y, z) -> (x, z, -y)."""
    if up_axis not in ("y", "z"):
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise MeshError(f"{name}: no such file")
    if not path.is_file():
        raise MeshError(f"{name}: not a regular file")
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MeshError(f"{name}: unsupported file extension {path.suffix!r} (supported: {sorted(_FORMATS)})")
    size = path.stat().st_size
    if size == 0:
        raise MeshError(f"{name}: empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise MeshError(f"{name}: file is {size} bytes, over the limit of {limits.max_file_bytes} bytes")
    mesh = run_with_budget(lambda: _load(path, fmt, size, limits), limits.time_budget_s, name)
    if up_axis == "z":
        mesh.vertices = np.ascontiguousarray(mesh.vertices[:, [0, 2, 1]] * np.float32([1, 1, -1]))
    return mesh


def _load(path: Path, fmt: str, size: int, limits: MeshLimits) -> Mesh:
    name = str(path)
    try:
        if fmt == "off":
            parts, textures = [read_off(path.read_bytes(), name, limits)], []
        else:
            PRECHECKS[fmt](path, size, name, limits)
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


# --- trimesh scenes ------------------------------------------------------------------------------


def _scene_parts(scene: trimesh.Scene, name: str, limits: MeshLimits) -> tuple[list[MeshPart], list[np.ndarray]]:
    """Every node instancing a triangle mesh -> a ``MeshPart`` in world coordinates, plus the textures."""
    parts, textures, texture_ids = [], [], {}  # id(PIL image) -> index: shared images decoded once
    total_v = total_f = 0
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geom = scene.geometry.get(geometry_name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue  # point clouds, lines
        total_v, total_f = total_v + len(geom.vertices), total_f + len(geom.faces)
        check_counts(total_v, total_f, limits, name, "scene instances")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN vertices are reported by _clean
            vertices = np.asarray(geom.vertices, np.float64) @ transform[:3, :3].T + transform[:3, 3]
        part = MeshPart(vertices, np.asarray(geom.faces, np.int64))
        visual = geom.visual
        if isinstance(visual, TextureVisuals):
            image = _material_colors(part, visual)
            if image is not None:
                if id(image) not in texture_ids:
                    texture_ids[id(image)] = len(textures)
                    textures.append(_texture_array(image, name, limits))
                part.texture = texture_ids[id(image)]
        elif visual.kind == "vertex":  # kind None = trimesh's invented default grey: no colour
            part.vertex_colors = unit_colors(np.asarray(visual.vertex_colors)[:, :3])
        elif visual.kind == "face":
            part.face_colors = unit_colors(np.asarray(visual.face_colors)[:, :3])
        parts.append(part)
    return parts, textures


def _material_colors(part: MeshPart, visual: TextureVisuals):
    """Fill ``part``'s colours from its material; return the PIL base-colour image if it is textured."""
    material, nf = visual.material, len(part.faces)
    image, factor = None, None
    if isinstance(material, PBRMaterial):
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = unit_colors(np.asarray(material.baseColorFactor)[:3])
    elif isinstance(material, SimpleMaterial):
        image = material.image
        if "kd" in material.kwargs and image is None:  # Kd next to map_Kd is ignored
            factor = unit_colors(np.asarray(material.diffuse)[:3])
    uv = visual.uv
    if image is not None and uv is not None and len(uv) == len(part.vertices):
        part.uv = np.column_stack([uv[:, 0], 1.0 - uv[:, 1]])  # trimesh's v-up -> glTF v-down
        part.face_colors = np.tile(np.ones(3) if factor is None else factor, (nf, 1))
        return image
    colors = visual.vertex_attributes.get("color")  # glTF COLOR_0 next to a material
    if colors is not None and len(colors) == len(part.vertices):
        part.vertex_colors = unit_colors(np.asarray(colors)[:, :3]) * (1.0 if factor is None else factor)
    elif factor is not None:
        part.face_colors = np.tile(factor, (nf, 1))
    return None


def _texture_array(image, name: str, limits: MeshLimits) -> np.ndarray:
    width, height = image.size
    if width * height > limits.max_texture_pixels:
        raise MeshError(f"{name}: texture of {width}x{height} pixels is over the limit of {limits.max_texture_pixels}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)  # RGBA, palette, grey -> RGB


# --- merge and clean -----------------------------------------------------------------------------


def _as_vertex_colored(part: MeshPart) -> MeshPart:
    """The part with vertex colours, for scenes where another part has them (module docstring)."""
    if part.vertex_colors is not None:
        return part
    if part.face_colors is not None and part.texture < 0:  # unmerge: three own vertices per face
        return MeshPart(
            part.vertices[part.faces].reshape(-1, 3),
            np.arange(3 * len(part.faces)).reshape(-1, 3),
            vertex_colors=np.repeat(part.face_colors, 3, axis=0),
            face_colors=part.face_colors,
        )
    part.vertex_colors = np.full((len(part.vertices), 3), NO_COLOR)
    return part


def _merge(parts: list[MeshPart], textures: list[np.ndarray], name: str) -> Mesh:
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
