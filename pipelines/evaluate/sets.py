"""Zero-shot test sets read from the official files (docs/method.md §8) and from our own builds, without Ray.

An ``EvalSet`` is a table of items (``uid``, ``label``, and either ``points``: the ``(N, 6)`` float32 cloud
as bytes, or ``path``: an OpenShape ``.npy`` loaded when embedded) plus the class names in label order.

- ModelNet40: ``modelnet40/test_pc.npy`` (object array of dicts with ``xyz`` (10000, 3), ``rgb``),
  ``modelnet40/test_split.json`` (``[{category, name}]``, aligned with it) and
  ``modelnet40/modelnet40_shape_names.txt`` (class order). No colour: the file's rgb divided by 255, as the
  official readers take it (their comment: 100 on every point, so 0.392); an entry without rgb gets 0.4
  (docs/method.md §8).
- ScanObjectNN OBJ_ONLY: ``scanobjectnn/xyz_label.npy`` (a dict with ``xyz``, a list of (2048, 3), and
  ``label``), the 15 classes in their standard order. No colour (rgb 0.4), unless the file has an ``rgb`` list.
- Objaverse-LVIS: ``objaverse_lvis/lvis_testset.txt`` (lines ``cate_id,cate_name,model_id,relative_npy_path``,
  the path under ``objaverse_lvis/``, written with a leading ``/``) and OpenShape-format ``.npy`` files, with
  their colour.
- A build: its labelled held-out split (``pipelines.build.splits``), or all its labelled rows.

Every file goes through the restricted unpickler of ``pipelines.sources.openshape_files``; xyz is normalised to the unit
sphere.

Prompted names (``EvalSet.prompts``, what the 64 templates receive) are those of the official Uni3D evaluation
(arXiv 2310.06773; its ``data/labels.json``, read by ``test_zeroshot_3d_core``), so our zero-shot numbers are
comparable with the papers' tables:

- Objaverse-LVIS: the LVIS names exactly as the test file writes them, underscores and parentheses included
  ("Band_Aid", "bat_(animal)"); labels.json keeps them so. Its 1,156 names are not shipped here, so the names
  in ``lvis_testset.txt`` are what is prompted.
- ModelNet40: labels.json has its own cleaned spelling of the 40 shape names ("flower_pot" -> "flower pot",
  ``MODELNET40_LABELS``), which is what is prompted; a shape name outside ModelNet40 is an error.
- ScanObjectNN: the 15 names, which labels.json writes as the class list does.
- A build: its categories as written, as the held-out zero-shot during training prompts them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines.meshes.mesh import NO_COLOR, MeshError
from pipelines.meshes.sampling import normalize_unit_sphere
from pipelines.settings import ConfigError
from pipelines.sources.openshape_files import read_openshape_file, read_pickled_npy

BENCHMARKS = ("modelnet40", "scanobjectnn", "objaverse_lvis")
SCANOBJECTNN_CLASSES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
]  # fmt: skip
# Uni3D's data/labels.json "modelnet40_openshape", in label order: the prompted spelling of the shape names.
MODELNET40_LABELS = [
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower pot", "glass box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night stand", "person", "piano", "plant", "radio", "range hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv stand", "vase", "wardrobe", "xbox",
]  # fmt: skip
# modelnet40_shape_names.txt spells the same names with underscores ("flower_pot").
MODELNET40_CLASSES = [label.replace(" ", "_") for label in MODELNET40_LABELS]


class EvalSetError(ConfigError):
    pass


@dataclass
class EvalSet:
    name: str
    class_names: list[str]  # label order, as the set's files write them
    items: pa.Table  # uid, label, and points (binary (N, 6) float32) or path (str)
    prompts: list[str] = field(default_factory=list)  # the names the templates receive; empty: class_names
    unseen: list[str] = field(default_factory=list)  # builds: classes the checkpoint never trained on

    def __post_init__(self) -> None:
        self.prompts = list(self.prompts or self.class_names)
        if len(self.prompts) != len(self.class_names):
            raise EvalSetError(f"{self.name}: {len(self.prompts)} prompts for {len(self.class_names)} classes")

    def __len__(self) -> int:
        return self.items.num_rows


def cloud(xyz: Any, rgb: Any | None, where: str) -> np.ndarray:
    """``(N, 3)`` xyz and optional rgb in [0, 1] -> ``(N, 6)`` float32 on the unit sphere (rgb 0.4 if None)."""
    xyz = np.asarray(xyz, np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0 or not np.isfinite(xyz).all():
        raise EvalSetError(f"{where}: xyz must be a finite, non-empty (N, 3) array, got shape {xyz.shape}")
    out = np.full((len(xyz), 6), NO_COLOR, np.float32)
    try:
        out[:, :3] = normalize_unit_sphere(xyz)
    except ValueError as exc:
        raise EvalSetError(f"{where}: {exc}") from None
    if rgb is not None:
        rgb = np.asarray(rgb, np.float32)
        if rgb.shape != xyz.shape or not np.isfinite(rgb).all():
            raise EvalSetError(f"{where}: rgb must be finite with the shape of xyz {xyz.shape}, got {rgb.shape}")
        out[:, 3:] = np.clip(rgb, 0.0, 1.0)
    return out


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise EvalSetError(f"{what}: missing file {path}")
    return path


def _table(uids: list[str], labels: list[int], clouds: list[np.ndarray] | None = None, paths: list[str] | None = None):
    columns: dict[str, Any] = {"uid": pa.array(uids, pa.string()), "label": pa.array(labels, pa.int64())}
    if clouds is not None:
        columns["points"] = pa.array([c.astype(np.float32).tobytes() for c in clouds], pa.binary())
    if paths is not None:
        columns["path"] = pa.array(paths, pa.string())
    return pa.table(columns)


def read_modelnet40(root: str | Path) -> EvalSet:
    folder = Path(root) / "modelnet40"
    names = _require(folder / "modelnet40_shape_names.txt", "ModelNet40").read_text().split()
    unknown = [n for n in names if n not in MODELNET40_CLASSES]
    if unknown:
        raise EvalSetError(f"{folder / 'modelnet40_shape_names.txt'}: {unknown[:5]} are not ModelNet40 shape names")
    split = json.loads(_require(folder / "test_split.json", "ModelNet40").read_text())
    data = read_pickled_npy(_require(folder / "test_pc.npy", "ModelNet40"))
    entries = list(np.asarray(data, dtype=object).reshape(-1))
    if len(entries) != len(split):
        raise EvalSetError(f"{folder}: test_pc.npy holds {len(entries)} shapes but test_split.json {len(split)}")
    index = {n: i for i, n in enumerate(names)}
    uids, labels, clouds = [], [], []
    for i, (entry, meta) in enumerate(zip(entries, split, strict=True)):
        where = f"{folder / 'test_pc.npy'} [{i}]"
        if not isinstance(entry, dict) or "xyz" not in entry:
            raise EvalSetError(f"{where}: expected a dict with 'xyz', got {type(entry).__name__}")
        if not isinstance(meta, dict) or meta.get("category") not in index:
            raise EvalSetError(f"{folder / 'test_split.json'} [{i}]: category {meta!r} is not in the shape names")
        uids.append(str(meta.get("name", i)))
        labels.append(index[meta["category"]])
        clouds.append(cloud(entry["xyz"], _modelnet40_rgb(entry.get("rgb"), where), where))
    prompts = [MODELNET40_LABELS[MODELNET40_CLASSES.index(n)] for n in names]  # labels.json spelling
    return EvalSet("modelnet40", names, _table(uids, labels, clouds), prompts)


def _modelnet40_rgb(rgb: Any, where: str) -> np.ndarray | None:
    """The file's rgb divided by 255, as the official readers (Uni3D's and OpenShape's) take it. Their comment says
    the release holds 100 (no colour), meant as training's 0.4 for colourless shapes; the model then sees 100/255
    = 0.392. None (rgb 0.4) for an entry without rgb."""
    if rgb is None:
        return None
    rgb = np.asarray(rgb, np.float64)
    if not np.isfinite(rgb).all() or rgb.min(initial=0.0) < 0 or rgb.max(initial=0.0) > 255:
        raise EvalSetError(f"{where}: rgb must be finite values in [0, 255], as the released file holds them")
    return rgb / 255.0


def read_scanobjectnn(root: str | Path) -> EvalSet:
    path = _require(Path(root) / "scanobjectnn" / "xyz_label.npy", "ScanObjectNN")
    data = read_pickled_npy(path)
    if not isinstance(data, dict) or "xyz" not in data or "label" not in data:
        raise EvalSetError(f"{path}: expected a dict with 'xyz' and 'label'")
    xyz, labels = list(data["xyz"]), [int(v) for v in np.asarray(data["label"]).reshape(-1)]
    if len(xyz) != len(labels):
        raise EvalSetError(f"{path}: {len(xyz)} clouds but {len(labels)} labels")
    bad = [v for v in labels if not 0 <= v < len(SCANOBJECTNN_CLASSES)]
    if bad:
        raise EvalSetError(f"{path}: labels {sorted(set(bad))[:5]} are outside the 15 classes")
    # the official reader takes a file's 'rgb' as it is and gives 0.4 without one (the release has none)
    rgb = list(data["rgb"]) if data.get("rgb") is not None else [None] * len(xyz)
    if len(rgb) != len(xyz):
        raise EvalSetError(f"{path}: {len(xyz)} clouds but {len(rgb)} rgb arrays")
    clouds = [cloud(x, c, f"{path} [{i}]") for i, (x, c) in enumerate(zip(xyz, rgb, strict=True))]
    uids = [f"scanobjectnn-{i}" for i in range(len(xyz))]
    return EvalSet("scanobjectnn", list(SCANOBJECTNN_CLASSES), _table(uids, labels, clouds))


def read_objaverse_lvis(root: str | Path) -> EvalSet:
    folder = Path(root) / "objaverse_lvis"
    listing = _require(folder / "lvis_testset.txt", "Objaverse-LVIS")
    classes: dict[int, str] = {}
    uids, labels, paths = [], [], []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(",")
        if len(parts) != 4 or not parts[0].strip().isdigit():
            raise EvalSetError(f"{listing}:{n}: expected cate_id,cate_name,model_id,relative_npy_path, got {line!r}")
        cid, name, uid = int(parts[0]), parts[1].strip(), parts[2].strip()
        # the official reader appends the path to the folder's name with no separator, so the released listing's
        # paths start with '/': read relative to the folder, as that reader does
        rel = parts[3].strip().lstrip("/")
        if classes.setdefault(cid, name) != name:
            raise EvalSetError(f"{listing}:{n}: category {cid} is named {classes[cid]!r} and {name!r}")
        file = next((p for p in (folder / rel, Path(root) / rel) if p.is_file()), None)
        if file is None:
            raise EvalSetError(f"{listing}:{n}: missing file {folder / rel}")
        uids.append(uid)
        labels.append(cid)
        paths.append(str(file))
    if sorted(classes) != list(range(len(classes))):
        raise EvalSetError(f"{listing}: category ids must be 0..{len(classes) - 1}, found gaps")
    return EvalSet("objaverse_lvis", [classes[i] for i in range(len(classes))], _table(uids, labels, paths=paths))


def load_lvis_points(path: str) -> np.ndarray:
    """One Objaverse-LVIS test shape (OpenShape format) -> ``(N, 6)``, with its colour."""
    data = read_openshape_file(path)
    return cloud(data.get("xyz"), data.get("rgb"), path)


def read_benchmark(name: str, root: str | Path) -> EvalSet:
    readers = {"modelnet40": read_modelnet40, "scanobjectnn": read_scanobjectnn, "objaverse_lvis": read_objaverse_lvis}
    if name not in readers:
        raise EvalSetError(f"unknown benchmark {name!r}; benchmarks: {list(readers)} or a build folder")
    try:
        return readers[name](root)
    except MeshError as err:  # an unreadable file of the set: its message names it
        raise EvalSetError(str(err)) from err
