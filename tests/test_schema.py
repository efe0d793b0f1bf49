"""Parquet schema: encode -> Parquet -> decode round trips within the stated error, validation messages,
schema versions, the manifest and the failures table (pipelines/build/:
schema.py, codec.py, failures.py, manifest.py; docs/dataset.md)."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.build import codec, failures, manifest
from pipelines.build import schema as S

DIM = 16


def cloud(num_points: int, seed: int) -> np.ndarray:
    """``(N, 6)`` float32: xyz in the unit ball with one point on the sphere, rgb = k/255."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(num_points, 3))
    xyz /= np.linalg.norm(xyz, axis=1).max()
    rgb = rng.integers(0, 256, (num_points, 3)) / 255.0
    return np.concatenate([xyz, rgb], axis=1).astype(np.float32)


def unit(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(count, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def row(uid: str = "a", num_points: int = 256, num_views: int = 3, seed: int = 0, **overrides) -> dict:
    texts = ["chair", "a red chair with four legs"]
    kw = dict(uid=uid, source="procedural", category="chair", texts=texts, points=cloud(num_points, seed))
    kw |= dict(has_color=True, teacher="minilm", embed_dim=DIM, text_embeddings=unit(len(texts), seed + 1))
    kw |= dict(view_embeddings=unit(num_views, seed + 2) if num_views else None)
    return kw | overrides


def write_read(tmp_path, rows: list[dict]) -> pa.Table:
    path = tmp_path / "part-0.parquet"
    pq.write_table(S.rows_to_table(S.make_row(**r) for r in rows), path)
    table = pq.read_table(path)
    S.validate_table(table, where=str(path))
    return table


def test_round_trip_through_parquet_within_stated_error(tmp_path):
    inputs = [row("a", seed=0), row("b", seed=10, num_views=0, category=None)]
    table = write_read(tmp_path, inputs)
    assert table.column("uid").to_pylist() == ["a", "b"]
    assert table.column("category").to_pylist() == ["chair", None]
    assert table.column("num_views").to_pylist() == [3, 0]
    for i, r in enumerate(inputs):
        got = codec.decode_points(table.column("xyz")[i].as_py(), table.column("rgb")[i].as_py())
        assert got.dtype == np.float32 and got.shape == r["points"].shape
        xyz_err = np.abs(got[:, :3] - r["points"][:, :3]).max()
        assert 0 < xyz_err <= 2.0**-12 <= codec.XYZ_MAX_ERROR  # float16 inside the unit sphere
        np.testing.assert_array_equal(got[:, 3:], r["points"][:, 3:])  # k/255 is exact
    views, counts = codec.decode_embeddings(table.column("view_embeddings"), DIM)
    assert views.shape == (2, 3, DIM) and counts.tolist() == [3, 0]
    np.testing.assert_allclose(views[0], inputs[0]["view_embeddings"], atol=2.0**-11)
    assert not views[1].any()  # the shape without renders is all padding
    texts, text_counts = codec.decode_embeddings(table.column("text_embeddings"), DIM)
    assert text_counts.tolist() == [2, 2]
    np.testing.assert_allclose(texts[1], inputs[1]["text_embeddings"], atol=2.0**-11)


def test_rgb_error_bound_for_arbitrary_values():
    pts = cloud(1000, 1)
    pts[:, 3:] = np.random.default_rng(2).random((1000, 3))
    cells = codec.encode_points(pts)
    err = np.abs(codec.decode_points(cells["xyz"], cells["rgb"])[:, 3:] - pts[:, 3:]).max()
    assert 0.9 * codec.RGB_MAX_ERROR < err <= codec.RGB_MAX_ERROR + 1e-7
    no_color = pts.copy()
    no_color[:, 3:] = 0.4  # docs/method.md §1 constant for shapes without colour comes back exactly
    cells = S.make_row(**row(points=no_color, has_color=False))
    assert (codec.decode_points(cells["xyz"], cells["rgb"])[:, 3:] == np.float32(0.4)).all()


def test_batched_decode_equals_per_row_decode(tmp_path):
    table = write_read(tmp_path, [row(f"s{i}", seed=i, num_views=i % 3) for i in range(5)])
    table = pa.concat_tables([table.slice(0, 2), table.slice(2)])  # two chunks, second one offset
    batch = codec.decode_points_batch(table)
    assert batch.shape == (5, 256, 6) and batch.dtype == np.float32
    xyz, rgb = table.column("xyz").to_pylist(), table.column("rgb").to_pylist()
    for i in range(5):
        np.testing.assert_array_equal(batch[i], codec.decode_points(xyz[i], rgb[i]))
    sliced = table.combine_chunks().slice(1, 3).to_batches()[0]  # a RecordBatch with a non-zero offset
    np.testing.assert_array_equal(codec.decode_points_batch(sliced), batch[1:4])
    as_numpy = {"xyz": np.array(xyz, dtype=object), "rgb": np.array(rgb, dtype=object)}  # Ray "numpy" batches
    np.testing.assert_array_equal(codec.decode_points_batch(as_numpy), batch)
    views, counts = codec.decode_embeddings(table.column("view_embeddings"), DIM, max_count=1)
    assert views.shape == (5, 1, DIM) and counts.tolist() == [0, 1, 1, 0, 1]
    for i, v in enumerate(table.column("view_embeddings").to_pylist()):
        first = np.frombuffer(v, np.float16).reshape(-1, DIM)[:1].astype(np.float32)
        np.testing.assert_array_equal(views[i, : len(first)], first)


def test_batched_decode_rejects_mixed_num_points():
    table = S.rows_to_table([S.make_row(**row("a", 100)), S.make_row(**row("b", 120))])
    with pytest.raises(ValueError, match="num_points"):
        codec.decode_points_batch(table)


@pytest.mark.parametrize(
    "field, override",
    [
        ("points", {"points": np.where(np.eye(256, 6, dtype=bool), np.nan, cloud(256, 0))}),
        ("points", {"points": cloud(256, 0) + np.array([0, 0, 0, 0, 0, 0.5], np.float32)}),
        ("points", {"points": cloud(256, 0) * np.array([1.1, 1.1, 1.1, 1, 1, 1], np.float32)}),
        ("view_embeddings", {"view_embeddings": unit(3, 0, dim=DIM + 1)}),
        ("text_embeddings", {"text_embeddings": unit(3, 0)}),
        ("text_embeddings", {"text_embeddings": np.full((2, DIM), np.inf, np.float32)}),
        ("source", {"source": "web"}),
        ("texts", {"texts": []}),
        ("has_color", {"has_color": False}),
    ],
)
def test_make_row_errors_name_uid_and_field(field, override):
    with pytest.raises(ValueError, match=rf"'bad-uid'.*'{field}'"):
        S.make_row(**row("bad-uid", **override))


def test_make_row_checks_text_count_and_duplicate_uids():
    with pytest.raises(ValueError, match="3 embeddings for 2 texts"):
        S.make_row(**row(text_embeddings=unit(3, 0)))
    with pytest.raises(ValueError, match="duplicate uids.*'a'"):
        S.rows_to_table([S.make_row(**row("a")), S.make_row(**row("a", seed=1))])


def test_validate_table_version_and_fields(tmp_path):
    table = S.rows_to_table([S.make_row(**row())])
    newer = table.replace_schema_metadata({S.VERSION_KEY: b"3"})
    pq.write_table(newer, tmp_path / "new.parquet")
    with pytest.raises(ValueError, match=r"new\.parquet: schema version 3, this code reads \(1, 2\)"):
        S.validate_table(pq.read_schema(tmp_path / "new.parquet"), where=str(tmp_path / "new.parquet"))
    with pytest.raises(ValueError, match="no uni3d.schema_version metadata"):
        S.validate_table(table.replace_schema_metadata(None))
    with pytest.raises(ValueError, match="missing field 'rgb'"):
        S.validate_table(table.drop_columns(["rgb"]))
    wrong = table.set_column(
        S.SCHEMA.names.index("num_points"), S.SCHEMA.field("num_points").with_type(pa.int64()), [[256]]
    )
    with pytest.raises(ValueError, match="'num_points' has type int64"):
        S.validate_table(wrong)
    short = table.set_column(
        S.SCHEMA.names.index("xyz"), S.SCHEMA.field("xyz"), [[table.column("xyz")[0].as_py()[:-6]]]
    )
    with pytest.raises(ValueError, match="'a'.*'xyz' size"):
        S.validate_table(short)
    wide = table.cast(pa.schema([f.with_type(pa.large_binary()) if f.type == pa.binary() else f for f in S.SCHEMA]))
    S.validate_table(wide.replace_schema_metadata(S.SCHEMA.metadata))  # Ray Data may write large_binary
    np.testing.assert_array_equal(codec.decode_points_batch(wide), codec.decode_points_batch(table))


def test_bytes_per_shape_matches_cells_and_disk(tmp_path):
    r = S.make_row(**row(num_points=10_000, num_views=12, embed_dim=1024) | _dim(1024, 12, 2))
    cells = sum(len(r[k]) for k in ("xyz", "rgb", "view_embeddings", "text_embeddings"))
    assert cells == S.bytes_per_shape(10_000, 12, 2, 1024) == 90_000 + 14 * 2048
    path = tmp_path / "one.parquet"
    pq.write_table(S.rows_to_table([r]), path, **S.parquet_write_options() | {"compression": "none"})
    assert cells < path.stat().st_size < cells + 6_000  # + strings, footer; no min/max copies of the cells
    column = pq.ParquetFile(path).metadata.row_group(0).column(S.SCHEMA.names.index("text_embeddings"))
    assert not column.is_stats_set and "RLE_DICTIONARY" not in column.encodings


def _dim(dim: int, num_views: int, num_texts: int) -> dict:
    return {"view_embeddings": unit(num_views, 3, dim), "text_embeddings": unit(num_texts, 4, dim)}


@pytest.mark.parametrize("uri", [False, True])
def test_manifest_atomic_write_read(tmp_path, uri):
    m = manifest.Manifest(teacher="minilm", embed_dim=384, num_points=10_000, num_shapes=7, num_views=84, num_texts=35)
    m.failures = {"load": 2, "render": 1}
    m.config = {"sample": {"num_points": 10_000, "seed": 0}, "sources": ["procedural"]}
    m.shards = ["shards/part-000000-000000.parquet"]
    target = tmp_path / "build" / "manifest.json"
    where = f"file://{target}" if uri else str(target)
    manifest.write_manifest(where, m)
    assert [p.name for p in target.parent.iterdir()] == ["manifest.json"]  # no temporary file left behind
    assert manifest.read_manifest(where) == m
    m.num_shapes = 8
    manifest.write_manifest(where, m)  # replaces the old file
    assert manifest.read_manifest(str(target)).num_shapes == 8
    data = json.loads(target.read_text())
    data["schema_version"] = 3
    target.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"schema version 3, this code reads \(1, 2\)"):
        manifest.read_manifest(where)
    with pytest.raises(ValueError, match="unknown failure stages"):
        manifest.Manifest.from_json(json.dumps({**json.loads(m.to_json()), "failures": {"download": 1}}))


def test_failures_table():
    try:
        raise FileNotFoundError("missing.glb")
    except FileNotFoundError as e:
        first = failures.failure_row("u1", "local", "load", e)
    rows = [first, failures.failure_row("u2", "objaverse", "render", ValueError("x" * 5000))]
    table = failures.failures_to_table(rows)
    assert table.schema.equals(S.FAILURES_SCHEMA)
    assert table.column("error_type").to_pylist() == ["FileNotFoundError", "ValueError"]
    assert table.column("message").to_pylist()[0] == "missing.glb"
    assert len(table.column("message")[1].as_py()) == 2000
    with pytest.raises(ValueError, match="unknown stage 'download'"):
        failures.failure_row("u3", "local", "download", RuntimeError())


def test_interrupted_manifest_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "manifest.json"
    manifest.write_manifest(target, manifest.Manifest(teacher="minilm", embed_dim=384, num_points=2048, num_shapes=1))

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        manifest.write_manifest(
            target, manifest.Manifest(teacher="minilm", embed_dim=384, num_points=2048, num_shapes=2)
        )
    assert manifest.read_manifest(target).num_shapes == 1
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_text_groups_are_stored_per_text_and_checked(tmp_path):
    table = write_read(tmp_path, [row("a", text_groups=["name", "caption"]), row("b")])
    assert table.column("text_groups").to_pylist() == [[0, 1], [0, 0]]  # no groups given: every text a name
    groups, offsets = codec.text_groups_column(table)
    assert groups.tolist() == [0, 1, 0, 0] and offsets.tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="'a'.*'text_groups': expected one group per text"):
        S.make_row(**row("a", text_groups=["name"]))
    with pytest.raises(ValueError, match="'text_groups': 'summary' is not a text group"):
        S.make_row(**row("a", text_groups=["name", "summary"]))
    bad = table.set_column(
        S.SCHEMA.names.index("text_groups"), S.SCHEMA.field("text_groups"), pa.array([[0], [0, 0]], pa.list_(pa.int8()))
    )
    with pytest.raises(ValueError, match="'a'.*'text_groups' needs one group per text"):
        S.validate_table(bad)


def test_version_1_builds_still_read_with_each_text_its_own_group(tmp_path):
    table = S.rows_to_table([S.make_row(**row("a")), S.make_row(**row("b"))])
    v1 = table.drop_columns(["text_groups"]).replace_schema_metadata({S.VERSION_KEY: b"1"})
    pq.write_table(v1, tmp_path / "v1.parquet")
    S.validate_table(pq.read_table(tmp_path / "v1.parquet"), where="v1")  # accepted
    groups, offsets = codec.text_groups_column(v1)
    assert groups.tolist() == [0, 1, 0, 1] and offsets.tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="missing field 'text_groups'"):  # a version 2 file must have them
        S.validate_table(table.drop_columns(["text_groups"]).replace_schema_metadata(S.SCHEMA.metadata))
