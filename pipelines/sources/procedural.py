"""Labelled procedural 3D objects for offline demos and tests: 14 categories, captions, GLB export.

The categories and how each is built are in ``pipelines.sources.procedural_categories``; here a category's
parts become a labelled shape, standing on y = 0, with its texts.

``make_shape(category, seed)`` is deterministic (same seed, same arrays and caption);
``generate`` cycles through the categories. ``ProceduralShape.to_mesh`` gives the project's
``Mesh`` with one face colour per part; ``export_glb`` writes one node per part with a PBR
material whose ``baseColorFactor`` is the part colour (or, with ``color_mode="vertex"``, a single
mesh with COLOR_0 vertex colours). Palette values are written as-is (no sRGB/linear conversion).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import trimesh

from pipelines.meshes.mesh import Mesh
from pipelines.sources.procedural_categories import BUILDERS, CATEGORIES, PALETTE, Builder, Part


@dataclass
class ProceduralShape:
    uid: str  # f"proc-{category}-{seed}": make_shape(category, seed) rebuilds it
    category: str
    caption: str
    texts: list[str]  # the caption, then a coloured object name ("red chair")
    text_groups: list[int]  # per text, its group (shapes.TEXT_GROUPS index: 0 name, 1 caption, 2 retrieval)
    attributes: dict[str, Any]  # "color" is the main colour; the rest depends on the category
    parts: list[Part] = field(repr=False)

    def to_mesh(self) -> Mesh:
        """All parts as one ``Mesh``, ``face_colors`` from each part's palette colour."""
        offsets = np.cumsum([0] + [len(p.vertices) for p in self.parts[:-1]])
        faces = np.concatenate([p.faces + o for p, o in zip(self.parts, offsets, strict=True)])
        colors = np.concatenate([np.tile(PALETTE[p.color], (len(p.faces), 1)) for p in self.parts])
        return Mesh(
            vertices=np.concatenate([p.vertices for p in self.parts]).astype(np.float32),
            faces=faces.astype(np.int64),
            face_colors=colors.astype(np.float32),
            source=self.uid,
        )

    def to_trimesh(self, color_mode: Literal["material", "vertex"] = "material") -> trimesh.Trimesh | trimesh.Scene:
        """A scene with one node and PBR material per part, or one mesh with per-vertex colours."""
        if color_mode == "vertex":  # parts share no vertices, so face colours become exact vertex colours
            mesh = self.to_mesh()
            rgba = np.concatenate([np.tile(_rgba8(p.color), (len(p.faces), 1)) for p in self.parts])
            return trimesh.Trimesh(mesh.vertices, mesh.faces, face_colors=rgba, process=False)
        scene = trimesh.Scene()
        for i, part in enumerate(self.parts):
            material = trimesh.visual.material.PBRMaterial(
                name=part.color, baseColorFactor=_rgba8(part.color), metallicFactor=0.0, roughnessFactor=1.0
            )
            geom = trimesh.Trimesh(
                part.vertices, part.faces, process=False, visual=trimesh.visual.TextureVisuals(material=material)
            )
            scene.add_geometry(geom, geom_name=f"{i:02d}_{part.name}", node_name=f"{i:02d}_{part.name}")
        return scene

    def export_glb(self, path: str | Path, color_mode: Literal["material", "vertex"] = "material") -> Path:
        path = Path(path)
        path.write_bytes(self.to_trimesh(color_mode).export(file_type="glb"))
        return path


def _rgba8(color: str) -> np.ndarray:
    return np.round(np.append(PALETTE[color], 1.0) * 255).astype(np.uint8)


def make_shape(category: str, seed: int) -> ProceduralShape:
    """One shape of ``category``; the same (category, seed) always gives the same arrays and texts."""
    if category not in BUILDERS:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    # The category's hash keeps categories independent for one seed, and stable if categories are added.
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    builder = Builder()
    attributes, caption = BUILDERS[category](builder, rng)
    color = attributes["color"]
    # Descriptive texts only, never the bare class name nor a prompt-like phrasing: a caption (as BLIP's
    # would be) and an object name with its colour (as an Objaverse name would be)
    texts = [caption, f"{color} {category}"]
    floor = min(float(p.vertices[:, 1].min()) for p in builder.parts)  # stand on y = 0 (the airplane too)
    parts = [Part(p.name, p.color, p.vertices - np.float32([0, floor, 0]), p.faces) for p in builder.parts]
    return ProceduralShape(
        uid=f"proc-{category}-{seed}",
        category=category,
        caption=caption,
        texts=texts,
        text_groups=[1, 0],  # shapes.TEXT_GROUPS: caption, name
        attributes=attributes,
        parts=parts,
    )


def generate(num: int, seed: int, categories: list[str] | None = None) -> Iterator[ProceduralShape]:
    """``num`` shapes cycling through ``categories`` (all by default), so counts differ by at most one."""
    cats = list(categories) if categories is not None else list(CATEGORIES)
    for i in range(num):
        shape_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])  # 32-bit, per item
        yield make_shape(cats[i % len(cats)], shape_seed)
