"""Build a Uni3D training set: shapes → points, rendered-view and text embeddings → Parquet.

    ray job submit --working-dir . -- python jobs/build_dataset.py --source objaverse --out s3://bucket/build \
        --teacher openclip --set resources.embed_worker_gpus=1 --set resources.embed_workers=8
    python jobs/build_dataset.py --out data/procedural --limit 100      # starts a local Ray

A re-run with the same ``--out`` resumes: shapes already written (or recorded as failures) are
skipped; with ``--retry-failures`` it builds again those whose failure may pass (a fetch out of retries,
the teacher, the shard writer), while broken meshes and refused input data stay failures (docs/dataset.md).
``--shard i/n`` builds one slice of the uids, for splitting a build across jobs.
Any field of ``pipelines.build.config.BuildConfig`` (listed below) can be set with ``--set key=value`` or in a
YAML file given with ``--config``; ``--print-config`` prints the resolved config in that form.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


from pipelines.build.config import BuildConfig  # noqa: E402
from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import ConfigError, add_config_arguments, cli_layers, job_main, resolve, to_yaml, usage_error  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[BuildConfig, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--source", choices=["procedural", "local", "objaverse", "openshape"], help="default: procedural")
    ap.add_argument("--root", help="local: folder of meshes; openshape: folder of its files; objaverse: cache folder")
    ap.add_argument("--out", help="output folder or URI (s3://, gs://, …); required (or output: in --config)")
    ap.add_argument("--teacher", help="minilm (default) | openclip | openclip:<arch>/<tag> | openclip:<arch>@<file>")
    ap.add_argument("--limit", type=int, help="build at most N new shapes")
    ap.add_argument("--shard", help="i/n: build slice i of n of the uids (default 0/1)")
    ap.add_argument(
        "--retry-failures",
        action="store_true",
        default=None,  # absent: the config's retry_failures stands
        help="build again the recorded failures that may pass (fetch, teacher, shard write); broken meshes stay",
    )
    add_config_arguments(ap, BuildConfig, "override any BuildConfig field (below), e.g. source.num_shapes=1200")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    add_log_level(ap)
    args = ap.parse_args(argv)
    flags = {
        "output": args.out,
        "teacher": args.teacher,
        "limit": args.limit,
        "shard": args.shard,
        "retry_failures": args.retry_failures,
        "source": {"kind": args.source, "root": args.root},
    }
    required = {"output": "give --out DIR (or output: in --config)"}
    return resolve(BuildConfig, cli_layers(args, flags), required), args


@job_main
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = parse_args(argv)
    except ConfigError as exc:
        return usage_error(exc)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from pipelines.build.run import run_build  # here: --help and argument errors come before the heavy imports

    connect(args.address, log_level=args.log_level)
    report = run_build(cfg)
    failed = sum(report.failures.values())
    if report.shapes and failed > cfg.max_failure_rate * report.shapes:
        by_stage = ", ".join(f"{stage} {n}" for stage, n in sorted(report.failures.items()))
        print(
            f"error: {failed} of the {report.shapes} shapes this run tried failed "
            f"({100 * failed / report.shapes:.1f}%, more than max_failure_rate={cfg.max_failure_rate:g}): {by_stage}; "
            f"the reasons are in {cfg.output}/failures/",
            file=sys.stderr,
        )
        return 1
    return 0 if report.manifest.num_shapes else 1


if __name__ == "__main__":
    sys.exit(main())
