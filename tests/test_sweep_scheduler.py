"""ASHA's rungs survive a restored sweep: Tune restores trials and searchers, not the scheduler's records."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from pipelines.sweep.run import ResumableASHA


def _asha(state: Path) -> ResumableASHA:
    asha = ResumableASHA(state_file=str(state), time_attr="step", max_t=16, grace_period=4, reduction_factor=2)
    asha.set_search_properties(metric="top1", mode="max")
    return asha


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id)


def test_a_restored_asha_stops_a_trailing_trial_against_the_rungs_recorded_before_the_kill(tmp_path: Path) -> None:
    state = tmp_path / "scheduler_state.pkl"
    first = _asha(state)
    leader = _trial("a")
    first.on_trial_add(None, leader)
    assert first.on_trial_result(None, leader, {"step": 4, "top1": 50.0}) == TrialScheduler.CONTINUE
    first.on_trial_complete(None, leader, {"step": 16, "top1": 60.0})
    assert state.exists()

    # the sweep driver is killed; Tuner.restore unpickles the scheduler as it was built (tuner.pkl): empty rungs
    restored = pickle.loads(pickle.dumps(_asha(state)))
    trailing = _trial("b")
    restored.on_trial_add(None, trailing)
    assert restored.on_trial_result(None, trailing, {"step": 4, "top1": 10.0}) == TrialScheduler.STOP

    # what the fix is for: without the saved rungs the same trial goes on
    state.unlink()
    fresh = _asha(state)
    fresh.on_trial_add(None, trailing)
    assert fresh.on_trial_result(None, trailing, {"step": 4, "top1": 10.0}) == TrialScheduler.CONTINUE


def test_the_restored_state_keeps_the_state_file_it_was_read_from(tmp_path: Path) -> None:
    old, new = tmp_path / "old.pkl", tmp_path / "moved" / "scheduler_state.pkl"
    first = _asha(old)
    first.on_trial_add(None, _trial("a"))
    first.on_trial_result(None, _trial("a"), {"step": 4, "top1": 50.0})
    new.parent.mkdir()
    new.write_bytes(old.read_bytes())  # the sweep's folder moved
    moved = _asha(new)
    moved.on_trial_add(None, _trial("b"))
    assert moved.state_file == str(new)
    moved.on_trial_result(None, _trial("b"), {"step": 4, "top1": 70.0})
    assert pickle.loads(new.read_bytes())["_brackets"][0]._rungs[-1][1] == {"a": 50.0, "b": 70.0}


def test_a_trial_stopped_before_the_kill_and_resumed_by_tune_is_stopped_again(tmp_path: Path) -> None:
    state = tmp_path / "scheduler_state.pkl"
    first = _asha(state)
    leader, trailing = _trial("a"), _trial("b")
    for trial in (leader, trailing):
        first.on_trial_add(None, trial)
    assert first.on_trial_result(None, leader, {"step": 4, "top1": 50.0}) == TrialScheduler.CONTINUE
    assert first.on_trial_result(None, trailing, {"step": 4, "top1": 10.0}) == TrialScheduler.STOP
    # killed before Tune saved the stop: the restored Tune resumes "b" from its step-4 checkpoint, and its next
    # result (step 6) comes to a scheduler whose rung at 4 already records it
    restored = pickle.loads(pickle.dumps(_asha(state)))
    restored.on_trial_add(None, trailing)
    assert restored.on_trial_result(None, trailing, {"step": 6, "top1": 12.0}) == TrialScheduler.STOP
    # ASHA's own rule alone lets it go on: a trial recorded at a rung is not compared there again
    without = pickle.loads(state.read_bytes())
    without["_stopped"] = set()
    state.write_bytes(pickle.dumps(without))
    forgetful = _asha(state)
    forgetful.on_trial_add(None, trailing)
    assert forgetful.on_trial_result(None, trailing, {"step": 6, "top1": 12.0}) == TrialScheduler.CONTINUE
    # a trial that reaches max_t still ends by itself, and is not recorded as stopped
    assert restored.on_trial_result(None, leader, {"step": 16, "top1": 60.0}) == TrialScheduler.CONTINUE
    assert pickle.loads(state.read_bytes())["_stopped"] == {"b"}
