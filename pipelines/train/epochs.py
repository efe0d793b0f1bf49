"""Pretraining input: a fresh global order every epoch, dealt to the workers, seeded by (seed, epoch).

The official recipe shuffles with a per-epoch ``DistributedSampler``: every epoch a new permutation of the
whole training set, cut into one equal slice per rank, so rows change ranks between epochs and the rows
left over by the equal cut differ each time. Ray Data's streaming split re-runs the same seeded plan
every epoch (the same block order, the same rows per worker, the same leftovers forever), so the training
workers read their own slices here instead:

- The build is a list of *units*: blocks in the object store (a build read once, ``cache_data``), cut into
  slices of at most ``DEAL_ROWS`` rows, or Parquet row groups read from the build's files. Each unit knows how
  many training rows it holds (held-out shapes are already filtered out, or are filtered on read).
- Epoch ``e``: the units are permuted with ``default_rng([seed, e])``; the concatenated rows are cut into
  ``world`` slices of ``rows_per_worker`` (steps per epoch x batch size) and rank ``r`` takes slice ``r``.
  The rest (fewer than ``world x batch_size`` rows plus what an equal cut leaves) is this epoch's leftover.
- Within its slice a worker shuffles windows of at least ``shuffle_rows`` rows with
  ``default_rng([seed, e, rank])``, then cuts batches of ``batch_size``.

Every draw depends on (seed, epoch, rank) and on counts only, so a resumed run replays the same batches
(exact resume), whatever finished first. Units are fetched by a background thread ahead of use, across
epoch boundaries, so a new epoch does not start with a wait. No Ray import: units in the object store
come with a ``load`` callable from the caller.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

DEAL_ROWS = 64  # object-store blocks are dealt in slices of at most this many rows


@dataclass(frozen=True)
class Unit:
    """``rows`` training rows: rows ``[start, start + rows)`` of an object-store block, or a Parquet row group."""

    rows: int
    ref: Any = None  # an ObjectRef of a pyarrow Table (already filtered)
    start: int = 0
    path: str = ""  # a shard file (its row group is filtered on read)
    row_group: int = -1


def split_block(ref: Any, num_rows: int, max_rows: int = DEAL_ROWS) -> list[Unit]:
    """One object-store block -> units of at most ``max_rows`` rows, so small builds still deal finely."""
    return [Unit(rows=min(max_rows, num_rows - a), ref=ref, start=a) for a in range(0, num_rows, max_rows)]


def deal(unit_rows: Sequence[int], world: int, rank: int, epoch: int, seed: int, rows_per_worker: int):
    """Rank ``rank``'s rows of ``epoch`` as ``(unit, start, stop)`` slices, in the epoch's order."""
    if rows_per_worker * world > sum(unit_rows):
        raise ValueError(f"{world} x {rows_per_worker} rows asked of {sum(unit_rows)} training rows")
    order = np.random.default_rng([seed, epoch]).permutation(len(unit_rows))
    lo, hi = rank * rows_per_worker, (rank + 1) * rows_per_worker
    out: list[tuple[int, int, int]] = []
    pos = 0
    for u in order.tolist():
        n = int(unit_rows[u])
        a, b = max(lo, pos), min(hi, pos + n)
        if a < b:
            out.append((u, a - pos, b - pos))
        pos += n
        if pos >= hi:
            break
    return out


class EpochStream:
    """This worker's batches, epoch after epoch: ``batches(start_epoch, skip)`` yields ``(epoch, index, table)``.

    ``load(unit)`` returns the unit's training rows as a pyarrow Table (``unit.rows`` of them); it runs in
    ``prefetch`` background threads, ahead of the consumer.
    """

    def __init__(
        self,
        units: Sequence[Unit],
        load: Callable[[Unit], pa.Table],
        *,
        world: int,
        rank: int,
        seed: int,
        batch_size: int,
        steps_per_epoch: int,
        shuffle_rows: int,
        prefetch: int = 4,
    ) -> None:
        self.units, self.load = list(units), load
        self.world, self.rank, self.seed = world, rank, seed
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.window = max(shuffle_rows, batch_size)
        self.prefetch = max(1, prefetch)

    def slices(self, epoch: int) -> list[tuple[int, int, int]]:
        rows = self.steps_per_epoch * self.batch_size
        return deal([u.rows for u in self.units], self.world, self.rank, epoch, self.seed, rows)

    def batches(self, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, int, pa.Table]]:
        """Endless: epoch ``start_epoch`` from its batch ``skip`` on, then every later epoch from its start."""
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="epoch-data")
        pending: collections.deque[tuple[int, concurrent.futures.Future]] = collections.deque()
        plan = ((e, s) for e in _count(start_epoch) for s in self.slices(e))
        try:
            for epoch in _count(start_epoch):
                rng = np.random.default_rng([self.seed, epoch, self.rank])
                index, buffer, buffered = 0, [], 0
                for _ in range(len(self.slices(epoch))):
                    while len(pending) < self.prefetch:
                        e, (u, a, b) = next(plan)
                        pending.append((e, pool.submit(self._rows, u, a, b)))
                    e, future = pending.popleft()
                    assert e == epoch, (e, epoch)
                    table = future.result()
                    buffer.append(table)
                    buffered += table.num_rows
                    if buffered >= self.window:
                        for batch in self._emit(buffer, rng, keep_tail=True):
                            if index >= skip or epoch != start_epoch:
                                yield epoch, index, batch
                            index += 1
                        buffered = sum(t.num_rows for t in buffer)
                for batch in self._emit(buffer, rng, keep_tail=False):
                    if index >= skip or epoch != start_epoch:
                        yield epoch, index, batch
                    index += 1
                if index != self.steps_per_epoch:
                    raise RuntimeError(f"epoch {epoch}: {index} batches, expected {self.steps_per_epoch}")
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _rows(self, unit_index: int, start: int, stop: int) -> pa.Table:
        unit = self.units[unit_index]
        table = self.load(unit)
        if table.num_rows != unit.rows:
            raise RuntimeError(f"unit {unit_index} yields {table.num_rows} training rows, expected {unit.rows}")
        return table.slice(start, stop - start)

    def _emit(self, buffer: list[pa.Table], rng: np.random.Generator, keep_tail: bool) -> list[pa.Table]:
        """Shuffle the buffered rows, cut whole batches; with ``keep_tail`` the rest stays in ``buffer``."""
        if not buffer:
            return []
        rows = pa.concat_tables(buffer, promote_options="permissive").combine_chunks()
        rows = rows.take(pa.array(rng.permutation(rows.num_rows)))
        full = rows.num_rows // self.batch_size * self.batch_size
        batches = [rows.slice(a, self.batch_size) for a in range(0, full, self.batch_size)]
        buffer.clear()
        if keep_tail and full < rows.num_rows:
            buffer.append(rows.slice(full))
        return batches


def _count(start: int) -> Iterator[int]:
    n = start
    while True:
        yield n
        n += 1
