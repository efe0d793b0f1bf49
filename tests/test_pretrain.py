"""Pretraining on Ray Train: two CPU workers with DDP lower the loss; a mismatched model is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import uni3d

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import ray

    from jobs.build_dataset import main as build

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)  # with the dashboard: Train V2 wants it
    out = tmp_path_factory.mktemp("pretrain") / "build"
    assert (
        build(
            [
                "--out",
                str(out),
                "--set",
                "source.num_shapes=192",
                "--set",
                "num_points=512",
                "--set",
                "rows_per_shard=32",
                "--set",
                "progress_every_s=1000",
            ]
        )
        == 0
    )
    yield out
    ray.shutdown()


def test_two_workers_lower_the_loss_and_write_a_loadable_model(data: Path, tmp_path: Path) -> None:
    from jobs.pretrain import main

    argv = [
        "--data",
        str(data),
        "--model",
        "nano",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "ddp",
        "--set",
        "epochs=6",
        "--set",
        "batch_size=16",
        "--set",
        "log_every=3",
        "--set",
        "warmup_steps=3",
    ]
    assert main(argv) == 0
    log = [json.loads(line) for line in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in log] == list(range(3, 37, 3))  # 192 shapes / (16 x 2 workers) = 6 steps an epoch
    assert log[-1]["loss"] < log[0]["loss"] - 0.2, [round(m["loss"], 3) for m in log]
    model = uni3d.load_checkpoint(tmp_path / "runs" / "ddp" / "final")
    assert model.embed_dim == 384 and model.cfg.width == 64
    meta = uni3d.read_checkpoint_config(tmp_path / "runs" / "ddp" / "final")["meta"]
    assert meta["teacher"] == "minilm:all-MiniLM-L6-v2" and meta["step"] == 36


def test_a_model_sized_for_another_teacher_is_refused(data: Path, tmp_path: Path) -> None:
    from jobs.pretrain import main

    with pytest.raises(ValueError, match=r"built with teacher 'minilm:all-MiniLM-L6-v2' \(embed_dim 384\)"):
        main(["--data", str(data), "--storage", str(tmp_path), "--set", "embed_dim=1024"])
