"""Dataset sources: list shapes (``ShapeRef``) and materialise one into points + mesh (``ShapeData``), any kind.

- ``procedural``: the offline default, labelled procedural objects (``pipelines.sources.procedural``).
- ``local``: a folder tree of meshes (``pipelines.sources.local``).
- ``objaverse`` and ``openshape``: see ``pipelines.sources.objaverse`` and ``pipelines.sources.openshape``.

Listing is cheap and streams; materialising does the I/O and runs inside the build's workers.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.meshes.load import load_mesh
from pipelines.meshes.sampling import sample_points
from pipelines.settings import ConfigError
from pipelines.sources.config import SourceConfig
from pipelines.sources.local import list_local
from pipelines.sources.procedural import make_shape
from pipelines.sources.procedural_categories import CATEGORIES
from pipelines.sources.shapes import ShapeData, ShapeRef, StageError
from pipelines.storage import is_uri


def list_shapes(cfg: SourceConfig, output: str) -> Iterator[ShapeRef]:
    """All shapes of the configured source, in a stable order."""
    if cfg.kind == "procedural":
        return list_procedural(cfg)
    if cfg.kind == "local":
        return list_local(cfg)
    if cfg.kind == "objaverse":
        from pipelines.sources.objaverse import list_objaverse

        return list_objaverse(objaverse_config(cfg, output))
    if cfg.kind == "openshape":
        from pipelines.sources.openshape import OpenShapeConfig, list_openshape

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
        from pipelines.sources.openshape import load_openshape_shape

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
    from pipelines.sources.objaverse import ObjaverseConfig, hf_base_url

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
