"""Typed configuration of a dataset build: its source, its stages' resources and its outputs.

A build is ``BuildConfig`` plus a ``--config`` file and a few ``--set section.key=value`` overrides, validated by
``pipelines.settings``; the resolved config is written into the build's manifest (DINOv2's "write the resolved
config"). No torch or Ray here: the jobs read these for ``--help`` before anything heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines.sources.config import SourceConfig


@dataclass
class ResourceConfig:
    """Actor pools of the build and what they may hold. Defaults fit a 2-core laptop: the actors' CPU
    requests leave one CPU free for Ray Data's listing and repartition tasks (which ask for 1 whole CPU
    each, on one node) and the writer tasks. On a cluster, size the pools to the nodes, e.g.
    ``--set resources.shape_workers=64 --set resources.embed_worker_gpus=1``."""

    shape_workers: int = 1  # actors that fetch, load, sample and render (spread over the nodes)
    shape_worker_cpus: float = 0.5
    shape_batch: int = 4
    embed_workers: int = 1  # teacher actors
    embed_worker_cpus: float = 0.25
    embed_worker_gpus: float = 0.0  # > 0 on GPU nodes: the teacher and the renderer's EGL context use the GPU
    embed_batch: int = 16
    writer_cpus: float = 0.1  # per writer task; Ray Data runs as many as fit
    read_cpus: float = 0.25
    # Listing rows per Ray Data block, i.e. per shape-worker task. 0 = automatic: at most rows_per_shard,
    # at least 4 blocks per shape worker, and small enough for the object-store budget.
    rows_per_block: int = 0
    # Object store Ray Data may fill with this build's blocks (rendered views, points); its backpressure
    # holds the pools back beyond it. 0 = Ray Data's default, half the cluster's object store.
    object_store_gib: float = 0.0
    # Refuse to start when the actor pools leave no CPU for Ray Data's 1-CPU listing task (it would wait
    # forever). Turn off on autoscaling clusters whose CPUs appear only once the job asks for them.
    check_fits: bool = True

    def actor_cpus(self) -> float:
        """CPUs the resident actors hold for the whole run (writer tasks come and go)."""
        return self.shape_workers * self.shape_worker_cpus + self.embed_workers * self.embed_worker_cpus


@dataclass
class BuildConfig:
    output: str = "data/build"  # local path or URI (s3://…, gs://…) understood by pyarrow.fs
    teacher: str = "minilm"  # uni3d.parse_teacher spec
    num_points: int = 10_000
    num_views: int = 12  # 0 = no renders (automatic for text-only teachers)
    image_size: int = 224
    msaa: int | Literal["auto"] = "auto"  # views' MSAA samples; auto: 4 on GPU nodes, none on CPU rasterisers
    rows_per_shard: int = 64  # bounded shard size: rows per Parquet file
    limit: int | None = None  # build at most this many new shapes
    shard: str = "0/1"  # i/n: this run builds the uids whose hash falls in slice i of n
    # Build again the recorded failures that may pass (a fetch that ran out of retries, the teacher, the shard
    # writer; docs/dataset.md "Failures"); broken meshes and refused input data stay failures.
    retry_failures: bool = False
    # The job exits 1 when more than this share of the shapes it tried failed (a few percent of Objaverse's
    # files are broken; many more means something else is wrong: the network, the teacher, the storage)
    max_failure_rate: float = 0.1
    seed: int = 0  # point sampling seed (per shape: seed + a hash of its uid)
    progress_every_s: float = 10.0
    source: SourceConfig = field(default_factory=SourceConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)

    def __post_init__(self) -> None:
        parse_shard(self.shard)
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")
        if self.msaa != "auto" and (isinstance(self.msaa, bool) or not isinstance(self.msaa, int) or self.msaa < 0):
            raise ValueError(f"msaa must be 'auto' or an int >= 0, got {self.msaa!r}")
        if self.num_points < 1 or self.num_views < 0:
            raise ValueError(f"num_points must be >= 1 and num_views >= 0, got {self.num_points}, {self.num_views}")
        if self.source.kind not in ("procedural", "local", "objaverse", "openshape"):
            raise ValueError(f"source.kind must be procedural, local, objaverse or openshape, got {self.source.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_shard(spec: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {spec!r}: need 0 <= i < n")
    return i, n
