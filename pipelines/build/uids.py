"""Sets of shape uids in the driver at 16 bytes a uid: sorted 128-bit BLAKE2b digests in a NumPy array.

A build's driver knows which uids its earlier runs wrote (to skip them) and which its source listed (to refuse a
uid listed twice). As Python sets of strings those took ~340 bytes a shape (+0.34 GiB for a 1M listing,
BENCHMARKS.md); Objaverse-XL lists 10M. Here a uid is its 16-byte digest, and lookups are vectorised binary
searches. Two distinct uids share a digest with probability about n² / 2¹²⁹ (below 10⁻²⁴ at 10M uids).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

KEY = np.dtype("S16")  # NumPy compares fixed-size byte strings bytewise: sort and searchsorted work on them


def uid_keys(uids: Sequence[str]) -> np.ndarray:
    """The uids' digests, in their order."""
    digest = hashlib.blake2b
    return np.frombuffer(b"".join(digest(u.encode(), digest_size=16).digest() for u in uids), dtype=KEY)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not len(sorted_keys):
        return np.zeros(len(keys), bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys


class UidSet:
    """An immutable set of uids as their sorted, unique digests."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self.keys = np.unique(keys) if keys is not None and len(keys) else np.empty(0, KEY)

    @classmethod
    def of(cls, uids: Iterable[str]) -> UidSet:
        return cls(uid_keys(list(uids)))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and bool(_member(self.keys, uid_keys([uid]))[0])

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """For each digest (``uid_keys``), whether it is in the set."""
        return _member(self.keys, keys)

    def __or__(self, other: UidSet) -> UidSet:
        return UidSet(np.concatenate([self.keys, other.keys]))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, set | frozenset):
            other = UidSet.of(other)
        return isinstance(other, UidSet) and np.array_equal(self.keys, other.keys)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking equality: not a dict key

    def __repr__(self) -> str:
        return f"UidSet({len(self)} uids)"


class SeenUids:
    """The uids seen so far in a stream, growing chunk by chunk: which of a new chunk's were seen before.

    Sorted runs whose sizes halve from the oldest to the newest (a log-structured merge): a chunk is checked
    against every run with a binary search, then becomes a run; two runs of about the same size merge. Adding n
    uids costs O(n log n) in all, and the runs hold 16 bytes a uid (twice that for a moment while two merge)."""

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Add a chunk of digests; returns, for each, whether it was seen before (in an earlier chunk, or earlier
        in this one)."""
        seen = np.zeros(len(keys), bool)
        for run in self.runs:
            seen |= _member(run, keys)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        again = np.zeros(len(keys), bool)
        again[order[1:]] = ordered[1:] == ordered[:-1]  # a repeat within the chunk: every copy after the first
        seen |= again
        run = np.unique(keys[~seen])  # the runs stay disjoint
        while self.runs and len(self.runs[-1]) <= 2 * len(run):
            run = np.union1d(self.runs.pop(), run)
        self.runs.append(run)
        return seen
