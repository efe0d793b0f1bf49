"""Multi-node behaviour on one machine: a Ray cluster of three 2-CPU raylets (``ray.cluster_utils.Cluster``), shared by
this module's tests, which run after all the others (conftest). The build spreads over the three nodes, and a node
removed mid-build loses and duplicates no shape; pretraining puts its workers on different nodes, and a node removed
mid-run restarts the workers from the last checkpoint and the run finishes. Nodes are removed at a chosen point,
where an injected fault (``pipelines.faults``) holds the build's driver or the training workers, never on a timer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import uni3d

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # the session's local Ray: its CPUs are this cluster's now
    # A lost node is declared dead after 3 failed health checks a second apart (Ray's default: 5, 3 s apart).
    checks = {"health_check_period_ms": 1000, "health_check_timeout_ms": 2000, "health_check_failure_threshold": 3}
    head = {"num_cpus": 2, "_system_config": checks, "include_dashboard": False}  # as the session's Ray: unread
    made = Cluster(initialize_head=True, head_node_args=head)
    try:
        for _ in range(2):
            made.add_node(num_cpus=2)
        made.wait_for_nodes()
        ray.init(address=made.address, log_to_driver=False, configure_logging=False)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()  # its nodes, and the address file it wrote


def alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def kept(cluster) -> set[str]:
    """Nodes never removed: the head, and the node this driver is attached to."""
    import ray

    return {cluster.head_node.node_id, ray.get_runtime_context().get_node_id()}


def in_background(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """``fn`` on a thread whose exception the test re-raises (a thread that fails must not die silently)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def wait_for(paths: list[Path], timeout: float = 240) -> None:
    """Wait for marker files that a held driver or worker writes (the run cannot go on without the test)."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"no {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.1)


def test_the_build_spreads_over_three_nodes_and_a_node_lost_mid_build_loses_and_duplicates_no_shape(
    cluster, all_actors_before_work: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray Data places the shape pool's three actors with SPREAD, one a node, and each takes blocks. The build's
    driver holds after 12 of its 24 shards; a worker node is removed (its raylet and every process on it killed);
    released, the build finishes: Ray Data restarts the lost actor elsewhere and retries its tasks, lost blocks are
    rebuilt from lineage, a shard written twice keeps its deterministic name."""
    from jobs.build_dataset import main

    out = tmp_path / "lost"
    work = out / "_work"
    nodes = alive_nodes()
    assert len(nodes) == 3
    victim = next(n for n in reversed(cluster.list_all_nodes()) if n.node_id not in kept(cluster))

    def remove_a_node_while_the_driver_holds() -> None:
        wait_for([work / "fault-held"])
        cluster.remove_node(victim, allow_graceful=False)
        (work / "fault-release").write_text("go")

    monkeypatch.setenv("UNI3D_FAULTS", "build_hold_after_shards=12")
    thread, errors = in_background(remove_a_node_while_the_driver_holds)
    argv = ["--out", str(out), "--set", "source.num_shapes=96", "--set", "num_points=1024"]
    argv += ["--set", "rows_per_shard=4", "--set", "resources.shape_workers=3", "--set", "progress_every_s=1000"]
    try:
        assert main(argv) == 0
    finally:
        (work / "fault-release").write_text("go")  # never leave the driver held
        thread.join(timeout=60)
        cluster.add_node(num_cpus=2)  # three nodes again for the next test
        cluster.wait_for_nodes()
    assert not errors, errors
    assert victim.node_id in nodes and victim.node_id not in alive_nodes()
    shards = sorted((out / "shards").glob("*.parquet"))
    uids = pq.read_table(out / "shards")["uid"].to_pylist()
    assert len(uids) == len(set(uids)) == 96 and len(shards) == 96 // 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_shapes"] == 96 and manifest["failures"] == {}, manifest
    # Every node's actor sampled rows of this build (Ray's own record of each row's actor and node, in the run's
    # stats), the lost node's among them: the driver had read 12 shards from all three before it held.
    (stats,) = (out / "stats").glob("build-*.json")
    record = json.loads(stats.read_text())
    by_node, per_block = record["rows_by_node"]["shape"], record["plan"]["rows_per_block"]
    assert set(by_node) == {n[:12] for n in nodes} and sum(by_node.values()) == 96, by_node
    assert min(by_node.values()) >= per_block, by_node


def test_pretraining_spreads_over_nodes_and_a_node_lost_mid_run_resumes_from_the_last_checkpoint(
    cluster, small_build: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers of 1.5 CPUs cannot share a 2-CPU node. Both hold before step 5 (checkpoints every 3 steps);
    a node that runs one of them, not the head, is removed: Ray Train restarts the worker group on the nodes
    left, from the step-3 checkpoint, and the run ends with every step logged once."""
    from jobs.pretrain import main

    run = tmp_path / "runs" / "lost"
    held = [run / "faults" / f"held-{rank}@5" for rank in (0, 1)]
    removed: list[str] = []

    def remove_a_workers_node() -> None:
        wait_for(held)
        on = {p.read_text() for p in held}
        victim = next(n for n in cluster.list_all_nodes() if n.node_id in on and n.node_id not in kept(cluster))
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(victim.node_id)

    monkeypatch.setenv("UNI3D_FAULTS", "train_hold=*@5")
    thread, errors = in_background(remove_a_workers_node)
    args = ["--data", str(small_build), "--storage", str(tmp_path / "runs"), "--name", "lost", "--model", "nano"]
    train = ["batch_size=16", "warmup_steps=5", "holdout_fraction=0.1", "strategy=ddp", "epochs=2"]  # 10 steps
    train += ["log_every=1", "checkpoint_every=3", "eval_every=0", "max_failures=1", "worker_cpus=1.5"]
    train += ["data_cpus=0.1", "cache_data=false"]  # workers read the shards: nothing lives on the lost node
    assert main(args + [a for s in train for a in ("--set", s)]) == 0
    thread.join(timeout=60)
    assert not errors and removed, errors
    assert len({p.read_text() for p in held}) == 2  # the two workers ran on two nodes
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 11))  # the steps after the checkpoint logged once
    assert [m["start_step"] for m in lines] == [0] * 3 + [3] * 7  # restarted from the step-3 checkpoint
    assert uni3d.read_checkpoint_config(run / "final")["meta"]["step"] == 10
    assert removed[0] not in alive_nodes() and len(alive_nodes()) == 2
