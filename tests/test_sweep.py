"""Ray Tune sweeps of pretraining end to end: a 2x2 sweep whose driver is killed and re-run, ASHA stopping the
trials that trail, the report and TensorBoard per trial, a failing trial, resources checked against the cluster."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
# 160 shapes, 20% held out -> ~128 / 1 worker / batch 16 = 8 steps an epoch, 2 epochs
TRIAL = ["num_workers=1", "worker_cpus=0.8", "data_cpus=0.1", "batch_size=16", "epochs=2", "holdout_fraction=0.2"]
TRIAL += ["warmup_steps=2", "eval_every=4", "log_every=2", "checkpoint_every=4"]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "build"
    sets = ["source.num_shapes=160", "num_points=512", "rows_per_shard=32", "progress_every_s=1000"]
    cmd = [sys.executable, str(ROOT / "jobs" / "build_dataset.py"), "--out", str(out)]
    subprocess.run([*cmd, *[a for s in sets for a in ("--set", s)]], check=True, capture_output=True, env=_env())
    return out


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each job starts its own local Ray


def sweep_cmd(build: Path, storage: Path, name: str, *args: str) -> list[str]:
    cmd = [sys.executable, str(ROOT / "jobs" / "sweep.py"), "--data", str(build), "--storage", str(storage)]
    return [*cmd, "--name", name, *[a for s in TRIAL for a in ("--set", s)], *args]  # args win


def records(folder: Path) -> list[dict]:
    with open(folder / "report" / "trials.csv") as f:
        return list(csv.DictReader(f))


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_killed_sweep_resumes_asha_stops_the_trailing_trials_and_every_trial_is_reported(
    build: Path, tmp_path: Path
) -> None:
    # A space built for ASHA to stop trials: its metric is the reported learning rate, which ranks the trials
    # by their lr at every step (a few steps of training are too noisy to rank on). Once a 3e-3 trial has
    # reported at a rung, a 1e-12 trial reaching that rung trails it and is stopped.
    args = ["--grid", "model=nano-s,nano", "--grid", "lr=3e-3,1e-12", "--set", "scheduler=asha"]
    args += ["--set", "metric=lr", "--set", "mode=max", "--set", "grace_period=4", "--set", "max_concurrent_trials=2"]
    cmd = sweep_cmd(build, tmp_path, "s", *args)
    folder = tmp_path / "s"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finished_before: set[str] = set()
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            runs = list((folder / "runs").glob("*/trial_starts.jsonl"))
            finished_before = {p.parent.name for p in runs if (p.parent / "final").exists()}
            if finished_before and len(runs) > len(finished_before):  # one trial done, another one running
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be killed: " + (tmp_path / "first.log").read_text()
        assert (folder / "report" / "index.html").exists()  # the report is written while trials run
        assert finished_before, "no trial finished in time"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    again = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming" in again.stdout

    rows = records(folder)
    assert len(rows) == 4 and {r["param.model"] + "/" + r["param.lr"] for r in rows} == {
        "nano-s/3e-3", "nano-s/1e-12", "nano/3e-3", "nano/1e-12"}  # fmt: skip
    assert all(r["status"] in ("TERMINATED", "STOPPED") for r in rows), rows
    stopped = [r for r in rows if r["status"] == "STOPPED"]
    assert stopped and all(r["param.lr"] == "1e-12" for r in stopped), rows
    assert all(int(r["steps"]) < int(r["total_steps"]) for r in stopped)
    for row in rows:
        run = folder / row["run_dir"]
        starts = (run / "trial_starts.jsonl").read_text().splitlines()
        if run.name in finished_before:
            assert len(starts) == 1, (run.name, starts)  # finished before the kill: never run again
        evals = [m for m in metric_lines(run) if "zeroshot_top1" in m]
        assert evals and float(row["best_top1"]) == pytest.approx(max(m["zeroshot_top1"] for m in evals))
        assert float(row["final_top1"]) == pytest.approx(evals[-1]["zeroshot_top1"])
        if row["status"] == "TERMINATED":
            assert (run / "final" / "config.json").exists() and int(row["steps"]) == int(row["total_steps"])
        _check_tensorboard(run, row)
    report = folder / "report"
    for name in ("scaling.png", "curves.png", "init_ablation.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (report / name).stat().st_size > 1000
    html = (report / "index.html").read_text()
    assert all(r["trial_id"] in html for r in rows) and "scaling.png" in html
    assert len((report / "trials.md").read_text().strip().splitlines()) >= 4 + 2


def _check_tensorboard(run: Path, row: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "train/logit_scale", "eval/zeroshot_top1"} <= set(events.Tags()["scalars"])
    top1 = [e.value for e in events.Scalars("eval/zeroshot_top1")]
    assert max(top1) == pytest.approx(float(row["best_top1"]), abs=1e-4)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == row["param.model"]
    assert hparams["lr"].number_value == pytest.approx(float(row["param.lr"]))
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "eval/zeroshot_top1" in {m.name.tag for m in experiment.metric_infos}


@pytest.fixture
def local_ray():
    """A Ray for the sweeps run in this process (after the subprocess ones: one local Ray at a time)."""
    import ray

    ray.init(num_cpus=2, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def sweep_main(build: Path, storage: Path, name: str, *args: str) -> int:
    from jobs.sweep import main

    return main(sweep_cmd(build, storage, name, *args)[2:])


def test_a_failing_trial_is_reported_with_its_error_and_the_sweep_goes_on(
    build: Path, tmp_path: Path, local_ray: None, capsys
) -> None:
    # lr 1e30 makes the loss non-finite after the first steps; max_nonfinite=1 stops that run at once
    args = ["--grid", "lr=1e30,3e-3", "--set", "model=nano", "--set", "max_nonfinite=1", "--set", "max_failures=0"]
    args += ["--set", "max_concurrent_trials=2", "--set", "strategy=ddp", "--set", "epochs=1"]
    assert sweep_main(build, tmp_path, "f", *args) == 0
    out = capsys.readouterr().out
    rows = {r["param.lr"]: r for r in records(tmp_path / "f")}
    assert rows["1e30"]["status"] == "ERROR" and "not finite" in rows["1e30"]["error"], rows["1e30"]
    assert rows["3e-3"]["status"] == "TERMINATED" and rows["3e-3"]["error"] == ""
    assert "failed" in out and "ERROR" in (tmp_path / "f" / "report" / "trials.md").read_text()
    # MLflow (installed with the [sweep] extra) has a run per trial with its parameters and metrics
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'f' / 'mlflow.db'}")
    logged = mlflow.search_runs(experiment_names=["f"], output_format="list")
    assert sorted(r.data.params["lr"] for r in logged) == ["1e30", "3e-3"]
    assert any("zeroshot_top1" in r.data.metrics for r in logged)

    # a trial bigger than the cluster is refused before any starts: 3 workers x 0.8 CPUs on 2 CPUs
    assert sweep_main(build, tmp_path, "big", "--grid", "lr=1e-3", "--set", "num_workers=3") == 2
    assert capsys.readouterr().err.startswith("error: a trial asks for 2.55 CPUs")
    assert not (tmp_path / "big" / "runs").exists()
