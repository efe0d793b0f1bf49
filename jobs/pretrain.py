"""Pretrain a Uni3D encoder on a built dataset with Ray Train and DeepSpeed (docs/method.md §5–6).

    python jobs/pretrain.py --data data/procedural                        # the cpu recipe, a local Ray
    python jobs/pretrain.py --data data/procedural --set strategy=ddp --set epochs=8
    ray job submit --working-dir . -- python jobs/pretrain.py --data /mnt/build --recipe uni3d-b \
        --storage /mnt/runs --name uni3d-b --set num_workers=16
    python jobs/pretrain.py --data /mnt/build --recipe uni3d-b --name offline \
        --set init=timm:/models/eva02_base.safetensors      # the recipe's 2D EVA02-B weights from a local copy
    python jobs/pretrain.py --data data/procedural --name longer --set init=run:runs/short/final

``init`` (``uni3d.init``, the paper's initialisation ablation): ``scratch`` (the default, except in the
``uni3d-*`` recipes, which start from the official 2D weights of their scale on the Hugging Face Hub);
``timm:<file>``, a 2D timm ViT checkpoint loaded into the preset's ViT; ``timm:<arch>@<file>``, the same
with the ViT built as timm architecture ``<arch>`` of the preset's sizes (e.g.
``--model small --set init=timm:vit_small_patch14_dinov2@/models/dinov2_s.safetensors``); ``run:<checkpoint>``,
the weights of one of our checkpoints or an official ``model.pt`` (fresh optimiser, step 0). A file that
does not fit is refused before any worker starts.

Recipes (YAML in configs/recipes/): cpu, uni3d-ti, uni3d-s, uni3d-b, uni3d-l, uni3d-g. Any field of
``pipelines.train.config.TrainConfig`` (listed below) can be set with ``--set key=value`` or in a YAML file
given with ``--config``; ``--print-config`` prints the resolved config in that form. Re-running the same --name and
--storage resumes from the last checkpoint. The run folder ``<storage>/<name>/`` holds config.json,
metrics.jsonl, tensorboard/ (``tensorboard --logdir <storage>``), the checkpoints, and at the end
``final/`` (``uni3d.load_checkpoint`` reads it).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import ConfigError, add_config_arguments, job_main, to_yaml, usage_error  # noqa: E402
from pipelines.train.config import TrainConfig, resolve_train_config  # noqa: E402
from pipelines.train.recipes import recipe_names  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--data", help="a build folder written by jobs/build_dataset.py; required (or data: in --config)")
    ap.add_argument("--recipe", help=f"named recipe, configs/recipes/ (default: cpu): {', '.join(recipe_names())}")
    ap.add_argument("--model", help="uni3d preset, overriding the recipe's: nano, micro, tiny, ..., giant")
    ap.add_argument("--storage", help="where runs, checkpoints and metrics go (default: runs)")
    ap.add_argument("--name", help="run name; re-running the same name resumes it (default: uni3d)")
    add_config_arguments(ap, TrainConfig, "override any TrainConfig field (below), e.g. epochs=8 or init=run:DIR")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    add_log_level(ap)
    args = ap.parse_args(argv)
    flags = {"data": args.data, "recipe": args.recipe, "model": args.model, "storage": args.storage, "name": args.name}
    return resolve_train_config(args, flags), args


@job_main
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        return usage_error(exc)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    import ray.train  # here: --help and argument errors come before the heavy imports

    from pipelines.build.manifest import read_manifest
    from pipelines.train.driver import run_pretrain

    read_manifest(os.path.join(cfg.data, "manifest.json"))  # not a build: refused before Ray starts
    connect(args.address, log_level=args.log_level)
    try:
        result = run_pretrain(cfg)
    except ray.train.TrainingFailedError as exc:
        print(f"[pretrain] failed: {exc}")
        print(f"[pretrain] run the same command again to resume from the last checkpoint of {cfg.storage}/{cfg.name}")
        return 1
    if not result.finished:
        print(f"[pretrain] stopped at step {result.step} of {result.total_steps} (until_step); run again to go on")
        return 0
    print(f"[pretrain] done: {result.total_steps} steps; final model: {result.final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
