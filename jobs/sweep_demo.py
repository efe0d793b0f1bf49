"""`make sweep`: a Ray Tune sweep of three CPU scales x two initialisations on the demo's build, on a laptop.

    python jobs/sweep_demo.py                      # what `make sweep` runs: 4-5 minutes on 2 cores
    python jobs/sweep_demo.py --out demo --set epochs=8

Stages, each resumed if run again with the same --out: the demo's build (``make demo`` makes the same one)
and a second procedural build of other shapes (``source.seed=1``); the init sweep, a short pretraining of
each scale on that second build (``<out>/sweeps/init/runs/<scale>/final``); then the sweep of
``configs/sweeps/demo.yaml``: scales ``nano-s``, ``nano``, ``nano-l`` from scratch or from that init, scored
by held-out zero-shot top-1 on the demo build. Prints the table; the report is in
``<out>/sweeps/scale-init/report/index.html`` and ``tensorboard --logdir <out>/sweeps/scale-init/runs``
compares the trials. ``--set key=value`` sets a TrainConfig field of every trial of both sweeps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pipelines.build.config import BuildConfig  # noqa: E402
from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import (  # noqa: E402
    CONFIG_ROOT,
    ConfigError,
    add_set_argument,
    file_layer,
    job_main,
    resolve,
    set_layers,
    usage_error,
)
from pipelines.sources.config import SourceConfig  # noqa: E402
from pipelines.sweep.space import SweepConfig  # noqa: E402

SCALES = ["nano-s", "nano", "nano-l"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default="demo", help="where the builds and sweeps go (shared with `make demo`)")
    ap.add_argument("--shapes", type=int, default=1200, help="procedural shapes in the demo build")
    ap.add_argument("--init-shapes", type=int, default=600, help="procedural shapes in the init build")
    add_set_argument(
        ap,
        "override a TrainConfig field of every trial of both sweeps (the fields: jobs/pretrain.py --help), "
        "e.g. epochs=2; repeatable",
    )
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS, else a local Ray")
    add_log_level(ap)
    return ap.parse_args(argv)


def build(out: str, shapes: int, seed: int) -> None:
    source = SourceConfig(kind="procedural", num_shapes=shapes, seed=seed)
    cfg = BuildConfig(output=out, teacher="minilm", num_points=1024, source=source)
    from pipelines.build.run import run_build  # here: --help and argument errors come before the heavy imports

    run_build(cfg, log=lambda line: print(line) if "shapes in" in line or "to build" in line else None)


@job_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sets = set_layers(args.overrides)
        main_sweep = resolve(SweepConfig, [file_layer(CONFIG_ROOT / "sweeps" / "demo.yaml")])
    except ConfigError as exc:
        return usage_error(exc)
    connect(
        args.address, worker_logs=False, log_level=args.log_level
    )  # the demo prints its own progress; errors still raise here
    import ray

    from pipelines.sweep.run import run_sweep

    ray.data.DataContext.get_current().enable_progress_bars = False

    data, init_data = os.path.join(args.out, "build"), os.path.join(args.out, "sweep-init-build")
    storage = os.path.join(args.out, "sweeps")
    print(f"[sweep-demo] 1/3 builds: {data} ({args.shapes} shapes), {init_data} ({args.init_shapes}, other shapes)")
    build(data, args.shapes, seed=0)
    build(init_data, args.init_shapes, seed=1)

    print(f"[sweep-demo] 2/3 the init: each scale pretrained briefly on {init_data}")
    init_sweep = dataclasses.replace(
        main_sweep,
        data=init_data,
        storage=storage,
        name="init",
        space={"model": SCALES},
        train={**main_sweep.train, "epochs": 4},
        run_name="{model}",
        max_concurrent_trials=3,  # all three at once: no core idles in a last wave of one
    )
    run_sweep(init_sweep, sets)

    print("[sweep-demo] 3/3 the sweep: scale x init (scratch | run: the init), held-out zero-shot on the demo build")
    sweep = dataclasses.replace(main_sweep, data=data, storage=storage, name="scale-init")
    result = run_sweep(sweep, sets)
    print((result.report / "trials.md").read_text())
    print(f"[sweep-demo] {result.counts()}; report: {result.report / 'index.html'}")
    print(f"[sweep-demo] tensorboard --logdir {result.folder / 'runs'}")
    return 0 if all(r.status == "TERMINATED" for r in result.records) else 1


if __name__ == "__main__":
    sys.exit(main())
