"""OpenShape's released training set as a shape source, without Ray (docs/method.md §5, §7).

OpenShape (Liu et al., NeurIPS 2023) ships one ``.npy`` per shape, the data Uni3D pretrained on: a pickled
dict with ``xyz`` / ``rgb`` (10,000 points), ``image_feat`` (12 rendered views) and texts (``text`` =
metadata names, ``blip_caption``, ``msft_caption``, ``retrieval_text``) with their ``*_feat`` embeddings, all
from OpenCLIP ViT-bigG-14. ``list_openshape`` reads a split file (``train_all.json`` / ``train_no_lvis.json``)
without opening shape files; ``load_openshape_shape`` turns one file into a ``ShapeData``, decoding it with
``pipelines.sources.openshape_files``. Decisions, after OpenShape's ``src/data.py`` and Uni3D's ``data/datasets.py``:

- Files go through ``read_openshape_file``, a restricted unpickler that builds only numpy arrays, dtypes and
  scalars; any other global a file names (``os.system``, ...) raises ``MeshError`` before it can be called.
- xyz is used as stored (Y up: Uni3D rotates it about y, without OpenShape's y/z swap), subsampled if asked
  (seeded by the uid), then normalised to the unit sphere. A file without ``rgb``, or whose points all share
  one grey (r = g = b everywhere), is uncoloured: ``has_color=False``, rgb = 0.4 (docs/method.md §1). Otherwise rgb is
  clipped to [0, 1]; values far outside it (0-255 data) are an error.
- texts: names, BLIP caption(s), MSFT caption(s), retrieval texts; stripped, empty and non-string ones dropped,
  duplicates dropped keeping the first, each in its group (name; caption for BLIP and MSFT; retrieval).
  Objaverse keeps only its first name (both loaders use ``text[0]``); names of Objaverse shapes that
  OpenShape's ``gpt4_filtering.json`` flags "N" are dropped, as the official code does (``text_filter``).
- Precomputed embeddings are returned only when the requested teacher is exactly ``OPENSHAPE_TEACHER``:
  ``view_embeddings`` = ``image_feat``, ``text_embeddings`` row i = the embedding of ``texts[i]``. With any other
  teacher both are None: the build re-embeds the texts, and with no renders the image term is masked.
  Embedding version ``original`` (of the text itself) by default; OpenShape trained with ``prompt_avg`` (the
  text in prompt templates, averaged) for names and captions. Retrieval texts only have ``original``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipelines.meshes.mesh import MeshError
from pipelines.sources.openshape_files import (
    OPENSHAPE_EMBED_DIM,
    OPENSHAPE_TEACHER,
    file_features,
    file_points,
    file_texts,
    read_openshape_file,
)
from pipelines.sources.shapes import ShapeData, ShapeRef

KNOWN_DATASETS = ("objaverse", "shapenet", "3d-future", "abo")  # OpenShape's four sources (folder names, lowered)
_PROBE = 64  # if none of the first _PROBE listed files exists, the root is wrong: fail instead of listing 1M misses


@dataclass
class OpenShapeConfig:
    root: str  # the folder holding OpenShape's per-source folders (Objaverse/, ShapeNet/, ...) and meta_data/
    split: str = "train_all.json"  # or train_no_lvis.json, or a path; looked up in root, root/meta_data/split, as is
    uids: list[str] | None = None  # keep only these ("objaverse/<id>" or the bare id); unknown ones are an error
    text_embed_version: str = "original"  # or "prompt_avg" (OpenShape's template-averaged name/caption embeddings)
    # OpenShape's gpt4_filtering.json: names of Objaverse shapes flagged "N" are dropped, as the official code
    # does. "auto": root/meta_data/gpt4_filtering.json (or root/gpt4_filtering.json), required when the split
    # lists Objaverse shapes; a path; or "none" to keep every name.
    text_filter: str = "auto"

    def __post_init__(self) -> None:
        if self.text_embed_version not in ("original", "prompt_avg"):
            raise ValueError(f"text_embed_version must be original or prompt_avg, got {self.text_embed_version!r}")
        if not self.text_filter:
            raise ValueError("text_filter must be 'auto', 'none' or the path of gpt4_filtering.json")


def list_openshape(cfg: OpenShapeConfig) -> Iterator[ShapeRef]:
    """The shapes of ``cfg.split``, in file order, one ``ShapeRef`` each; no shape file is opened (texts=[])."""
    split = _find_split(cfg)
    entries = json.loads(split.read_text())
    if isinstance(entries, dict):  # Uni3D's variant: {id: data_path}
        entries = [{"id": key, "data_path": value} for key, value in entries.items()]
    if not isinstance(entries, list):
        raise ValueError(f"{split}: expected a JSON list of entries or an {{id: path}} object")
    return _iter_refs(cfg, split, entries, _text_filter(cfg))


FILTER_FILE = "gpt4_filtering.json"


def _text_filter(cfg: OpenShapeConfig) -> set[str] | None:
    """The flagged Objaverse ids, or None when no filter file was found under "auto" (an error if needed)."""
    if cfg.text_filter == "none":
        return set()
    if cfg.text_filter != "auto":
        if not Path(cfg.text_filter).is_file():
            raise FileNotFoundError(f"source.openshape.text_filter: {cfg.text_filter} does not exist")
        return _read_text_filter(cfg.text_filter)
    for candidate in (Path(cfg.root) / "meta_data" / FILTER_FILE, Path(cfg.root) / FILTER_FILE):
        if candidate.is_file():
            return _read_text_filter(str(candidate))
    return None


def _iter_refs(cfg: OpenShapeConfig, split: Path, entries: list[Any], flagged: set[str] | None) -> Iterator[ShapeRef]:
    root, wanted = Path(cfg.root), (set(cfg.uids) if cfg.uids is not None else None)
    seen: dict[str, str] = {}
    listed = found = 0
    for i, entry in enumerate(entries):
        data_path, dataset, group, shape_id = _parse_entry(entry, f"{split}[{i}]")
        uid = f"{dataset.lower()}/{shape_id}"
        if wanted is not None and uid not in wanted and shape_id not in wanted:
            continue
        if uid in seen:
            if seen[uid] != data_path:
                raise ValueError(f"{split}[{i}]: uid {uid!r} is listed twice, as {seen[uid]!r} and {data_path!r}")
            continue  # the same entry twice: list it once
        seen[uid] = data_path
        locator, exists = _resolve(root, data_path)
        listed, found = listed + 1, found + exists
        if listed == _PROBE and not found:
            raise FileNotFoundError(f"none of the first {_PROBE} shapes of {split} is under root {root} ({locator})")
        extra = {"dataset": dataset, "group": group, "id": shape_id, "data_path": data_path}
        extra["text_embed_version"] = cfg.text_embed_version
        if dataset.lower() == "objaverse" and flagged is None and exists:  # a wrong root is the first error
            raise FileNotFoundError(
                f"{split} lists Objaverse shapes, whose names OpenShape filters with {FILTER_FILE}; it is not in "
                f"{Path(cfg.root) / 'meta_data'}: give source.openshape.text_filter=PATH, or =none to keep every name"
            )
        if dataset.lower() == "objaverse" and flagged and shape_id in flagged:
            extra["drop_names"] = True
        yield ShapeRef(uid=uid, source="openshape", locator=str(locator), extra=extra)
    if 0 < listed < _PROBE and not found:
        raise FileNotFoundError(f"none of the {listed} shapes of {split} is under root {root}")
    if wanted is not None and (unknown := wanted - set(seen) - {uid.split("/", 1)[1] for uid in seen}):
        raise ValueError(f"{split}: {len(unknown)} requested uids are not in the split, e.g. {sorted(unknown)[:5]}")


def _find_split(cfg: OpenShapeConfig) -> Path:
    root = Path(cfg.root)
    candidates = [root / cfg.split, root / "meta_data" / "split" / cfg.split, Path(cfg.split)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"split file {cfg.split!r} not found; looked for {[str(c) for c in candidates]}")


def _read_text_filter(path: str) -> set[str]:
    flags = json.loads(Path(path).read_text())  # {uid: {"flag": "Y" | "N", ...}}
    return {uid for uid, v in flags.items() if (v.get("flag") if isinstance(v, dict) else v) == "N"}


def _parse_entry(entry: Any, where: str) -> tuple[str, str, str, str]:
    """A split entry (OpenShape's dict or a plain path) -> (data_path, dataset, group, id)."""
    if isinstance(entry, str):
        entry = {"data_path": entry}
    if not isinstance(entry, dict) or not isinstance(entry.get("data_path"), str) or not entry["data_path"]:
        raise ValueError(f"{where}: expected a path or a dict with 'data_path', got {entry!r}")
    data_path = entry["data_path"]
    parts = PurePosixPath(data_path).parts
    dataset = entry.get("dataset") or next((p for p in reversed(parts[:-1]) if p.lower() in KNOWN_DATASETS), None)
    if not dataset and len(parts) >= 3:
        dataset = parts[-3]  # <dataset>/<group>/<file>
    if not dataset or dataset == "/":
        raise ValueError(
            f"{where}: cannot tell the dataset of {data_path!r} (give 'dataset' or <dataset>/<group>/<file>)"
        )
    group = str(entry.get("group") or (parts[-2] if len(parts) >= 2 else ""))
    return data_path, str(dataset), group, str(entry.get("id") or PurePosixPath(data_path).stem)


def _resolve(root: Path, data_path: str) -> tuple[Path, bool]:
    """The file ``data_path`` names: as written if it exists, else under ``root`` by its trailing components."""
    path = PurePosixPath(data_path)
    parts = [p for p in path.parts if p != "/"]
    rooted = [] if path.is_absolute() else [root / path]
    rooted += [root.joinpath(*parts[-k:]) for k in range(min(3, len(parts)), 0, -1)]  # dataset/group/file, ...
    for candidate in ([Path(path)] if path.is_absolute() else []) + rooted:
        if candidate.is_file():
            return candidate, True
    return rooted[0], False  # loading it raises a MeshError that names the file


def load_openshape_shape(ref: ShapeRef, teacher_name: str, num_points: int | None = None) -> ShapeData:
    """One listed shape -> points, texts and, for ``OPENSHAPE_TEACHER`` only, its precomputed embeddings."""
    name = ref.locator
    if not Path(name).is_file():
        raise MeshError(f"{name}: no such file (split entry {ref.extra.get('data_path')!r}; check the root)")
    data = read_openshape_file(name)
    points, has_color = file_points(data, name, ref.uid, num_points)
    matched = teacher_name == OPENSHAPE_TEACHER
    texts, groups, rows = file_texts(data, name, ref.extra, matched)
    if not matched:
        return ShapeData(points=points, has_color=has_color, texts=texts, text_groups=groups)
    views = file_features(data.get("image_feat"), "original", name, "image_feat")
    if not views:
        raise MeshError(f"{name}: field 'image_feat': missing or empty (OpenShape files hold 12 views)")
    text_embeddings = np.stack(rows) if rows else np.zeros((0, OPENSHAPE_EMBED_DIM), np.float32)
    return ShapeData(
        points=points,
        has_color=has_color,
        texts=texts,
        text_groups=groups,
        view_embeddings=np.stack(views),  # (K, 1280)
        text_embeddings=text_embeddings,  # (T, 1280), row i embeds texts[i]
        teacher=OPENSHAPE_TEACHER,
    )
