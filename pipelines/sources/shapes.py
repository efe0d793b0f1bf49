"""What every dataset source produces: a listing entry per shape and, once fetched, its geometry.

A source lists ``ShapeRef``s (cheap: ids, texts and where the shape lives) and materialises one
``ShapeRef`` into a ``ShapeData`` (points, the mesh to render when there is one, and embeddings the
source already ships, e.g. OpenShape's). The Ray Data build streams refs through these steps;
nothing here imports Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.meshes.mesh import Mesh

# The text groups of the recipe (Uni3D paper §3.2, following OpenShape): per shape and step one group is drawn
# uniformly among those the shape has, then one text uniformly within it. "name" holds the name and metadata
# texts (tags, category), "caption" the captions (BLIP and MSFT: one of them is drawn when both exist),
# "retrieval" the texts of retrieved similar images.
TEXT_GROUPS = ("name", "caption", "retrieval")


@dataclass
class ShapeRef:
    uid: str  # unique within a build, stable across re-runs (resume skips written uids)
    source: str  # "procedural" | "local" | "objaverse" | "openshape"
    locator: str  # where the shape lives: a path, a URL-relative path, or a procedural spec
    category: str = ""  # "" when unknown
    texts: list[str] = field(default_factory=list)  # candidate texts; the plain category name among them
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific, JSON-serialisable
    text_groups: list[int] = field(default_factory=list)  # per text, TEXT_GROUPS index; [] = all "name"

    def to_row(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "source": self.source,
            "locator": self.locator,
            "category": self.category,
            "texts": list(self.texts),
            "text_groups": list(self.text_groups),  # [] = every text "name"
            "extra": json.dumps(self.extra, sort_keys=True),  # one string column: Arrow needs fixed types
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ShapeRef:
        return cls(
            uid=str(row["uid"]),
            source=str(row["source"]),
            locator=str(row["locator"]),
            category=str(row.get("category") or ""),
            texts=[str(t) for t in (row.get("texts") if row.get("texts") is not None else [])],
            extra=json.loads(row.get("extra") or "{}"),
            text_groups=[int(g) for g in (row.get("text_groups") or [])],
        )


@dataclass
class ShapeData:
    points: np.ndarray  # (N, 6) float32: xyz in the unit sphere, rgb in [0, 1]
    has_color: bool
    mesh: Mesh | None = None  # what the renderer draws; None when the source ships only points
    texts: list[str] | None = None  # replaces the ref's texts when the source only knows them now
    text_groups: list[int] | None = None  # with texts: the group of each (TEXT_GROUPS index)
    view_embeddings: np.ndarray | None = None  # (K, E) precomputed by the source, with its teacher
    text_embeddings: np.ndarray | None = None  # (T, E) precomputed, one per text
    teacher: str = ""  # the teacher name the precomputed embeddings were made with


class StageError(Exception):
    """An error raised while processing one shape, with the build stage it happened in."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}: {cause}")
        self.stage, self.cause = stage, cause
