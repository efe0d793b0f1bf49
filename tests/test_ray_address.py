"""Which Ray a job joins (``pipelines.ray_connect``), and a suite that is immune to a stale address file.

``ray start`` records its head's address in ``<ray temp dir>/ray_current_cluster`` and only ``ray stop`` removes
it, so a head that was killed leaves the file behind. Ray's own ``ray.init()`` then fails or waits minutes for a
cluster that is gone. Jobs probe the recorded address and start a local Ray when nothing answers there; the suite
starts its Ray with ``address="local"``. (A live head from ``ray start`` is joined: test_ray_submit.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

from pipelines import ray_connect


def dead_address() -> str:
    """A loopback port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An address file of the test's own, in place of Ray's, and no ``$RAY_ADDRESS``."""
    path = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(ray_connect, "address_file", lambda: str(path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return path


def test_an_address_given_or_in_the_environment_is_used_as_it_is(recorded: Path, monkeypatch) -> None:
    recorded.write_text(dead_address())
    assert ray_connect.resolve_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_connect.resolve_address(None) == "10.0.0.5:6379"
    assert ray_connect.resolve_address("local") == "local"


def test_with_nothing_recorded_ray_starts_a_local_instance(recorded: Path, capsys) -> None:
    assert ray_connect.recorded_cluster() is None and ray_connect.resolve_address(None) is None
    recorded.write_text("")
    assert ray_connect.resolve_address(None) is None and capsys.readouterr().err == ""


def test_a_live_recorded_cluster_is_joined(recorded: Path, capsys) -> None:
    with socket.socket() as gcs:  # something that answers at the recorded address, as a GCS would
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = f"127.0.0.1:{gcs.getsockname()[1]}"
        recorded.write_text(address + "\n")
        assert ray_connect.recorded_cluster() == ray_connect.Recorded(str(recorded), address, True)
        assert ray_connect.resolve_address(None) == address
    assert capsys.readouterr().err == ""


def test_a_dead_recorded_cluster_is_named_in_one_line_and_a_local_ray_started(recorded: Path, capsys) -> None:
    address = dead_address()
    recorded.write_text(address)
    assert ray_connect.resolve_address(None) == "local"
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"[ray] ignoring {recorded}: no Ray cluster answers at {address}")
    assert line.endswith("starting a local Ray")
    recorded.write_text("not-an-address")
    assert ray_connect.resolve_address(None) == "local"


@pytest.fixture
def stale_address_file() -> Iterator[str]:
    """Ray's own address file pointing at a dead cluster; any real one is saved and put back afterwards."""
    path = Path(ray_connect.address_file())
    saved = path.read_bytes() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    address = dead_address()
    path.write_text(address)
    try:
        yield address
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


@pytest.mark.slow
def test_a_job_and_the_suites_ray_fixture_both_work_beside_a_stale_address_file(
    stale_address_file: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import ray

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # as a user's shell: Ray reads the file
    build = [sys.executable, str(ROOT / "jobs" / "build_dataset.py"), "--source", "procedural"]
    build += ["--out", str(tmp_path / "x"), "--set", "source.num_shapes=8"]
    job = subprocess.run(build, env=env, capture_output=True, text=True, timeout=240)
    assert job.returncode == 0, job.stderr[-3000:]
    notices = [line for line in job.stderr.splitlines() if line.startswith("[ray] ignoring")]
    assert notices == [
        f"[ray] ignoring {ray_connect.address_file()}: no Ray cluster answers at {stale_address_file} (a head that "
        "was killed rather than stopped leaves this file); starting a local Ray"
    ]
    assert (tmp_path / "x" / "manifest.json").is_file()
    # The suite's own Ray fixture, (re)started here with the stale file in place, and with $RAY_ADDRESS unset.
    ray.shutdown()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS")
        address = request.getfixturevalue("ray_session")()
    assert address != stale_address_file and ray.get(ray.remote(lambda: 42).remote()) == 42
    assert Path(ray_connect.address_file()).read_text() == stale_address_file  # left as it was


@pytest.mark.ray
def test_the_session_ray_runs_tasks() -> None:
    import ray

    assert ray.is_initialized() and ray.get(ray.remote(lambda: 42).remote()) == 42
    assert os.environ["RAY_ADDRESS"] == "local"  # job subprocesses inherit it


def test_ray_datas_parquet_footer_actors_are_sized_for_a_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray Data starts 32 footer-reading actors (a process each) for every Parquet read unless told otherwise
    env = ray_connect.FOOTER_ACTORS_ENV
    for cpus, want in ((2, "1"), (8, "2"), (64, "16"), (512, "32")):
        monkeypatch.delenv(env, raising=False)
        ray_connect.size_for_this_machine(cpus)
        assert os.environ[env] == want, cpus
    monkeypatch.setenv(env, "5")  # the user's own setting stays
    ray_connect.size_for_this_machine(2)
    assert os.environ[env] == "5"


def test_ray_datas_progress_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = ctx.use_ray_tqdm
    try:
        monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # CI, `ray job submit`: lines from workers too
        assert ray_connect.data_progress() is False and ctx.use_ray_tqdm is False
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # a person at a terminal: bars
        assert ray_connect.data_progress() is True and ctx.use_ray_tqdm is True
        assert ray_connect.data_progress(False) is False  # what a sweep hands its trials
    finally:
        ctx.use_ray_tqdm = before
