"""Embed a folder of meshes (or any build source) with a Uni3D checkpoint into a Parquet gallery.

    python jobs/embed.py --checkpoint runs/uni3d/final --root my_meshes/ --out data/gallery
    python jobs/embed.py --checkpoint runs/uni3d/final --root ShapeNet/ --out data/shapenet-gallery \
        --set source.category_from=parent --set num_points=10000 --set embed_workers=4
    ray job submit --working-dir . -- python jobs/embed.py --checkpoint /mnt/runs/uni3d-b/final \
        --root /mnt/meshes --out /mnt/gallery --set embed_workers=8 --set use_gpu=true

Any format the loader reads (GLB/glTF, OBJ, PLY, STL, OFF). A file that cannot be read is recorded in
``<out>/failures/`` with the reason and the job goes on; re-running skips what is already embedded.
Query the gallery with ``jobs/search.py``; classify single meshes with ``jobs/classify.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


from pipelines.config import apply_overrides  # noqa: E402
from pipelines.gallery import EmbedConfig, run_embed  # noqa: E402
from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import ConfigError, MissingInput, job_main, usage_error  # noqa: E402
from pipelines.storage import Location  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[EmbedConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="our checkpoint folder or an official model.pt")
    ap.add_argument("--root", help="a folder of meshes (source.kind=local)")
    ap.add_argument("--metadata", help="optional uid/path, category, texts file for the meshes (JSON/JSONL/CSV)")
    ap.add_argument("--out", default="data/gallery", help="the gallery folder (local path or s3://…)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    add_log_level(ap)
    args = ap.parse_args(argv)
    cfg = EmbedConfig(checkpoint=args.checkpoint, output=args.out)
    if args.root:
        cfg.source = dataclasses.replace(cfg.source, root=args.root, metadata=args.metadata)
    return apply_overrides(cfg, args.overrides), args


@job_main
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        return usage_error(exc)
    if not Location.of(cfg.checkpoint).exists():
        raise MissingInput(f"checkpoint {cfg.checkpoint} does not exist")
    connect(args.address, log_level=args.log_level)
    summary = run_embed(cfg)
    if not summary["shapes"]:
        print(f"error: {cfg.output} holds no embedded shape ({summary['failures']} failures)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
