"""A fresh global order every epoch, dealt to the workers and seeded by (seed, epoch): pipelines.train.epochs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.train.epochs import EpochStream, Unit, deal, split_block

ROWS = [64, 64, 64, 40, 64, 17]  # 313 training rows in six units of uneven size


def stream(rank: int, world: int = 2, batch: int = 8, per_epoch: int = 19, shuffle: int = 32) -> EpochStream:
    starts = np.cumsum([0, *ROWS[:-1]])
    units = [Unit(rows=n, start=int(a)) for n, a in zip(ROWS, starts, strict=True)]
    load = lambda u: pa.table({"row": np.arange(u.start, u.start + u.rows)})  # noqa: E731 - rows numbered globally
    return EpochStream(
        units,
        load,
        world=world,
        rank=rank,
        seed=4096,
        batch_size=batch,
        steps_per_epoch=per_epoch,
        shuffle_rows=shuffle,
    )


def epoch_rows(rank: int, epochs: int, **kw) -> list[list[int]]:
    """Per epoch, the rows of rank ``rank`` in the order its batches deliver them."""
    out: list[list[int]] = [[] for _ in range(epochs)]
    for epoch, _, batch in stream(rank, **kw).batches():
        if epoch == epochs:
            break
        out[epoch] += batch.column("row").to_pylist()
    return out


def test_each_epoch_is_a_new_deal_of_disjoint_equal_slices() -> None:
    ranks = [epoch_rows(r, 3) for r in range(2)]
    for e in range(3):
        a, b = set(ranks[0][e]), set(ranks[1][e])
        assert len(ranks[0][e]) == len(ranks[1][e]) == 19 * 8 and len(a) == len(b) == 152  # no row twice
        assert not a & b  # the two workers never share a row within an epoch
    assert ranks[0][0] != ranks[0][1]  # the order changes...
    assert set(ranks[0][0]) != set(ranks[0][1])  # ...and so do the rows each worker gets
    assert set(ranks[0][0]) & set(ranks[1][1])  # rows move between workers


def test_over_epochs_every_training_row_is_seen() -> None:
    # 313 rows, 304 trained per epoch: the 9 left over differ by epoch, so a few epochs cover them all.
    seen: set[int] = set()
    for r in range(2):
        for rows in epoch_rows(r, 6):
            seen |= set(rows)
    assert seen == set(range(sum(ROWS)))


def test_a_resumed_stream_replays_the_same_batches() -> None:
    full = [(e, i, b.column("row").to_pylist()) for e, i, b in _take(stream(1).batches(), 50)]
    resumed = [(e, i, b.column("row").to_pylist()) for e, i, b in _take(stream(1).batches(1, skip=7), 50 - 26)]
    assert resumed == full[19 + 7 :]  # epoch 1 from its 8th batch on, then epoch 2: identical


def test_deal_and_split_block() -> None:
    assert deal([5, 5], world=2, rank=1, epoch=0, seed=0, rows_per_worker=4) in (
        [(1, 4, 5), (0, 0, 3)],
        [(0, 4, 5), (1, 0, 3)],
    )
    with pytest.raises(ValueError, match="2 x 6 rows asked of 10"):
        deal([5, 5], world=2, rank=0, epoch=0, seed=0, rows_per_worker=6)
    assert [(u.start, u.rows) for u in split_block("ref", 150, 64)] == [(0, 64), (64, 64), (128, 22)]


def _take(it, n):
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out
