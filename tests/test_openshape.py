"""OpenShape source: split listing and path resolution, texts and their aligned embeddings, points, teacher
match/mismatch, subsampling, per-file errors and the restricted unpickler (pipelines/sources/openshape.py and
openshape_files.py, docs/method.md §7).

Files are written the way OpenShape's were: ``np.save`` of a dict, 10,000 points, 1280-d features."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.build.schema import make_row
from pipelines.meshes.mesh import NO_COLOR, MeshError
from pipelines.sources.openshape import OpenShapeConfig, list_openshape, load_openshape_shape
from pipelines.sources.openshape_files import OPENSHAPE_TEACHER, read_openshape_file
from pipelines.sources.shapes import ShapeRef

E = 1280
N = 10_000
OTHER_TEACHER = "openclip:EVA02-E-14-plus/laion2b_s9b_b144k"


def feats(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, E)).astype(np.float32)


def versions(seed: int) -> dict[str, np.ndarray]:
    """One text's embeddings as OpenShape stores them: {"original": (1, E), "prompt_avg": (1, E)}."""
    return {"original": feats(1, seed), "prompt_avg": feats(1, seed + 1000)}


def points(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = (rng.normal(size=(N, 3)) * [0.3, 0.5, 0.2] + [2.0, -1.0, 0.5]).astype(np.float16)
    return {"xyz": xyz, "rgb": rng.random((N, 3)).astype(np.float16)}


def full_shape() -> dict:
    """ShapeNet chair: every field, duplicates across fields, an empty retrieval text, per-text dict features."""
    return {
        **points(0),
        "image_feat": feats(12, 1),
        "thumbnail_feat": feats(1, 2)[0],
        "text": ["chair", "armchair", " chair "],
        "text_feat": [versions(10), versions(20), versions(30)],
        "blip_caption": "a wooden chair",
        "blip_caption_feat": versions(40),
        "msft_caption": ["A chair.", "a wooden chair"],
        "msft_caption_feat": [versions(50), versions(60)],
        "retrieval_text": ["office chair", ""],
        "retrieval_text_feat": [{"original": feats(1, 70)}, {"original": feats(1, 80)}],
    }


def sparse_shape() -> dict:
    """Objaverse lamp: no caption keys at all, empty retrieval text, two names (only the first is used)."""
    return {
        **points(1),
        "image_feat": feats(12, 3),
        "text": ["Lamp_v2", "second name"],
        "text_feat": feats(2, 90),
        "retrieval_text": [],
        "retrieval_text_feat": [],
    }


def scalar_shape() -> dict:
    """3D-FUTURE sofa: scalar-string captions with flat (E,) features, names as a numpy string array."""
    return {
        **points(2),
        "image_feat": feats(12, 4),
        "text": np.array(["sofa"]),
        "text_feat": feats(1, 100)[0],
        "blip_caption": "a grey sofa",
        "blip_caption_feat": feats(1, 110)[0],
        "msft_caption": "",
        "msft_caption_feat": None,
        "retrieval_text": "modern sofa",
        "retrieval_text_feat": feats(1, 120),
    }


FILES = {
    "shapenet/chair01": ("ShapeNet/03001627/chair01.npy", full_shape),
    "objaverse/abc": ("Objaverse/000-000/abc.npy", sparse_shape),
    "3d-future/sofa9": ("3D-FUTURE/group-3/sofa9.npy", scalar_shape),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OpenShape download: per-source folders plus meta_data/split/*.json whose paths are another machine's."""
    root = tmp_path_factory.mktemp("openshape")
    for relative, make in FILES.values():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / relative, make(), allow_pickle=True)
    far = "/mnt/data/objaverse-processed/merged_for_training_final"
    split = [
        {"dataset": "ShapeNet", "group": "03001627", "data_path": f"{far}/ShapeNet/03001627/chair01.npy"},
        {"dataset": "Objaverse", "group": "000-000", "id": "abc", "data_path": f"{far}/Objaverse/000-000/abc.npy"},
        f"{far}/3D-FUTURE/group-3/sofa9.npy",  # a plain string: dataset from the path
    ]
    (root / "meta_data" / "split").mkdir(parents=True)
    (root / "meta_data" / "split" / "train_all.json").write_text(json.dumps(split))
    (root / "meta_data" / "split" / "train_no_lvis.json").write_text(json.dumps(split[:1]))
    (root / "meta_data" / "gpt4_filtering.json").write_text(json.dumps({"abc": {"flag": "Y"}}))
    return root


def refs(root: Path, **kwargs) -> dict[str, ShapeRef]:
    return {r.uid: r for r in list_openshape(OpenShapeConfig(root=str(root), **kwargs))}


def test_listing_resolves_foreign_paths_and_prefixes_uids(root: Path) -> None:
    listed = list(list_openshape(OpenShapeConfig(root=str(root))))
    assert [r.uid for r in listed] == list(FILES)
    for ref in listed:
        assert ref.source == "openshape" and ref.category == "" and ref.texts == []
        assert Path(ref.locator) == root / FILES[ref.uid][0]
    assert listed[2].extra["dataset"] == "3D-FUTURE" and listed[2].extra["group"] == "group-3"
    assert listed[0].extra["data_path"].startswith("/mnt/data/")
    assert list(refs(root, split="train_no_lvis.json")) == ["shapenet/chair01"]


def test_listing_split_variants_and_uid_filter(root: Path, tmp_path: Path) -> None:
    uni3d_style = tmp_path / "split.json"  # Uni3D's {id: path} map, paths relative to the root
    uni3d_style.write_text(json.dumps({"abc": "Objaverse/000-000/abc.npy"}))
    assert list(refs(root, split=str(uni3d_style))) == ["objaverse/abc"]
    assert list(refs(root, uids=["abc", "3d-future/sofa9"])) == ["objaverse/abc", "3d-future/sofa9"]
    with pytest.raises(ValueError, match="not in the split"):
        refs(root, uids=["objaverse/nope"])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        list_openshape(OpenShapeConfig(root=str(root), split="missing.json"))


def test_listing_fails_fast_on_a_wrong_root(root: Path, tmp_path: Path) -> None:
    split = str(root / "meta_data" / "split" / "train_all.json")
    with pytest.raises(FileNotFoundError, match="none of the 3 shapes"):
        list(list_openshape(OpenShapeConfig(root=str(tmp_path), split=split)))


def test_texts_ordered_deduplicated_with_aligned_embeddings(root: Path) -> None:
    ref = refs(root)["shapenet/chair01"]
    data = load_openshape_shape(ref, OPENSHAPE_TEACHER)
    assert data.texts == ["chair", "armchair", "a wooden chair", "A chair.", "office chair"]
    source = full_shape()
    expected = [
        source["text_feat"][0]["original"][0],
        source["text_feat"][1]["original"][0],
        source["blip_caption_feat"]["original"][0],  # the first "a wooden chair", not the MSFT duplicate
        source["msft_caption_feat"][0]["original"][0],
        source["retrieval_text_feat"][0]["original"][0],
    ]
    np.testing.assert_array_equal(data.text_embeddings, np.stack(expected))
    np.testing.assert_array_equal(data.view_embeddings, source["image_feat"])
    assert data.teacher == OPENSHAPE_TEACHER and data.text_embeddings.dtype == np.float32


def test_prompt_avg_version_for_names_and_captions_only(root: Path) -> None:
    ref = refs(root, text_embed_version="prompt_avg")["shapenet/chair01"]
    data = load_openshape_shape(ref, OPENSHAPE_TEACHER)
    source = full_shape()
    np.testing.assert_array_equal(data.text_embeddings[0], source["text_feat"][0]["prompt_avg"][0])
    np.testing.assert_array_equal(data.text_embeddings[2], source["blip_caption_feat"]["prompt_avg"][0])
    np.testing.assert_array_equal(data.text_embeddings[4], source["retrieval_text_feat"][0]["original"][0])


def test_missing_captions_and_scalar_captions(root: Path) -> None:
    sparse = load_openshape_shape(refs(root)["objaverse/abc"], OPENSHAPE_TEACHER)
    assert sparse.texts == ["Lamp_v2"]  # Objaverse: first name only; no captions, no retrieval text
    np.testing.assert_array_equal(sparse.text_embeddings, sparse_shape()["text_feat"][:1])
    scalar = load_openshape_shape(refs(root)["3d-future/sofa9"], OPENSHAPE_TEACHER)
    assert scalar.texts == ["sofa", "a grey sofa", "modern sofa"]  # the empty MSFT caption is dropped
    source = scalar_shape()
    np.testing.assert_array_equal(scalar.text_embeddings[1], source["blip_caption_feat"])
    np.testing.assert_array_equal(scalar.text_embeddings[2], source["retrieval_text_feat"][0])


def test_other_teacher_gets_texts_but_no_embeddings(root: Path, tmp_path: Path) -> None:
    data = load_openshape_shape(refs(root)["shapenet/chair01"], OTHER_TEACHER)
    assert data.texts == ["chair", "armchair", "a wooden chair", "A chair.", "office chair"]
    assert data.view_embeddings is None and data.text_embeddings is None and data.teacher == ""
    broken = {**sparse_shape(), "text_feat": feats(3, 0), "image_feat": None}  # unused, so not an error here
    ref = write(tmp_path, "broken.npy", broken)
    assert load_openshape_shape(ref, OTHER_TEACHER).texts == ["Lamp_v2"]


def test_points_unit_sphere_with_file_colours(root: Path) -> None:
    data = load_openshape_shape(refs(root)["shapenet/chair01"], OPENSHAPE_TEACHER)
    assert data.points.shape == (N, 6) and data.points.dtype == np.float32 and data.has_color
    radius = np.linalg.norm(data.points[:, :3], axis=1)
    assert radius.max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(data.points[:, :3].mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_array_equal(data.points[:, 3:], points(0)["rgb"].astype(np.float32))


@pytest.mark.parametrize("rgb", [None, np.full((N, 3), 0.8, np.float16)], ids=["missing", "one-grey"])
def test_uncoloured_shapes_get_no_color(tmp_path: Path, rgb: np.ndarray | None) -> None:
    ref = write(tmp_path, "grey.npy", {**sparse_shape(), "rgb": rgb})
    data = load_openshape_shape(ref, OPENSHAPE_TEACHER)
    assert not data.has_color and (data.points[:, 3:] == np.float32(NO_COLOR)).all()


def test_subsampling_is_deterministic_per_uid(root: Path) -> None:
    ref = refs(root)["shapenet/chair01"]
    a, b = (load_openshape_shape(ref, OTHER_TEACHER, num_points=2048).points for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2048, 6) and np.linalg.norm(a[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-6)
    file_rgb = {tuple(row) for row in points(0)["rgb"].astype(np.float32)}
    assert all(tuple(row) in file_rgb for row in a[:, 3:])  # a subset of the file's points
    other = ShapeRef(uid="shapenet/other", source="openshape", locator=ref.locator, extra=ref.extra)
    assert not np.array_equal(load_openshape_shape(other, OTHER_TEACHER, num_points=2048).points, a)
    with pytest.raises(MeshError, match=r"chair01\.npy: field 'xyz': cannot take 10001"):
        load_openshape_shape(ref, OTHER_TEACHER, num_points=N + 1)


def write(folder: Path, filename: str, data: dict) -> ShapeRef:
    np.save(folder / filename, data, allow_pickle=True)
    extra = {"dataset": "Objaverse", "data_path": filename, "text_embed_version": "original"}
    return ShapeRef(
        uid=f"objaverse/{Path(filename).stem}", source="openshape", locator=str(folder / filename), extra=extra
    )


BAD_XYZ = np.full((N, 3), 0.5, np.float32)
BAD_XYZ[7, 1] = np.nan


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"xyz": None}, "'xyz': missing"),
        ({"xyz": np.zeros((N, 4), np.float32)}, "'xyz': expected a non-empty"),
        ({"xyz": BAD_XYZ}, "'xyz': 1 points are not finite"),
        ({"xyz": np.ones((N, 3), np.float32)}, "'xyz': cannot normalise"),
        ({"rgb": np.full((N, 3), 200.0, np.float32)}, "'rgb': values must be"),
        ({"text_feat": feats(3, 0)}, "'text_feat': 3 embeddings for 2 texts"),
        ({"text_feat": np.zeros((2, 1024), np.float32)}, "'text_feat': expected"),
        ({"text_feat": [{"prompt_avg": feats(1, 0)}] * 2}, "'text_feat': no 'original'"),
        ({"image_feat": None}, "'image_feat': missing"),
        ({"image_feat": feats(12, 0) * np.nan}, "'image_feat': embeddings are not finite"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path: Path, change: dict, field: str) -> None:
    ref = write(tmp_path, "bad.npy", {**sparse_shape(), **change})
    with pytest.raises(MeshError, match="bad.npy: field " + field):
        load_openshape_shape(ref, OPENSHAPE_TEACHER)


def test_missing_and_non_dict_files(tmp_path: Path) -> None:
    ref = ShapeRef(uid="objaverse/gone", source="openshape", locator=str(tmp_path / "gone.npy"))
    with pytest.raises(MeshError, match="gone.npy: no such file"):
        load_openshape_shape(ref, OPENSHAPE_TEACHER)
    np.save(tmp_path / "plain.npy", np.zeros((N, 3), np.float32))
    with pytest.raises(MeshError, match=r"plain.npy: expected pickled objects .* found a \(10000, 3\) float32 array"):
        read_openshape_file(tmp_path / "plain.npy")


class _Payload:
    """Unpickling this calls ``os.system(command)``: what ``np.load(allow_pickle=True)`` would run."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", {**sparse_shape(), "evil": _Payload(f"touch {marker}")}, allow_pickle=True)
    with pytest.raises(MeshError, match=r"evil.npy: refusing to unpickle (posix|os|nt)\.system"):
        read_openshape_file(tmp_path / "evil.npy")
    assert not marker.exists()
    assert set(read_openshape_file(write(tmp_path, "ok.npy", sparse_shape()).locator)) == set(sparse_shape())


def test_reads_files_written_by_numpy_1(tmp_path: Path) -> None:
    """numpy 1.x pickles name ``numpy.core.multiarray``; protocol 2 spells bytes as ``_codecs.encode``."""
    payload = np.empty((), object)
    payload[()] = sparse_shape()
    blob = pickle.dumps(payload, protocol=2).replace(b"cnumpy._core.", b"cnumpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob and b"c_codecs\nencode" in blob
    with open(tmp_path / "old.npy", "wb") as fp:
        np.lib.format.write_array_header_1_0(fp, {"descr": "|O", "fortran_order": False, "shape": ()})
        fp.write(blob)
    data = read_openshape_file(tmp_path / "old.npy")
    np.testing.assert_array_equal(data["xyz"], sparse_shape()["xyz"])
    assert data["text"] == ["Lamp_v2", "second name"]


def test_gpt4_filter_drops_flagged_objaverse_names(root: Path, tmp_path: Path) -> None:
    flags = tmp_path / "gpt4_filtering.json"
    flags.write_text(json.dumps({"abc": {"flag": "N"}, "chair01": {"flag": "N"}}))
    listed = refs(root, text_filter=str(flags))
    assert load_openshape_shape(listed["objaverse/abc"], OPENSHAPE_TEACHER).texts == []
    assert load_openshape_shape(listed["shapenet/chair01"], OPENSHAPE_TEACHER).texts[0] == "chair"  # Objaverse only


def test_gpt4_filter_is_on_by_default_and_off_only_on_request(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "meta_data" / "gpt4_filtering.json").write_text(json.dumps({"abc": {"flag": "N"}}))
    assert load_openshape_shape(refs(copy)["objaverse/abc"], OPENSHAPE_TEACHER).texts == []  # "auto" found it
    kept = load_openshape_shape(refs(copy, text_filter="none")["objaverse/abc"], OPENSHAPE_TEACHER)
    assert kept.texts[0] == "Lamp_v2"
    (copy / "meta_data" / "gpt4_filtering.json").unlink()
    with pytest.raises(FileNotFoundError, match="gpt4_filtering.json.*text_filter=PATH, or =none"):
        refs(copy)
    assert list(refs(copy, split="train_no_lvis.json")) == ["shapenet/chair01"]  # no Objaverse: not needed


def test_loaded_shape_is_a_valid_dataset_row(root: Path) -> None:
    ref = ShapeRef.from_row(refs(root)["shapenet/chair01"].to_row())  # as the build passes refs between stages
    data = load_openshape_shape(ref, OPENSHAPE_TEACHER, num_points=4096)
    row = make_row(
        uid=ref.uid,
        source=ref.source,
        category=None,
        texts=data.texts,
        points=data.points,
        has_color=data.has_color,
        teacher=data.teacher,
        embed_dim=1280,
        text_embeddings=data.text_embeddings,
        view_embeddings=data.view_embeddings,
    )
    assert row["num_views"] == 12 and row["num_points"] == 4096 and row["texts"] == data.texts
