"""Typed configuration of a dataset build, of an evaluation and of a gallery embedding, and ``key=value``
overrides of nested dataclasses. No torch or Ray here: the jobs read these for ``--help`` before anything heavy.

A build is ``BuildConfig`` plus a ``--config`` file and a few ``--set section.key=value`` overrides,
validated by ``pipelines.settings``; the resolved config is written into the build's manifest (DINOv2's
"write the resolved config").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipelines.settings import Layer, resolve, set_layers


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
    # where GLBs and annotations are downloaded, on each node: "" = <output>/cache/objaverse for a local
    # output, else node-local scratch ($UNI3D_CACHE, else ~/.cache/uni3d)/objaverse
    cache_dir: str = ""
    keep_downloads: bool = True  # false: each GLB is deleted once its shape is loaded (a re-run fetches it again)
    # openshape
    split: str = "train_all.json"
    # names of Objaverse shapes flagged by OpenShape's gpt4_filtering.json are dropped, as the official code does:
    # auto = root/meta_data/gpt4_filtering.json (required when the split has Objaverse shapes) | a path | none
    text_filter: str = "auto"


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
    """Apply ``section.key=value`` strings to a (nested) config dataclass, each value validated against
    its field's type (``pipelines.settings``): a bad one raises ``ConfigError`` naming the item."""
    if not overrides:
        return cfg
    return resolve(type(cfg), [Layer("config", dataclasses.asdict(cfg)), *set_layers(overrides)])


@dataclass
class EvalConfig:
    """jobs/evaluate.py (``pipelines.evaluation``)."""

    checkpoint: str  # our checkpoint folder or an official model.pt
    sets: list[str] = field(default_factory=lambda: ["modelnet40"])  # benchmark names or build folders
    root: str = "data/eval"  # the folder holding modelnet40/, scanobjectnn/, objaverse_lvis/
    teacher: str = ""  # text teacher for class names; default: the checkpoint's (ours record it)
    split: str = "heldout"  # builds: heldout (the pretraining split) | all
    holdout_fraction: float = -1.0  # builds; < 0: the checkpoint's training value (else 0.05)
    holdout_seed: int = -1  # builds; < 0: the checkpoint's training seed (else 4096)
    num_workers: int = 1  # embedding actors
    worker_cpus: float = 1.0
    use_gpu: bool = False
    batch_size: int = 32
    few_shot: bool = False
    shots: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: int = 10
    out: str = ""  # default: <checkpoint folder>/eval


@dataclass
class EmbedConfig:
    """jobs/embed.py (``pipelines.gallery``)."""

    checkpoint: str
    output: str = "data/gallery"
    source: SourceConfig = field(default_factory=lambda: SourceConfig(kind="local"))
    num_points: int = 10_000
    seed: int = 0
    batch_size: int = 16
    shape_workers: int = 1
    shape_worker_cpus: float = 0.5  # with the embedder's, leaves room for the read tasks on 2 cores
    embed_workers: int = 1
    embed_worker_cpus: float = 0.5
    read_cpus: float = 0.25
    use_gpu: bool = False
    object_store_gib: float = 0.0  # 0 = Ray Data's default, half the cluster's object store
