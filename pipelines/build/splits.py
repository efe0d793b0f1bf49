"""Held-out split of a build: a fixed, seeded fraction of the shapes, chosen by a hash of their uid, and
optionally whole categories that are never trained on.

The same uid lands on the same side in every job (pretraining's periodic zero-shot, ``jobs/evaluate.py``),
on every machine and whatever the shard layout, so a shape used for evaluation is never trained on.
Held-out categories (``TrainConfig.holdout_categories``) measure zero-shot recognition in the sense of
CLIP-style alignment (Uni3D, arXiv 2310.06773): classes whose shapes, and so whose texts, the encoder never
trained on. Every row whose ``category`` is one of them is held out, whatever its texts say.

``sample_order`` ranks uids by a second seeded hash, so "the first k in that order" is a seeded random
sample of a set that does not depend on how its rows are spread over shards or blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# the two held-out measurements (``pipelines.evaluate.heldout``), named here so that light modules
# (``pipelines.train.run_log``, loaded by Ray Train's controller) need not import torch for them
SEEN = "held-out shapes of trained categories"
UNSEEN = "unseen categories"
METRIC_PREFIX = {SEEN: "zeroshot", UNSEEN: "unseen"}  # metrics.jsonl keys: zeroshot_top1, unseen_top1, ...
# the same two parts in an evaluation report (jobs/evaluate.py, the demo)
SEEN_PART, UNSEEN_PART = SEEN, "unseen categories (never trained on)"

_SCALE = float(2**64)


class HoldoutSettings(Protocol):
    """The fields of a ``TrainConfig`` that fix its held-out split."""

    holdout_fraction: float
    seed: int
    holdout_categories: list[str]


def holdout_score(uid: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) fixed by ``(uid, seed)``."""
    digest = hashlib.blake2b(uid.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / _SCALE


def _uids(uids: Iterable[str] | pa.Array | pa.ChunkedArray) -> list[str]:
    return uids.to_pylist() if isinstance(uids, pa.Array | pa.ChunkedArray) else list(uids)


def holdout_mask(uids: Iterable[str] | pa.Array | pa.ChunkedArray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask, True for the uids in the held-out ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    uids = _uids(uids)
    if fraction == 0.0:
        return np.zeros(len(uids), bool)
    return np.fromiter((holdout_score(u, seed) < fraction for u in uids), bool, count=len(uids))


def category_mask(categories: Iterable[str | None] | pa.Array | pa.ChunkedArray, held: Collection[str]) -> np.ndarray:
    """Boolean mask, True for the rows whose category is one of ``held`` (a missing category never is)."""
    if not isinstance(categories, pa.Array | pa.ChunkedArray):
        categories = pa.array(list(categories), pa.string())
    if not held:
        return np.zeros(len(categories), bool)
    hit = pc.is_in(pc.cast(categories, pa.string()), value_set=pa.array(sorted(held), pa.string()))
    return hit.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def batch_holdout_mask(batch: pa.Table, fraction: float, seed: int = 0, categories: Collection[str] = ()) -> np.ndarray:
    """Per row of ``batch``: held out by its uid's hash, or by its ``category`` (needed only with ``categories``)."""
    mask = holdout_mask(batch.column("uid"), fraction, seed)
    if categories:
        if "category" not in batch.column_names:
            raise ValueError(f"holding out categories {sorted(categories)} needs a 'category' column")
        mask |= category_mask(batch.column("category"), categories)
    return mask


def drop_holdout(batch: pa.Table, fraction: float, seed: int = 0, categories: Collection[str] = ()) -> pa.Table:
    """The rows of ``batch`` that are not held out (a Ray Data ``map_batches`` function on pyarrow)."""
    if fraction == 0.0 and not categories:
        return batch
    return batch.filter(pa.array(~batch_holdout_mask(batch, fraction, seed, categories)))


def keep_holdout(batch: pa.Table, fraction: float, seed: int = 0, categories: Collection[str] = ()) -> pa.Table:
    """The held-out rows of ``batch``: by uid hash, or of one of ``categories``."""
    return batch.filter(pa.array(batch_holdout_mask(batch, fraction, seed, categories)))


def keep_uids(batch: pa.Table, uids: list[str]) -> pa.Table:
    """The rows of ``batch`` whose uid is in ``uids`` (a ``map_batches`` function: here, in a module that Ray's
    workers import in a fraction of a second, rather than beside the torch code that uses its rows)."""
    return batch.filter(pc.is_in(batch.column("uid"), value_set=pa.array(uids, pa.string())))


def label_rows(batch: pa.Table, class_names: list[str]) -> pa.Table:
    """The labelled rows of ``batch`` with a ``label`` column: the index of their category in ``class_names`` (a
    ``map_batches`` function)."""
    batch = batch.filter(pc.is_valid(batch.column("category")))
    labels = pc.index_in(batch.column("category"), value_set=pa.array(class_names, pa.string()))
    if labels.null_count:
        unknown = pc.filter(batch.column("category"), pc.is_null(labels))[0].as_py()
        raise KeyError(f"category {unknown!r} is not one of the {len(class_names)} class names")
    return batch.append_column("label", pc.cast(labels, pa.int64()))


def train_filter_kwargs(cfg: HoldoutSettings) -> dict[str, Any]:
    """The ``fn_kwargs`` of ``drop_holdout`` that leave a run's training rows: its fraction, seed and categories.

    ``drop_holdout(batch, **train_filter_kwargs(cfg))`` returns ``batch`` itself when nothing is held out."""
    return {"fraction": cfg.holdout_fraction, "seed": cfg.seed, "categories": list(cfg.holdout_categories)}


def sample_order(uids: Iterable[str] | pa.Array | pa.ChunkedArray, seed: int = 0) -> np.ndarray:
    """Indices that sort ``uids`` by a seeded hash (ties by uid): its first k are a seeded random sample.

    The hash is keyed apart from ``holdout_score``'s, so the sample is not the held-out uids of lowest score."""
    uids = _uids(uids)
    key = f"sample:{seed}".encode()
    scores = [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8, key=key).digest(), "little") for u in uids]
    return np.array(sorted(range(len(uids)), key=lambda i: (scores[i], uids[i])), dtype=np.int64)
