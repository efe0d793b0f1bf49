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

    The digests are uniform, so their first 4 bits cut them into 16 parts of about the same size. Each part is
    a log-structured merge: sorted, disjoint runs whose sizes halve from the oldest to the newest; a chunk is
    checked against every run with a binary search, then becomes a run, and two runs of about the same size
    merge. Adding n uids costs O(n log n) in all; the runs hold 16 bytes a uid, and a merge, one part at a
    time, needs ~1/16 of that again for a moment (10M uids: ~17 bytes a uid at the peak, BENCHMARKS.md)."""

    PARTS = 16

    def __init__(self) -> None:
        self.parts: list[list[np.ndarray]] = [[] for _ in range(self.PARTS)]

    @property
    def runs(self) -> list[np.ndarray]:
        return [run for part in self.parts for run in part]

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Add a chunk of digests; returns, for each, whether it was seen before (in an earlier chunk, or earlier
        in this one)."""
        order = np.argsort(keys, kind="stable")  # equal digests keep their order: the first copy comes first
        ordered = keys[order]
        seen = np.zeros(len(keys), bool)  # in sorted order
        seen[1:] = ordered[1:] == ordered[:-1]  # a repeat within the chunk: every copy after the first
        top = ordered.view(np.uint8).reshape(-1, KEY.itemsize)[:, 0] >> 4  # sorted too: the part of each digest
        bounds = np.searchsorted(top, np.arange(self.PARTS + 1))
        for part, lo, hi in zip(self.parts, bounds[:-1], bounds[1:], strict=True):
            if lo == hi:
                continue
            keys_here = ordered[lo:hi]
            for run in part:
                seen[lo:hi] |= _member(run, keys_here)
            run = keys_here[~seen[lo:hi]]  # sorted, without repeats, none in the part's runs: they stay disjoint
            while part and len(part[-1]) <= 2 * len(run):
                run = merge_disjoint(part.pop(), run)
            part.append(run)
        out = np.empty(len(keys), bool)
        out[order] = seen
        return out


def merge_disjoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two sorted runs with no key in common as one sorted run, in one pass over the output: about 18 bytes a
    key of scratch beside it, where ``np.union1d`` (concatenate, sort a copy, mask) takes about four copies."""
    out = np.empty(len(a) + len(b), KEY)
    at = np.searchsorted(a, b)
    at += np.arange(len(b))  # b[i] lands after the a's below it and the i b's before it
    from_b = np.zeros(len(out), bool)
    from_b[at] = True
    out[at] = b
    del at
    out[~from_b] = a
    return out
