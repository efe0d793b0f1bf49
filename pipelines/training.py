"""Contrastive pretraining on Ray Train (Uni3D spec §5–6): the worker loop and the trainer that runs it.

Each worker streams its shard of the Parquet build (Ray Data, reshuffled per epoch), turns rows into
training batches (one text and one of the first 10 views per shape), augments the points on the fly
and takes AdamW steps with layer-wise lr decay, warmup + cosine, gradient clipping and the logit
scale clamp. The model code knows nothing of this: the loop wraps it in DDP. Negatives are gathered
across ranks with exact gradients (``uni3d.loss``). The teacher never runs here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.train import Checkpoint, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

import uni3d
from pipelines.schema import read_manifest
from pipelines.train_batch import TrainBatchConfig, make_train_batch
from uni3d.augment import augment
from uni3d.loss import Uni3DLoss, clamp_logit_scale_, torch_distributed_gather
from uni3d.optim import OptimConfig, build_optimizer, set_lr


@dataclass
class TrainConfig:
    data: str  # a build's output folder (jobs/build_dataset.py)
    storage: str = "runs"  # Ray Train storage path: checkpoints and results
    name: str = "uni3d"  # the run's name; re-running the same name and storage resumes it
    model: str = "micro"  # uni3d preset
    num_workers: int = 2
    worker_cpus: float = 0.5  # per training worker; leave CPUs for Ray Data's read tasks (1 CPU each)
    use_gpu: bool = False
    batch_size: int = 16  # per worker
    epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.1
    layer_decay: float = 0.95
    warmup_steps: int = 10
    grad_clip: float = 5.0
    augment: bool = True
    log_every: int = 10
    seed: int = 4096
    max_failures: int = 0
    embed_dim: int = 0  # 0 = the build's teacher dimension


def steps_per_epoch(num_shapes: int, cfg: TrainConfig) -> int:
    return max(1, num_shapes // (cfg.batch_size * cfg.num_workers))


def _save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, meta: dict) -> Checkpoint:
    folder = Path(tempfile.mkdtemp(prefix="uni3d-ckpt-"))
    uni3d.save_checkpoint(model, folder / "model", meta={**meta, "step": step})
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, folder / "train_state.pt")
    return Checkpoint.from_directory(str(folder))


def train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    cfg = TrainConfig(**config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    model = uni3d.create_model(cfg.model, embed_dim=cfg.embed_dim)
    opt_cfg = OptimConfig(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
        warmup_steps=min(cfg.warmup_steps, config["total_steps"]),
        total_steps=config["total_steps"],
    )
    optimizer = build_optimizer(model, opt_cfg, depth=model.cfg.depth)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume: weights, optimiser state and step
        with checkpoint.as_directory() as folder:
            model.load_state_dict(uni3d.load_checkpoint(Path(folder) / "model").state_dict())
            state = torch.load(Path(folder) / "train_state.pt", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            step = int(state["step"])
    ddp = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    gather = torch_distributed_gather if world > 1 else None
    loss_fn = Uni3DLoss(rank=rank, world_size=world, gather=gather)
    batch_cfg = TrainBatchConfig(embed_dim=cfg.embed_dim)
    rng = np.random.default_rng([cfg.seed, rank, step])
    shard = ray.train.get_dataset_shard("train")
    meta = {"teacher": config["teacher"], "train": dataclasses.asdict(cfg)}
    window: list[float] = []
    waited, last = 0.0, time.perf_counter()
    for _epoch in range(step // config["steps_per_epoch"], cfg.epochs):
        fetch = time.perf_counter()
        for batch in shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            drop_last=True,
            local_shuffle_buffer_size=4 * cfg.batch_size,
        ):
            waited += time.perf_counter() - fetch
            tb = make_train_batch(batch, batch_cfg, rng)
            points = torch.from_numpy(tb["points"])
            if cfg.augment:
                points = augment(points)
            # forward / loss
            lr = set_lr(optimizer, step, opt_cfg)
            emb = ddp(points.to(device))
            out = loss_fn(
                emb,
                torch.from_numpy(tb["text_emb"]).to(device),
                torch.from_numpy(tb["image_emb"]).to(device),
                torch.from_numpy(tb["has_image"]).to(device),
                model.logit_scale,
            )
            # step
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            clamp_logit_scale_(model.logit_scale)
            step += 1
            window.append(float(out["loss"]))
            # log
            if step % cfg.log_every == 0 or step == config["total_steps"]:
                now = time.perf_counter()
                metrics = {
                    "step": step,
                    "loss": float(np.mean(window)),
                    "acc_text": float(out["acc_text"]),
                    "acc_image": float(out["acc_image"]),
                    "lr": lr,
                    "logit_scale": float(model.logit_scale.exp()),
                    "samples_per_s": len(window) * cfg.batch_size * world / (now - last),
                    "data_wait_s": waited,
                }
                if rank == 0:  # a plain log next to Ray's results, for curves and tests
                    with open(config["metrics_file"], "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                ckpt = _save(model, optimizer, step, meta) if rank == 0 and step == config["total_steps"] else None
                ray.train.report(metrics, checkpoint=ckpt)
                if ckpt is not None:  # report has persisted it to the run's storage
                    shutil.rmtree(ckpt.path, ignore_errors=True)
                window, waited, last = [], 0.0, now
            fetch = time.perf_counter()


def run_pretrain(cfg: TrainConfig) -> ray.train.Result:
    """Train on ``cfg.data`` with ``cfg.num_workers`` Ray Train workers; returns Ray Train's result."""
    manifest = read_manifest(os.path.join(cfg.data, "manifest.json"))
    if cfg.embed_dim and cfg.embed_dim != manifest.embed_dim:
        raise ValueError(
            f"{cfg.data} was built with teacher {manifest.teacher!r} (embed_dim {manifest.embed_dim}); a model with "
            f"embed_dim {cfg.embed_dim} cannot be trained on it: build with that model's teacher or drop embed_dim"
        )
    cfg = dataclasses.replace(cfg, embed_dim=manifest.embed_dim)
    per_epoch = steps_per_epoch(manifest.num_shapes, cfg)
    run_dir = Path(cfg.storage).resolve() / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    ds = ray.data.read_parquet(os.path.join(cfg.data, "shards")).randomize_block_order(seed=cfg.seed)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "train": dataclasses.asdict(cfg),
            "teacher": manifest.teacher,
            "steps_per_epoch": per_epoch,
            "total_steps": per_epoch * cfg.epochs,
            "metrics_file": str(run_dir / "metrics.jsonl"),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.worker_cpus}
        ),
        run_config=RunConfig(
            name=cfg.name, storage_path=str(run_dir.parent), failure_config=FailureConfig(max_failures=cfg.max_failures)
        ),
        datasets={"train": ds},
    )
    return trainer.fit()
