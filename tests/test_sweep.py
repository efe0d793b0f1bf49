"""Ray Tune sweeps of pretraining end to end, on the suite's shared build, with the sweep's storage in a real S3 API
(moto's server on 127.0.0.1): a sweep whose driver is killed as soon as its first trial has finished (an injected
fault, ``pipelines.faults``) is restored from the bucket and trains nothing twice; ASHA stops the trailing trial
against the rungs recorded before the kill; a failing trial is reported with its error while the others go on; every
trial starts from a checkpoint in the bucket; the report, TensorBoard per trial, MLflow; a trial bigger than the
cluster is refused before any starts."""

from __future__ import annotations

import csv
import io
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, job_env

import uni3d
from pipelines.storage import Location

pytestmark = [pytest.mark.ray, pytest.mark.slow]
# the shared build, 10% held out: 167 training shapes / 1 worker / batch 24 = 6 steps in the one epoch
TRIAL = ["model=nano", "num_workers=1", "worker_cpus=0.8", "data_cpus=0.1", "batch_size=24", "epochs=1"]
TRIAL += ["holdout_fraction=0.1", "warmup_steps=2", "eval_every=4", "log_every=2", "checkpoint_every=4"]
TRIAL += ["strategy=ddp", "max_nonfinite=1", "max_failures=0"]
SWEEP = "s3://uni3d-sweeps/sweeps/s"


def argv(build: Path, *args: str, name: str = "s") -> list[str]:
    sets = [a for s in TRIAL for a in ("--set", s)]
    return ["--data", str(build), "--storage", "s3://uni3d-sweeps/sweeps", "--name", name, *sets, *args]


def records(sweep: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO((Location.of(sweep) / "report" / "trials.csv").read_text())))


def metric_lines(run: Location) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def init(s3, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A checkpoint in the bucket that every trial starts from (``init=run:<uri>``)."""
    s3.bucket("uni3d-sweeps")
    folder = tmp_path_factory.mktemp("init") / "ckpt"
    uni3d.save_checkpoint(
        uni3d.create_model("nano", embed_dim=384), folder, meta={"teacher": "minilm:all-MiniLM-L6-v2"}
    )
    Location.of("s3://uni3d-sweeps/init/ckpt").upload(folder)
    return "s3://uni3d-sweeps/init/ckpt"


def test_a_killed_sweep_is_restored_from_the_bucket_asha_stops_the_trailing_trial_and_a_failing_one_is_reported(
    small_build: Path, init: str, ray_address: str, tmp_path: Path, capsys
) -> None:
    # Trials one at a time, in the grid's order. ASHA ranks them by the learning rate they report (a few steps of
    # training are too noisy to rank on): the 1e-12 trial trails the 3e-3 one at the first rung and is stopped.
    # lr 1e30 makes the loss non-finite at once; max_nonfinite=1 stops that run.
    args = argv(small_build, "--grid", "lr=3e-3,1e-12,1e30", "--set", f"init=run:{init}", "--set", "scheduler=asha")
    args += ["--set", "metric=lr", "--set", "mode=max", "--set", "grace_period=4", "--set", "max_concurrent_trials=1"]
    scratch = {"UNI3D_CACHE": str(tmp_path / "scratch")}  # MLflow's SQLite file, on the driver's scratch
    cmd = [sys.executable, str(ROOT / "jobs" / "sweep.py"), *args]
    env = job_env(ray_address, UNI3D_FAULTS="sweep_kill_after_trials=1", **scratch)  # joins the suite's Ray
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280, start_new_session=True)
    assert first.returncode == -signal.SIGKILL, first.stdout[-3000:] + first.stderr[-3000:]
    # the job's stdout is not a terminal: the trials' datasets log lines, no tqdm bars (Ray Data's or a teacher's)
    bars = [line for line in (first.stdout + first.stderr).splitlines() if "it/s]" in line or "row/s]" in line]
    assert not bars, bars[:5]
    (done,) = [r for r in records(SWEEP) if r["status"] == "TERMINATED"]  # the report, written while trials run
    assert done["param.lr"] == "3e-3"

    from jobs.sweep import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNI3D_CACHE", scratch["UNI3D_CACHE"])
        assert main(args) == 0  # the same command: restored from the bucket
    out = capsys.readouterr().out
    assert f"resuming {SWEEP}" in out, first.stderr[-3000:] + out[-3000:]
    assert "'ERROR': 1" in out, out[-3000:]  # the summary line: {'TERMINATED': 1, 'STOPPED': 1, 'ERROR': 1}

    rows = {r["param.lr"]: r for r in records(SWEEP)}
    assert sorted(rows) == ["1e-12", "1e30", "3e-3"]
    assert rows["3e-3"]["status"] == "TERMINATED" and rows["3e-3"]["steps"] == rows["3e-3"]["total_steps"] == "6"
    assert rows["1e-12"]["status"] == "STOPPED" and int(rows["1e-12"]["steps"]) < 6, rows["1e-12"]  # ASHA, rung 1
    assert rows["1e30"]["status"] == "ERROR" and "not finite" in rows["1e30"]["error"], rows["1e30"]
    for lr, row in rows.items():
        run = Location.of(SWEEP) / row["run_dir"]
        config = json.loads((run / "config.json").read_text())
        assert config["train"]["init"] == f"run:{init}"  # kept as a URI
        if lr == "3e-3":  # finished before the kill: never started again
            assert len((run / "trial_starts.jsonl").read_text().splitlines()) == 1
            assert (run / "final" / "config.json").is_file(), "\n".join(f.uri for f in run.files())
        if lr != "1e30":
            evals = [m for m in metric_lines(run) if "zeroshot_top1" in m]
            assert evals and float(row["best_top1"]) == pytest.approx(max(m["zeroshot_top1"] for m in evals))
            assert float(row["final_top1"]) == pytest.approx(evals[-1]["zeroshot_top1"])
            _check_tensorboard(run, row)
    names = {f.uri.removeprefix(SWEEP + "/") for f in Location.of(SWEEP).files()}
    assert {"sweep.json", "scheduler_state.pkl", "report/index.html", "report/trials.md"} <= names
    assert any(n.startswith("experiment_state-") for n in names)  # Tune's own state, for Tuner.restore
    for png in ("scaling.png", "curves.png", "init_ablation.png"):
        assert (Location.of(SWEEP) / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (Location.of(SWEEP) / "report" / "index.html").read_text()
    assert (
        all(r["trial_id"] in html for r in rows.values())
        and "ERROR" in (Location.of(SWEEP) / "report" / "trials.md").read_text()
    )
    # MLflow (installed with the [sweep] extra): a run per trial with its parameters, on the driver's scratch
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'scratch' / 'mlflow' / 's.db'}")
    logged = mlflow.search_runs(experiment_names=["s"], output_format="list")
    assert {r.data.params["lr"] for r in logged} == {"3e-3", "1e-12", "1e30"}
    assert any("zeroshot_top1" in r.data.metrics for r in logged)

    # a trial bigger than the cluster is refused before any starts: 3 workers x 0.8 CPUs on 2 CPUs
    assert main(argv(small_build, "--grid", "lr=1e-3", "--set", "num_workers=3", name="big")) == 2
    assert capsys.readouterr().err.startswith("error: a trial asks for 2.55 CPUs")
    assert not (Location.of("s3://uni3d-sweeps/sweeps/big") / "runs").exists()


def _check_tensorboard(run: Location, row: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from pipelines.storage import local_copy

    with local_copy(run / "tensorboard") as folder:
        events = EventAccumulator(str(folder))
        events.Reload()
    assert {"train/loss", "train/lr", "train/logit_scale", "eval/zeroshot_top1"} <= set(events.Tags()["scalars"])
    top1 = [e.value for e in events.Scalars("eval/zeroshot_top1")]
    assert max(top1) == pytest.approx(float(row["best_top1"]), abs=1e-4)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["lr"].number_value == pytest.approx(float(row["param.lr"]))
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "eval/zeroshot_top1" in {m.name.tag for m in experiment.metric_infos}


def test_the_readmes_sweep_line_runs_at_the_default_trial_resources(
    small_build: Path, ray_address: str, tmp_path: Path, capsys
) -> None:
    """The README's sweep line as printed (its flags; shrunk only through --set) on the suite's 2-CPU Ray: the
    recipe's trial resources fit, the plan is printed before the first trial, and all six trials finish."""
    (line,) = [
        s for s in (ROOT / "README.md").read_text().splitlines() if s.startswith(".venv/bin/python jobs/sweep.py")
    ]
    args = [a.replace("demo/build", str(small_build)) for a in shlex.split(line)[2:]]
    shrink = ["epochs=1", "holdout_fraction=0.1", "batch_size=24", "eval_every=3", "checkpoint_every=1000"]
    args += [a for s in shrink for a in ("--set", s)] + ["--storage", str(tmp_path), "--name", "readme"]
    from jobs.sweep import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNI3D_CACHE", str(tmp_path / "scratch"))
        assert main(args) == 0
    out = capsys.readouterr().out
    plan = next(s for s in out.splitlines() if s.startswith("[sweep] plan: "))
    assert "1 trial at once, each 1.55 CPUs (process 0.05 + 2 workers x 0.5 + data 0.5) and 0 GPUs" in plan, plan
    assert out.index("[sweep] plan: ") < out.index("[sweep] 6 trials over model, lr")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "readme" / "report" / "trials.csv").read_text())))
    assert sorted((r["param.model"], r["param.lr"]) for r in rows) == sorted(
        (m, lr) for m in ("nano-s", "nano", "nano-l") for lr in ("1e-3", "3e-3")
    )
    assert all(r["status"] == "TERMINATED" and r["steps"] == r["total_steps"] for r in rows), rows
