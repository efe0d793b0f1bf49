"""The dataset build end to end on the suite's Ray: sources, failures, resume, sharding, a build killed
mid-run (by an injected fault, ``pipelines.faults``), Objaverse over HTTP."""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import trimesh
from conftest import SHARED, SMALL_BUILD, error_line, job_env
from http_fixtures import FaultServer

from pipelines.build.codec import decode_embeddings, decode_points_batch
from pipelines.build.manifest import read_manifest
from pipelines.build.schema import validate_table
from pipelines.build.store import BuildStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "num_points=1024", "--set", "rows_per_shard=4", "--set", "progress_every_s=0"]


def build(*args: str) -> int:
    from jobs.build_dataset import main

    return main([*SMALL, *args])


def shards(out: Path):
    return pq.read_table(out / "shards")


def failures(out: Path) -> list[dict]:
    folder = out / "failures"
    return pq.read_table(folder).to_pylist() if folder.exists() else []


def test_procedural_build_with_the_text_teacher(small_build: Path) -> None:
    out = small_build  # the suite's shared build (conftest.SMALL_BUILD), read only
    table = shards(out)
    validate_table(table, where=str(out))
    assert table.num_rows == 192 and len(set(table["uid"].to_pylist())) == 192
    assert set(table["category"].to_pylist()) >= {"chair", "table", "tree"}
    points = decode_points_batch(table)  # (192, 512, 6)
    assert points.shape == (192, 512, 6)
    assert np.abs(np.linalg.norm(points[..., :3], axis=-1).max() - 1) < 2e-3
    texts, counts = decode_embeddings(table["text_embeddings"], 384)
    assert counts.tolist() == [len(t) for t in table["texts"].to_pylist()]
    assert np.allclose(np.linalg.norm(texts[0, : counts[0]], axis=-1), 1, atol=2e-3)
    assert table["num_views"].to_pylist() == [0] * 192  # MiniLM is text-only: nothing rendered
    manifest = read_manifest(out / "manifest.json")
    assert (manifest.num_shapes, manifest.teacher, manifest.embed_dim) == (192, "minilm:all-MiniLM-L6-v2", 384)
    assert manifest.failures == {} and len(manifest.shards) == len(list((out / "shards").glob("*.parquet"))) == 6
    assert manifest.config["source"]["num_shapes"] == 192
    # Each run leaves its stats: the block plan and Ray Data's own report of the run.
    (stats,) = (out / "stats").glob("build-*.json")
    record = json.loads(stats.read_text())
    assert record["shapes"] == 192 and sum(record["rows_by_worker"]["shape"].values()) == 192
    assert "MapBatches(ShapeWorker)" in stats.with_name(stats.stem + "-ray-data.txt").read_text()
    # The build is readable by Ray Data as well.
    import ray

    assert ray.data.read_parquet(str(out / "shards")).count() == 192


def test_shared_meshes_with_the_image_teacher(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "meshes"
    labels = str(SHARED / "meshes" / "labels.json")
    args = ["--source", "local", "--root", str(SHARED / "meshes"), "--out", str(out)]
    args += ["--teacher", "openclip-random:tiny-ViT-32", "--set", f"source.metadata={labels}"]
    args += ["--set", "num_views=3", "--set", "image_size=64"]
    n_broken = len(list((SHARED / "meshes" / "broken").iterdir()))
    n_all = n_broken + sum(len(list((SHARED / "meshes" / d).iterdir())) for d in ("real", "odd"))
    # the broken files are more than the default max_failure_rate (0.1) of the shapes: exit status 1, one line
    assert build(*args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {n_broken} of the {n_all} shapes this run tried failed ({100 * n_broken / n_all:.1f}%, more than "
        f"max_failure_rate=0.1): load {n_broken}; the reasons are in {out}/failures/"
    ]
    assert build(*args) == 0  # run again: nothing left to try, and the build stands
    table = shards(out)
    validate_table(table, where=str(out))
    written = set(table["uid"].to_pylist())
    broken = {f"broken/{p.name}" for p in (SHARED / "meshes" / "broken").iterdir()}
    expected = {f"{d}/{p.name}" for d in ("real", "odd") for p in (SHARED / "meshes" / d).iterdir()}
    assert written == expected
    rows = failures(out)
    assert sorted(r["uid"] for r in rows) == sorted(broken)  # one row per broken file, none for the others
    assert all(
        r["stage"] == "load" and r["error_type"] == "MeshError" and r["uid"].split("/")[1] in r["message"] for r in rows
    )
    assert set(table["num_views"].to_pylist()) == {3}
    views, counts = decode_embeddings(table["view_embeddings"], 64)
    assert counts.tolist() == [3] * len(written) and np.isfinite(views).all()
    row = next(r for r in table.to_pylist() if r["uid"] == "real/colored_tetra.ply")
    assert row["has_color"] and row["category"] == "tetrahedron" and row["texts"] == ["tetrahedron"]
    assert read_manifest(out / "manifest.json").failures == {"load": len(broken)}


def test_rerun_skips_what_is_written_limit_and_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "resume"
    common = ["--out", str(out), "--set", "source.num_shapes=12"]
    assert build(*common, "--limit", "5") == 0
    assert shards(out).num_rows == 5
    assert build(*common, "--shard", "0/2") == 0
    first_half = shards(out).num_rows
    assert build(*common, "--shard", "1/2") == 0
    uids = shards(out)["uid"].to_pylist()
    assert len(uids) == len(set(uids)) == 12 and 5 < first_half < 12
    assert build(*common) == 0  # nothing left: nothing written twice
    assert shards(out).num_rows == 12
    # refused with one error line and exit status 2, nothing written
    assert build(*common, "--teacher", "openclip-random:tiny-ViT-32") == 2
    assert "was built with teacher='minilm'" in error_line(capsys)
    assert build(*common, "--set", "resources.shape_workers=4", "--set", "resources.shape_worker_cpus=0.5") == 2
    assert re.search("actors ask for 2.25 CPUs .* the cluster has 2", error_line(capsys))
    assert shards(out).num_rows == 12


def tasks_executed(ray_data_stats: str, operator: str) -> int:
    """Tasks Ray Data ran for an operator, read from ``Dataset.stats()``."""
    match = re.search(rf"Operator \d+ {re.escape(operator)}: (\d+) tasks executed", ray_data_stats)
    assert match, f"{operator} not in the Ray Data stats"
    return int(match.group(1))


def test_pools_share_the_work_and_shards_land_while_shapes_are_still_sampled(
    all_actors_before_work: None, tmp_path: Path
) -> None:
    from pipelines.build.config import BuildConfig, ResourceConfig
    from pipelines.build.run import run_build
    from pipelines.sources.config import SourceConfig

    total = 160  # ~13 s of shape work here: 96 once ended before the first shard landed in a CI run
    cfg = BuildConfig(
        output=str(tmp_path / "spread"),
        teacher="openclip-random:tiny-ViT-32",  # 12 rendered views per shape: the shape stage is the slow one
        msaa=4,  # and stays so on a CPU rasteriser too (MSAA off would render ~2.5x faster)
        num_points=1024,
        rows_per_shard=16,
        progress_every_s=0,
        source=SourceConfig(num_shapes=total),
        resources=ResourceConfig(shape_workers=2, shape_worker_cpus=0.3, embed_workers=2, embed_worker_cpus=0.1),
    )
    report = run_build(cfg, log=lambda line: None)
    stats = report.stats
    assert report.manifest.num_shapes == total and report.failures == {}
    # Many blocks, one shape-worker task each (Ray Data's own count), and every actor of both pools took blocks.
    blocks, per_block = stats.plan["num_blocks"], stats.plan["rows_per_block"]
    assert blocks >= 16 and blocks * per_block == total  # >= 8 blocks for each shape worker
    assert tasks_executed(stats.ray_data, "MapBatches(ShapeWorker)") == blocks
    assert tasks_executed(stats.ray_data, "MapBatches(write_shards)") == total // 16
    for stage in ("shape", "embed"):
        shares = stats.rows_by_worker[stage]
        assert len(shares) == 2 and sum(shares.values()) == total, (stage, shares)
        assert min(shares.values()) >= per_block, (stage, shares)  # at least one whole block each
    # The first shard was written while the shape workers still had shapes to sample and render: counted in
    # rows (the shapes whose sampling had finished when it was written), not in seconds.
    assert stats.first_shard_s is not None and stats.shards_written == total // 16
    assert 0 < stats.shaped_at_first_shard < total, stats.shaped_at_first_shard
    assert len(set(shards(tmp_path / "spread")["uid"].to_pylist())) == total


def shard_contents(build: Path) -> dict[str, list[str]]:
    files = sorted((build / "shards").glob("*.parquet"))
    return {f.name: pq.read_table(f, columns=["uid"])["uid"].to_pylist() for f in files}


def test_a_killed_build_resumes_to_the_shards_of_an_uninterrupted_one(
    small_build: Path, ray_address: str, tmp_path: Path
) -> None:
    # The shared build's settings, with two shape workers that finish blocks in any order. The writer that finds
    # 2 shards written kills the job's driver (SIGKILL): what was in flight is lost, the shards written stay.
    out = tmp_path / "killed"
    job = ["--out", str(out), *[a for s in SMALL_BUILD for a in ("--set", s)], "--set", "resources.shape_workers=2"]
    job += ["--set", "resources.shape_worker_cpus=0.3"]
    cmd = [sys.executable, str(ROOT / "jobs" / "build_dataset.py"), *job]
    env = job_env(ray_address, UNI3D_FAULTS="build_kill_after_shards=2")  # joins the suite's Ray
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, start_new_session=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
    assert 2 <= len(before) < 6, sorted(before)
    assert build(*job) == 0  # the same command again, in this process
    after = {p.name: p.read_bytes() for p in (out / "shards").glob("*.parquet")}
    assert all(after.get(name) == data for name, data in before.items())  # shards from before the kill stay
    uids = shards(out)["uid"].to_pylist()
    assert len(uids) == len(set(uids)) == 192
    # The build keeps the listing's order through the pools, so the shards (named by their uids) and their rows
    # are those of the uninterrupted build with one shape worker.
    assert shard_contents(out) == shard_contents(small_build) and len(after) == 6


def _hub(root: Path) -> list[str]:
    """A tiny Objaverse hub layout: two shards, one LVIS category, one missing file."""
    uids = [f"{k:032x}" for k in range(1, 5)]
    paths = {u: f"glbs/000-00{k // 2}/{u}.glb" for k, u in enumerate(uids)}
    root.joinpath("metadata").mkdir(parents=True)
    root.joinpath("object-paths.json.gz").write_bytes(gzip.compress(json.dumps(paths).encode()))
    root.joinpath("lvis-annotations.json.gz").write_bytes(gzip.compress(json.dumps({"chair": [uids[0]]}).encode()))
    for shard in ("000-000", "000-001"):
        meta = {u: {"name": f"Box_{u[-1]}", "tags": [{"name": "box"}]} for u in uids if shard in paths[u]}
        root.joinpath("metadata", f"{shard}.json.gz").write_bytes(gzip.compress(json.dumps(meta).encode()))
    for u in uids[:3]:  # the last one is missing on the server: a 404
        root.joinpath(paths[u]).parent.mkdir(parents=True, exist_ok=True)
        root.joinpath(paths[u]).write_bytes(trimesh.creation.box().export(file_type="glb"))
    return [paths[u] for u in uids]


def test_objaverse_source_over_a_faulty_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    paths = _hub(tmp_path / "hub")
    out = tmp_path / "obja"
    with FaultServer(tmp_path / "hub") as server:
        server.faults[paths[0]] = ["500", "429:0"]
        server.faults[paths[1]] = ["truncate"]
        args = [
            "--source",
            "objaverse",
            "--out",
            str(out),
            "--set",
            f"source.base_url={server.url}",
            "--set",
            "source.download_timeout_s=5",
            "--set",
            "max_failure_rate=1",  # one of the four shapes is missing: more than the default share, on purpose
        ]
        assert build(*args) == 0
        assert server.counts[paths[0]] == 3 and server.counts[paths[1]] == 2
        table = shards(out)
        assert table.num_rows == 3
        row = next(r for r in table.to_pylist() if r["category"])
        assert row["category"] == "chair" and "Box 1" in row["texts"]
        (missing,) = failures(out)
        assert missing["stage"] == "fetch" and "404" in missing["message"]
        # A re-run downloads nothing again: the cache and the written shards are reused.
        before = sum(server.counts.values())
        assert build(*args) == 0
        assert sum(server.counts.values()) - before <= 3  # only annotation look-ups, no GLB
        assert shards(out).num_rows == 3


def test_build_store_lists_only_finished_shards(tmp_path: Path) -> None:
    store = BuildStore(str(tmp_path / "b"))
    (tmp_path / "b" / "shards").mkdir(parents=True)
    (tmp_path / "b" / "shards" / ".part-x.123.tmp").write_bytes(b"partial")
    assert store.shard_files() == [] and store.done_uids() == set()


def test_openshape_files_are_rebuilt_with_another_teacher(tmp_path: Path) -> None:
    root = tmp_path / "openshape"
    rng = np.random.default_rng(0)
    entries = []
    for k in range(3):
        rel = f"Objaverse/000-000/shape{k}.npy"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = {
            "xyz": rng.normal(size=(2000, 3)).astype(np.float32),
            "rgb": rng.random((2000, 3)).astype(np.float32),
            "text": [f"object number {k}"],
            "text_feat": [{"original": rng.normal(size=(1, 1280))}],
            "blip_caption": f"a small thing {k}",
            "blip_caption_feat": {"original": rng.normal(size=(1, 1280))},
            "image_feat": rng.normal(size=(12, 1280)).astype(np.float32),
        }
        np.save(root / rel, data, allow_pickle=True)
        entries.append({"dataset": "Objaverse", "group": "000-000", "data_path": f"/mnt/data/{rel}"})
    (root / "train_all.json").write_text(json.dumps(entries))
    (root / "gpt4_filtering.json").write_text(json.dumps({"shape1": {"flag": "N"}}))  # found by text_filter=auto
    out = tmp_path / "os-build"
    assert build("--source", "openshape", "--root", str(root), "--out", str(out)) == 0
    table = shards(out)
    assert sorted(table["uid"].to_pylist()) == [f"objaverse/shape{k}" for k in range(3)]
    row = next(r for r in table.to_pylist() if r["uid"] == "objaverse/shape1")
    assert row["texts"] == ["a small thing 1"] and row["text_groups"] == [1]  # the flagged name is gone
    other = next(r for r in table.to_pylist() if r["uid"] == "objaverse/shape2")
    assert other["texts"] == ["object number 2", "a small thing 2"] and other["text_groups"] == [0, 1]
    assert row["embed_dim"] == 384
    assert row["num_views"] == 0  # OpenShape's bigG view features do not transfer to MiniLM; no renders exist
