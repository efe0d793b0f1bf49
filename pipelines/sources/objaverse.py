"""The Objaverse 1.0 source, without Ray: list uids with texts from the annotations, download GLBs robustly.

Follows the Hugging Face layout of the dataset ``allenai/objaverse`` as the ``objaverse`` 0.1.7 package
reads it (every path relative to ``HF_BASE_URL``):

- ``object-paths.json.gz``: uid -> ``glbs/<shard>/<uid>.glb`` (shards ``000-000`` ... ``000-159``);
- ``metadata/<shard>.json.gz``: uid -> Sketchfab annotation (``name``, ``tags`` [{name}], ``categories``
  [{name}], ``description``, ``license``, ...);
- ``lvis-annotations.json.gz``: LVIS category -> [uid] (the ~46k Objaverse-LVIS shapes).

Every file goes through one :class:`~pipelines.sources.download.Downloader` into ``cache_dir`` with the same
layout (unlike the package's fixed ``~/.objaverse``), so a re-run reuses annotations and GLBs.
Memory: ``object-paths.json.gz`` (~800k entries) is parsed as a stream into per-shard uid lists, and
metadata shards are read one at a time, only those holding wanted uids; refs are yielded shard by shard.

Texts per shape (docs/method.md §5 draws one per step; the plain category name is among them, which small
text teachers need), in order, cleaned (URLs dropped, whitespace collapsed, strings without a letter
dropped) and deduplicated case-insensitively: the name (``_``/file extension removed), the first
``MAX_TAGS`` tags joined by ", ", the description trimmed to ``MAX_DESCRIPTION_CHARS``, the Sketchfab
categories joined by ", ", and the LVIS category with ``_`` as spaces. ``ShapeRef.category`` is the LVIS
category as written in the annotations (e.g. ``teddy_bear``), "" outside LVIS. Objaverse glTF is Y up, so
meshes load with up_axis "y".
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pipelines.meshes.guard import DEFAULT_LIMITS, MeshLimits
from pipelines.meshes.load import load_mesh
from pipelines.meshes.mesh import Mesh
from pipelines.sources.download import DownloadConfig, Downloader
from pipelines.sources.shapes import ShapeRef

log = logging.getLogger(__name__)

HF_BASE_URL = "https://huggingface.co/datasets/allenai/objaverse/resolve/main"
DATASET_PATH = "datasets/allenai/objaverse/resolve/main"


def hf_base_url() -> str:
    """The dataset on the hub, or on the mirror ``HF_ENDPOINT`` names (as ``huggingface_hub`` reads it)."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"
    return f"{endpoint}/{DATASET_PATH}"


OBJECT_PATHS = "object-paths.json.gz"
LVIS_ANNOTATIONS = "lvis-annotations.json.gz"
LVIS_MODES = ("include", "exclude", "only")
MAX_TAGS = 10
MAX_DESCRIPTION_CHARS = 200

_CANONICAL = re.compile(r"glbs/([^/]+)/([^/]+)\.glb")
_PAIR = re.compile(r'\s*([{,])\s*"([^"\\]*)"\s*:\s*"([^"\\]*)"')  # one member of a flat object of plain strings
_CLOSE = {True: re.compile(r"\s*\{\s*\}\s*"), False: re.compile(r"\s*\}\s*")}  # keyed by "no member yet"
_MAX_PENDING = 1 << 16  # a single member never comes close: more unparsed text means the file is not flat
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
_FILE_EXT = re.compile(r"\.(?:obj|fbx|glb|gltf|blend|stl|ply|dae|3ds|max|c4d|ma|mb|skp|usdz?)$", re.IGNORECASE)


@dataclass
class ObjaverseConfig(DownloadConfig):
    base_url: str = HF_BASE_URL  # tests point it at a local server
    lvis: str = "include"  # include | exclude (the paper's "no LVIS" set) | only
    uids: list[str] | None = None  # restrict the listing to these uids

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lvis not in LVIS_MODES:
            raise ValueError(f"lvis must be one of {LVIS_MODES}, got {self.lvis!r}")


class ObjaverseError(RuntimeError):
    """Objaverse annotations that cannot be used; the message names the file or the uids."""


def metadata_path(shard: str) -> str:
    return f"metadata/{shard}.json.gz"


def list_objaverse(cfg: ObjaverseConfig, downloader: Downloader | None = None) -> Iterator[ShapeRef]:
    """Yield one ``ShapeRef`` per wanted uid, shard by shard (sorted), uids sorted within a shard."""
    if cfg.uids is not None and not cfg.uids:
        return
    dl = downloader or Downloader(cfg)
    lvis = _lvis_categories(dl)
    by_shard, odd_paths = _shard_uids(dl, cfg, lvis)
    for shard in sorted(by_shard):
        annotations = _read_json(dl, metadata_path(shard))
        for uid in sorted(by_shard[shard]):
            annotation = annotations.get(uid)
            if annotation is None:
                log.warning("objaverse uid %s has no entry in %s", uid, metadata_path(shard))
            category = lvis.get(uid, "")
            locator = odd_paths.get(uid) or f"glbs/{shard}/{uid}.glb"
            texts = shape_texts(annotation or {}, category)
            yield ShapeRef(uid, "objaverse", locator, category, texts, {"shard": shard})


def fetch_glb(ref: ShapeRef | str, cfg: ObjaverseConfig, downloader: Downloader | None = None) -> Path:
    """The cached GLB of ``ref`` (a ``ShapeRef`` or its ``glbs/<shard>/<uid>.glb`` path), downloaded if needed."""
    rel_path = ref.locator if isinstance(ref, ShapeRef) else ref
    if not rel_path.endswith(".glb"):
        raise ValueError(f"not an Objaverse GLB path: {rel_path!r}")
    return (downloader or Downloader(cfg)).fetch(rel_path)


def load_objaverse_shape(
    ref: ShapeRef, cfg: ObjaverseConfig, downloader: Downloader | None = None, limits: MeshLimits = DEFAULT_LIMITS
) -> Mesh:
    """Fetch and load one Objaverse shape (glTF is Y up); raises ``DownloadError`` or ``MeshError``."""
    return load_mesh(fetch_glb(ref, cfg, downloader), limits, up_axis="y")


def shape_texts(annotation: dict[str, Any], lvis_category: str = "") -> list[str]:
    """Candidate texts of one shape from its Sketchfab annotation and LVIS category (module docstring)."""
    name = _clean(_FILE_EXT.sub("", _text(annotation.get("name"))).replace("_", " "))
    tags = _unique(_clean(_name_of(t).replace("-", " ").replace("_", " ")) for t in _list(annotation.get("tags")))
    description = _trim(_clean(_text(annotation.get("description"))), MAX_DESCRIPTION_CHARS)
    categories = _unique(_clean(_name_of(c)) for c in _list(annotation.get("categories")))
    candidates = [name, ", ".join(tags[:MAX_TAGS]), description, ", ".join(categories)]
    candidates.append(_clean(lvis_category.replace("_", " ")))
    return _unique(candidates)


def _lvis_categories(dl: Downloader) -> dict[str, str]:
    """uid -> LVIS category (the first category listing the uid, in file order)."""
    data = _read_json(dl, LVIS_ANNOTATIONS)
    out: dict[str, str] = {}
    for category, uids in data.items():
        for uid in uids:
            out.setdefault(uid, category)
    return out


def _shard_uids(
    dl: Downloader, cfg: ObjaverseConfig, lvis: dict[str, str]
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Wanted uids grouped by shard, and the paths of uids whose path is not ``glbs/<shard>/<uid>.glb``."""
    wanted = set(cfg.uids) if cfg.uids is not None else None
    by_shard: dict[str, list[str]] = {}
    odd_paths: dict[str, str] = {}
    found: set[str] = set()
    for uid, rel_path in _read_object_paths(dl):
        if wanted is not None:
            if uid not in wanted:
                continue
            found.add(uid)
        if (cfg.lvis == "exclude" and uid in lvis) or (cfg.lvis == "only" and uid not in lvis):
            continue
        match = _CANONICAL.fullmatch(rel_path)
        if match and match.group(2) == uid:
            shard = match.group(1)
        else:
            odd_paths[uid] = rel_path
            shard = PurePosixPath(rel_path).parent.name
        by_shard.setdefault(shard, []).append(uid)
    if wanted is not None and len(found) < len(wanted):
        missing = sorted(wanted - found)
        raise ObjaverseError(f"{len(missing)} requested uid(s) not in {dl.url(OBJECT_PATHS)}, e.g. {missing[:5]}")
    return by_shard, odd_paths


def _read_object_paths(dl: Downloader) -> Iterator[tuple[str, str]]:
    """Stream the (uid, path) members of ``object-paths.json.gz`` without holding the whole object."""
    path = dl.fetch(OBJECT_PATHS)
    pending, first = "", True
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            while chunk := f.read(1 << 20):
                pending += chunk
                pos = 0
                while (match := _PAIR.match(pending, pos)) and match.group(1) == ("{" if first else ","):
                    yield match.group(2), match.group(3)
                    pos, first = match.end(), False
                pending = pending[pos:]
                if len(pending) > _MAX_PENDING:
                    break
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise _corrupt(path, err) from err
    if not _CLOSE[first].fullmatch(pending):
        raise _corrupt(path, f"not a flat JSON object of strings near {pending[:80]!r}")


def _read_json(dl: Downloader, rel_path: str) -> dict[str, Any]:
    path = dl.fetch(rel_path)
    try:
        with gzip.open(path, "rb") as f:
            data = json.load(f)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise _corrupt(path, err) from err
    if not isinstance(data, dict):
        raise _corrupt(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def _corrupt(path: Path, cause: object) -> ObjaverseError:
    path.unlink(missing_ok=True)  # a re-run downloads it again instead of failing on the same bytes
    return ObjaverseError(f"{path}: unreadable annotation file ({cause}); removed from the cache")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _name_of(item: Any) -> str:
    return _text(item.get("name")) if isinstance(item, dict) else _text(item)


def _clean(text: str) -> str:
    text = _SPACE.sub(" ", _URL.sub(" ", text)).strip(" -_,;:|*#")
    return text if any(c.isalpha() for c in text) else ""


def _trim(text: str, limit: int) -> str:
    """At most ``limit`` characters, cut after the last full sentence if one ends past a quarter, else a word."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if end >= limit // 4:
        return cut[: end + 1]
    if not text[limit].isspace():
        cut = cut.rsplit(" ", 1)[0]  # drop the cut word
    return cut.rstrip(" ,;:")


def _unique(texts: Any) -> list[str]:
    seen: set[str] = set()
    out = []
    for text in texts:
        key = text.casefold()
        if text and key not in seen:
            seen.add(key)
            out.append(text)
    return out
