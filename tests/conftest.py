"""Shared test set-up: hermetic (no hub look-ups, never a Ray cluster the suite did not start), seeded, GPU
tests skipped without CUDA.

Ray: one local instance for the whole session (``ray_session``), started with ``address="local"`` so that
neither ``$RAY_ADDRESS`` nor an address file left by a killed ``ray start`` head can send it elsewhere.
``RAY_ADDRESS=local`` is set for the session as well, so job subprocesses start their own local Ray unless a
test hands them the session's address (``ray_address``) to join it. Tests marked ``cluster`` start Ray their own way
(a multi-node ``ray.cluster_utils.Cluster``, or ``ray start``); they run after all the others, and the session's Ray
is started again for any test that comes after one of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RAY_ADDRESS"] = "local"  # job subprocesses inherit it: never join a cluster the suite did not start
# Ray Train starts a preemption watcher actor (for spot instances) with every run: not on this machine
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ROOT = Path(__file__).resolve().parents[1]

# The session's Ray: 2 CPUs as on a laptop, an object store sized explicitly (Ray's default is 30% of the
# machine's memory), worker output kept out of the test log, no dashboard: nothing in the suite reads it (Ray
# Train, Tune and Data run without it) and its processes took ~5% of the CPU in the Ray tests measured (the
# cluster tests' head has none either). Ray started as users start it (test_ray_submit.py's `ray start`, jobs
# with a Ray of their own) keeps its dashboard.
RAY_INIT = dict(
    num_cpus=2, object_store_memory=2 << 30, log_to_driver=False, configure_logging=False, include_dashboard=False
)


def start_local_ray() -> None:
    """Start the suite's local Ray in this process, whatever ``$RAY_ADDRESS`` or an address file say."""
    import ray

    from pipelines.ray_connect import size_for_this_machine

    if not ray.is_initialized():
        size_for_this_machine(RAY_INIT["num_cpus"])
        ray.init(address="local", **RAY_INIT)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # multi-node tests last: each shuts the session's Ray down to start a cluster of its own. The stale-address
    # test first: the session's Ray then starts beside its stale file instead of being started twice.
    items.sort(key=lambda item: ("cluster" in item.keywords, "stale_address_file" not in item.fixturenames))
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def s3() -> Iterator[object]:
    """A real S3 API on 127.0.0.1 (moto's server) for the session, with ``AWS_*`` pointing at it in this process,
    its job subprocesses and (started after it) the session's Ray workers: ``s3://`` paths never leave the machine."""
    from s3_fixtures import LocalS3

    server = LocalS3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_session(s3: object) -> Iterator[Callable[[], str]]:
    """The session's local Ray, started once; yields a function that (re)starts it and returns its address."""
    import ray

    def up() -> str:
        start_local_ray()
        return ray.get_runtime_context().gcs_address

    up()
    try:
        yield up
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_for_ray_tests(request: pytest.FixtureRequest) -> None:
    """Tests marked ``ray`` (and not ``cluster``) run on the session's Ray."""
    if "ray" in request.keywords and "cluster" not in request.keywords:
        request.getfixturevalue("ray_session")()


@pytest.fixture
def ray_address(ray_session: Callable[[], str]) -> str:
    """The session Ray's GCS address, for a job subprocess to join (``RAY_ADDRESS``) instead of starting one."""
    return ray_session()


# The suite's shared build: 192 procedural shapes with MiniLM text embeddings, 512 points, 6 shards of 32.
# Held out 10% by uid (25 shapes): 167 training shapes, 5 steps an epoch at 2 workers x batch 16.
SMALL_BUILD = ["source.num_shapes=192", "num_points=512", "rows_per_shard=32", "progress_every_s=1000"]


@pytest.fixture(scope="session")
def small_build(ray_session: Callable[[], str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared build (read-only: tests write their runs, reports and copies elsewhere)."""
    from jobs.build_dataset import main

    ray_session()
    out = tmp_path_factory.mktemp("shared") / "build"
    assert main(["--out", str(out), *[a for s in SMALL_BUILD for a in ("--set", s)]]) == 0
    return out


def job_env(address: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a job subprocess: the session's Ray at ``address``, else a local Ray of its own."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env["RAY_ADDRESS"] = address or "local"
    return env


@pytest.fixture
def all_actors_before_work() -> Iterator[None]:
    """Ray Data starts an actor pool's tasks once every actor is up (``DataContext.wait_for_min_actors_s``), so that
    a test that checks which actors got blocks does not race the actors' start-up."""
    import ray

    ctx = ray.data.DataContext.get_current()
    saved, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120
    try:
        yield
    finally:
        ctx.wait_for_min_actors_s = saved


def random_cloud(batch: int, num_points: int, seed: int = 0) -> torch.Tensor:
    """Points in the unit ball with colours in [0, 1]: ``(B, N, 6)`` float32."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randn(batch, num_points, 3, generator=g)
    xyz = xyz / xyz.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    rgb = torch.rand(batch, num_points, 3, generator=g)
    return torch.cat([xyz, rgb], dim=-1)


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one ``error:`` line a refused job printed on stderr (argparse's convention, exit status 2)."""
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]
