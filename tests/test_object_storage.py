"""build -> pretrain (stopped, then resumed) -> evaluate -> embed -> search, entirely on ``s3://`` URIs of a
real S3 API (moto's server on 127.0.0.1, conftest's ``s3``): no folder is shared between the driver and Ray's
workers, and nothing is written outside the bucket and temporary folders. (A sweep in the bucket, killed and
restored from there: test_sweep.py.)"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from s3_fixtures import LocalS3

import uni3d
from pipelines.storage import Location, local_copy
from pipelines.train.run_log import read_metrics_lines

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# 96 shapes, 10% held out -> 86 training shapes / 2 workers / batch 8 = 5 steps an epoch; DeepSpeed ZeRO-3 in bf16,
# whose checkpoints hold each rank's partition: saved to the bucket, resumed from it, gathered into an fp32 model
TRAIN = ["--model", "nano", "--set", "batch_size=8", "--set", "num_workers=2", "--set", "holdout_fraction=0.1"]
TRAIN += ["--set", "epochs=2", "--set", "log_every=1", "--set", "checkpoint_every=3", "--set", "eval_every=5"]
TRAIN += ["--set", "export_official=true", "--set", "zero_stage=3", "--set", "precision=bf16"]


@pytest.fixture(scope="module", autouse=True)
def bucket(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """The bucket, and an empty working folder: a relative path or a URI taken for one would land there."""
    s3.bucket("uni3d")
    cwd = os.getcwd()
    work = tmp_path_factory.mktemp("cwd")
    scratch = tmp_path_factory.mktemp("scratch")  # the driver's node-local scratch (download cache, MLflow)
    os.chdir(work)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("UNI3D_CACHE", str(scratch))
            yield s3
    finally:
        os.chdir(cwd)
    assert list(work.iterdir()) == [], sorted(p.name for p in work.iterdir())
    assert list(scratch.iterdir()) == [], sorted(p.name for p in scratch.iterdir())


@pytest.fixture(scope="module")
def build(bucket: LocalS3) -> str:
    from jobs.build_dataset import main

    sets = ["source.num_shapes=96", "num_points=512", "rows_per_shard=32", "progress_every_s=1000"]
    assert main(["--out", "s3://uni3d/build", *[a for s in sets for a in ("--set", s)]]) == 0
    return "s3://uni3d/build"


@pytest.fixture(scope="module")
def run(build: str) -> str:
    from jobs.pretrain import main

    args = ["--data", build, "--storage", "s3://uni3d/runs", "--name", "r", *TRAIN]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the driver's progress lines (printed by its Progress thread)
        assert main([*args, "--set", "until_step=4"]) == 0  # stops at step 4 with a checkpoint there
        assert main(args) == 0  # resumes from step 4
    lines = out.getvalue().splitlines()
    steps = [line.split()[2] for line in lines if line.startswith("[pretrain] step ")]
    assert steps == [f"{i}/10" for i in range(1, 11)], out.getvalue()[-3000:]  # metrics reached the driver
    return "s3://uni3d/runs/r"


def test_a_run_lives_in_the_bucket_and_resumes_there(run: str, s3: LocalS3, tmp_path: Path) -> None:
    keys = s3.keys("uni3d/runs/r")
    names = {k.removeprefix("uni3d/runs/r/").split("/")[0] for k in keys}
    assert {"config.json", "metrics.jsonl", "tensorboard", "final", "official"} <= names, names
    assert any(n.startswith("checkpoint_") for n in names)
    lines = read_metrics_lines((Location.of(run) / "metrics.jsonl").read_text())
    assert [m["step"] for m in lines] == list(range(1, 11))  # one line per step, over both sessions
    assert [m["start_step"] for m in lines] == [0] * 4 + [4] * 6
    assert "zeroshot_top1" in lines[4] and "zeroshot_top1" in lines[9]
    assert all(m["loss"] == m["loss"] for m in lines)  # finite
    with local_copy(f"{run}/final") as folder:
        model = uni3d.load_checkpoint(folder)  # gathered from the ZeRO-3 partitions, saved as fp32
    assert all(p.dtype == torch.float32 and p.numel() > 0 for p in model.parameters())
    config = json.loads((Location.of(run) / "config.json").read_text())["train"]
    assert (config["strategy"], config["zero_stage"], config["precision"]) == ("deepspeed", 3, "bf16")
    with local_copy(f"{run}/official/model.pt") as path:
        official = torch.load(path, map_location="cpu", weights_only=True)  # the release layout (nano: no preset)
    assert set(official) == {"module"} and official["module"]
    events = [k for k in keys if "/tensorboard/events.out.tfevents" in k]
    assert len(events) == 2  # one event file per session, both uploaded


def test_evaluate_reads_the_checkpoint_and_the_build_from_the_bucket_and_writes_its_report_there(
    run: str, build: str, s3: LocalS3
) -> None:
    from jobs.evaluate import main

    argv = ["--checkpoint", f"{run}/final", "--sets", build, "--set", "num_workers=2", "--set", "worker_cpus=0.5"]
    assert main(argv) == 0
    report = json.loads((Location.of(run) / "final" / "eval" / "build.json").read_text())
    assert report["num_samples"] > 0 and report["meta"]["checkpoint"] == f"{run}/final"
    # the held-out rows (a few from each shard file) re-cut into the planned blocks as they stream: one
    # embedding task per block (Ray Data's own count), whatever the shard files held
    plan = report["meta"]["plan"]
    stats = (Location.of(run) / "final" / "eval" / "build-ray-data.txt").read_text()
    assert f"MapBatches(PointEmbedder): {plan['num_blocks']} tasks executed" in stats, stats[:2000]
    assert sum(report["meta"]["rows_by_worker"].values()) == report["num_samples"]
    assert {"build.json", "build.md", "build_confusion.png"} <= {
        k.rsplit("/", 1)[-1] for k in s3.keys("uni3d/runs/r/final/eval")
    }


def test_embed_and_search_with_a_gallery_in_the_bucket(run: str, s3: LocalS3, tmp_path: Path, capsys) -> None:
    from jobs.embed import main as embed
    from jobs.search import main as search

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    for name in ("cow.off", "bunny00.off", "camel.off"):
        shutil.copy(SHARED / "meshes" / "real" / name, meshes / name)
    argv = ["--checkpoint", f"{run}/final", "--root", str(meshes), "--out", "s3://uni3d/gallery"]
    assert embed([*argv, "--set", "num_points=512"]) == 0
    assert embed([*argv, "--set", "num_points=512"]) == 0  # a re-run finds everything embedded
    assert "0 shapes to embed (3 already in s3://uni3d/gallery)" in capsys.readouterr().out
    assert len([k for k in s3.keys("uni3d/gallery/shards") if k.endswith(".parquet")]) >= 1
    assert search(["--gallery", "s3://uni3d/gallery", "--mesh", str(meshes / "cow.off"), "--num-points", "512"]) == 0
    assert "cow" in capsys.readouterr().out
