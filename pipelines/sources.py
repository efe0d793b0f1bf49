"""Dataset sources: list shapes (``ShapeRef``) and materialise one into points + mesh (``ShapeData``).

- ``procedural``: the offline default, labelled procedural objects (``pipelines.procedural``).
- ``local``: a folder tree of meshes (ShapeNet, 3D-FUTURE, ABO, users' own), with an optional
  metadata file giving uid, category and texts per mesh.
- ``objaverse`` and ``openshape``: see ``pipelines.objaverse`` and ``pipelines.openshape``.

Listing is cheap and streams; materialising does the I/O and runs inside the build's workers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.config import SourceConfig
from pipelines.mesh_io import load_mesh
from pipelines.procedural import CATEGORIES, make_shape
from pipelines.sampling import sample_points
from pipelines.settings import ConfigError
from pipelines.shapes import ShapeData, ShapeRef, StageError
from pipelines.storage import is_uri

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".stl", ".off")


def list_shapes(cfg: SourceConfig, output: str) -> Iterator[ShapeRef]:
    """All shapes of the configured source, in a stable order."""
    if cfg.kind == "procedural":
        return list_procedural(cfg)
    if cfg.kind == "local":
        return list_local(cfg)
    if cfg.kind == "objaverse":
        from pipelines.objaverse import list_objaverse

        return list_objaverse(objaverse_config(cfg, output))
    if cfg.kind == "openshape":
        from pipelines.openshape import OpenShapeConfig, list_openshape

        if not cfg.root:
            raise ConfigError("source.root must name the folder of OpenShape's files for source.kind=openshape")
        return list_openshape(OpenShapeConfig(root=cfg.root, split=cfg.split, text_filter=cfg.text_filter))
    raise ConfigError(f"unknown source kind {cfg.kind!r}")


def list_procedural(cfg: SourceConfig) -> Iterator[ShapeRef]:
    categories = list(cfg.categories or CATEGORIES)
    unknown = sorted(set(categories) - set(CATEGORIES))
    if unknown:
        raise ConfigError(f"source.categories: unknown procedural categories {unknown}; known: {list(CATEGORIES)}")
    for i in range(cfg.num_shapes):
        category = categories[i % len(categories)]
        seed = cfg.seed * 1_000_003 + i
        yield ShapeRef(
            uid=f"proc-{category}-{seed}", source="procedural", locator=f"{category}:{seed}", category=category
        )


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


# Metadata keys of the three text groups (schema.TEXT_GROUPS): names/tags, captions, retrieval texts.
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


def shape_seed(uid: str, seed: int) -> int:
    """A per-shape sampling seed that does not depend on the order of the listing."""
    return (int(hashlib.sha1(uid.encode()).hexdigest()[:8], 16) + seed) % 2**31


def materialise(ref: ShapeRef, num_points: int, seed: int, context: dict[str, Any]) -> tuple[ShapeData, dict]:
    """Fetch + load + sample one shape -> (data, per-stage seconds); errors carry their stage.

    ``context`` holds per-worker state created once by the caller: the teacher name (OpenShape),
    the up axis (local), the Objaverse config and downloader.
    """
    times: dict[str, float] = {}
    if ref.source == "openshape":
        from pipelines.openshape import load_openshape_shape

        data = _timed(times, "load", lambda: load_openshape_shape(ref, context["teacher_name"], num_points=num_points))
        return data, times
    mesh, texts, groups = _load(ref, context, times)
    sample = _timed(times, "sample", lambda: sample_points(mesh, num_points=num_points, seed=shape_seed(ref.uid, seed)))
    if not texts:
        texts, groups = ref.texts, ref.text_groups
    if not texts:  # a name is all there is
        texts, groups = [ref.category or Path(ref.locator).stem.replace("_", " ")], [0]
    data = ShapeData(
        points=sample.points,
        has_color=sample.has_color,
        mesh=mesh,
        texts=list(texts),
        text_groups=list(groups) or [0] * len(texts),
    )
    return data, times


def _load(ref: ShapeRef, context: dict[str, Any], times: dict[str, float]) -> tuple[Any, list[str], list[int]]:
    if ref.source == "procedural":
        category, seed = ref.locator.split(":")
        shape = _timed(times, "load", lambda: make_shape(category, int(seed)))
        return shape.to_mesh(), shape.texts, shape.text_groups
    if ref.source == "local":
        return _timed(times, "load", lambda: load_mesh(ref.locator, up_axis=context.get("up_axis", "y"))), [], []
    if ref.source == "objaverse":
        path = _timed(times, "fetch", lambda: context["downloader"].fetch(ref.locator))
        try:
            return _timed(times, "load", lambda: load_mesh(path, up_axis="y")), [], []  # Objaverse glTF is Y-up
        finally:
            if not context.get("keep_downloads", True):
                path.unlink(missing_ok=True)
    raise StageError("load", ValueError(f"shape {ref.uid!r}: unknown source {ref.source!r}"))


def _timed(times: dict[str, float], stage: str, fn: Any) -> Any:
    start = time.perf_counter()
    try:
        return fn()
    except Exception as err:
        raise StageError(stage, err) from err
    finally:
        times[stage] = time.perf_counter() - start


def objaverse_config(cfg: SourceConfig, output: str) -> Any:
    from pipelines.objaverse import ObjaverseConfig, hf_base_url

    kwargs: dict[str, Any] = {
        "lvis": cfg.lvis,
        "max_concurrency": cfg.download_concurrency,
        "retries": cfg.download_retries,
        "timeout_s": cfg.download_timeout_s,
    }
    kwargs["base_url"] = cfg.base_url or hf_base_url()
    return ObjaverseConfig(cache_dir=objaverse_cache(cfg, output), **kwargs)


def objaverse_cache(cfg: SourceConfig, output: str) -> str:
    """The download cache: ``source.cache_dir``, else next to a local build, else node-local scratch (an
    ``s3://`` output is no folder to download into)."""
    if cfg.cache_dir or cfg.root:
        return os.path.abspath(os.path.expanduser(cfg.cache_dir or cfg.root))
    if not is_uri(output):
        return os.path.join(os.path.abspath(output), "cache", "objaverse")
    scratch = os.environ.get("UNI3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "uni3d")
    return os.path.join(scratch, "objaverse")
