"""Sweep pretraining with Ray Tune: model scale, initialisation, any TrainConfig field (Uni3D's ablations).

    python jobs/sweep.py --data demo/build --space configs/sweeps/demo.yaml          # a local Ray
    python jobs/sweep.py --data demo/build --grid model=nano-s,nano-l --grid lr=1e-3,3e-3 --set epochs=3
    ray job submit --working-dir . -- python jobs/sweep.py --data /mnt/builds/ensembled \
        --space configs/sweeps/scale-init.yaml --storage /mnt/shared/sweeps --name scale-init
    tensorboard --logdir runs/sweeps/<name>/runs        # every trial's curves, hyperparameters in HParams

The space file (configs/sweeps/) holds the sweep's fields (listed below): ``space:`` maps TrainConfig fields
to lists (grid axes) or distributions (``{loguniform: [1e-4, 1e-2]}``), ``train:`` fixes fields for every
trial. ``--grid key=v1,v2`` adds a grid axis; ``--set key=value`` sets a sweep field, or any TrainConfig
field for every trial. Re-running the same --name and --storage resumes the sweep: finished trials are kept,
interrupted ones continue from their last checkpoint. ``<storage>/<name>/report/index.html`` shows the
table and plots while it runs. Bad input is refused with one ``error:`` line (exit 2) before any trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout


from pipelines.ray_connect import add_log_level, connect  # noqa: E402
from pipelines.settings import (  # noqa: E402
    ConfigError,
    Layer,
    add_config_arguments,
    file_layer,
    job_main,
    resolve,
    set_layers,
    to_yaml,
    usage_error,
)
from pipelines.sweep.space import SweepConfig, grid_arguments, plan_sweep  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[SweepConfig, list[Layer], argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("--data", help="the build every trial trains on (unless the space sweeps data)")
    ap.add_argument("--space", help="a sweep file (YAML): space:, train: and the sweep's fields")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    ap.add_argument("--storage", help="where sweeps go (default: runs/sweeps)")
    ap.add_argument("--name", help="the sweep's name; re-running the same name resumes it (default: sweep)")
    ap.add_argument("--recipe", help="every trial's recipe (configs/recipes/; default: cpu)")
    ap.add_argument("--search", choices=["grid", "random", "optuna"], help="default: grid")
    ap.add_argument("--scheduler", choices=["fifo", "asha"], help="default: fifo")
    ap.add_argument("--num-samples", type=int, help="grid: repeats of the grid; random/optuna: trials")
    add_config_arguments(ap, SweepConfig, "a sweep field (below), or any TrainConfig field for every trial")
    ap.add_argument("--address", help="Ray address; default: $RAY_ADDRESS (ray job submit), else a local Ray")
    add_log_level(ap)
    args = ap.parse_args(argv)
    if args.config and args.space:
        raise ConfigError("give the sweep file once: --space FILE (--config is the same thing)")
    layers = [file_layer(args.space or args.config)] if (args.space or args.config) else []
    flags = {
        "data": args.data,
        "storage": args.storage,
        "name": args.name,
        "recipe": args.recipe,
        "search": args.search,
        "scheduler": args.scheduler,
        "num_samples": args.num_samples,
    }
    layers.append(Layer("command-line flags", {k: v for k, v in flags.items() if v is not None}))
    sweep_keys = set(SweepConfig.__dataclass_fields__) - {"train", "space"}
    sweep_sets = [s for s in args.overrides if s.partition("=")[0].split(".")[0].strip() in sweep_keys]
    train_sets = set_layers([s for s in args.overrides if s not in sweep_sets])
    cfg = resolve(SweepConfig, layers + set_layers(sweep_sets))
    if args.grid:
        cfg = dataclasses.replace(cfg, space={**cfg.space, **grid_arguments(args.grid)})
    return cfg, train_sets, args


@job_main
def main(argv: list[str] | None = None) -> int:
    try:
        cfg, sets, args = parse_args(argv)
        if args.print_config:
            train = dict(cfg.train)
            for layer in sets:  # --set items for every trial, as the file's train: would hold them
                train.update({k: str(v) if isinstance(v, str) else v for k, v in layer.values.items()})
            space = {
                k: [str(x) if isinstance(x, str) else x for x in v] if isinstance(v, list) else v
                for k, v in cfg.space.items()
            }
            print(to_yaml(dataclasses.replace(cfg, train=train, space=space)), end="")
            return 0
        plan_sweep(cfg, sets)  # every check that needs no cluster, before Ray starts
    except ConfigError as exc:
        return usage_error(exc)
    connect(args.address, log_level=args.log_level)
    from pipelines.sweep.run import run_sweep

    try:
        result = run_sweep(cfg, sets)
    except ConfigError as exc:  # the checks against the cluster's resources
        return usage_error(exc)
    print((result.report / "trials.md").read_text())
    print(f"[sweep] {result.counts()}; report: {result.report / 'index.html'}")
    print(f"[sweep] curves and hyperparameters: tensorboard --logdir {result.folder / 'runs'}")
    ok = any(r.status in ("TERMINATED", "STOPPED") for r in result.records)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
