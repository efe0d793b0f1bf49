"""Held-out split of a build: a fixed, seeded fraction of the shapes, chosen by a hash of their uid.

The same uid lands on the same side in every job (pretraining's periodic zero-shot, ``jobs/evaluate.py``),
on every machine and whatever the shard layout, so a shape used for evaluation is never trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

_SCALE = float(2**64)


def holdout_score(uid: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by ``(uid, seed)``."""
    digest = hashlib.blake2b(uid.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / _SCALE


def holdout_mask(uids: Iterable[str] | pa.Array | pa.ChunkedArray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask, True for the uids in the held-out ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    uids = uids.to_pylist() if isinstance(uids, pa.Array | pa.ChunkedArray) else list(uids)
    if fraction == 0.0:
        return np.zeros(len(uids), bool)
    return np.fromiter((holdout_score(u, seed) < fraction for u in uids), bool, count=len(uids))


def drop_holdout(batch: pa.Table, fraction: float, seed: int = 0) -> pa.Table:
    """The rows of ``batch`` that are not held out (a Ray Data ``map_batches`` function on pyarrow)."""
    if fraction == 0.0:
        return batch
    return batch.filter(pa.array(~holdout_mask(batch.column("uid"), fraction, seed)))


def keep_holdout(batch: pa.Table, fraction: float, seed: int = 0) -> pa.Table:
    """The held-out rows of ``batch``."""
    return batch.filter(pa.array(holdout_mask(batch.column("uid"), fraction, seed)))
