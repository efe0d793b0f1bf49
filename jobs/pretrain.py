"""Pretrain a Uni3D encoder on a built dataset with Ray Train (Uni3D spec §5–6).

    python jobs/pretrain.py --data data/procedural --model micro --set epochs=10     # starts a local Ray
    ray job submit --working-dir . -- python jobs/pretrain.py --data s3://… --model base \
        --set num_workers=16 --set use_gpu=true --set worker_cpus=8

Any field of ``pipelines.training.TrainConfig`` can be set with ``--set key=value``. The final model
is written in the uni3d-ray format under ``<storage>/<name>/`` (``uni3d.load_checkpoint`` reads it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import ray  # noqa: E402

from pipelines.config import apply_overrides  # noqa: E402
from pipelines.training import TrainConfig, run_pretrain  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a build folder written by jobs/build_dataset.py")
    ap.add_argument("--model", default="micro", help="uni3d preset: nano, micro, tiny, small, base, large, giant")
    ap.add_argument("--storage", default="runs", help="where runs, checkpoints and metrics go")
    ap.add_argument("--name", default="uni3d", help="run name; re-running the same name resumes it")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    args = ap.parse_args(argv)
    cfg = TrainConfig(data=args.data, model=args.model, storage=args.storage, name=args.name)
    return apply_overrides(cfg, args.overrides), args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    result = run_pretrain(cfg)
    if result.error is not None:
        print(f"[pretrain] failed: {result.error}")
        return 1
    final = os.path.join(cfg.storage, cfg.name, "final")
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(os.path.join(folder, "model"), final, dirs_exist_ok=True)
    print(f"[pretrain] {result.metrics}; final model: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
