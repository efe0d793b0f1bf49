"""Pretraining settings that are refused before any worker starts, on the suite's shared build, with one error line
and exit status 2. (The runs: DeepSpeed ZeRO-1 with a worker that fails mid-run, test_demo.py; a run stopped with
``until_step`` and run again, with ZeRO-3 in bf16, in object storage: test_object_storage.py; DDP with a node lost
mid-run: test_cluster.py; DDP trials: test_sweep.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import error_line

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# the shared build (conftest.SMALL_BUILD): 167 training shapes
COMMON = ["--model", "nano", "--set", "batch_size=16", "--set", "warmup_steps=5", "--set", "holdout_fraction=0.1"]


def pretrain(data: Path, storage: Path, name: str, *sets: str) -> int:
    from jobs.pretrain import main

    args = ["--data", str(data), "--storage", str(storage), "--name", name, *COMMON]
    return main(args + [a for s in sets for a in ("--set", s)])


def test_a_model_sized_for_another_teacher_is_refused(small_build: Path, tmp_path: Path, capsys) -> None:
    assert pretrain(small_build, tmp_path, "mismatch", "embed_dim=1024") == 2
    assert "built with teacher 'minilm:all-MiniLM-L6-v2' (embed_dim 384)" in error_line(capsys)
    assert not (tmp_path / "mismatch").exists()


def test_a_run_that_cannot_take_one_step_is_refused(small_build: Path, tmp_path: Path, capsys) -> None:
    assert pretrain(small_build, tmp_path, "tiny", "batch_size=512") == 2
    assert "fewer than one step of batch_size 512 x num_workers 2" in error_line(capsys)


def test_a_recipes_2d_weights_offline_and_not_in_the_hub_cache_are_refused(
    small_build: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    from jobs.pretrain import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["--data", str(small_build), "--storage", str(tmp_path), "--name", "ti", "--recipe", "uni3d-ti"]
    assert main([*args, "--set", "use_gpu=false", "--set", "num_workers=1", "--set", "precision=fp32"]) == 2
    line = error_line(capsys)
    assert line.startswith("error: init: hf-hub:timm/eva02_tiny_patch14_224.mim_in22k/model.safetensors: "), line
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in line and "or init=scratch" in line, line
    assert not (tmp_path / "ti").exists()
