"""The demo: build a procedural dataset, pretrain with DeepSpeed on two CPU workers, evaluate zero-shot.

    python jobs/demo.py                                   # what `make demo` runs: ~3 minutes on 2 cores
    python jobs/demo.py --shapes 4800 --points 2048 --model micro --epochs 30 --out demo-big
    python jobs/demo.py --teacher openclip:ViT-B-32@/models/open_clip_vit_b32.bin --address ray://head:10001 \
        --set num_workers=8 --set use_gpu=true --set worker_cpus=4

Stages (each resumes if the demo is run again with the same --out): a build of ``--shapes`` procedural
shapes in 14 categories with the ``--teacher``'s embeddings of their descriptive texts (a caption and a
coloured name, never the bare class name; no image tower: the image term is masked), pretraining from
scratch with two whole categories (``--unseen``) and 10% of the other shapes held out, and a zero-shot
evaluation with the 64 templates of every held-out shape over all 14 class names, reported apart for
the held-out shapes of the 12 trained categories and for the 2 unseen ones, each next to chance.
Prints the results table; writes ``<out>/results/`` (training curves, accuracy per class, confusion
matrix, JSON and Markdown).
``--set key=value`` overrides any pretraining field (``pipelines/train/config.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines.build.config import BuildConfig  # noqa: E402
from pipelines.build.splits import SEEN_PART, UNSEEN_PART  # noqa: E402
from pipelines.evaluate.config import EvalConfig  # noqa: E402
from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import add_set_argument, apply_overrides, job_main  # noqa: E402
from pipelines.sources.config import SourceConfig  # noqa: E402
from pipelines.train.config import make_config  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="demo", help="where the build, the run and the results go")
    ap.add_argument("--shapes", type=int, default=1200, help="procedural shapes to build")
    ap.add_argument("--points", type=int, default=1024, help="points per shape")
    ap.add_argument("--model", default="nano", help="uni3d preset (nano, micro, tiny, ...)")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--teacher", default="minilm", help="teacher spec for the build (default: offline MiniLM)")
    ap.add_argument(
        "--unseen", default="cup,sofa", help="categories never trained on, for the unseen-category zero-shot ('' none)"
    )
    add_set_argument(
        ap,
        "override a pretraining field (TrainConfig: the list is in jobs/pretrain.py --help), e.g. epochs=8; repeatable",
    )
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS, else a local Ray")
    add_log_level(ap)
    return ap.parse_args(argv)


def quiet_ray_data() -> None:
    """The demo prints its own progress: no Ray Data progress bars or per-dataset log lines."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


@job_main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from pipelines.build.run import run_build  # here: --help and argument errors come before the heavy imports
    from pipelines.evaluate.plots import per_class_bars, training_curves
    from pipelines.evaluate.run import run_evaluation
    from pipelines.train.driver import run_pretrain

    connect(
        args.address, worker_logs=False, log_level=args.log_level
    )  # the demo prints its own progress; errors still raise here
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
    fields["holdout_categories"] = [c.strip() for c in args.unseen.split(",") if c.strip()]
    cfg = apply_overrides(make_config(build_dir, "cpu", fields), args.overrides)
    print(
        f"[demo] 2/3 pretraining {cfg.model} with {cfg.strategy} (ZeRO-{cfg.zero_stage}) on {cfg.num_workers} workers"
    )
    trained = run_pretrain(cfg)
    if not trained.finished:
        raise SystemExit(f"[demo] pretraining stopped at step {trained.step} of {trained.total_steps} (until_step)")
    times["pretrain"] = time.perf_counter() - start

    start = time.perf_counter()
    print("[demo] 3/3 zero-shot on the held-out shapes and the unseen categories (never trained on)")
    [res] = run_evaluation(EvalConfig(checkpoint=str(trained.final), sets=[build_dir], out=results, num_workers=1))
    times["evaluate"] = time.perf_counter() - start
    curves = os.path.join(results, "training_curves.png")
    training_curves(os.path.join(trained.run_dir, "metrics.jsonl"), curves, res.chance_top1)
    per_class_bars(
        {f"{c} (unseen)" if c in cfg.holdout_categories else c: a for c, a in res.per_class.items()},
        os.path.join(results, "accuracy_per_class.png"),
        "held-out zero-shot top-1 per class",
        res.chance_top1,
    )
    seen, unseen = res.parts.get(SEEN_PART), res.parts.get(UNSEEN_PART)
    summary = {
        "classes": res.num_classes,
        "heldout_shapes": res.num_samples,
        "top1": res.top1,
        "top5": res.top5,
        "chance_top1": res.chance_top1,
        "unseen_categories": cfg.holdout_categories,
        "seen": seen,  # held-out shapes of the trained categories, over all class names
        "unseen": unseen,  # every shape of the unseen categories, over all class names
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "model": cfg.model,
        "steps": trained.total_steps,
    }
    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print()
    print(f"Zero-shot over all {res.num_classes} class names (chance top-1 {res.chance_top1:.1f}%), 64 templates:")
    print()
    print("| shapes never trained on | shapes | top-1 | top-5 |")
    print("|---|---|---|---|")
    rows = res.parts or {"held-out shapes": {"samples": res.num_samples, "top1": res.top1, "top5": res.top5}}
    for name, p in rows.items():
        print(f"| {name} | {p['samples']} | **{p['top1']:.1f}%** | {p['top5']:.1f}% |")
    print(
        f"\nbuild {times['build']:.0f} s, pretrain {times['pretrain']:.0f} s ({cfg.model}, {trained.total_steps} "
        f"steps), evaluate {times['evaluate']:.0f} s"
    )
    print(f"\n[demo] results, training curves and per-class accuracy: {results}/")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
