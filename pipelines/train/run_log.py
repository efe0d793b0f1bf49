"""A run's metrics log, written on the driver side from what the workers report to Ray Train.

``RunLog`` is a Ray Train ``UserCallback``: it runs in the Train controller (one process per run, on the
driver's side of the cluster), receives every ``ray.train.report`` and writes rank 0's metrics into the
run's storage: ``metrics.jsonl`` (a plain line per report) and ``tensorboard/`` (scalars and, for a sweep
trial, the HParams records). The storage may be a local folder or a URI: for object storage the files are
kept in a local folder of the controller and uploaded after each report, so nothing assumes a folder
shared by the nodes. Each report can also go to a ``ray.util.queue.Queue``, from which the driver prints
the progress lines (``Progress``).

A resumed run, and a run whose workers Ray Train restarted after a failure, starts again from its last
checkpoint's step: the lines and events logged after that step are dropped, so the log reads as one
uninterrupted run (each line's ``start_step`` says which start wrote it).
"""

from __future__ import annotations

import atexit
import json
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.train import UserCallback

from pipelines.build.splits import METRIC_PREFIX
from pipelines.storage import Location

EVAL_PREFIXES = tuple(METRIC_PREFIX.values())  # zeroshot_top1, unseen_top1, ...: TensorBoard's eval/ group
HPARAM_METRICS = ("eval/zeroshot_top1", "eval/unseen_top1", "eval/zeroshot_top5", "train/loss", "train/acc_text")


def hparam_metrics(unseen: bool) -> tuple[str, ...]:
    """The HParams table's metric columns: ``eval/unseen_top1`` only for a run that holds out categories."""
    return HPARAM_METRICS if unseen else tuple(m for m in HPARAM_METRICS if m != "eval/unseen_top1")


NOT_SCALARS = ("step", "time", "start_step")


def read_metrics_lines(text: str) -> list[dict[str, Any]]:
    """The complete lines of a metrics log (a line cut by a kill is left out)."""
    lines = text.splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]


class RunLog(UserCallback):
    def __init__(
        self,
        run_dir: str,
        tensorboard: bool = True,
        hparams: dict[str, Any] | None = None,
        queue: Any = None,
        metrics: tuple[str, ...] = HPARAM_METRICS,
    ) -> None:
        self.run_dir, self.tensorboard, self.hparams, self.queue = run_dir, tensorboard, hparams or {}, queue
        self.metrics = metrics  # the HParams table's metric columns
        self._open = False

    def __getstate__(self) -> dict[str, Any]:  # the controller gets a fresh one: no writer, no folder
        kept = ("run_dir", "tensorboard", "hparams", "queue", "metrics")
        return {k: v for k, v in self.__dict__.items() if k in kept}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open = False

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        m = metrics[0] if metrics else {}
        if "step" not in m:
            return
        start = int(m.get("start_step", 0))
        if not self._open:
            self._open_log()
        if start != self._start_step:  # a new session, or workers restarted from a checkpoint after a failure
            self._resume_at(start)
        with open(self._metrics_file, "a") as f:
            f.write(json.dumps(m) + "\n")
        if self._writer is not None:
            for key, value in m.items():
                if key not in NOT_SCALARS and isinstance(value, int | float) and math.isfinite(value):
                    tag = f"eval/{key}" if key.startswith(EVAL_PREFIXES) else f"train/{key}"
                    self._writer.add_scalar(tag, value, m["step"])
            self._writer.flush()
        self._sync()
        if self.queue is not None:
            try:
                self.queue.put(m)
            except Exception as exc:  # the progress lines are a convenience: never fail a run for them
                print(f"[pretrain] progress lines stop: the driver's queue is gone ({type(exc).__name__})", flush=True)
                self.queue = None

    def _open_log(self) -> None:
        """The log's folder (the run's own, or for object storage a local copy of it) and what earlier
        sessions logged."""
        where = Location.of(self.run_dir)
        self._where = where
        if where.local:
            self._folder = where.path
        else:  # the controller's copy, uploaded after each report and removed when the controller ends
            self._folder = tempfile.mkdtemp(prefix="uni3d-runlog-")
            atexit.register(shutil.rmtree, self._folder, True)
        os.makedirs(self._folder, exist_ok=True)
        self._metrics_file = os.path.join(self._folder, "metrics.jsonl")
        self._synced: dict[str, tuple[int, int]] = {}
        if not where.local and (where / "metrics.jsonl").is_file():
            (where / "metrics.jsonl").download(self._metrics_file)
        if self.tensorboard and not where.local and (where / "tensorboard").is_dir():
            (where / "tensorboard").download(os.path.join(self._folder, "tensorboard"))  # already uploaded
            self._synced = {p: _stamp(p) for p in _walk(os.path.join(self._folder, "tensorboard"))}
        self._writer, self._start_step, self._open = None, None, True

    def _resume_at(self, start_step: int) -> None:
        """Keep what was logged up to ``start_step``, the step the workers (re)started from."""
        text = Path(self._metrics_file).read_text() if os.path.exists(self._metrics_file) else ""
        kept = [line for line in read_metrics_lines(text) if line["step"] <= start_step]
        with open(self._metrics_file + ".tmp", "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in kept)
        os.replace(self._metrics_file + ".tmp", self._metrics_file)
        if self._writer is not None:
            self._writer.close()
        if self.tensorboard:
            self._writer = _summary_writer(
                os.path.join(self._folder, "tensorboard"), start_step, self.hparams, self.metrics
            )
        self._start_step = start_step

    def _sync(self) -> None:
        """Upload what changed: ``metrics.jsonl`` first, the run's record (reports and sweeps read it), then the
        TensorBoard events. A controller killed between the two (Tune ending a stopped trial) leaves TensorBoard
        one report behind."""
        if self._where.local:
            return
        self._where.child("metrics.jsonl").upload(self._metrics_file)
        for path in _walk(os.path.join(self._folder, "tensorboard")):
            if self._synced.get(path) != _stamp(path):
                self._synced[path] = _stamp(path)
                self._where.child(os.path.relpath(path, self._folder)).upload(path)


def _walk(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _summary_writer(folder: str, start_step: int, hparams: dict[str, Any], metrics: tuple[str, ...]) -> Any:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    # events at steps after the checkpoint this run resumes from were logged by the run that stopped
    writer = SummaryWriter(folder, purge_step=start_step + 1 if start_step else None)
    if hparams:  # the HParams plugin's experiment and session records, in the run's own event file
        experiment, session_start, _ = hparams_summary(hparams, {tag: 0.0 for tag in metrics})
        writer.file_writer.add_summary(experiment)
        writer.file_writer.add_summary(session_start)
        writer.flush()
    return writer


class Progress(threading.Thread):
    """On the driver: prints each report ``RunLog`` puts on its queue, as it arrives."""

    def __init__(self, queue: Any, show: Callable[[dict[str, Any]], str]) -> None:
        super().__init__(daemon=True)
        self.queue, self.show = queue, show
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.drain(timeout=1.0)
        self.drain(timeout=0.0)

    def drain(self, timeout: float) -> None:
        from ray.util.queue import Empty

        try:
            items = [self.queue.get(timeout=timeout)] if timeout else []
            items += self.queue.get_nowait_batch(self.queue.qsize())
        except Empty:
            return
        except ray.exceptions.RayActorError:  # the queue's actor is gone: nothing more to print
            self.stop.set()
            return
        for m in items:
            print(self.show(m), flush=True)
