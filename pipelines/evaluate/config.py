"""Typed configuration of an evaluation (``jobs/evaluate.py``) and of a gallery embedding (``jobs/embed.py``).

No torch or Ray here: the jobs read these for ``--help`` before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.sources.config import SourceConfig


@dataclass
class EvalConfig:
    """jobs/evaluate.py (``pipelines.evaluate.run``)."""

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
    """jobs/embed.py (``pipelines.evaluate.gallery``)."""

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
    writer_cpus: float = 0.1  # per writer task (one gallery shard each); Ray Data runs as many as fit
    read_cpus: float = 0.25
    use_gpu: bool = False
    object_store_gib: float = 0.0  # 0 = Ray Data's default, half the cluster's object store
