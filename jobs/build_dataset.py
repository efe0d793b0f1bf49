"""Build a Uni3D training set: shapes → points, rendered-view and text embeddings → Parquet.

    ray job submit --working-dir . -- python jobs/build_dataset.py --source objaverse --out s3://bucket/build \
        --teacher openclip --set resources.embed_worker_gpus=1 --set resources.embed_workers=8
    python jobs/build_dataset.py --out data/procedural --limit 100      # starts a local Ray

A re-run with the same ``--out`` resumes: shapes already written (or recorded as failures) are
skipped. ``--shard i/n`` builds one slice of the uids, for splitting a build across jobs.
Any field of ``pipelines.config.BuildConfig`` can be set with ``--set key=value``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import ray  # noqa: E402

from pipelines.build import run_build  # noqa: E402
from pipelines.config import BuildConfig, SourceConfig, apply_overrides  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[BuildConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="procedural", choices=["procedural", "local", "objaverse", "openshape"])
    ap.add_argument("--root", help="local: folder of meshes; openshape: folder of its files; objaverse: cache folder")
    ap.add_argument("--out", required=True, help="output folder or URI (s3://, gs://, …)")
    ap.add_argument(
        "--teacher", default="minilm", help="minilm | openclip | openclip:<arch>/<tag> | openclip:<arch>@<file>"
    )
    ap.add_argument("--limit", type=int, help="build at most N new shapes")
    ap.add_argument("--shard", default="0/1", help="i/n: build slice i of n of the uids")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any BuildConfig field, e.g. source.num_shapes=1200 or resources.shape_workers=4",
    )
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    args = ap.parse_args(argv)
    cfg = BuildConfig(
        output=args.out,
        teacher=args.teacher,
        limit=args.limit,
        shard=args.shard,
        source=SourceConfig(kind=args.source, root=args.root),
    )
    cfg = apply_overrides(cfg, args.overrides)
    return dataclasses.replace(cfg), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    report = run_build(cfg)
    return 0 if report.manifest.num_shapes else 1


if __name__ == "__main__":
    sys.exit(main())
