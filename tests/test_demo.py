"""The demo's pipeline at a small size: build, pretrain with DeepSpeed ZeRO-1 on 2 CPU workers, evaluate held-out
zero-shot. It must learn: held-out top-1 well above chance, results and pictures written.

Its run is also the suite's DeepSpeed ZeRO-1 run: rank 1 exits when it is about to take step 21 (an injected fault,
``pipelines.faults``), Ray Train restarts the worker group from the step-16 checkpoint (max_failures=1), and the
steps taken again equal the first attempt's; the run is written whole (a line every 2 steps, checkpoints, the final
model, the official export, TensorBoard), and the same run again starts nothing.
(A run stopped with ``until_step`` and run again, with ZeRO-3 in bf16, in object storage: test_object_storage.py;
DDP with a node lost mid-run: test_cluster.py; DDP trials: test_sweep.py; refusals: test_pretrain.py.)"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

import uni3d

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# 280 shapes, cup and sofa unseen, 10% of the others held out: 213 training shapes / 2 workers / batch 16 = 6 steps
# an epoch, 72 steps (the demo's default: 672); measured here (2026-12-07): 44% held-out top-1 of the trained
# categories (26% after 8 epochs, too close to the 21% this test asks for)
DEMO = ["--shapes", "280", "--points", "512", "--epochs", "12"]
RUN = ["log_every=2", "checkpoint_every=16", "export_official=true", "max_failures=1"]


def test_the_demo_learns_at_a_small_size_through_a_failed_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobs.demo import main

    out = io.StringIO()
    monkeypatch.setenv("UNI3D_FAULTS", "train_exit=1@21")
    with contextlib.redirect_stdout(out):  # the progress lines: every report of both attempts
        summary = main(["--out", str(tmp_path), *DEMO, *[a for s in RUN for a in ("--set", s)]])
    printed = out.getvalue().splitlines()
    assert summary["classes"] == 14 and summary["chance_top1"] == pytest.approx(100 / 14)
    assert summary["unseen_categories"] == ["cup", "sofa"]
    assert summary["unseen"]["samples"] == 2 * 280 // 14  # every shape of the two unseen categories
    assert 0 < summary["seen"]["samples"] < 0.2 * 280  # ~10% of the other 240 shapes, by uid hash
    # the unseen categories' score is reported whatever it is; the seen ones must have been learnt
    assert summary["seen"]["top1"] > 3 * summary["chance_top1"], summary
    results = tmp_path / "results"
    for name in ("training_curves.png", "accuracy_per_class.png", "build_confusion.png"):
        assert (results / name).stat().st_size > 5000, name
    report = json.loads((results / "build.json").read_text())
    parts = summary["seen"]["samples"] + summary["unseen"]["samples"]
    assert report["num_samples"] == summary["heldout_shapes"] == parts
    assert "unseen categories (never trained on)" in (results / "build.md").read_text()

    run = tmp_path / "runs" / "demo"
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    _check_the_run(run, log)
    _check_the_restart(run, log, printed)


def _check_the_run(run: Path, log: list[dict]) -> None:
    assert [m["step"] for m in log] == list(range(2, 73, 2))
    first, last = sum(m["loss"] for m in log[:3]) / 3, sum(m["loss"] for m in log[-3:]) / 3
    assert last < first - 0.3, [round(m["loss"], 3) for m in log]
    assert all(m["nonfinite_total"] == 0 and m["samples_per_s"] > 0 and m["data_wait_s"] >= 0 for m in log)
    evals = [m for m in log if "zeroshot_top1" in m]
    assert [m["step"] for m in evals] == [72] and "unseen_top1" in evals[0]  # both measured during training
    assert 0 <= evals[0]["zeroshot_top1"] <= evals[0]["zeroshot_top3"] <= evals[0]["zeroshot_top5"] <= 100
    model = uni3d.load_checkpoint(run / "final")
    assert model.embed_dim == 384 and model.cfg.width == 64 and model.logit_scale.shape == ()
    meta = uni3d.read_checkpoint_config(run / "final")["meta"]
    assert meta["teacher"] == "minilm:all-MiniLM-L6-v2" and meta["step"] == 72
    official = torch.load(run / "official" / "model.pt", weights_only=True)["module"]  # the release layout
    assert official.keys() == model.state_dict().keys() and official["logit_scale"].dtype == torch.float16
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["strategy"] == "deepspeed" and config["train"]["zero_stage"] == 1
    assert config["plan"] == {"num_train": 213, "num_heldout": 67, "steps_per_epoch": 6, "total_steps": 72}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list(run.glob("checkpoint_*-*"))) == 2  # keep_checkpoints, of the 5 written (steps 16, 32, 48, 64, 72)


def _check_the_restart(run: Path, log: list[dict], printed: list[str]) -> None:
    from pipelines.train.config import TrainConfig
    from pipelines.train.driver import run_pretrain

    assert (run / "faults" / "exited-1@21").is_file()
    assert [m["start_step"] for m in log] == [0] * 8 + [16] * 28  # steps 18 and 20 of the failed attempt logged once
    # Steps 17-20 were taken twice, before the exit and after the restart from step 16: the same losses and
    # accuracies at the same learning rate (the driver prints every report: "... step 18/72 epoch 2 loss ...").
    for step in (18, 20):
        taken = [line.split()[:14] for line in printed if line.startswith(f"[pretrain] step {step}/72 ")]
        assert len(taken) == 2 and taken[0] == taken[1], (step, taken)
        assert float(taken[1][taken[1].index("loss") + 1]) == pytest.approx(log[step // 2 - 1]["loss"], abs=1e-4)
    # The same run again: it is finished (and the fault spent: its marker is in the run), nothing runs.
    cfg = TrainConfig(**json.loads((run / "config.json").read_text())["train"])
    assert run_pretrain(cfg, verbose=False).finished
    assert [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] == log
