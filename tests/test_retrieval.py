"""Retrieval and "what is this?": cosine top-k and recall@k, label lists, a gallery of real meshes embedded
on Ray Data (broken files recorded, re-runs resume), text/mesh queries, recall and contact sheets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED

import uni3d
from pipelines.evaluate.query import parse_labels, what_is_this
from uni3d.retrieval import recall_at_k, search

LABELS = json.loads((SHARED / "meshes" / "labels.json").read_text())


def test_search_ranks_by_cosine_and_can_exclude_the_query_itself() -> None:
    gallery = np.array([[1, 0], [0, 1], [1, 0.8], [-1, 0]], np.float32)
    scores, idx = search(np.array([[2.0, 0.1]]), gallery, 2)
    assert idx.tolist() == [[0, 2]] and scores[0, 0] == pytest.approx(0.99875, abs=1e-4)
    _, idx = search(gallery, gallery, 1, exclude=[0, 1, 2, 3])
    assert idx[:, 0].tolist() == [2, 2, 0, 1]  # never itself
    top = torch.tensor([[2, 1], [0, 2]])
    assert recall_at_k(["a", "b"], ["a", "b", "a", "c"], top, ks=(1, 2)) == {1: 50.0, 2: 50.0}
    with pytest.raises(ValueError, match="queries have 3 dimensions but the gallery 2"):
        search(np.ones((1, 3)), gallery, 1)


def test_label_lists_come_from_text_files_or_benchmarks_and_may_not_be_empty(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cow\n\npig\ncow\n")
    assert parse_labels("chair, table", str(tmp_path / "labels.txt")) == ["chair", "table", "cow", "pig"]
    assert len(parse_labels(classes="modelnet40")) == 40 and "flower pot" in parse_labels(classes="modelnet40")
    # the official labels.json spellings: ModelNet40 cleaned, ScanObjectNN as is, a file's labels as written
    assert [n for n in parse_labels(classes="modelnet40") if " " in n] == [
        "flower pot", "glass box", "night stand", "range hood", "tv stand",
    ]  # fmt: skip
    assert parse_labels(classes="scanobjectnn")[:3] == ["bag", "bin", "box"]
    (tmp_path / "lvis.txt").write_text("Band_Aid\nbat_(animal)\n")
    assert parse_labels(labels_file=str(tmp_path / "lvis.txt")) == ["Band_Aid", "bat_(animal)"]
    with pytest.raises(ValueError, match="the label list is empty"):
        parse_labels(" , ")
    with pytest.raises(ValueError, match="unknown class list 'shapenet'"):
        parse_labels(classes="shapenet")
    with pytest.raises(FileNotFoundError, match="labels file .*none.txt does not exist"):
        parse_labels(labels_file=str(tmp_path / "none.txt"))


def test_what_is_this_ranks_labels_and_refuses_a_teacher_of_another_size() -> None:
    from pipelines.evaluate.query import mesh_points

    model = uni3d.create_model("nano", embed_dim=384)
    points = mesh_points([SHARED / "meshes" / "real" / "cow.off"], 512)
    teacher = uni3d.MiniLMTeacher()
    [preds] = what_is_this(model, teacher, teacher.name, points, ["cow", "chair", "lamp"], top_k=2)
    assert len(preds) == 2 and preds[0].cosine >= preds[1].cosine
    assert 0 < preds[1].probability <= preds[0].probability < 1
    with pytest.raises(ValueError, match="has 64-d embeddings but the model's are 384-d"):
        what_is_this(model, uni3d.RandomOpenClipTeacher(), "openclip-random", points, ["cow"])


@pytest.fixture(scope="module")
def gallery(ray_session, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from jobs.embed import main

    ray_session()

    root = tmp_path_factory.mktemp("meshes")
    names = ["cow.off", "pig.off", "pig.stl", "camel.off", "dino.off", "triceratops.off", "mushroom.off"]
    for name in names:
        shutil.copy(SHARED / "meshes" / "real" / name, root / name)
    for name in ("empty.obj", "truncated.glb"):
        shutil.copy(SHARED / "meshes" / "broken" / name, root / name)
    (root / "meta.jsonl").write_text("".join(json.dumps({"path": n, "category": LABELS[n]}) + "\n" for n in names))
    torch.manual_seed(0)
    ckpt = uni3d.save_checkpoint(
        uni3d.create_model("nano", embed_dim=384), root.parent / "ckpt", meta={"teacher": "minilm:all-MiniLM-L6-v2"}
    )
    out = root.parent / "gallery"
    argv = ["--checkpoint", str(ckpt), "--root", str(root), "--metadata", str(root / "meta.jsonl")]
    sets = ["num_points=512", "batch_size=2", "embed_workers=2", "embed_worker_cpus=0.25", "shape_worker_cpus=0.25"]
    import ray

    ctx = ray.data.DataContext.get_current()
    saved, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120  # both embedding actors up before work
    try:
        assert main([*argv, "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    finally:
        ctx.wait_for_min_actors_s = saved
    return out, ckpt


@pytest.mark.ray
def test_embed_writes_a_gallery_records_broken_files_and_resumes(gallery: tuple[Path, Path], capsys) -> None:
    from jobs.embed import main
    from pipelines.evaluate.gallery import read_gallery

    out, ckpt = gallery
    g = read_gallery(str(out))
    assert len(g) == 7 and g.embeddings.shape == (7, 384) and g.teacher == "minilm:all-MiniLM-L6-v2"
    assert sorted(c for c in g.column("category")) == sorted(LABELS[n] for n in g.column("uid"))
    import pyarrow.parquet as pq

    failures = pq.read_table(out / "failures").to_pylist()
    assert {f["uid"]: f["stage"] for f in failures} == {"empty.obj": "load", "truncated.glb": "load"}
    assert all(f["uid"] in f["message"] for f in failures)  # the message names the file
    # The listing was cut into blocks (9 files, 1 shape worker: 8 blocks wanted, at most batch_size=2 rows, so
    # 2 rows each): Ray Data ran 5 shape tasks, 5 embedding tasks over the two embedding actors, and 5 writer
    # tasks (2 + 2 + 2 + 2 + 1 shapes, one gallery shard and/or failures file each).
    (stats,) = out.glob("stats/embed-*.json")
    record = json.loads(stats.read_text())
    assert record["plan"]["num_blocks"] == 5 and record["embedded"] == 7 and record["failed"] == 2
    assert sum(record["rows_by_worker"]["shape"].values()) == 9
    assert sorted(record["rows_by_worker"]["embed"].values()) in ([4, 5], [3, 6], [2, 7], [1, 8]), record
    assert sum(record["rows_by_worker"]["writer"].values()) == 9
    ray_data = stats.with_name(stats.stem + "-ray-data.txt").read_text()
    assert "MapBatches(ShapeWorker): 5 tasks executed" in ray_data
    assert "MapBatches(GalleryEmbedder): 5 tasks executed" in ray_data
    assert "MapBatches(write_gallery_shard): 5 tasks executed" in ray_data
    files = {p.name for folder in ("shards", "failures") for p in (out / folder).glob("*.parquet")}
    assert len(files) >= 4  # a shard per batch of good shapes, a failures file per batch with broken files
    root = next(p for p in out.parent.iterdir() if p.name.startswith("meshes"))
    assert main(["--checkpoint", str(ckpt), "--root", str(root), "--out", str(out), "--set", "num_points=512"]) == 0
    assert "0 shapes to embed (9 already in" in capsys.readouterr().out


@pytest.mark.ray
def test_text_and_mesh_queries_recall_and_a_contact_sheet(gallery: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    from jobs.search import main

    out, _ = gallery
    assert main(["--gallery", str(out), "--text", "a cow", "--top-k", "3", "--sheet", str(tmp_path / "s.png")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("cosine") == 3 and (tmp_path / "s.png").stat().st_size > 5000
    mesh = str(SHARED / "meshes" / "real" / "pig.off")
    assert main(["--gallery", str(out), "--mesh", mesh, "--top-k", "1", "--num-points", "512"]) == 0
    assert "pig.off" in capsys.readouterr().out.splitlines()[1]  # the same file embeds to itself
    assert main(["--gallery", str(out), "--recall"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labelled_shapes"] == 7 and set(report["3d_to_3d"]) == {"1", "5"}
    assert 0 <= report["3d_to_3d"]["1"] <= report["3d_to_3d"]["5"] <= 100 and "text_to_3d" in report
