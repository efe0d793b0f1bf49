"""Retrying a build's transient failures (docs/dataset.md, "Failures"): which failures are transient, failures
tables written before the ``transient`` column, and builds over a local hub whose files answer 503 at first."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import trimesh
from conftest import SHARED
from http_fixtures import FaultServer

from pipelines.build.failures import error_is_transient, failure_is_transient, failure_row, failures_to_table
from pipelines.build.manifest import read_manifest
from pipelines.build.run import resume_state
from pipelines.build.store import BuildStore
from pipelines.meshes.mesh import MeshError
from pipelines.sources.download import DownloadError

# The failures table as written before it had a ``transient`` column.
OLD_FAILURES_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("uid", "source", "stage", "error_type", "message")],
)


def test_failures_are_transient_by_stage_and_error() -> None:
    out_of_retries = DownloadError("GET u: failed after 7 attempts; last cause: HTTP 503 Service Unavailable", "u", 7)
    cases = [
        ("fetch", out_of_retries, True),
        ("fetch", DownloadError("GET u: HTTP 404 Not Found (not retried)", "u", 1, 404), False),
        ("fetch", DownloadError("GET u: HTTP 429 Too Many Requests", "u", 1, 429), True),
        ("fetch", ValueError("not a plain relative path under the cache: '../x'"), False),
        ("fetch", ConnectionResetError("reset by peer"), True),
        ("load", MeshError("garbage.stl: could not read the STL file"), False),
        ("load", FileNotFoundError("gone.obj"), False),
        ("load", TimeoutError("network filesystem"), True),  # the machine's error, not the mesh's
        ("sample", MeshError("cannot sample a mesh whose surface area is zero"), False),
        ("sample", MemoryError(), True),
        ("render", RuntimeError("degenerate view"), False),
        ("embed_image", torch.OutOfMemoryError("CUDA out of memory"), True),
        ("embed_text", RuntimeError("teacher crashed"), True),
        ("embed_text", ValueError("bad batch"), True),  # the teacher fails whole batches
        ("write", ValueError("texts: expected a non-empty list"), False),  # make_row refused the row
        ("write", TypeError("a bug in the writer"), True),
    ]
    for stage, error, transient in cases:
        assert error_is_transient(stage, error) is transient, (stage, error)
        row = failure_row("u", "objaverse", stage, error)
        assert row["transient"] is transient and failure_is_transient(row) is transient
        # A row written before the column knows only the class name: the same answer for these exceptions.
        assert failure_is_transient(row | {"transient": None}) is transient, (stage, error)


def _write_old_failures(folder: Path, name: str, rows: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OLD_FAILURES_SCHEMA), folder / f"{name}.parquet")


def _old(uid: str, stage: str, error_type: str, message: str) -> dict[str, str]:
    return {"uid": uid, "source": "objaverse", "stage": stage, "error_type": error_type, "message": message}


def test_failures_tables_without_the_transient_column_still_read_and_classify(tmp_path: Path) -> None:
    store = BuildStore(str(tmp_path / "b"))
    _write_old_failures(
        tmp_path / "b" / "failures",
        "part-old",
        [
            _old("a", "fetch", "DownloadError", "GET u/a: failed after 7 attempts; last cause: HTTP 503 Unavailable"),
            _old("b", "fetch", "DownloadError", "GET u/b: HTTP 404 Not Found (not retried)"),
            _old("c", "load", "MeshError", "c.obj: no faces"),
            _old("d", "embed_text", "OutOfMemoryError", "CUDA out of memory"),
        ],
    )
    new = failures_to_table([failure_row("e", "local", "load", MeshError("e.stl: empty"))])
    store.write_table(new, "failures", "part-new")  # a run of this code extends the build
    rows = {r["uid"]: r for r in store.failure_rows()}
    assert sorted(rows) == ["a", "b", "c", "d", "e"]
    assert [rows[u]["transient"] for u in "abcde"] == [None, None, None, None, False]
    assert {u: failure_is_transient(r) for u, r in rows.items()} == dict(a=True, b=False, c=False, d=True, e=False)
    assert store.done_uids() == set("abcde")
    # A re-run without retry_failures skips them all; with it, it builds a and d again and skips the rest.
    plain, retry = resume_state(store, retry_failures=False), resume_state(store, retry_failures=True)
    assert (plain.done, plain.retry, plain.transient, plain.permanent) == (set("abcde"), {}, 2, 3)
    assert (retry.done, retry.retry) == ({"b", "c", "e"}, {"a": "fetch", "d": "embed_text"})


def test_dropping_failures_rewrites_only_the_files_that_hold_them(tmp_path: Path) -> None:
    folder = tmp_path / "b" / "failures"
    store = BuildStore(str(tmp_path / "b"))
    _write_old_failures(
        folder, "part-1", [_old("a", "fetch", "DownloadError", "x"), _old("b", "load", "MeshError", "y")]
    )
    _write_old_failures(folder, "part-2", [_old("c", "fetch", "DownloadError", "z")])
    _write_old_failures(folder, "part-3", [_old("d", "load", "MeshError", "w")])
    untouched = (folder / "part-3.parquet").read_bytes()
    assert store.drop_failures({"a", "c", "not-a-failure"}) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["part-1.parquet", "part-3.parquet"]  # part-2 emptied
    assert pq.read_table(folder / "part-1.parquet")["uid"].to_pylist() == ["b"]
    assert (folder / "part-3.parquet").read_bytes() == untouched
    assert store.done_uids() == {"b", "d"} and store.drop_failures(set()) == 0


def test_retry_failures_is_a_flag_and_a_config_field(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.build_dataset import parse_args

    assert parse_args(["--out", "x"])[0].retry_failures is False
    assert parse_args(["--out", "x", "--retry-failures"])[0].retry_failures is True
    assert parse_args(["--out", "x", "--set", "retry_failures=true"])[0].retry_failures is True
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "retry_failures (bool, default False): Build again the recorded failures" in capsys.readouterr().out


def _hub(root: Path) -> dict[str, str]:
    """A tiny Objaverse hub: four GLBs (one missing on the server) and a broken STL file (an odd path)."""
    uids = [f"{k:032x}" for k in range(1, 6)]
    paths = {u: f"glbs/000-000/{u}.glb" for u in uids[:4]} | {uids[4]: f"glbs/000-000/{uids[4]}.stl"}
    root.joinpath("metadata").mkdir(parents=True)
    root.joinpath("object-paths.json.gz").write_bytes(gzip.compress(json.dumps(paths).encode()))
    root.joinpath("lvis-annotations.json.gz").write_bytes(gzip.compress(json.dumps({}).encode()))
    meta = {u: {"name": f"Box {k}"} for k, u in enumerate(uids)}
    root.joinpath("metadata", "000-000.json.gz").write_bytes(gzip.compress(json.dumps(meta).encode()))
    root.joinpath("glbs", "000-000").mkdir(parents=True)
    for u in uids[:3]:  # uids[3] is not on the server: a 404
        root.joinpath(paths[u]).write_bytes(trimesh.creation.box().export(file_type="glb"))
    root.joinpath(paths[uids[4]]).write_bytes((SHARED / "meshes" / "broken" / "garbage.stl").read_bytes())
    return {"flaky": paths[uids[0]], "once": paths[uids[1]], "good": paths[uids[2]], "gone": paths[uids[3]]} | {
        "broken": paths[uids[4]]
    }


def _uid(path: str) -> str:
    return Path(path).stem


def _shard_uids(out: Path) -> list[str]:
    return sorted(pq.read_table(out / "shards")["uid"].to_pylist())


def _failures(out: Path) -> dict[str, dict]:
    rows = [r for f in sorted((out / "failures").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == len({r["uid"] for r in rows}), "a shape has two failure rows"
    return {r["uid"]: r for r in rows}


def _counts_agree(out: Path) -> dict[str, int]:
    """The manifest's counts are those of the shards and the failures table; returns its failures by stage."""
    manifest, failures = read_manifest(out / "manifest.json"), _failures(out)
    assert manifest.num_shapes == len(_shard_uids(out))
    assert sum(manifest.failures.values()) == len(failures)
    assert not set(failures) & set(_shard_uids(out))  # a shape is written or failed, never both
    return manifest.failures


@pytest.mark.ray
@pytest.mark.slow
def test_rerun_retries_transient_failures_once_and_keeps_permanent_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.build_dataset import main

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    paths = _hub(tmp_path / "hub")
    uid = {k: _uid(p) for k, p in paths.items()}
    out = tmp_path / "obja"
    with FaultServer(tmp_path / "hub") as server:
        # No download retries: a 503 fails the fetch at once. "flaky" fails two runs, "once" one.
        server.faults[paths["flaky"]] = ["503", "503"]
        server.faults[paths["once"]] = ["503"]
        args = ["--source", "objaverse", "--out", str(out), "--set", f"source.base_url={server.url}"]
        args += ["--set", "source.download_retries=0", "--set", "source.download_timeout_s=5"]
        args += ["--set", "num_points=512", "--set", "rows_per_shard=4", "--set", "progress_every_s=0"]
        args += ["--set", "max_failure_rate=1"]  # most shapes fail here on purpose (the threshold: test_build.py)

        def build(*extra: str) -> str:
            assert main([*args, *extra]) == 0
            return capsys.readouterr().out

        build()
        assert _shard_uids(out) == [uid["good"]]
        failed = _failures(out)
        assert {u: (r["stage"], r["transient"]) for u, r in failed.items()} == {
            uid["flaky"]: ("fetch", True),
            uid["once"]: ("fetch", True),
            uid["gone"]: ("fetch", False),  # 404: not on the hub
            uid["broken"]: ("load", False),  # a broken mesh file
        }
        assert failed[uid["broken"]]["error_type"] == "MeshError"
        assert _counts_agree(out) == {"fetch": 3, "load": 1}

        # Without the flag nothing is retried: no request for any of the shapes, the tables as they were.
        requests = dict(server.counts)
        log = build()
        assert "0 shapes to build" in log and "2 of 4 recorded failures may pass" in log and "retrying" not in log
        assert dict(server.counts) == requests and sorted(_failures(out)) == sorted(failed)

        # With it: the two transient failures are fetched again; "once" lands, "flaky" fails again (one row).
        log = build("--retry-failures")
        assert "retrying 2 transient failures (fetch: 2); 2 permanent failures kept" in log
        assert _shard_uids(out) == sorted([uid["good"], uid["once"]])
        assert sorted(_failures(out)) == sorted([uid["flaky"], uid["gone"], uid["broken"]])
        assert _counts_agree(out) == {"fetch": 2, "load": 1}

        log = build("--retry-failures")
        assert "retrying 1 transient failures (fetch: 1); 2 permanent failures kept" in log
        assert _shard_uids(out) == sorted([uid["good"], uid["once"], uid["flaky"]])  # each exactly once
        assert sorted(_failures(out)) == sorted([uid["gone"], uid["broken"]])
        assert _counts_agree(out) == {"fetch": 1, "load": 1}

        log = build("--retry-failures")  # only permanent failures are left: nothing to build
        assert "0 shapes to build" in log and "retrying 0 transient failures; 2 permanent failures kept" in log
        assert server.counts[paths["flaky"]] == 3 and server.counts[paths["once"]] == 2
        assert server.counts[paths["gone"]] == 1 and server.counts[paths["broken"]] == 1  # never retried
