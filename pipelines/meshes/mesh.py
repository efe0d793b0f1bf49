"""The in-memory mesh every loader produces and every sampler and renderer consumes.

A whole scene (GLB node graph, OBJ with several materials) becomes one triangle mesh in world
coordinates with its colour source kept, so colours are looked up per sample point:
textured faces read their texture at the interpolated UV (times the face's base colour factor),
otherwise vertex colours are interpolated, otherwise the face colour (material or per-face) is
used; a mesh with none of these has ``has_color = False`` and gets the constant 0.4 (docs/method.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NO_COLOR = 0.4  # docs/method.md §1: the colour of shapes without colour, in training and evaluation


class MeshError(ValueError):
    """A mesh file that cannot be used; the message names the file and what is wrong."""


@dataclass
class Mesh:
    vertices: np.ndarray  # (V, 3) float32, world coordinates, Y up
    faces: np.ndarray  # (F, 3) int64 indices into vertices
    vertex_colors: np.ndarray | None = None  # (V, 3) float32 in [0, 1]
    face_colors: np.ndarray | None = None  # (F, 3) float32 in [0, 1]: material base colour or face colour
    uv: np.ndarray | None = None  # (V, 2) float32 texture coordinates (glTF convention: v down)
    textures: list[np.ndarray] = field(default_factory=list)  # each (H, W, 3) uint8
    face_texture: np.ndarray | None = None  # (F,) int32 index into textures, -1 = untextured face
    source: str = ""  # where it came from, for error messages

    @property
    def has_color(self) -> bool:
        return self.vertex_colors is not None or self.face_colors is not None or bool(self.textures)

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


@dataclass
class MeshPart:
    """One geometry instance in world coordinates, with its own colour source (loaders merge these into a Mesh)."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    vertex_colors: np.ndarray | None = None  # (V, 3) in [0, 1]
    face_colors: np.ndarray | None = None  # (F, 3): face colour, or base colour factor if textured
    uv: np.ndarray | None = None  # (V, 2) glTF convention
    texture: int = -1  # index into the scene's texture list


def unit_colors(values: np.ndarray) -> np.ndarray:
    """Colours to float in [0, 1]: integers (or any value > 1) are 0-255, uint16 is 0-65535."""
    if values.dtype == np.uint16:
        return values / 65535.0
    scale = 255.0 if values.dtype.kind in "iu" or values.max(initial=0) > 1 else 1.0
    return np.clip(values.astype(np.float64) / scale, 0.0, 1.0)
