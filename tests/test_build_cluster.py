"""The dataset build on a multi-node Ray cluster (several raylets on this machine)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_build_spreads_over_two_nodes(tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from jobs.build_dataset import main

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    worker = cluster.add_node(num_cpus=2, resources={"second_node": 1})
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        out = tmp_path / "cluster"
        argv = [
            "--out",
            str(out),
            "--set",
            "source.num_shapes=16",
            "--set",
            "num_points=1024",
            "--set",
            "rows_per_shard=4",
            "--set",
            "resources.shape_workers=3",
        ]
        assert main(argv) == 0
        table = pq.read_table(out / "shards")
        uids = table["uid"].to_pylist()
        assert len(uids) == len(set(uids)) == 16
        # Three shape workers of 0.5 CPU, the teacher and the writer cannot all fit on one 2-CPU node.
        nodes = {
            a["node_id"]
            for a in ray.util.state.list_actors(filters=[("state", "=", "DEAD")])
            if "ShapeWorker" in a["class_name"]
        }
        assert len(nodes) == 2, nodes
    finally:
        ray.shutdown()
        cluster.remove_node(worker)
        cluster.shutdown()
