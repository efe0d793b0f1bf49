"""Typed configuration of a shape source (``source.*`` of a build, an evaluation set or a gallery).

No torch or Ray here: the jobs read it for ``--help`` before anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


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
