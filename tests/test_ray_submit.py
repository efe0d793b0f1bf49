"""Ray as users start it: `ray start --head` with token authentication, the jobs through
`ray job submit --working-dir .`, and the package that `--working-dir .` uploads."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["jobs/pretrain.py", "jobs/build_dataset.py", "pipelines/train/driver.py", "uni3d/encoder.py"]
CODE += ["uni3d/data/templates.txt", "configs/recipes/cpu.yaml", "configs/sweeps/demo.yaml", "pyproject.toml"]


def _package(directory: Path, out: Path) -> zipfile.ZipFile:
    """The zip Ray builds for ``runtime_env={"working_dir": directory}`` (its own packaging code)."""
    from ray._private.runtime_env.packaging import create_package

    create_package(str(directory), out, include_gitignore=True, logger=None)
    return zipfile.ZipFile(out)


def test_the_working_dir_package_is_the_code_and_nothing_heavy(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    skip = {".venv", ".git", "demo", "runs", "data", "results", "sweeps"}  # at the top only: uni3d/data is code

    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n == "__pycache__" or (Path(folder) == ROOT and n in skip)}

    shutil.copytree(ROOT, repo, ignore=ignore)
    heavy = {
        ".venv/lib/python3.11/site-packages/torch/lib/libtorch.so": 3 << 20,
        ".git/objects/pack/pack-1.pack": 1 << 20,
        "demo/build/shards/part-0.parquet": 1 << 20,
        "runs/demo/final/model.safetensors": 1 << 20,
        "sweeps/s/runs/t/tensorboard/events.out.tfevents.1": 1 << 16,
        "data/procedural/manifest.json": 100,
        "results/report.md": 100,
        "uni3d-g.pt": 1 << 20,
        "eva02_e14_plus.bin": 1 << 20,
        "my-runs/r/checkpoint_000001/deepspeed/state/mp_rank_00_model_states.pt": 1 << 20,
    }
    for rel, size in heavy.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(b"\0" * size)
    names = set(_package(repo, tmp_path / "pkg.zip").namelist())
    assert not names & set(heavy), sorted(names & set(heavy))
    assert not [n for n in names if n.startswith((".venv/", ".git/", "demo/", "runs/", "sweeps/"))]
    assert set(CODE) <= names, sorted(set(CODE) - names)
    assert (tmp_path / "pkg.zip").stat().st_size < 4 << 20
    # and this checkout as it is, whatever it holds (a venv, the demo's output, runs): measured, printed
    real = _package(ROOT, tmp_path / "real.zip")
    size = (tmp_path / "real.zip").stat().st_size
    print(f"\nworking-dir package of {ROOT}: {len(real.namelist())} files, {size / 2**20:.2f} MiB")
    assert not [n for n in real.namelist() if n.startswith((".venv/", ".git/"))]
    assert size < 16 << 20  # Ray refuses packages over ~512 MiB and warns long before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "ray"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _submit(job: list[str], env: dict[str, str], name: str) -> subprocess.CompletedProcess:
    """``ray job submit`` as submission ``name``, again while the head's job agent is still starting ("No available
    agent to submit job, please try again later" is Ray's own answer for that)."""
    deadline = time.monotonic() + 120
    while True:
        cmd = ["job", "submit", "--submission-id", name, "--working-dir", ".", "--", *job]
        done = _ray(*cmd, env=env, timeout=900)
        if "No available agent" not in done.stdout + done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.cluster  # its own head, started with `ray start`
def test_ray_start_head_then_both_jobs_through_ray_job_submit() -> None:
    import uni3d

    # short paths: Ray's unix sockets live under the temp dir; its own HOME keeps the auth token here
    base = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    env = {**os.environ, "HOME": str(base / "home"), "TMPDIR": str(base), "RAY_TMPDIR": str(base)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` in the entrypoints
    env["PYTHONUNBUFFERED"] = "1"  # the head's log, as it happens, for the failure message
    env.pop("RAY_ADDRESS", None)
    (base / "home").mkdir()
    # the README's first line: a token in ~/.ray/auth_token (any local `python jobs/...` run writes one too);
    # `ray start` turns token authentication on when it finds one
    made = _ray("get-auth-token", "--generate", env=env, timeout=120)
    assert made.returncode == 0 and (base / "home" / ".ray" / "auth_token").is_file(), made.stderr[-2000:]
    # every port its own: another Ray on this machine (the suite's, a user's) holds the defaults, such as the
    # dashboard agent's 52365, and a head whose agent cannot bind answers "No available agent" for ever
    port, dash, agent, client_port, metrics = (_free_port() for _ in range(5))
    log = open(base / "head.log", "w")  # noqa: SIM115 (closed with the head)
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus=2",
         "--disable-usage-stats", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
         f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client_port}",
         f"--metrics-export-port={metrics}",
         f"--temp-dir={base / 'ray'}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    client = {**env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"http://127.0.0.1:{dash}"}
    try:
        deadline = time.monotonic() + 180
        while _ray("job", "list", env=client, timeout=60).returncode != 0:
            assert head.poll() is None and time.monotonic() < deadline, (base / "head.log").read_text()[-4000:]
            time.sleep(2)
        bare = {k: v for k, v in client.items() if k != "RAY_AUTH_MODE"}
        refused = _ray("job", "list", env=bare, timeout=60)  # the error users meet without RAY_AUTH_MODE=token
        assert refused.returncode != 0 and "authentication token" in (refused.stdout + refused.stderr).lower()
        build, runs = base / "build", base / "runs"
        sets = ["source.num_shapes=48", "num_points=512", "rows_per_shard=16", "progress_every_s=1000"]
        # the pretraining's only worker exits before step 2 (an injected fault, pipelines.faults), once
        jobs = {
            "build": ["python", "jobs/build_dataset.py", "--out", str(build), *[a for s in sets for a in ("--set", s)]],
            "pretrain": ["UNI3D_FAULTS=train_exit=0@2", "python", "jobs/pretrain.py", "--data", str(build),
                         "--storage", str(runs), "--name", "submitted", "--model", "nano", "--set", "batch_size=16",
                         "--set", "epochs=1", "--set", "num_workers=1", "--set", "holdout_fraction=0",
                         "--set", "eval_every=0", "--set", "strategy=ddp", "--set", "max_failures=1"],
        }  # fmt: skip
        for name, job in jobs.items():
            done = _submit(job, client, name)
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        model = uni3d.load_checkpoint(runs / "submitted" / "final")
        assert sum(p.numel() for p in model.parameters()) > 0
        # The worker's error and Ray Train's retry are in the job's logs (worker output is not hidden from them)
        logs = _ray("job", "logs", "pretrain", env=client, timeout=60)
        assert logs.returncode == 0, logs.stderr[-2000:]
        assert "[fault] rank 0 exits before step 2 (train_exit)" in logs.stdout, logs.stdout[-4000:]
        assert "[FailurePolicy] RETRY" in logs.stdout and "Source: worker group" in logs.stdout, logs.stdout[-4000:]
        assert "[pretrain] done: 3 steps" in logs.stdout, logs.stdout[-4000:]
        # A job started by hand on this machine, with no --address and no RAY_ADDRESS, joins the head that
        # `ray start` recorded in <ray temp dir>/ray_current_cluster (Ray's convention), since it answers.
        assert (base / "ray" / "ray_current_cluster").read_text().strip().endswith(f":{port}")
        here = {k: v for k, v in client.items() if k != "RAY_ADDRESS"}
        # The submitted build's command again, by hand: it joins the head, finds every shape written, builds nothing.
        direct = [sys.executable, *jobs["build"][1:]]
        joined = subprocess.run(direct, env=here, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert joined.returncode == 0, joined.stderr[-4000:]
        assert "Connecting to existing Ray cluster" in joined.stderr and f":{port}" in joined.stderr
        assert "[ray] ignoring" not in joined.stderr
        assert "0 shapes to build" in joined.stdout, joined.stdout[-3000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's processes end; `ray start --block` itself may not
        try:
            head.wait(1)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
        log.close()
        shutil.rmtree(base, ignore_errors=True)
