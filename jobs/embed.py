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
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


from pipelines.evaluate.config import EmbedConfig  # noqa: E402
from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import (  # noqa: E402
    ConfigError,
    MissingInput,
    add_config_arguments,
    cli_layers,
    job_main,
    resolve,
    to_yaml,
    usage_error,
)
from pipelines.storage import Location  # noqa: E402
from uni3d.hub import is_hub  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[EmbedConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--checkpoint", help="our checkpoint folder or an official model.pt; required")
    ap.add_argument("--root", help="a folder of meshes (source.kind=local, the default source)")
    ap.add_argument("--metadata", help="optional uid/path, category, texts file for the meshes (JSON/JSONL/CSV)")
    ap.add_argument("--out", help="the gallery folder, local path or URI (s3://, gs://, …; default: data/gallery)")
    add_config_arguments(ap, EmbedConfig, "override any EmbedConfig field (below), e.g. num_points=2048")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    add_log_level(ap)
    args = ap.parse_args(argv)
    flags = {
        "checkpoint": args.checkpoint,
        "output": args.out,
        "source": {"root": args.root, "metadata": args.metadata},
    }
    required = {"checkpoint": "give --checkpoint PATH (or checkpoint: in --config)"}
    return resolve(EmbedConfig, cli_layers(args, flags), required), args


@job_main
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        return usage_error(exc)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if not is_hub(cfg.checkpoint) and not Location.of(cfg.checkpoint).exists():  # hub names: fetched below
        raise MissingInput(f"checkpoint {cfg.checkpoint} does not exist")
    from pipelines.evaluate.gallery import run_embed  # here: --help and argument errors come before the heavy imports

    connect(args.address, log_level=args.log_level)
    summary = run_embed(cfg)
    if not summary["shapes"]:
        print(f"error: {cfg.output} holds no embedded shape ({summary['failures']} failures)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
