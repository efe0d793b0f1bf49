"""Evaluate a Uni3D checkpoint: zero-shot top-1/3/5 and per-class accuracy, optional few-shot linear probe.

    python jobs/evaluate.py --checkpoint runs/uni3d/final --sets data/procedural            # a build's held-out split
    python jobs/evaluate.py --checkpoint model.pt --sets modelnet40 scanobjectnn objaverse_lvis --root data/eval \
        --teacher openclip:EVA02-E-14-plus@/models/eva02_e14_plus_laion2b_s9b_b144k.bin --few-shot
    ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint /mnt/runs/uni3d-b/final \
        --sets objaverse_lvis --root /mnt/shared/eval --set num_workers=8 --set use_gpu=true

``--sets`` takes benchmark names (read from the official test files under ``--root``: modelnet40/,
scanobjectnn/, objaverse_lvis/) or build folders. Results go next to the checkpoint, in ``eval/``: per set a
JSON, a Markdown table and a confusion-matrix PNG. Any field of ``pipelines.evaluate.config.EvalConfig``
(listed below) can be
set with ``--set key=value`` or in a YAML file given with ``--config`` (``--print-config`` shows one).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


from pipelines.evaluate.config import EvalConfig  # noqa: E402
from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import ConfigError, add_config_arguments, cli_layers, job_main, resolve, to_yaml, usage_error  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[EvalConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--checkpoint", help="our checkpoint folder or an official model.pt; required")
    ap.add_argument("--sets", nargs="+", help="benchmark names or build folders (default: modelnet40)")
    ap.add_argument("--root", help="folder with modelnet40/, scanobjectnn/, objaverse_lvis/ (default: data/eval)")
    ap.add_argument("--teacher", help="text teacher spec; default: the one the checkpoint records")
    ap.add_argument(
        "--few-shot",
        action="store_true",
        default=None,
        help="also OpenShape's 1/2/4/8/16-shot linear probe (shots drawn from each set, tested on its rest)",
    )
    ap.add_argument("--out", help="results folder (default: <checkpoint>/eval)")
    add_config_arguments(ap, EvalConfig, "override any EvalConfig field (below), e.g. num_workers=4")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    add_log_level(ap)
    args = ap.parse_args(argv)
    flags = {
        "checkpoint": args.checkpoint,
        "sets": args.sets,
        "root": args.root,
        "teacher": args.teacher,
        "few_shot": args.few_shot,
        "out": args.out,
    }
    required = {"checkpoint": "give --checkpoint PATH (or checkpoint: in --config)"}
    return resolve(EvalConfig, cli_layers(args, flags), required), args


@job_main
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        return usage_error(exc)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from pipelines.evaluate.run import report_location, run_evaluation  # here: --help comes before heavy imports

    report_location(cfg)  # a missing checkpoint, or a read-only folder without --out, is refused before Ray starts
    connect(args.address, log_level=args.log_level)
    results = run_evaluation(cfg)
    if not any(r.num_samples for r in results):
        print(f"error: no shape of {', '.join(cfg.sets)} was evaluated", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
