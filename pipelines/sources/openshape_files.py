"""One file of OpenShape's released training set: read safely and decoded field by field (docs/method.md §5, §7).

A file is a pickled dict of numpy arrays (``np.save`` of an object): it is unpickled with an unpickler that
builds numpy arrays and nothing else, after a size check, so a hostile file cannot run code. Its fields are
``xyz`` and ``rgb`` (points), the texts (``text``, ``blip_caption``, ``msft_caption``, ``retrieval_text``) and,
for OpenCLIP ViT-bigG-14 only, their embeddings and the 12 views' (``*_feat``). Every error names the file
and the field.
"""

from __future__ import annotations

import codecs
import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.meshes.mesh import NO_COLOR, MeshError
from pipelines.meshes.sampling import normalize_unit_sphere
from pipelines.sources.shapes import TEXT_GROUPS

OPENSHAPE_TEACHER = "openclip:ViT-bigG-14/laion2b_s39b_b160k"
OPENSHAPE_EMBED_DIM = 1280
MAX_FILE_BYTES = 256 << 20  # an OpenShape file is ~0.3 MB; anything this big is not one
TEXT_FIELDS = ("text", "blip_caption", "msft_caption", "retrieval_text")  # the order of ShapeData.texts
# The recipe's three groups: BLIP and MSFT captions are one group, so one of them is drawn when both exist.
TEXT_FIELD_GROUPS = {
    "text": "name",
    "blip_caption": "caption",
    "msft_caption": "caption",
    "retrieval_text": "retrieval",
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals ``np.save`` writes for a dict of arrays, strings and numbers."""

    def __init__(self, file: Any, name: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: what numpy documents for Python 2 pickles of arrays
        self._name = name
        reconstruct, scalar = np.zeros(1).__reduce__()[0], np.float32(0).__reduce__()[0]
        self._allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
        self._allowed[("_codecs", "encode")] = codecs.encode  # protocol-2 pickles spell bytes as encode(str, latin1)
        for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spellings of the same functions
            self._allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
            self._allowed[(f"{core}.multiarray", "scalar")] = scalar

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise MeshError(
                f"{self._name}: refusing to unpickle {module}.{name}: an OpenShape file may only hold numpy arrays, "
                "dtypes, scalars, strings, lists and dicts"
            )
        return self._allowed[(module, name)]


def read_pickled_npy(path: str | Path, max_bytes: int | None = None) -> Any:
    """A ``.npy`` holding pickled objects (``np.save`` of a dict or an object array) -> the dict or array,
    unpickled without running code the file names (numpy arrays, dtypes, scalars, containers only)."""
    path, name = Path(path), str(path)
    if not path.is_file():
        raise MeshError(f"{name}: no such file")
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise MeshError(f"{name}: file is {path.stat().st_size} bytes, over the limit of {max_bytes}")
    with path.open("rb") as fp:
        try:
            version = np.lib.format.read_magic(fp)
        except ValueError as exc:
            raise MeshError(f"{name}: not a .npy file ({exc})") from None
        if version not in ((1, 0), (2, 0)):
            raise MeshError(f"{name}: .npy format version {version} is not supported (1.0 or 2.0)")
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            shape, _, dtype = reader(fp)
        except ValueError as exc:
            raise MeshError(f"{name}: malformed .npy header ({exc})") from None
        if dtype != np.dtype(object):
            raise MeshError(
                f"{name}: expected pickled objects (np.save of a dict or list), found a {shape} {dtype} array"
            )
        try:
            obj = _NumpyOnlyUnpickler(fp, name).load()
        except MeshError:
            raise
        except Exception as exc:  # truncated or corrupt pickles raise many types
            raise MeshError(f"{name}: could not unpickle: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype == object:
        obj = obj.item()
    return obj


def read_openshape_file(path: str | Path) -> dict[str, Any]:
    """One OpenShape ``.npy`` (``np.save`` of a dict) -> the dict, without running code the file names."""
    obj = read_pickled_npy(path, MAX_FILE_BYTES)
    if not isinstance(obj, dict):
        raise MeshError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def file_points(data: dict[str, Any], name: str, uid: str, num_points: int | None) -> tuple[np.ndarray, bool]:
    xyz = _numeric(data.get("xyz"), name, "xyz")
    if xyz.ndim != 2 or xyz.shape[1] != 3 or len(xyz) == 0:
        raise MeshError(f"{name}: field 'xyz': expected a non-empty (N, 3) array, got shape {xyz.shape}")
    if not np.isfinite(xyz).all():
        raise MeshError(f"{name}: field 'xyz': {int((~np.isfinite(xyz)).any(axis=1).sum())} points are not finite")
    rgb = None if data.get("rgb") is None else _numeric(data["rgb"], name, "rgb")
    if rgb is not None:
        if rgb.shape != xyz.shape:
            raise MeshError(f"{name}: field 'rgb': shape {rgb.shape} does not match xyz {xyz.shape}")
        if not np.isfinite(rgb).all() or rgb.min() < -0.01 or rgb.max() > 1.01:
            raise MeshError(f"{name}: field 'rgb': values must be finite and in [0, 1] (0-255 data?)")
    grey = rgb is not None and float(np.ptp(rgb)) <= 1.0 / 255.0  # one grey everywhere: an untextured render colour
    has_color = rgb is not None and not grey
    if num_points is not None and num_points != len(xyz):
        if num_points <= 0 or num_points > len(xyz):
            raise MeshError(f"{name}: field 'xyz': cannot take {num_points} points from the file's {len(xyz)}")
        seed = int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "little")
        index = np.sort(np.random.default_rng(seed).choice(len(xyz), num_points, replace=False))
        xyz, rgb = xyz[index], (rgb[index] if rgb is not None else None)
    try:
        xyz = normalize_unit_sphere(xyz.astype(np.float64))
    except ValueError as exc:
        raise MeshError(f"{name}: field 'xyz': {exc}") from None
    out = np.full((len(xyz), 6), NO_COLOR, np.float32)  # (N, 6)
    out[:, :3] = xyz
    if has_color:
        out[:, 3:] = np.clip(rgb, 0.0, 1.0)
    return out, has_color


def _numeric(value: Any, name: str, key: str) -> np.ndarray:
    if value is None:
        raise MeshError(f"{name}: field {key!r}: missing")
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise MeshError(f"{name}: field {key!r}: not a numeric array ({type(value).__name__})") from None


def file_texts(
    data: dict[str, Any], name: str, extra: dict[str, Any], matched: bool
) -> tuple[list[str], list[int], list[Any]]:
    """Cleaned texts in ``TEXT_FIELDS`` order, the group of each (``TEXT_FIELD_GROUPS``) and, when ``matched``,
    their embedding rows (else Nones). A text repeated in a later field keeps its first group."""
    texts: list[str] = []
    groups: list[int] = []
    rows: list[Any] = []
    for key in TEXT_FIELDS:
        if key == "text" and extra.get("drop_names"):
            continue
        raw = _strings(data.get(key))
        feats: list[Any] = [None] * len(raw)
        if matched and any(t and t.strip() for t in raw):  # features of an all-empty field are never needed
            version = "original" if key == "retrieval_text" else extra.get("text_embed_version", "original")
            feats = file_features(data.get(f"{key}_feat"), version, name, f"{key}_feat")
            if len(feats) != len(raw):
                raise MeshError(f"{name}: field '{key}_feat': {len(feats)} embeddings for {len(raw)} texts in {key!r}")
        pairs = list(zip(raw, feats, strict=True))
        if key == "text" and str(extra.get("dataset", "")).lower() == "objaverse":
            pairs = pairs[:1]  # OpenShape and Uni3D use only an Objaverse shape's first name
        for text, feat in pairs:
            text = text.strip() if text else ""
            if text and text not in texts:
                texts.append(text)
                groups.append(TEXT_GROUPS.index(TEXT_FIELD_GROUPS[key]))
                rows.append(feat)
    return texts, groups, rows


def _strings(value: Any) -> list[str | None]:
    """A text field (None, a string, or a list/array of them) -> one slot per text; non-strings become None."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = [value.item() if isinstance(value, np.ndarray) else value]
    if not isinstance(value, list | tuple | np.ndarray):
        return [None]
    out: list[str | None] = []
    for item in value:
        item = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        out.append(str(item) if isinstance(item, str) else None)
    return out


def file_features(value: Any, version: str, name: str, key: str) -> list[np.ndarray]:
    """An embedding field -> its rows: an (n, E) or (E,) array, a {version: array} dict, or a list of those."""
    if value is None:
        return []
    if isinstance(value, dict):
        if version not in value:
            raise MeshError(f"{name}: field {key!r}: no {version!r} embedding (keys {sorted(value)})")
        return file_features(value[version], version, name, key)
    if isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.dtype == object):
        return [row for item in value for row in file_features(item, version, name, key)]
    arr = _numeric(value, name, key)
    if arr.size == 0:
        return []
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] != OPENSHAPE_EMBED_DIM:
        raise MeshError(
            f"{name}: field {key!r}: expected ({OPENSHAPE_EMBED_DIM},) or (n, {OPENSHAPE_EMBED_DIM}) "
            f"embeddings of {OPENSHAPE_TEACHER}, got shape {np.shape(value)}"
        )
    if not np.isfinite(arr).all():
        raise MeshError(f"{name}: field {key!r}: embeddings are not finite")
    return list(arr)
