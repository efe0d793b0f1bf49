"""Joining Ray the way every job does: the cluster at ``--address``, else ``$RAY_ADDRESS`` (set by
``ray job submit``), else the cluster that ``ray start`` recorded on this machine, else a new local Ray.

Ray's own lookup reads the address that ``ray start`` writes to ``<ray temp dir>/ray_current_cluster``.
Only ``ray stop`` removes that file, so a head that was killed leaves it behind, and ``ray.init()`` then
waits minutes for a cluster that is gone. Here the recorded address is probed first (one TCP connect
to its GCS port, at most ``PROBE_TIMEOUT_S``): a live cluster is joined as Ray would, a dead one is
named in one line and a local Ray is started instead.

Worker output reaches the driver (``log_to_driver``), so under ``ray job submit`` the errors, retries
and warnings of every actor and Train worker are in ``ray job logs``. Token authentication (on by
default from Ray 2.59 for clusters started with ``ray start``) needs nothing here: a job started by the
job server inherits its token, and a client outside the cluster sets ``RAY_AUTH_MODE=token`` (README).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import dataclass

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Recorded:
    """The address ``ray start`` left in ``file``, and whether a GCS answers there."""

    file: str
    address: str
    alive: bool


def address_file() -> str:
    """Where ``ray start`` records the head's address (``/tmp/ray/ray_current_cluster`` by default)."""
    from ray._common.utils import get_ray_address_file

    return get_ray_address_file(None)


def gcs_answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at ``host:port`` within ``timeout`` seconds."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def recorded_cluster(timeout: float = PROBE_TIMEOUT_S) -> Recorded | None:
    """The cluster recorded on this machine by ``ray start``, probed; None when nothing is recorded."""
    path = address_file()
    try:
        with open(path) as f:
            address = f.read().strip()
    except OSError:
        return None
    if not address:
        return None
    return Recorded(path, address, gcs_answers(address, timeout))


def resolve_address(address: str | None) -> str | None:
    """The address to pass to ``ray.init``: the one given, ``$RAY_ADDRESS``, a live recorded cluster, or
    ``"local"`` (a new local Ray) when the recorded one is dead, which is said in one line on stderr."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        return address
    recorded = recorded_cluster()
    if recorded is None:
        return None  # nothing recorded: ray.init starts a local Ray
    if recorded.alive:
        return recorded.address  # Ray's convention: join the cluster `ray start` began on this machine
    print(
        f"[ray] ignoring {recorded.file}: no Ray cluster answers at {recorded.address} (a head that was killed "
        "rather than stopped leaves this file); starting a local Ray",
        file=sys.stderr,
        flush=True,
    )
    return "local"


# Ray Data (2.60) reads Parquet footers with a pool of actors, 32 unless this variable says otherwise: a new
# process each, for every read. Sized for a cluster; on one machine a few cores' worth of them is plenty.
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


def size_for_this_machine(num_cpus: int | None = None) -> None:
    """Before a local Ray starts (its workers inherit this process's environment): Ray Data's Parquet footer
    actors to one per 4 cores (at least 1, at most Ray's 32), unless ``$RAY_DATA_PARQUET_FOOTER_NUM_ACTORS``
    is set."""
    cpus = num_cpus or os.cpu_count() or 1
    os.environ.setdefault(FOOTER_ACTORS_ENV, str(max(1, min(32, cpus // 4))))


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(ap: argparse.ArgumentParser) -> None:
    """The jobs' ``--log-level`` flag (Python logging, in the driver and in this job's Ray workers)."""
    ap.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="Python logging level of the job's own loggers, on the driver and its Ray workers (default INFO); "
        "download retries and skipped files are WARNING",
    )


def setup_logging(level: str = "INFO") -> None:
    """Python logging for a job's driver: ``time LEVEL logger: message`` lines on stderr at ``level``."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pipelines").setLevel(level)
    logging.getLogger("uni3d").setLevel(level)


def data_progress(ray_tqdm: bool | None = None) -> bool:
    """How Ray Data shows progress from this process on: tqdm bars where a person watches a terminal, plain log lines
    in CI and under ``ray job submit`` (stdout is not a terminal there). Ray Data logs lines on a non-interactive
    driver by itself, but a dataset that runs inside a Ray worker (a sweep trial's) draws tqdm bars into the
    driver's log unless ``use_ray_tqdm`` is off. ``None``: as this process's stdout. Returns the setting, which a
    job hands to the workers that run datasets (``pipelines.sweep.run.TrialSpec``)."""
    from ray.data import DataContext

    ray_tqdm = sys.stdout.isatty() if ray_tqdm is None else ray_tqdm
    DataContext.get_current().use_ray_tqdm = ray_tqdm
    return ray_tqdm


def connect(address: str | None = None, *, worker_logs: bool = True, log_level: str = "INFO") -> None:
    """``ray.init`` once per process (already initialised: tests, notebooks, it joins that Ray), and Ray Data's
    progress output as this process's stdout allows (``data_progress``)."""
    import ray  # here: a job's --help and its argument errors come before Ray is imported

    setup_logging(log_level)
    if not ray.is_initialized():
        address = resolve_address(address)
        if address in (None, "local"):
            size_for_this_machine()
        ray.init(address=address, log_to_driver=worker_logs, logging_config=ray.LoggingConfig(log_level=log_level))
    data_progress()
