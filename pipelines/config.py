"""Typed configuration of a dataset build, and ``key=value`` overrides of nested dataclasses.

A build is ``BuildConfig`` plus a few ``--set section.key=value`` overrides; the resolved config
is written into the build's manifest (DINOv2's "write the resolved config").
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, get_type_hints


@dataclass
class SourceConfig:
    kind: str = "procedural"  # procedural | local | objaverse | openshape
    # procedural
    num_shapes: int = 240
    categories: list[str] | None = None
    seed: int = 0
    # local: a folder tree of meshes, optional metadata file (JSON list / JSONL / CSV with uid, path, category, texts)
    root: str | None = None
    metadata: str | None = None
    category_from: str = "metadata"  # metadata | parent (the mesh's parent folder name)
    up_axis: str = "y"
    # objaverse
    base_url: str | None = None  # None = the Hugging Face dataset; tests point it at a local server
    lvis: str = "include"  # include | exclude (the paper's "no LVIS" set) | only
    download_concurrency: int = 8  # parallel downloads per shape worker
    download_retries: int = 6  # retries on 429 / 5xx / timeouts / truncated bodies, exponential backoff
    download_timeout_s: float = 60.0
    # openshape
    split: str = "train_all.json"


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
    msaa: int = 4
    rows_per_shard: int = 64  # bounded shard size: rows per Parquet file
    limit: int | None = None  # build at most this many new shapes
    shard: str = "0/1"  # i/n: this run builds the uids whose hash falls in slice i of n
    seed: int = 0  # point sampling seed (per shape: seed + a hash of its uid)
    progress_every_s: float = 10.0
    source: SourceConfig = field(default_factory=SourceConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)

    def __post_init__(self) -> None:
        parse_shard(self.shard)
        if self.rows_per_shard < 1:
            raise ValueError(f"rows_per_shard must be >= 1, got {self.rows_per_shard}")
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


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``section.key=value`` strings to a (nested) dataclass; values are parsed as JSON when they parse."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value")
        cfg = _set(cfg, key.strip().split("."), _parse_value(raw), item)
    return cfg


def _set(obj: Any, path: list[str], value: Any, item: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise ValueError(f"override {item!r}: {type(obj).__name__} has no field {path[0]!r}; fields: {sorted(names)}")
    current = getattr(obj, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"override {item!r}: {path[0]!r} is not a section")
        return dataclasses.replace(obj, **{path[0]: _set(current, path[1:], value, item)})
    hint = get_type_hints(type(obj))[path[0]]
    if hint is float and isinstance(value, int):
        value = float(value)
    if hint is str and not isinstance(value, str):
        value = json.dumps(value)
    return dataclasses.replace(obj, **{path[0]: value})


def _parse_value(raw: str) -> Any:
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return os.path.expandvars(raw)
