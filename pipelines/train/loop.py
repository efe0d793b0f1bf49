"""Contrastive pretraining on Ray Train (docs/method.md §5–6): the worker loop and the trainer that runs it.

Data: Ray Data reads the build's Parquet shards (held-out uids dropped), in a block order fixed by the
seed, and splits the stream evenly over the workers. Each epoch every worker reshuffles its share in a
buffer seeded by (seed, epoch, rank); rows become training batches (one text and one view per shape:
``pipelines.train.batch``; drawn with a generator seeded by (seed, rank, step)) and are augmented on the device.
Because everything random is a function of the step, a run resumed from a checkpoint skips the
batches it already trained on and then takes exactly the steps an uninterrupted run would have taken.

Training: DeepSpeed ZeRO 1/2/3 or DDP (``pipelines.train.strategy``), AdamW with layer-wise lr decay, warmup +
cosine per step, gradient clipping and the logit-scale clamp. Non-finite losses skip the step on every
rank; too many in a row stop the run. The teacher never runs here.

Reporting: every ``log_every`` steps the rank-averaged loss and accuracies, lr, logit scale, samples/s and
the time spent waiting for data go to Ray Train (``ray.train.report``), whose controller writes them into
the run's storage (``pipelines.train.run_log``: ``metrics.jsonl``, TensorBoard); every ``eval_every`` steps a
zero-shot top-1/3/5 on the held-out labelled split. Checkpoints (every rank's part) go through
``ray.train.report`` every ``checkpoint_every`` steps to the run's storage, local or object storage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

import uni3d
from pipelines import faults
from pipelines.evaluate.heldout import KS, HeldOut, zero_shot_counts
from pipelines.storage import Location, local_init
from pipelines.train.batch import TrainBatchConfig, make_train_batch
from pipelines.train.config import TrainConfig, model_overrides
from pipelines.train.data import filter_kwargs, load_unit
from pipelines.train.epochs import EpochStream
from pipelines.train.strategy import DDPEngine, DeepSpeedEngine, Engine, vector_logit_scale_
from uni3d.augment import augment
from uni3d.loss import Uni3DLoss, torch_distributed_gather
from uni3d.optim import OptimConfig, build_optimizer, lr_at, set_lr


class NonFiniteLoss(RuntimeError):
    pass


class NonFiniteGuard:
    """Counts non-finite losses; raises once ``limit`` steps in a row were not finite."""

    def __init__(self, limit: int, total: int = 0) -> None:
        self.limit, self.total, self.in_a_row = limit, total, 0

    def update(self, finite: bool, step: int) -> None:
        if finite:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteLoss(
                f"the loss was not finite for {self.in_a_row} steps in a row (up to step {step}; {self.total} "
                "in the run): lower lr, raise warmup_steps, use precision=fp32, or check the build for bad rows"
            )


def _all_reduce(t: torch.Tensor, op: Any = None) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _engine(cfg: TrainConfig, model: uni3d.Uni3D, optimizer: torch.optim.Optimizer, resume: Path | None) -> Engine:
    if cfg.strategy == "deepspeed":
        return DeepSpeedEngine(
            model,
            optimizer,
            batch_size=cfg.batch_size,
            grad_clip=cfg.grad_clip,
            zero_stage=cfg.zero_stage,
            precision=cfg.precision,  # type: ignore[arg-type]
            resume=resume,
        )
    return DDPEngine(
        model,
        optimizer,
        grad_clip=cfg.grad_clip,
        precision=cfg.precision,  # type: ignore[arg-type]
        device=ray.train.torch.get_device(),
        wrap=ray.train.torch.prepare_model,
        resume=resume,
    )


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    cfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    per_epoch, total = config["steps_per_epoch"], config["total_steps"]
    stop_at = min(cfg.until_step, total) if cfg.until_step else total
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank; init loads on top of them
    preset = uni3d.get_preset(
        cfg.model, embed_dim=cfg.embed_dim, grad_checkpointing=cfg.grad_checkpointing, **model_overrides(cfg)
    )
    with local_init(uni3d.parse_init(cfg.init)) as init:  # a URI: this worker's own temporary copy
        model = uni3d.create_model(uni3d.init_config(init, preset))
        lines = uni3d.apply_init(model, init)
    for line in lines:
        if rank == 0:
            print(f"[pretrain] init: {line}", flush=True)
    vector_logit_scale_(model).to(device)
    opt_cfg = OptimConfig(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        warmup_steps=min(cfg.warmup_steps, total),
        total_steps=total,
    )
    optimizer = build_optimizer(model, opt_cfg, depth=model.cfg.depth)
    state: dict[str, Any] = {"step": 0, "nonfinite_total": 0}
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as folder:
        if folder is not None:
            state = json.loads((Path(folder) / "train_state.json").read_text())
        engine = _engine(cfg, model, optimizer, Path(folder) if folder else None)
    step = int(state["step"])
    guard = NonFiniteGuard(cfg.max_nonfinite, int(state["nonfinite_total"]))
    loss_fn = Uni3DLoss(rank=rank, world_size=world, gather=torch_distributed_gather if world > 1 else None)
    batch_cfg = TrainBatchConfig(embed_dim=cfg.embed_dim)
    held: HeldOut | None = ray.get(config["heldout"]) if config["heldout"] is not None else None
    start_step = step  # in every report: the run's log drops what the stopped run logged after it
    stream = EpochStream(
        config["units"],
        functools.partial(load_unit, data=cfg.data, kwargs=filter_kwargs(cfg)),
        world=world,
        rank=rank,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        steps_per_epoch=per_epoch,
        shuffle_rows=cfg.shuffle_buffer,
    )
    meta = {"teacher": config["teacher"], "train": dataclasses.asdict(cfg)}
    sums = torch.zeros(4, dtype=torch.float64)  # loss, acc_text, acc_image, steps (finite ones)
    window_steps, waited, last = 0, 0.0, time.perf_counter()
    engine.train(True)
    start_epoch = step // per_epoch
    batches = stream.batches(start_epoch, skip=step - start_epoch * per_epoch)  # resume: mid-epoch, same batches
    fetch = time.perf_counter()
    fault = config.get("faults") or {}
    for epoch, _, batch in batches:
        if step >= stop_at:  # a finished run resumed: nothing left
            break
        if fault:  # tests only: this rank exits or holds before a chosen step, once per run
            node = ray.get_runtime_context().get_node_id()
            logged = (step // cfg.log_every) * cfg.log_every  # the last step whose report has a metrics line
            faults.before_step(fault, rank, step + 1, Location.of(cfg.storage) / cfg.name, node, logged)
        waited += time.perf_counter() - fetch
        out, finite = train_step(engine, loss_fn, batch, batch_cfg, opt_cfg, cfg, rank, step, device)
        guard.update(finite, step + 1)
        step += 1
        window_steps += 1
        if finite:
            sums += torch.tensor([float(out["loss"].detach()), float(out["acc_text"]), float(out["acc_image"]), 1.0])
        do_log = step % cfg.log_every == 0 or step == stop_at
        do_eval = held is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total)
        do_ckpt = step % cfg.checkpoint_every == 0 or step == stop_at
        if do_log or do_eval or do_ckpt:
            now = time.perf_counter()
            metrics = _metrics(sums, window_steps, waited, now - last, cfg, world, step, epoch, engine, opt_cfg)
            metrics["nonfinite_total"], metrics["start_step"] = guard.total, start_step
            if do_eval:
                metrics.update(_evaluate(engine, held, rank, world, cfg, device))
            ckpt = _checkpoint(engine, rank, {**meta, "step": step}, step, guard) if do_ckpt else None
            ray.train.report(metrics, checkpoint=ckpt)
            if ckpt is not None:  # report has persisted it to the run's storage
                shutil.rmtree(ckpt.path, ignore_errors=True)
            sums.zero_()
            window_steps, waited, last = 0, 0.0, time.perf_counter()
        fetch = time.perf_counter()
        if step >= stop_at:
            break
    batches.close()


def train_step(
    engine: Engine,
    loss_fn: Uni3DLoss,
    batch: Any,
    batch_cfg: TrainBatchConfig,
    opt_cfg: OptimConfig,
    cfg: TrainConfig,
    rank: int,
    step: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], bool]:
    """One optimiser step on one batch; every random draw is seeded by (seed, rank, step)."""
    tb = make_train_batch(batch, batch_cfg, np.random.default_rng([cfg.seed, rank, step]))
    torch.manual_seed((cfg.seed * 1_000_003 + step) * 1_009 + rank)  # patch dropout, drop path
    points = torch.from_numpy(tb["points"]).to(device)
    if cfg.augment:
        gen = torch.Generator(device=device).manual_seed((cfg.seed * 7_919 + step) * 1_013 + rank)
        points = augment(points, generator=gen)
    set_lr(engine.optimizer, step, opt_cfg)
    buffers = [(b, b.detach().clone()) for b in engine.model.buffers()]  # BatchNorm statistics: a few KB
    emb, logit_scale = engine.forward(points)
    out = loss_fn(
        emb,
        torch.from_numpy(tb["text_emb"]).to(device),
        torch.from_numpy(tb["image_emb"]).to(device),
        torch.from_numpy(tb["has_image"]).to(device),
        logit_scale,
    )
    # every rank takes or skips the step together: a lone skip would deadlock the gradient all-reduce
    finite = bool(_all_reduce(torch.isfinite(out["loss"].detach()).to(torch.float32).reshape(1), dist.ReduceOp.MIN))
    if finite:
        engine.step(out["loss"])
    else:  # as if the step never happened
        engine.skip()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return out, finite


def _metrics(
    sums: torch.Tensor,
    steps: int,
    waited: float,
    elapsed: float,
    cfg: TrainConfig,
    world: int,
    step: int,
    epoch: int,
    engine: Engine,
    opt_cfg: OptimConfig,
) -> dict[str, Any]:
    reduced = _all_reduce(sums.clone())  # over ranks: the loss and accuracies of the global batch
    finite = max(float(reduced[3]), 1.0)
    wait = _all_reduce(torch.tensor([waited], dtype=torch.float64), dist.ReduceOp.MAX)
    scale = float(engine.model.logit_scale.detach().float().exp()) if engine.model.logit_scale.numel() else math.nan
    return {
        "step": step,
        "epoch": epoch,
        "loss": float(reduced[0]) / finite if reduced[3] else math.nan,
        "acc_text": float(reduced[1]) / finite,
        "acc_image": float(reduced[2]) / finite,
        "lr": lr_at(step - 1, opt_cfg),
        "logit_scale": scale,
        "samples_per_s": steps * cfg.batch_size * world / max(elapsed, 1e-9),
        "data_wait_s": float(wait[0]),
        "data_wait_frac": float(wait[0]) / max(elapsed, 1e-9),
        "time": time.time(),  # wall clock, for the timelines of runs and sweeps
    }


def _evaluate(
    engine: Engine, held: HeldOut, rank: int, world: int, cfg: TrainConfig, device: torch.device
) -> dict[str, float]:
    if dist.is_available() and dist.is_initialized() and world > 1:
        # BatchNorm statistics are per rank under DeepSpeed (DDP broadcasts them each forward): evaluate
        # every slice with rank 0's, the ones the checkpoint saves
        for buffer in engine.model.buffers():
            dist.broadcast(buffer, src=0)
    engine.train(False)
    out = {}
    try:
        for zs in held.sets:  # held-out shapes of trained categories, then unseen categories
            counts = zero_shot_counts(lambda p: engine.forward(p)[0], zs, rank, world, cfg.eval_batch_size, device)
            counts = _all_reduce(counts.cpu())
            n = max(float(counts[-1]), 1.0)
            out |= {f"{zs.prefix}_top{k}": 100.0 * float(c) / n for k, c in zip(KS, counts[:-1], strict=True)}
    finally:
        engine.train(True)
    return out


def _checkpoint(engine: Engine, rank: int, meta: dict[str, Any], step: int, guard: NonFiniteGuard) -> Checkpoint | None:
    folder = Path(tempfile.mkdtemp(prefix="uni3d-ckpt-"))
    wrote = engine.save(folder, rank, meta)
    if rank == 0:
        (folder / "train_state.json").write_text(json.dumps({"step": step, "nonfinite_total": guard.total}))
        wrote = True
    if not wrote:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return Checkpoint.from_directory(str(folder))
