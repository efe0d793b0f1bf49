"""The demo: build a procedural dataset, pretrain with DeepSpeed on two CPU workers, evaluate zero-shot.

    python jobs/demo.py                                   # what `make demo` runs: ~10 minutes on 2 cores
    python jobs/demo.py --shapes 4800 --points 2048 --model micro --epochs 30 --out demo-big
    python jobs/demo.py --teacher openclip:ViT-B-32@/models/open_clip_vit_b32.bin --address ray://head:10001 \
        --set num_workers=8 --set use_gpu=true --set worker_cpus=4

Stages (each resumes if the demo is run again with the same --out): a build of ``--shapes`` procedural
shapes in 14 categories with the ``--teacher``'s text embeddings (no image tower: the image term is
masked), pretraining from scratch with a held-out 10% of the shapes never trained on, and a zero-shot
evaluation on that held-out split with the 64 templates. Prints the results table; writes
``<out>/results/`` (training curves, accuracy per class, confusion matrix, JSON and Markdown).
``--set key=value`` overrides any pretraining field (``pipelines/training.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import ray  # noqa: E402

from pipelines.build import run_build  # noqa: E402
from pipelines.config import BuildConfig, SourceConfig, apply_overrides  # noqa: E402
from pipelines.evaluation import EvalConfig, run_evaluation  # noqa: E402
from pipelines.plots import per_class_bars, training_curves  # noqa: E402
from pipelines.trainer import run_pretrain  # noqa: E402
from pipelines.training import make_config  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="demo", help="where the build, the run and the results go")
    ap.add_argument("--shapes", type=int, default=1200, help="procedural shapes to build")
    ap.add_argument("--points", type=int, default=1024, help="points per shape")
    ap.add_argument("--model", default="nano", help="uni3d preset (nano, micro, tiny, ...)")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--teacher", default="minilm", help="teacher spec for the build (default: offline MiniLM)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS, else a local Ray")
    return ap.parse_args(argv)


def quiet_ray_data() -> None:
    """The demo prints its own progress: no Ray Data progress bars or per-dataset log lines."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    quiet_ray_data()
    times: dict[str, float] = {}
    build_dir, results = os.path.join(args.out, "build"), os.path.join(args.out, "results")
    os.makedirs(results, exist_ok=True)

    start = time.perf_counter()
    print(f"[demo] 1/3 building {args.shapes} procedural shapes at {args.points} points, teacher {args.teacher}")
    source = SourceConfig(kind="procedural", num_shapes=args.shapes)
    build = BuildConfig(output=build_dir, teacher=args.teacher, num_points=args.points, source=source)
    run_build(build, log=lambda line: print(line) if "shapes in" in line or "to build" in line else None)
    times["build"] = time.perf_counter() - start

    start = time.perf_counter()
    fields = {"model": args.model, "epochs": args.epochs, "storage": os.path.join(args.out, "runs"), "name": "demo"}
    fields |= {"lr": 2e-3, "warmup_steps": 20, "holdout_fraction": 0.1, "shuffle_buffer": 128, "log_every": 20}
    cfg = apply_overrides(make_config(build_dir, "cpu", fields), args.overrides)
    print(
        f"[demo] 2/3 pretraining {cfg.model} with {cfg.strategy} (ZeRO-{cfg.zero_stage}) on {cfg.num_workers} workers"
    )
    trained = run_pretrain(cfg)
    if not trained.finished:
        raise SystemExit(f"[demo] pretraining stopped at step {trained.step}: {trained.error}")
    times["pretrain"] = time.perf_counter() - start

    start = time.perf_counter()
    print("[demo] 3/3 zero-shot on the held-out shapes (never trained on)")
    [res] = run_evaluation(EvalConfig(checkpoint=str(trained.final), sets=[build_dir], out=results, num_workers=1))
    times["evaluate"] = time.perf_counter() - start
    training_curves(trained.run_dir / "metrics.jsonl", os.path.join(results, "training_curves.png"), res.chance_top1)
    per_class_bars(
        res.per_class,
        os.path.join(results, "accuracy_per_class.png"),
        "held-out zero-shot top-1 per class",
        res.chance_top1,
    )
    summary = {
        "classes": res.num_classes,
        "heldout_shapes": res.num_samples,
        "top1": res.top1,
        "top5": res.top5,
        "chance_top1": res.chance_top1,
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "model": cfg.model,
        "steps": trained.total_steps,
    }
    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print()
    print("| held-out shapes | categories | zero-shot top-1 | top-5 | chance top-1 | build | pretrain | evaluate |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {res.num_samples} | {res.num_classes} | **{res.top1:.1f}%** | {res.top5:.1f}% | {res.chance_top1:.1f}% "
        f"| {times['build']:.0f} s | {times['pretrain']:.0f} s | {times['evaluate']:.0f} s |"
    )
    print(f"\n[demo] results, training curves and per-class accuracy: {results}/")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
