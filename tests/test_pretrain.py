"""Pretraining on Ray Train with two CPU workers, on the suite's shared build: one DeepSpeed ZeRO-1 run, whose rank 1
exits mid-run (an injected fault, ``pipelines.faults``), lowers the loss and writes the whole run; the worker group is
restarted from the last checkpoint and retakes the steps after it exactly as they were first taken; a finished run
run again starts nothing; bad settings are refused.
(A run stopped with ``until_step`` and run again, with ZeRO-3 in bf16, in object storage: test_object_storage.py;
DDP with a node lost mid-run: test_cluster.py; DDP trials: test_sweep.py.)"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import error_line

import uni3d

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# the shared build (conftest.SMALL_BUILD): 167 training shapes / 2 workers / batch 16 = 5 steps an epoch
COMMON = ["--model", "nano", "--set", "batch_size=16", "--set", "warmup_steps=5", "--set", "holdout_fraction=0.1"]
RUN = ["epochs=3", "lr=2e-3", "log_every=1", "checkpoint_every=5", "eval_every=10"]  # 15 steps


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def pretrain(data: Path, storage: Path, name: str, *sets: str) -> int:
    from jobs.pretrain import main

    args = ["--data", str(data), "--storage", str(storage), "--name", name, *COMMON]
    return main(args + [a for s in sets for a in ("--set", s)])


@pytest.fixture(scope="module")
def zero1(small_build: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A DeepSpeed ZeRO-1 run, 3 epochs x 5 steps, a line per step, whose rank 1 exits when it is about to take step
    9: Ray Train restarts the worker group from the step-5 checkpoint (max_failures=1). Returns the run and the
    driver's progress lines, which show every report of both attempts."""
    storage = tmp_path_factory.mktemp("runs")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("UNI3D_FAULTS", "train_exit=1@9")
        assert pretrain(small_build, storage, "zero1", *RUN, "export_official=true", "max_failures=1") == 0
    return storage / "zero1", out.getvalue().splitlines()


def test_deepspeed_zero1_lowers_the_loss_and_writes_the_run(zero1: tuple[Path, list[str]]) -> None:
    run, _ = zero1
    log = metrics(run)
    assert [m["step"] for m in log] == list(range(1, 16))
    first, last = sum(m["loss"] for m in log[:5]) / 5, sum(m["loss"] for m in log[-5:]) / 5
    assert last < first - 0.1, [round(m["loss"], 3) for m in log]
    assert all(m["nonfinite_total"] == 0 and m["samples_per_s"] > 0 and m["data_wait_s"] >= 0 for m in log)
    evals = [m for m in log if "zeroshot_top1" in m]
    assert [m["step"] for m in evals] == [10, 15]
    assert all(0 <= m["zeroshot_top1"] <= m["zeroshot_top3"] <= m["zeroshot_top5"] <= 100 for m in evals)
    model = uni3d.load_checkpoint(run / "final")
    assert model.embed_dim == 384 and model.cfg.width == 64 and model.logit_scale.shape == ()
    meta = uni3d.read_checkpoint_config(run / "final")["meta"]
    assert meta["teacher"] == "minilm:all-MiniLM-L6-v2" and meta["step"] == 15
    official = torch.load(run / "official" / "model.pt", weights_only=True)["module"]  # the release layout
    assert official.keys() == model.state_dict().keys() and official["logit_scale"].dtype == torch.float16
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["strategy"] == "deepspeed" and config["train"]["zero_stage"] == 1
    assert config["plan"] == {"num_train": 167, "num_heldout": 25, "steps_per_epoch": 5, "total_steps": 15}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list(run.glob("checkpoint_*-*"))) == 2  # keep_checkpoints


def test_a_failed_worker_resumes_from_the_last_checkpoint_and_retakes_its_steps_exactly(
    small_build: Path, zero1: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    run, printed = zero1
    assert (run / "faults" / "exited-1@9").is_file()
    lines = metrics(run)
    assert [m["step"] for m in lines] == list(range(1, 16))  # steps 6-8 of the failed attempt logged once
    assert [m["start_step"] for m in lines] == [0] * 5 + [5] * 10
    # Steps 6-8 were taken twice, before the exit and after the restart from step 5: the same losses and
    # accuracies at the same learning rate (the driver prints every report: "... step 6/15 epoch 1 loss ...").
    for step in (6, 7, 8):
        taken = [line.split()[:14] for line in printed if line.startswith(f"[pretrain] step {step}/15 ")]
        assert len(taken) == 2 and taken[0] == taken[1], (step, taken)
        assert float(taken[1][taken[1].index("loss") + 1]) == pytest.approx(lines[step - 1]["loss"], abs=1e-4)
    assert uni3d.read_checkpoint_config(run / "final")["meta"]["step"] == 15
    # The same command again: the run is finished (and the fault spent: its marker is in the run), nothing runs.
    monkeypatch.setenv("UNI3D_FAULTS", "train_exit=1@9")
    assert pretrain(small_build, run.parent, "zero1", *RUN, "export_official=true", "max_failures=1") == 0
    assert metrics(run) == lines


def test_a_model_sized_for_another_teacher_is_refused(small_build: Path, tmp_path: Path, capsys) -> None:
    assert pretrain(small_build, tmp_path, "mismatch", "embed_dim=1024") == 2
    assert "built with teacher 'minilm:all-MiniLM-L6-v2' (embed_dim 384)" in error_line(capsys)
    assert not (tmp_path / "mismatch").exists()


def test_a_run_that_cannot_take_one_step_is_refused(small_build: Path, tmp_path: Path, capsys) -> None:
    assert pretrain(small_build, tmp_path, "tiny", "batch_size=512") == 2
    assert "fewer than one step of batch_size 512 x num_workers 2" in error_line(capsys)
