"""The local source: a folder tree of meshes (ShapeNet, 3D-FUTURE, ABO, users' own), with an optional metadata
file giving uid, category and texts per mesh (JSON list or object, JSONL, or CSV with ``texts`` split by ``|``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.settings import ConfigError
from pipelines.sources.config import SourceConfig
from pipelines.sources.shapes import ShapeRef

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def list_local(cfg: SourceConfig) -> Iterator[ShapeRef]:
    if not cfg.root or not Path(cfg.root).is_dir():
        raise ConfigError(f"source.root must be an existing folder of meshes for source.kind=local, got {cfg.root!r}")
    root = Path(cfg.root)
    meta = read_metadata(Path(cfg.metadata)) if cfg.metadata else {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES):
        rel = path.relative_to(root).as_posix()
        info = meta.get(rel) or meta.get(path.name) or meta.get(path.stem) or {}
        category = str(info.get("category") or (path.parent.name if cfg.category_from == "parent" else ""))
        texts, groups = metadata_texts(info)
        uid = str(info.get("uid") or rel)  # the extension stays: pig.off and pig.stl are two shapes
        yield ShapeRef(uid=uid, source="local", locator=str(path), category=category, texts=texts, text_groups=groups)


# Metadata keys of the three text groups (shapes.TEXT_GROUPS): names/tags, captions, retrieval texts.
METADATA_TEXT_KEYS = {"texts": 0, "captions": 1, "retrieval_texts": 2}


def metadata_texts(info: dict[str, Any]) -> tuple[list[str], list[int]]:
    """A metadata row's ``texts`` (names), ``captions`` and ``retrieval_texts`` -> texts and their groups."""
    texts: list[str] = []
    groups: list[int] = []
    for key, group in METADATA_TEXT_KEYS.items():
        for text in info.get(key) or []:
            text = str(text).strip()
            if text and text not in texts:
                texts.append(text)
                groups.append(group)
    return texts, groups


def read_metadata(path: Path) -> dict[str, dict[str, Any]]:
    """Metadata rows keyed by ``path`` (relative to the root), file name or uid.

    JSON (a list of objects, or an object mapping file name -> category or object), JSONL or CSV
    (``texts`` separated by ``|``). Every row needs ``path`` or ``uid``.
    """
    if not path.is_file():
        raise ConfigError(f"source.metadata: {path} does not exist")
    text = path.read_text()
    if path.suffix == ".csv":
        rows: list[Any] = list(csv.DictReader(text.splitlines()))
        for row in rows:
            for key in METADATA_TEXT_KEYS:
                row[key] = [t for t in (row.get(key) or "").split("|") if t]
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text)
        if isinstance(data, dict):
            data = [{"path": k, **(v if isinstance(v, dict) else {"category": v})} for k, v in data.items()]
        rows = data
    out: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows):
        key = row.get("path") or row.get("uid") if isinstance(row, dict) else None
        if not key:
            raise ConfigError(f"{path}: row {n} has neither 'path' nor 'uid': {row!r}")
        out[str(key)] = row
    return out
