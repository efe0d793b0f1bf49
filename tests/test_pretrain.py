"""Pretraining on Ray Train with two CPU workers: DeepSpeed ZeRO-1 and DDP lower the loss, a stopped run
resumes with the losses of an uninterrupted one, a killed worker is recovered, bad settings are refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

import uni3d

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# 192 shapes, 10% held out (25 here) -> 167 / 2 workers / batch 16 = 5 steps an epoch
COMMON = ["--model", "nano", "--set", "batch_size=16", "--set", "warmup_steps=5", "--set", "holdout_fraction=0.1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ray

    from jobs.build_dataset import main as build

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)  # with the dashboard: Train V2 wants it
    out = tmp_path_factory.mktemp("pretrain") / "build"
    sets = ["source.num_shapes=192", "num_points=512", "rows_per_shard=32", "progress_every_s=1000"]
    assert build(["--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    yield out
    ray.shutdown()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run)}  # the last line per step wins


def pretrain(data: Path, storage: Path, name: str, *sets: str) -> int:
    from jobs.pretrain import main

    args = ["--data", str(data), "--storage", str(storage), "--name", name, *COMMON]
    return main(args + [a for s in sets for a in ("--set", s)])


@pytest.fixture(scope="module")
def zero1(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted DeepSpeed ZeRO-1 run: 6 epochs x 5 steps, a line per step."""
    storage = tmp_path_factory.mktemp("runs")
    sets = ["epochs=6", "log_every=1", "checkpoint_every=5", "eval_every=15", "export_official=true"]
    assert pretrain(data, storage, "zero1", *sets) == 0
    return storage / "zero1"


def test_deepspeed_zero1_lowers_the_loss_and_writes_the_run(zero1: Path) -> None:
    log = metrics(zero1)
    assert [m["step"] for m in log] == list(range(1, 31))
    first, last = sum(m["loss"] for m in log[:5]) / 5, sum(m["loss"] for m in log[-5:]) / 5
    assert last < first - 0.2, [round(m["loss"], 3) for m in log]
    assert all(m["nonfinite_total"] == 0 and m["samples_per_s"] > 0 and m["data_wait_s"] >= 0 for m in log)
    evals = [m for m in log if "zeroshot_top1" in m]
    assert [m["step"] for m in evals] == [15, 30]
    assert all(0 <= m["zeroshot_top1"] <= m["zeroshot_top3"] <= m["zeroshot_top5"] <= 100 for m in evals)
    model = uni3d.load_checkpoint(zero1 / "final")
    assert model.embed_dim == 384 and model.cfg.width == 64 and model.logit_scale.shape == ()
    meta = uni3d.read_checkpoint_config(zero1 / "final")["meta"]
    assert meta["teacher"] == "minilm:all-MiniLM-L6-v2" and meta["step"] == 30
    official = torch.load(zero1 / "official" / "model.pt", weights_only=True)["module"]  # the release layout
    assert official.keys() == model.state_dict().keys() and official["logit_scale"].dtype == torch.float16
    config = json.loads((zero1 / "config.json").read_text())
    assert config["train"]["strategy"] == "deepspeed" and config["train"]["zero_stage"] == 1
    assert config["plan"] == {"num_train": 167, "num_heldout": 25, "steps_per_epoch": 5, "total_steps": 30}
    assert list((zero1 / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list(zero1.glob("checkpoint_*-*"))) == 2  # keep_checkpoints


def test_a_stopped_run_resumes_with_the_losses_of_an_uninterrupted_one(data: Path, zero1: Path, tmp_path: Path) -> None:
    sets = ["epochs=6", "log_every=1", "checkpoint_every=5", "eval_every=15"]
    assert pretrain(data, tmp_path, "resumed", *sets, "until_step=8") == 0  # stops mid-epoch 1 with a checkpoint
    assert max(losses(tmp_path / "resumed")) == 8 and not (tmp_path / "resumed" / "final").exists()
    assert pretrain(data, tmp_path, "resumed", *sets) == 0
    want, got = losses(zero1), losses(tmp_path / "resumed")
    assert sorted(got) == list(range(1, 31))
    for step in range(1, 31):
        assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), step
    assert uni3d.read_checkpoint_config(tmp_path / "resumed" / "final")["meta"]["step"] == 30


def test_ddp_recovers_a_killed_worker_and_lowers_the_loss(data: Path, tmp_path: Path) -> None:
    from ray.util.state import list_actors

    run = tmp_path / "ddp"
    killed: list[int] = []

    def kill_a_worker_after_a_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if (run / "metrics.jsonl").exists() and max(losses(run), default=0) >= 7:
                workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                if workers:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    killed.append(workers[-1].pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_a_worker_after_a_checkpoint, daemon=True)
    killer.start()
    sets = ["strategy=ddp", "epochs=6", "log_every=1", "checkpoint_every=5", "eval_every=0", "max_failures=1"]
    assert pretrain(data, tmp_path, "ddp", *sets) == 0
    killer.join()
    assert killed, "the run finished before a worker could be killed"
    steps = [m["step"] for m in metrics(run)]
    assert steps[-1] == 30 and len(steps) > 30  # steps after the step-5 checkpoint ran twice
    assert steps.count(6) == 2
    log = losses(run)
    assert sum(log[s] for s in range(26, 31)) / 5 < sum(log[s] for s in range(1, 6)) / 5 - 0.2, log
    assert uni3d.read_checkpoint_config(run / "final")["meta"]["step"] == 30


def test_a_model_sized_for_another_teacher_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"built with teacher 'minilm:all-MiniLM-L6-v2' \(embed_dim 384\)"):
        pretrain(data, tmp_path, "mismatch", "embed_dim=1024")


def test_a_run_that_cannot_take_one_step_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one step of batch_size 512 x num_workers 2"):
        pretrain(data, tmp_path, "tiny", "batch_size=512")


def test_zero3_in_bf16_trains_and_exports_a_full_fp32_model(data: Path, tmp_path: Path) -> None:
    assert pretrain(data, tmp_path, "z3", "zero_stage=3", "precision=bf16", "epochs=1", "eval_every=0") == 0
    log = metrics(tmp_path / "z3")
    assert log[-1]["step"] == 5 and all(m["loss"] == m["loss"] for m in log)  # finite
    model = uni3d.load_checkpoint(tmp_path / "z3" / "final")  # gathered from the partitions, saved as fp32
    assert all(p.dtype == torch.float32 and p.numel() > 0 for p in model.parameters())
