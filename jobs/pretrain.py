"""Pretrain a Uni3D encoder on a built dataset with Ray Train and DeepSpeed (Uni3D spec §5–6).

    python jobs/pretrain.py --data data/procedural                        # the cpu recipe, a local Ray
    python jobs/pretrain.py --data data/procedural --set strategy=ddp --set epochs=8
    ray job submit --working-dir . -- python jobs/pretrain.py --data /mnt/build --recipe uni3d-b \
        --storage /mnt/runs --name uni3d-b --set num_workers=16

Recipes (pipelines/recipes.py): cpu, uni3d-ti, uni3d-s, uni3d-b, uni3d-l, uni3d-g. Any field of
``pipelines.training.TrainConfig`` can be set with ``--set key=value``. Re-running the same --name and
--storage resumes from the last checkpoint. The run folder ``<storage>/<name>/`` holds config.json,
metrics.jsonl, tensorboard/ (``tensorboard --logdir <storage>``), the checkpoints, and at the end
``final/`` (``uni3d.load_checkpoint`` reads it).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import ray  # noqa: E402
import ray.train  # noqa: E402

from pipelines.config import apply_overrides  # noqa: E402
from pipelines.recipes import RECIPES  # noqa: E402
from pipelines.trainer import run_pretrain  # noqa: E402
from pipelines.training import TrainConfig, make_config  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a build folder written by jobs/build_dataset.py")
    ap.add_argument("--recipe", default="cpu", choices=sorted(RECIPES), help="named recipe (default: cpu)")
    ap.add_argument("--model", help="uni3d preset, overriding the recipe's: nano, micro, tiny, ..., giant")
    ap.add_argument("--storage", default="runs", help="where runs, checkpoints and metrics go")
    ap.add_argument("--name", default="uni3d", help="run name; re-running the same name resumes it")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    args = ap.parse_args(argv)
    fields = {"storage": args.storage, "name": args.name, **({"model": args.model} if args.model else {})}
    cfg = make_config(args.data, args.recipe, fields)
    return apply_overrides(cfg, args.overrides), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    try:
        result = run_pretrain(cfg)
    except ray.train.TrainingFailedError as exc:
        print(f"[pretrain] failed: {exc}")
        print(f"[pretrain] run the same command again to resume from the last checkpoint of {cfg.storage}/{cfg.name}")
        return 1
    if result.error is not None:
        print(f"[pretrain] failed at step {result.step}: {result.error}")
        print(f"[pretrain] run the same command again to resume from the last checkpoint in {result.run_dir}")
        return 1
    if not result.finished:
        print(f"[pretrain] stopped at step {result.step} of {result.total_steps} (until_step); run again to go on")
        return 0
    print(f"[pretrain] done: {result.total_steps} steps; final model: {result.final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
