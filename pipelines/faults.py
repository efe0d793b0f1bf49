"""Faults injected on purpose, so that tests show recovery at a chosen point instead of racing a timer.

Set on the driver with the environment variable ``UNI3D_FAULTS``, comma-separated ``key=value`` pairs;
never set in normal use:

- ``build_kill_after_shards=K``: the writer task that finds K shards written kills the build's driver (SIGKILL),
  as a machine that goes down would: whatever is in flight is lost, the shards written stay.
- ``build_hold_after_shards=K``: the build's driver stops reading once K shards are written, writes the
  file ``<out>/_work/fault-held`` and waits for ``<out>/_work/fault-release`` (a test removes a node
  in between).
- ``sweep_kill_after_trials=N``: the sweep's driver kills itself as soon as N trials have finished; with
  ``sweep_kill_at_step=S`` too, only once Tune's state saved in the sweep's folder records every trial finished so
  far and a trial started after the N-th finished has reported a result at step S or later (its checkpoint of
  that step is in its run's storage by then: it is reported with it or before).
- ``train_exit=R@S``: Ray Train rank R exits (``os._exit``) when it is about to take step S, once per
  run (the marker ``<run>/faults/exited-R@S`` says it happened; the restarted worker group goes on). It exits
  once the run's ``metrics.jsonl`` has the line of the last logged step before S, so every report made
  before the exit has reached the driver (Ray Train collects reports asynchronously: one still queued on a
  worker when it dies is lost).
- ``train_hold=R@S``: rank R (``*``: every rank) writes ``<run>/faults/held-R@S`` (its node's id) when it is
  about to take step S, once per run, and waits there until its process is ended (a test removes its node).

- ``train_fault_run=TEXT``: the Train faults above apply only to runs whose name contains TEXT (a sweep's trials
  get the sweep driver's faults; this picks the trial).

Train faults reach the workers through the trainer's loop config, so they work on any cluster the driver
joins; the markers live in the run's storage (a local folder or a URI).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

ENV = "UNI3D_FAULTS"
KEYS = (
    "build_kill_after_shards",
    "build_hold_after_shards",
    "sweep_kill_after_trials",
    "sweep_kill_at_step",
    "train_exit",
    "train_hold",
    "train_fault_run",
)


def faults() -> dict[str, str]:
    """The faults set in ``$UNI3D_FAULTS`` (empty in normal use); an unknown key is an error."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key not in KEYS:
            raise ValueError(f"{ENV}: {part!r} is not one of {', '.join(k + '=…' for k in KEYS)}")
        out[key] = value.strip()
    return out


def kill_self(why: str) -> None:
    """End this process at once, as ``kill -9`` would (no clean-up, no ``finally``)."""
    print(f"[fault] {why}: killing this driver", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def writer_fault() -> dict[str, int]:
    """The build's writer tasks' fault (``write_shards(fault=...)``): the driver's pid and K, or empty."""
    kill = int(faults().get("build_kill_after_shards", 0) or 0)
    return {"kill_pid": os.getpid(), "after": kill} if kill else {}


def after_shard_written(fault: dict[str, int], shards_written: Callable[[], int]) -> None:
    """A writer task's hook, after it wrote its shard: kill the driver once K shards are written."""
    if fault and shards_written() >= fault["after"]:
        print(f"[fault] {fault['after']} shards written: killing the build's driver", file=sys.stderr, flush=True)
        try:
            os.kill(fault["kill_pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass  # another writer got there first


def after_shards(written: int, work_dir: Callable[[str], Any]) -> None:
    """The build driver's hook, called with the number of shards (or failures files) this run has seen written.

    ``work_dir(name)`` is the ``pipelines.storage.Location`` of ``<out>/_work/<name>``."""
    hold = int(faults().get("build_hold_after_shards", 0) or 0)
    if hold and written >= hold:
        held, release = work_dir("fault-held"), work_dir("fault-release")
        if not release.exists():
            held.write_text(str(written))
            print(f"[fault] {written} shards written: holding until {release} exists", file=sys.stderr, flush=True)
            while not release.exists():
                time.sleep(0.1)


def train_fault(run_name: str = "") -> dict[str, tuple[int, int]]:
    """The Train faults for the loop config: ``{"exit" | "hold": (rank, step)}``, rank -1 for every rank; none
    for a run whose name does not contain ``train_fault_run`` when that is set."""
    only = faults().get("train_fault_run")
    if only and only not in run_name:
        return {}
    out = {}
    for kind in ("exit", "hold"):
        spec = faults().get(f"train_{kind}")
        if spec:
            rank, _, step = spec.partition("@")
            out[kind] = (-1 if rank == "*" else int(rank), int(step))
    return out


def before_step(
    spec: dict[str, tuple[int, int]], rank: int, step: int, run_dir: Any, node_id: str, logged: int = 0
) -> None:
    """A Train worker's hook, called before it takes ``step`` (1-based). ``run_dir`` is the run's Location; the
    marker ``<run>/faults/{exited|held}-<rank>@<step>`` holds the worker's node id. ``logged``: the last step
    before ``step`` that has a metrics line (0: none)."""
    for kind, (at_rank, at_step) in spec.items():
        if at_rank not in (-1, rank) or step != at_step:
            continue
        marker = run_dir / "faults" / f"{'exited' if kind == 'exit' else 'held'}-{rank}@{step}"
        if marker.exists():
            continue  # once per run: the restarted worker group goes on
        marker.parent.mkdir()
        marker.write_text(node_id)
        if kind == "exit":
            _wait_for_metrics_line(run_dir / "metrics.jsonl", logged)
            print(f"[fault] rank {rank} exits before step {step} (train_exit)", file=sys.stderr, flush=True)
            os._exit(1)
        print(f"[fault] rank {rank} holds before step {step} (train_hold) on node {node_id}", flush=True)
        while True:
            time.sleep(1)


def _wait_for_metrics_line(metrics: Any, step: int, timeout_s: float = 120.0) -> None:
    """Wait until the run's metrics log (a Location) has the line of ``step`` (nothing to wait for at 0)."""
    deadline = time.monotonic() + timeout_s
    while step and time.monotonic() < deadline:
        text = metrics.read_text() if metrics.exists() else ""
        if any(json.loads(line).get("step") == step for line in text.splitlines(keepends=True) if line.endswith("\n")):
            return
        time.sleep(0.1)
    if step:
        print(f"[fault] no metrics line for step {step} after {timeout_s:.0f} s: exiting anyway", file=sys.stderr)
