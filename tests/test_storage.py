"""Runs, checkpoints and reports in local folders or object storage (moto's S3 API on 127.0.0.1), and the
run's metrics log written on the driver's side from Ray Train's reports, resumed runs included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3_fixtures import LocalS3

from pipelines.storage import Location, is_uri, local_copy, local_output
from pipelines.train.run_log import RunLog, read_metrics_lines


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "local":
        return Location.of(tmp_path / "root")
    request.getfixturevalue("s3").bucket("store")  # the session's S3 server (conftest)
    return Location.of(f"s3://store/{tmp_path.name}")


def test_a_location_is_a_local_path_or_a_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    here = Location.of("runs")
    assert here.uri == str(tmp_path / "runs") and here.local  # absolute at once: Ray's workers run elsewhere
    assert Location.of(f"file://{tmp_path}/x").uri == str(tmp_path / "x")
    assert is_uri("s3://b/k") and is_uri("gs://b/k") and not is_uri("/a/b") and not is_uri("file:///a")
    with pytest.raises(ValueError, match="not a local path"):
        Location.of("s3://b/k").as_path()
    assert str(Location.of("s3://b/runs/") / "r" / "final") == "s3://b/runs/r/final"
    assert (Location.of("s3://b/runs/r").parent.uri, Location.of("s3://b/runs/r").name) == ("s3://b/runs", "r")


def test_files_round_trip_through_any_location(root: Location, tmp_path: Path) -> None:
    assert not root.exists() and root.files() == []
    (root / "a" / "config.json").write_text('{"x": 1}')
    (root / "a" / "config.json").write_text('{"x": 2}')  # replaced whole
    assert json.loads((root / "a" / "config.json").read_text()) == {"x": 2}
    assert (root / "a").is_dir() and (root / "a" / "config.json").is_file()

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "m.bin").write_bytes(b"\1" * 1000)
    (src / "sub" / "n.txt").write_text("n")
    (root / "model").upload(src)
    assert [f.uri.removeprefix(root.uri) for f in root.files()] == [
        "/a/config.json",
        "/model/m.bin",
        "/model/sub/n.txt",
    ]
    (root / "model").copy_to(root / "final")
    back = (root / "final").download(tmp_path / "back")
    assert (back / "m.bin").read_bytes() == b"\1" * 1000 and (back / "sub" / "n.txt").read_text() == "n"

    with local_copy(root / "final") as folder:
        assert (folder / "sub" / "n.txt").read_text() == "n"
    with local_output(root / "report") as folder:
        (folder / "r.md").write_text("# r")
    assert (root / "report" / "r.md").read_text() == "# r"
    (root / "final").delete()
    assert not (root / "final").exists() and (root / "model").exists()


def test_local_copies_of_uris_are_temporary(s3: LocalS3, tmp_path: Path) -> None:
    (Location.of("s3://store/tmpcopy") / "f.txt").write_text("f")
    with local_copy("s3://store/tmpcopy") as folder:
        copied = folder
        assert (folder / "f.txt").read_text() == "f"
    assert not copied.exists()
    with pytest.raises(RuntimeError), local_output("s3://store/failed") as folder:
        (folder / "half.md").write_text("x")
        raise RuntimeError("the job failed")
    assert s3.keys("store/failed") == []  # nothing uploaded from a failed step


def _report(log: RunLog, step: int, start: int, **extra: float) -> None:
    metrics = {"step": step, "epoch": 0, "loss": 1.0 / step, "start_step": start, "time": 0.0, **extra}
    log.after_report(None, [metrics, dict(metrics)], None)  # every rank reports; rank 0's is logged


def _events(folder: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_the_run_log_is_written_into_the_runs_storage_and_reads_as_one_run_after_a_resume(
    root: Location, tmp_path: Path
) -> None:
    import pickle

    run = root / "r"
    first = pickle.loads(pickle.dumps(RunLog(str(run), hparams={"lr": 0.1})))  # as Ray ships it to the controller
    for step in (1, 2, 3, 4, 5):
        _report(first, step, 0, zeroshot_top1=50.0 if step == 5 else float("nan"))
    lines = read_metrics_lines((run / "metrics.jsonl").read_text())
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]

    # stopped after step 5, resumed from the checkpoint of step 3: steps 4 and 5 are trained again
    second = RunLog(str(run))
    for step in (4, 5, 6):
        _report(second, step, 3)
    lines = read_metrics_lines((run / "metrics.jsonl").read_text())
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[3]["start_step"] == 3 and "zeroshot_top1" not in lines[4]  # the stopped run's step 5 is gone
    events = _events((run / "tensorboard").download(tmp_path / "tb"))
    assert events["train/loss"] == [1, 2, 3, 4, 5, 6]  # the stopped run's 4 and 5 are purged
    assert events.get("eval/zeroshot_top1", []) == []
    assert "train/start_step" not in events and "train/time" not in events


def test_a_cut_last_line_is_left_out() -> None:
    assert read_metrics_lines('{"step": 1}\n{"step": 2}\n{"st') == [{"step": 1}, {"step": 2}]


def test_workers_restarted_within_a_run_log_from_their_checkpoint_on(root: Location) -> None:
    log = RunLog(str(root / "r"), tensorboard=False)
    for step in range(1, 8):
        _report(log, step, 0)
    for step in range(6, 9):  # a worker died after step 7; Ray Train restarted the group from step 5
        _report(log, step, 5)
    lines = read_metrics_lines((root / "r" / "metrics.jsonl").read_text())
    assert [(m["step"], m["start_step"]) for m in lines] == [(s, 0) for s in range(1, 6)] + [(6, 5), (7, 5), (8, 5)]
