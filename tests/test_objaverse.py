"""Objaverse source against a local hub: listing, texts, LVIS switch, retries, cache, concurrency, loading."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import trimesh
from http_fixtures import FaultServer

from pipelines.meshes.mesh import Mesh
from pipelines.sources.download import Downloader, DownloadError
from pipelines.sources.objaverse import (
    HF_BASE_URL,
    LVIS_ANNOTATIONS,
    OBJECT_PATHS,
    ObjaverseConfig,
    ObjaverseError,
    fetch_glb,
    list_objaverse,
    load_objaverse_shape,
    shape_texts,
)
from pipelines.sources.shapes import ShapeRef

TIMEOUT_S = 2.0  # generous: a loaded machine must never time out a normal answer (the "hang" fault always does)


def uid(k: int) -> str:
    return f"{k:032x}"


SHARDS = {"000-000": [uid(0), uid(1), uid(2)], "000-001": [uid(16), uid(17), uid(18)]}
LVIS = {"chair": [uid(0)], "teddy_bear": [uid(16)]}
LONG = "A tall lamp with a brass stand and a round cloth shade. " + "It has a shade " * 20
ANNOTATIONS = {
    uid(0): {
        "name": "Wooden_Chair.fbx",
        "tags": [{"name": "chair"}, {"name": "wood"}, {"name": "low-poly"}, {"name": "Wood"}],
        "categories": [{"name": "Furniture & Home"}],
        "description": "A  simple chair.\nMade in Blender, see https://example.com/x for more.",
    },
    uid(1): {"name": "  ", "tags": [], "categories": [], "description": "---"},
    uid(2): {"name": "Lamp", "tags": [{"name": "lamp"}], "categories": None, "description": LONG},
    uid(16): {"name": "Teddy Bear", "tags": [{"name": "toy"}], "categories": [], "description": ""},
    # uid(17) has no metadata entry
    uid(18): {"name": "Rock", "tags": [], "categories": [{"name": "Nature & Plants"}], "description": "A rock."},
}


def glb_path(u: str) -> str:
    return f"glbs/{next(s for s, us in SHARDS.items() if u in us)}/{u}.glb"


def write_gz(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(data).encode()))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    write_gz(root / OBJECT_PATHS, {u: glb_path(u) for us in SHARDS.values() for u in us})
    write_gz(root / LVIS_ANNOTATIONS, LVIS)
    for shard, uids in SHARDS.items():
        write_gz(root / "metadata" / f"{shard}.json.gz", {u: ANNOTATIONS[u] for u in uids if u in ANNOTATIONS})
        for k, u in enumerate(uids):
            (root / glb_path(u)).parent.mkdir(parents=True, exist_ok=True)
            (root / glb_path(u)).write_bytes(trimesh.creation.box(extents=(1.0, 1.0 + k, 2.0)).export(file_type="glb"))
    (root / "glbs/000-009").mkdir(parents=True)
    (root / "glbs/000-009/page.glb").write_text("<html>rate limited, please log in</html>")
    return root


@pytest.fixture
def server(hub: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with FaultServer(hub, hang_s=TIMEOUT_S + 0.15) as srv:
        yield srv


@pytest.fixture
def cfg(server: FaultServer, tmp_path: Path) -> ObjaverseConfig:
    return ObjaverseConfig(
        base_url=server.url, cache_dir=str(tmp_path / "cache"), retries=3, timeout_s=TIMEOUT_S, backoff_max_s=8.0
    )


class Recorder:
    """Injected sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make(cfg: ObjaverseConfig, sleep: Recorder | None = None) -> Downloader:
    return Downloader(cfg, sleep=sleep or Recorder(), rng=random.Random(0))


# --- listing -----------------------------------------------------------------------------------------


def test_listing_uids_categories_texts(cfg: ObjaverseConfig) -> None:
    refs = {r.uid: r for r in list_objaverse(cfg, make(cfg))}
    assert list(refs) == [u for s in sorted(SHARDS) for u in sorted(SHARDS[s])]
    chair = refs[uid(0)]
    assert (chair.source, chair.locator, chair.category, chair.extra) == (
        "objaverse",
        f"glbs/000-000/{uid(0)}.glb",
        "chair",
        {"shard": "000-000"},
    )
    assert chair.texts == [
        "Wooden Chair",
        "chair, wood, low poly",
        "A simple chair. Made in Blender, see for more.",
        "Furniture & Home",
        "chair",
    ]
    assert refs[uid(1)].texts == [] and refs[uid(1)].category == ""
    # the tag "lamp" repeats the name; the description is cut after its first sentence
    assert refs[uid(2)].texts == ["Lamp", "A tall lamp with a brass stand and a round cloth shade."]
    assert refs[uid(16)].category == "teddy_bear" and refs[uid(16)].texts == ["Teddy Bear", "toy"]
    assert refs[uid(17)].texts == [] and refs[uid(17)].extra == {"shard": "000-001"}  # no metadata entry
    assert refs[uid(18)].texts == ["Rock", "A rock.", "Nature & Plants"]
    assert ShapeRef.from_row(chair.to_row()) == chair


@pytest.mark.parametrize(
    "mode, expected",
    [("include", {0, 1, 2, 16, 17, 18}), ("exclude", {1, 2, 17, 18}), ("only", {0, 16})],
)
def test_lvis_switch(cfg: ObjaverseConfig, mode: str, expected: set[int]) -> None:
    cfg.lvis = mode
    assert {r.uid for r in list_objaverse(cfg, make(cfg))} == {uid(k) for k in expected}


def test_listing_fetches_only_needed_shards_and_reuses_cache(cfg: ObjaverseConfig, server: FaultServer) -> None:
    cfg.uids = [uid(18), uid(16)]
    assert [r.uid for r in list_objaverse(cfg, make(cfg))] == [uid(16), uid(18)]
    assert server.counts["metadata/000-000.json.gz"] == 0 and server.counts["metadata/000-001.json.gz"] == 1
    before = sum(server.counts.values())
    assert len(list(list_objaverse(cfg, make(cfg)))) == 2
    assert sum(server.counts.values()) == before == 3  # object paths, LVIS, one shard: all cached now


def test_unknown_uid_and_bad_config(cfg: ObjaverseConfig) -> None:
    cfg.uids = [uid(0), "f" * 32]
    with pytest.raises(ObjaverseError, match=f"1 requested uid.*object-paths.json.gz.*{'f' * 32}"):
        list(list_objaverse(cfg, make(cfg)))
    with pytest.raises(ValueError, match="lvis must be one of"):
        ObjaverseConfig(lvis="no")
    assert ObjaverseConfig().base_url == HF_BASE_URL
    with pytest.raises(ValueError, match="no cache_dir"):
        fetch_glb(glb_path(uid(0)), ObjaverseConfig())


def test_corrupt_annotation_file_is_named_and_dropped(cfg: ObjaverseConfig) -> None:
    target = Path(cfg.cache_dir) / OBJECT_PATHS
    target.parent.mkdir(parents=True)
    target.write_bytes(gzip.compress(b'{"a": "glbs/000-000/a.glb", "b": 3}'))
    with pytest.raises(ObjaverseError, match=f"{target}: unreadable.*not a flat JSON object"):
        list(list_objaverse(cfg, make(cfg)))
    assert not target.exists()
    assert len(list(list_objaverse(cfg, make(cfg)))) == 6  # downloaded again


def test_description_trim_and_cleaning() -> None:
    words = " ".join(["words"] * 50)  # no sentence end: 200 characters end inside word 34
    assert shape_texts({"description": words}) == [" ".join(["words"] * 33)]
    words = " ".join(["word"] * 50)  # 200 characters end with word 40
    assert shape_texts({"description": words}) == [" ".join(["word"] * 40)]
    assert shape_texts({"name": "www.site.com 123", "tags": ["a_b", {"name": "A B"}]}, "bat_(animal)") == [
        "a b",
        "bat (animal)",
    ]


# --- downloads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "503", "429:0", "hang", "truncate", "short"])
def test_transient_faults_are_retried(
    cfg: ObjaverseConfig, server: FaultServer, hub: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    rel = glb_path(uid(2))
    server.faults[rel] = [fault, fault]
    sleep = Recorder()
    with caplog.at_level("WARNING", logger="pipelines"):
        path = make(cfg, sleep).fetch(rel)
    assert path.read_bytes() == (hub / rel).read_bytes()
    assert server.counts[rel] == 3 and len(sleep.delays) == 2
    retries = [r for r in caplog.records if r.levelname == "WARNING" and "retrying in" in r.getMessage()]
    assert len(retries) == 2 and rel in retries[0].getMessage()  # a user sees each retry at the default level
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no partial file left behind


def test_backoff_grows_and_honours_retry_after(cfg: ObjaverseConfig, server: FaultServer) -> None:
    rel = glb_path(uid(0))
    server.faults[rel] = ["500", "500", "500"]
    sleep = Recorder()
    make(cfg, sleep).fetch(rel)
    for k, delay in enumerate(sleep.delays):  # base 1 s: within [0.5, 1) * 2**k
        assert 0.5 * 2**k <= delay < 2**k
    rel = glb_path(uid(1))
    server.faults[rel] = ["429:3", "429:999", "429"]
    sleep = Recorder()
    make(cfg, sleep).fetch(rel)
    assert sleep.delays[0] == 3.0  # Retry-After over the 0.5-1 s backoff
    assert sleep.delays[1] == cfg.backoff_max_s  # capped
    assert 2.0 <= sleep.delays[2] < 4.0  # no header: plain backoff


def test_truncated_body_never_cached(cfg: ObjaverseConfig, server: FaultServer) -> None:
    rel = glb_path(uid(16))
    server.faults[rel] = ["truncate"] * 4
    with pytest.raises(DownloadError) as info:
        make(cfg).fetch(rel)
    message = str(info.value)
    assert f"{server.url}/{rel}" in message and "after 4 attempts" in message and "truncated body" in message
    assert info.value.attempts == 4 and server.counts[rel] == 4
    assert not any(p.is_file() for p in Path(cfg.cache_dir).rglob("*"))
    assert make(cfg).fetch(rel).stat().st_size > 0 and server.counts[rel] == 5


def test_404_fails_at_once(cfg: ObjaverseConfig, server: FaultServer) -> None:
    sleep = Recorder()
    rel = f"glbs/000-000/{'e' * 32}.glb"
    with pytest.raises(DownloadError, match=f"GET {server.url}/{rel}: HTTP 404 .*not retried") as info:
        fetch_glb(rel, cfg, make(cfg, sleep))
    assert info.value.status == 404 and server.counts[rel] == 1 and sleep.delays == []


def test_body_that_is_not_a_glb_fails_at_once(cfg: ObjaverseConfig, server: FaultServer) -> None:
    with pytest.raises(DownloadError, match=r"page\.glb: the body is not a GLB \(no 'glTF' magic\)"):
        make(cfg).fetch("glbs/000-009/page.glb")
    assert server.counts["glbs/000-009/page.glb"] == 1 and not any(Path(cfg.cache_dir).rglob("*.glb*"))


def test_exhausted_retries_name_url_attempts_and_cause(cfg: ObjaverseConfig, server: FaultServer) -> None:
    cfg.retries = 2
    rel = glb_path(uid(18))
    server.faults[rel] = ["503", "hang", "503"]
    with pytest.raises(DownloadError, match=rf"GET {server.url}/{rel}: failed after 3 attempts; last cause: HTTP 503"):
        make(cfg).fetch(rel)
    assert server.counts[rel] == 3


def test_cache_hit_makes_no_request_and_broken_cache_is_replaced(cfg: ObjaverseConfig, server: FaultServer) -> None:
    rel = glb_path(uid(17))
    dl = make(cfg)
    first = dl.fetch(rel)
    assert dl.fetch(rel) == first and server.counts[rel] == 1
    assert pickle.loads(pickle.dumps(dl)).fetch(rel) == first and server.counts[rel] == 1  # e.g. sent to a Ray task
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # e.g. written by a tool without atomic writes
    assert dl.fetch(rel).read_bytes() == data and server.counts[rel] == 2


def test_concurrency_is_bounded(cfg: ObjaverseConfig, server: FaultServer) -> None:
    server.delay_s = 0.05
    cfg.max_concurrency = 3
    rels = [glb_path(u) for us in SHARDS.values() for u in us]
    results = make(cfg).fetch_many(rels + rels[:2] + [f"glbs/000-000/{'e' * 32}.glb"])
    assert all(isinstance(results[r], Path) for r in rels)
    assert isinstance(results[f"glbs/000-000/{'e' * 32}.glb"], DownloadError)
    assert 2 <= server.max_in_flight <= 3
    # threads outside fetch_many share the same bound
    cfg.max_concurrency, server.max_in_flight = 2, 0
    dl = make(cfg)
    for rel in rels:
        (Path(cfg.cache_dir) / rel).unlink()
    with ThreadPoolExecutor(max_workers=6) as pool:
        assert all(p.is_file() for p in pool.map(dl.fetch, rels))
    assert 1 <= server.max_in_flight <= 2 and threading.active_count() < 20


def test_load_objaverse_shape(cfg: ObjaverseConfig) -> None:
    ref = next(r for r in list_objaverse(cfg, make(cfg)) if r.uid == uid(2))
    mesh = load_objaverse_shape(ref, cfg, make(cfg))
    assert isinstance(mesh, Mesh) and mesh.num_faces == 12
    np.testing.assert_allclose(np.ptp(mesh.vertices, axis=0), [1.0, 3.0, 2.0], atol=1e-6)


# --- the download cache on a cluster, tokens, mirrors ----------------------------------------------------


def test_downloads_go_to_node_local_scratch_when_the_build_is_in_object_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.sources.config import SourceConfig
    from pipelines.sources.dispatch import objaverse_cache, objaverse_config

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("UNI3D_CACHE", raising=False)
    source = SourceConfig(kind="objaverse")
    assert objaverse_cache(source, str(tmp_path / "build")) == str(tmp_path / "build" / "cache" / "objaverse")
    assert objaverse_cache(source, "s3://bucket/build") == str(tmp_path / "home" / ".cache" / "uni3d" / "objaverse")
    monkeypatch.setenv("UNI3D_CACHE", str(tmp_path / "scratch"))
    assert objaverse_config(source, "s3://bucket/build").cache_dir == str(tmp_path / "scratch" / "objaverse")
    chosen = SourceConfig(kind="objaverse", cache_dir=str(tmp_path / "nvme"))
    assert objaverse_cache(chosen, "s3://bucket/build") == str(tmp_path / "nvme")
    assert "s3:" not in objaverse_cache(source, "s3://bucket/build")


def test_hf_token_goes_to_the_hub_and_its_mirror_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.sources.download import request_headers
    from pipelines.sources.objaverse import hf_base_url

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert hf_base_url() == HF_BASE_URL
    assert "Authorization" not in request_headers(f"{HF_BASE_URL}/object-paths.json.gz")  # anonymous
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    assert request_headers(f"{HF_BASE_URL}/x.glb")["Authorization"] == "Bearer hf_abc"
    assert "Authorization" not in request_headers("http://127.0.0.1:8000/x.glb")  # never to other hosts
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org/")
    assert hf_base_url() == "https://hf-mirror.example.org/datasets/allenai/objaverse/resolve/main"
    assert request_headers(f"{hf_base_url()}/x.glb")["Authorization"] == "Bearer hf_abc"


def test_the_downloader_sends_the_token(cfg: ObjaverseConfig, server: FaultServer, monkeypatch: pytest.MonkeyPatch):
    import pipelines.sources.download as download

    sent: list[str | None] = []
    real = download.request_headers

    def recorded(url: str) -> dict[str, str]:
        headers = real(url)
        sent.append(headers.get("Authorization"))
        return headers

    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    monkeypatch.setenv("HF_ENDPOINT", server.url)  # the local server as the mirror
    monkeypatch.setattr(download, "request_headers", recorded)
    fetch_glb(glb_path(uid(0)), cfg, make(cfg))
    assert sent == ["Bearer hf_abc"]


@pytest.mark.parametrize("keep", [True, False])
def test_keep_downloads_false_deletes_each_glb_once_its_shape_is_loaded(cfg: ObjaverseConfig, keep: bool) -> None:
    from pipelines.sources.dispatch import materialise

    ref = next(r for r in list_objaverse(cfg, make(cfg)) if r.uid == uid(2))
    context = {"objaverse": cfg, "downloader": make(cfg), "keep_downloads": keep}
    data, times = materialise(ref, 256, 0, context)
    assert data.points.shape == (256, 6) and "fetch" in times
    assert (Path(cfg.cache_dir) / glb_path(uid(2))).is_file() == keep
    assert (Path(cfg.cache_dir) / OBJECT_PATHS).is_file()  # annotations stay: the listing reads them again
