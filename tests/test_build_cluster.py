"""The dataset build on a multi-node Ray cluster (several raylets on this machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_build_spreads_over_three_nodes(tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from jobs.build_dataset import main

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        cluster.wait_for_nodes()
        nodes = {n["NodeID"][:12] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 3
        out = tmp_path / "cluster"
        argv = ["--out", str(out), "--set", "source.num_shapes=48", "--set", "num_points=1024"]
        argv += ["--set", "rows_per_shard=4", "--set", "resources.shape_workers=3"]
        assert main(argv) == 0
        uids = pq.read_table(out / "shards")["uid"].to_pylist()
        assert len(uids) == len(set(uids)) == 48
        # Ray Data spreads the pool's actors; each node's shape worker processed rows of this build.
        (stats,) = (out / "stats").glob("build-*.json")
        record = json.loads(stats.read_text())
        by_node = record["rows_by_node"]["shape"]
        assert set(by_node) == nodes and sum(by_node.values()) == 48, by_node
        assert len(record["rows_by_worker"]["shape"]) == 3 and min(by_node.values()) >= 4, by_node
    finally:
        ray.shutdown()
        for node in workers:
            cluster.remove_node(node)
        cluster.shutdown()
