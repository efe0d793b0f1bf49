"""Benchmark: pretraining throughput through Ray Train + Ray Data against a bare single-process loop.

Same model (``--model``, default ``micro``, the ``cpu`` recipe's; the demo trains ``nano``), same build, same
global batch (``--workers`` x ``--batch``) and the same step function (``pipelines.train.loop.train_step``:
decode, draws, augmentation, forward, loss, backward, AdamW). The bare loop holds the whole build in memory as
Arrow and slices batches from it: no I/O, no processes, no collectives; it is the ceiling the
distributed path is measured against. Ray runs use ``--workers`` CPU workers and are timed from
their metrics log after the first window (start-up excluded; epoch restarts and checkpoints included).

``--reporting``: instead, the wall time per step of a run that reports every step (``log_every=1``) with
Ray's default report collection interval (2 s) and with ours (``report_poll_s``, 0.25 s).

Usage: ``python bench/pretrain.py [--shapes 640] [--steps 60] [--model micro] [--reporting]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from common import machine

import uni3d
from pipelines.build.config import BuildConfig
from pipelines.build.run import run_build
from pipelines.sources.config import SourceConfig
from pipelines.train.batch import TrainBatchConfig
from pipelines.train.config import make_config
from pipelines.train.driver import run_pretrain
from pipelines.train.loop import train_step
from pipelines.train.strategy import DDPEngine
from uni3d.loss import Uni3DLoss
from uni3d.optim import OptimConfig


def build(out: Path, shapes: int, points: int) -> Path:
    if not (out / "manifest.json").exists():
        cfg = BuildConfig(output=str(out), source=SourceConfig(num_shapes=shapes), num_points=points, rows_per_shard=32)
        run_build(cfg, log=lambda line: None)
    return out


def bare_loop(
    data: Path,
    model_name: str,
    batch: int,
    steps: int,
    threads: int,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Samples/s of one process taking ``steps`` steps of ``batch`` shapes (on ``device``: the CPU by default)."""
    torch.set_num_threads(threads)
    table = pa.concat_tables(pq.read_table(p) for p in sorted((data / "shards").glob("*.parquet")))
    embed_dim = int(table.column("embed_dim")[0].as_py())
    opt = OptimConfig(lr=1e-3, warmup_steps=min(10, steps), total_steps=steps + 5)
    device = device or torch.device("cpu")
    model = uni3d.create_model(model_name, embed_dim=embed_dim).to(device)
    engine = DDPEngine.single_process(model, opt, device=device, precision=precision)
    cfg = make_config(str(data), "cpu", {"model": model_name, "batch_size": batch, "precision": precision})
    loss_fn, batch_cfg = Uni3DLoss(), TrainBatchConfig(embed_dim)
    order = np.random.default_rng(0).permutation(table.num_rows)
    per_epoch = table.num_rows // batch

    def step(i: int) -> None:
        rows = order[(i % per_epoch) * batch : (i % per_epoch + 1) * batch]
        train_step(engine, loss_fn, table.take(pa.array(rows)), batch_cfg, opt, cfg, 0, i, device)

    for i in range(3):  # warm-up
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(3, 3 + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def ray_run(data: Path, storage: Path, name: str, model_name: str, workers: int, batch: int, epochs: int, **sets):
    """(samples/s after the first log window, fraction of that time waiting for data, steps) of one run."""
    shutil.rmtree(storage / name, ignore_errors=True)
    fields = {"model": model_name, "num_workers": workers, "batch_size": batch, "epochs": epochs, "log_every": 5}
    fields |= {"storage": str(storage), "name": name, "eval_every": 0, "holdout_fraction": 0.0}
    fields |= {"checkpoint_every": 10**9, "warmup_steps": 10}
    result = run_pretrain(make_config(str(data), "cpu", {**fields, **sets}), verbose=False)
    assert result.finished, result
    log = [json.loads(line) for line in (storage / name / "metrics.jsonl").read_text().splitlines()]
    samples = elapsed = wait = 0.0
    for prev, m in zip(log, log[1:], strict=False):  # windows after the first: start-up excluded
        n = (m["step"] - prev["step"]) * batch * workers
        samples += n
        elapsed += n / m["samples_per_s"]
        wait += m["data_wait_s"]
    return samples / elapsed, wait / elapsed, result.total_steps


def reporting(data: Path, storage: Path, args: argparse.Namespace) -> None:
    """Seconds per step, wall clock, of runs that report every step, by report collection interval."""
    rows = []
    for poll in (2.0, 0.25):
        name = f"report-{poll}"
        shutil.rmtree(storage / name, ignore_errors=True)
        fields = {"model": args.model, "num_workers": args.workers, "batch_size": args.batch, "epochs": 100}
        fields |= {"storage": str(storage), "name": name, "eval_every": 0, "holdout_fraction": 0.0}
        fields |= {"log_every": 1, "checkpoint_every": 10**9, "until_step": args.steps, "report_poll_s": poll}
        start = time.perf_counter()
        result = run_pretrain(make_config(str(data), "cpu", fields), verbose=False)
        total = time.perf_counter() - start
        assert result.step == args.steps, result
        log = [json.loads(line) for line in (storage / name / "metrics.jsonl").read_text().splitlines()]
        wall = (log[-1]["time"] - log[0]["time"]) / (len(log) - 1)  # steps after the first
        compute = sum(args.batch * args.workers / m["samples_per_s"] for m in log[1:]) / (len(log) - 1)
        rows.append((poll, wall, compute, total))
    print("\n| report collection interval | s / step, wall clock | s / step, compute | whole run (s) |")
    print("|---|---|---|---|")
    for poll, wall, compute, total in rows:
        print(f"| {poll:g} s | {wall:.2f} | {compute:.2f} | {total:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", type=int, default=640)
    ap.add_argument("--points", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--model", default="micro")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="per worker; the bare loop takes workers x batch")
    ap.add_argument("--out", default="/tmp/uni3d-bench-pretrain")
    ap.add_argument("--reporting", action="store_true", help="time runs reporting every step (module docstring)")
    args = ap.parse_args()
    out = Path(args.out)
    ray.init(address="local", num_cpus=2, log_to_driver=False, configure_logging=False)
    data = build(out / "build", args.shapes, args.points)
    print(machine())
    if args.reporting:
        reporting(data, out / "runs", args)
        return
    bare = bare_loop(data, args.model, args.workers * args.batch, args.steps, threads=2)
    print(f"bare single-process loop, batch {args.workers * args.batch}: {bare:.2f} samples/s")
    rows = []
    epochs = max(1, -(-args.steps // (args.shapes // (args.workers * args.batch))))
    for strategy in ("ddp", "deepspeed"):
        runs = out / "runs"
        rate, wait, steps = ray_run(
            data, runs, strategy, args.model, args.workers, args.batch, epochs, strategy=strategy
        )
        rows.append((strategy, rate, wait, steps))
        print(
            f"Ray Train {strategy}, {args.workers} workers x {args.batch}: {rate:.2f} samples/s "
            f"({rate / bare:.2f}x bare), data wait {100 * wait:.1f}%, {steps} steps"
        )
    print("\n| path | samples / s | vs bare loop | time waiting for data |\n|---|---|---|---|")
    print(f"| bare single-process loop (in-memory Arrow, batch {args.workers * args.batch}) | {bare:.2f} | 1.00x | 0 |")
    for strategy, rate, wait, _ in rows:
        print(
            f"| Ray Train + Ray Data, {strategy}, {args.workers} workers x {args.batch} | {rate:.2f} | "
            f"{rate / bare:.2f}x | {100 * wait:.1f}% |"
        )


if __name__ == "__main__":
    main()
