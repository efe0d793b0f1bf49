"""A build's failures table: one row per shape that failed, with its stage, and whether a re-run may pass.

``retry_failures`` builds again the shapes whose failure was transient (a timeout, an HTTP 5xx, a lost worker),
never the ones whose file is broken. Its columns are ``pipelines.build.schema.FAILURES_SCHEMA``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from pipelines.build.schema import FAILURES_SCHEMA, STAGES


def failure_row(uid: str, source: str, stage: str, error: BaseException, max_chars: int = 2000) -> dict[str, Any]:
    """One row of :data:`~pipelines.build.schema.FAILURES_SCHEMA`: ``error`` raised for ``uid`` at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    message = str(error)[:max_chars]
    return {
        "uid": uid,
        "source": source,
        "stage": stage,
        "error_type": type(error).__name__,
        "message": message,
        "transient": error_is_transient(stage, error),
    }


def failures_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=FAILURES_SCHEMA)


# Which failures a re-run with ``retry_failures`` builds again (docs/dataset.md, "Failures"). Downloads, the
# teacher and the shard writer fail for reasons that pass (a hub answering 503, a teacher out of GPU memory); a
# mesh that does not load, sample or render fails the same way on every run, and so does a row make_row refuses.
TRANSIENT_STAGES = ("fetch", "embed_image", "embed_text", "write")
# The machine's errors, not the input's: transient in every stage (torch's out-of-memory is OutOfMemoryError).
MACHINE_ERRORS = (
    "MemoryError",
    "OutOfMemoryError",
    "TimeoutError",
    "ConnectionError",
    "ConnectionResetError",
    "ConnectionRefusedError",
    "ConnectionAbortedError",
    "BrokenPipeError",
)
# Refusals of the input: permanent at fetch (a locator that is no path) and write (make_row's checks).
INPUT_ERRORS = ("ValueError", "MeshError")
# HTTP answers that say the file is not there to fetch: 4xx, but for timeout and rate limit.
RETRIED_4XX = (408, 429)


def is_transient(stage: str, error_types: Sequence[str], http_status: int | None = None) -> bool:
    """Whether a failure at ``stage`` may pass on a re-run.

    ``error_types`` is the exception's class name and, when the exception itself is at hand, its bases'
    (a row read back knows the class name only); ``http_status`` is the server's answer to a fetch."""
    if any(t in MACHINE_ERRORS for t in error_types):
        return True
    if stage not in TRANSIENT_STAGES:
        return False
    if stage in ("embed_image", "embed_text"):
        return True  # the teacher fails whole batches: out of memory, a device error, one bad neighbour
    if any(t in INPUT_ERRORS for t in error_types):
        return False
    return http_status is None or not (400 <= http_status < 500 and http_status not in RETRIED_4XX)


def error_is_transient(stage: str, error: BaseException) -> bool:
    """:func:`is_transient` for an exception: its class and bases, and its ``status`` (``DownloadError``)."""
    status = getattr(error, "status", None)
    names = [cls.__name__ for cls in type(error).__mro__]
    return is_transient(stage, names, status if isinstance(status, int) else None)


def failure_is_transient(row: Mapping[str, Any]) -> bool:
    """A failures-table row: its recorded ``transient``, else (a table written before that column) the rule
    applied to its stage, error type and the last ``HTTP <code>`` in its message (pipelines.sources.download's)."""
    if row.get("transient") is not None:
        return bool(row["transient"])
    message = row.get("message") or ""
    _, found, rest = message.rpartition("HTTP ")
    status = int(rest[:3]) if found and rest[:3].isdigit() else None
    return is_transient(row["stage"], [row.get("error_type") or ""], status)
