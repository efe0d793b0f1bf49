"""Area-weighted surface sampling of a ``Mesh`` into an ``(N, 6)`` xyz+rgb point cloud (docs/method.md §1).

Follows docs/method.md §1: N points (10,000 by default) drawn uniformly over the surface (faces chosen with
probability proportional to their area, uniform barycentric coordinates by the square-root trick),
xyz centred on the samples' centroid and scaled so the farthest point has norm 1, Y up as loaded,
rgb in [0, 1]; a mesh without colour gets ``NO_COLOR`` (0.4) everywhere and ``has_color = False``.
Deterministic for a given seed. All steps are vectorised over points.

Colour per point follows the ``Mesh`` lookup order: textured faces read their base-colour texture
at the barycentric-interpolated UV times the face's base colour factor; otherwise vertex colours are
interpolated barycentrically; otherwise the face colour is used. Texture lookup is what a GPU
sampler with ``GL_LINEAR`` filtering and ``GL_REPEAT`` wrapping returns: UVs in the glTF convention
(u right, v down from the image's top row), texel (i, j) centred at ((j + 0.5) / W, (i + 0.5) / H),
bilinear between the four nearest texel centres, wrapping around the edges, so UVs outside [0, 1]
repeat the image. Renders and sampled points therefore agree on colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.meshes.mesh import NO_COLOR, Mesh, MeshError


@dataclass
class SampleConfig:
    """Sampling settings of a dataset build: ``sample_points(mesh, cfg.num_points, cfg.seed + index)``."""

    num_points: int = 10_000
    seed: int = 0


@dataclass
class PointSample:
    points: np.ndarray  # (N, 6) float32: xyz in the unit sphere, rgb in [0, 1]
    has_color: bool
    face_index: np.ndarray  # (N,) int64: the face each point lies on
    center: np.ndarray  # (3,) float64: mesh coordinates of the origin, xyz = (p - center) / scale
    scale: float  # mesh units per unit of the normalised cloud


def sample_points(mesh: Mesh, num_points: int = 10_000, seed: int = 0) -> PointSample:
    """Sample ``num_points`` surface points of ``mesh`` with their colours, normalised to the unit sphere."""
    if num_points <= 0:
        raise ValueError(f"num_points must be positive, got {num_points}")
    rng = np.random.default_rng(seed)
    vertices = mesh.vertices.astype(np.float64)
    a, b, c = (vertices[mesh.faces[:, k]] for k in range(3))  # each (F, 3)
    cumulative = np.cumsum(np.linalg.norm(np.cross(b - a, c - a), axis=1))  # twice the areas
    if mesh.num_faces == 0 or not cumulative[-1] > 0:
        raise MeshError(f"{mesh.source}: cannot sample a mesh whose surface area is zero")
    # side="right" never picks a zero-area face: its cumulative value equals its predecessor's
    face = np.searchsorted(cumulative, rng.random(num_points) * cumulative[-1], side="right")
    face = np.minimum(face, mesh.num_faces - 1)
    r1, r2 = np.sqrt(rng.random(num_points)), rng.random(num_points)
    weights = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=1)  # (N, 3) uniform on a triangle
    corners = mesh.faces[face]  # (N, 3) vertex indices
    xyz = np.einsum("nk,nkd->nd", weights, vertices[corners])
    xyz, center, scale = _unit_sphere(xyz)
    rgb = point_colors(mesh, face, weights)
    points = np.concatenate([xyz, rgb], axis=1).astype(np.float32)
    return PointSample(points=points, has_color=mesh.has_color, face_index=face, center=center, scale=scale)


def point_colors(mesh: Mesh, face: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Colours ``(N, 3)`` in [0, 1] of points on faces ``face (N,)`` at barycentric ``weights (N, 3)``."""
    rgb = np.full((len(face), 3), NO_COLOR)
    if mesh.face_colors is not None:
        rgb = mesh.face_colors[face].astype(np.float64)
    if mesh.vertex_colors is not None:
        rgb = np.einsum("nk,nkc->nc", weights, mesh.vertex_colors[mesh.faces[face]].astype(np.float64))
    if mesh.textures and mesh.face_texture is not None and mesh.uv is not None:
        which = mesh.face_texture[face]
        for index, texture in enumerate(mesh.textures):  # a loop over images, not points
            sel = np.flatnonzero(which == index)
            if sel.size == 0:
                continue
            uv = np.einsum("nk,nkd->nd", weights[sel], mesh.uv[mesh.faces[face[sel]]].astype(np.float64))
            factor = 1.0 if mesh.face_colors is None else mesh.face_colors[face[sel]]
            rgb[sel] = bilinear_lookup(texture, uv) * factor
    return np.clip(rgb, 0.0, 1.0)


def bilinear_lookup(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample an ``(H, W, 3)`` uint8 image at glTF ``uv (M, 2)`` with repeat wrapping: ``(M, 3)`` in [0, 1]."""
    height, width = texture.shape[:2]
    x = uv[:, 0] * width - 0.5  # continuous texel coordinates; texel centres are integers
    y = uv[:, 1] * height - 0.5  # v down: row 0 is the image's top
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    col0, row0 = x0.astype(np.int64) % width, y0.astype(np.int64) % height
    col1, row1 = (col0 + 1) % width, (row0 + 1) % height
    top = _texels(texture, row0, col0) * (1 - fx) + _texels(texture, row0, col1) * fx
    bottom = _texels(texture, row1, col0) * (1 - fx) + _texels(texture, row1, col1) * fx
    return (top * (1 - fy) + bottom * fy) / 255.0


def _texels(texture: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return texture[rows, cols, :3].astype(np.float32)  # (M, 3): gather, then convert only those


def normalize_unit_sphere(xyz: np.ndarray) -> np.ndarray:
    """Centre ``(N, 3)`` points on their centroid and scale the farthest one to norm 1."""
    xyz = np.asarray(xyz)
    dtype = xyz.dtype if xyz.dtype.kind == "f" else np.float64
    return _unit_sphere(xyz.astype(np.float64))[0].astype(dtype)


def _unit_sphere(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    center = xyz.mean(axis=0)
    centred = xyz - center
    scale = float(np.sqrt(np.square(centred).sum(axis=1).max()))
    if not scale > 0:
        raise ValueError("cannot normalise points that all coincide")
    return centred / scale, center, scale
