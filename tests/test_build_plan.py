"""Cutting a build's listing into blocks and bounding what the pools hold (hand-checkable numbers)."""

from __future__ import annotations

import pytest

from pipelines.build.plan import (
    BLOCKS_HELD_PER_ACTOR,
    TASKS_PER_WORKER,
    bytes_per_shape,
    held_bytes,
    plan_blocks,
    teacher_rows,
)

MIB = 2**20
GIB = 2**30


def plan(total: int, **kw):
    args = dict(rows_per_shard=64, shape_workers=2, embed_workers=1, embed_batch=16, per_shape=MIB, budget_bytes=GIB)
    return plan_blocks(total, **(args | kw))


def test_bytes_per_shape_counts_point_cells_and_views() -> None:
    # 10,000 points: xyz as float16 (6 bytes) + rgb uint8 (3 bytes); 12 views of 224 x 224 x 3 uint8.
    assert bytes_per_shape(10_000, 12, 224) == 90_000 + 12 * 224 * 224 * 3 == 1_896_336
    assert bytes_per_shape(10_000, 0, 224) == 90_000


def test_every_shape_worker_gets_several_blocks_that_divide_a_shard() -> None:
    assert TASKS_PER_WORKER == 8
    small = plan(200)  # 200 / (8 x 2 workers) = 12.5 -> 13 rows wanted; the largest divisor of 64 below: 8
    assert (small.rows_per_block, small.num_blocks, small.embed_rows) == (8, 25, 16)
    big = plan(1_000_000, shape_workers=64, budget_bytes=16 * GIB)  # capped at one shard's rows
    assert (big.rows_per_block, big.num_blocks) == (64, 15_625)
    assert (plan(3).rows_per_block, plan(3).num_blocks, plan(0).num_blocks) == (1, 3, 0)
    fixed = plan(1000, rows_per_block=10)  # as asked, even if it does not divide the shard
    assert (fixed.rows_per_block, fixed.num_blocks, fixed.embed_rows) == (10, 100, 20)
    # A block stays under Ray Data's 128 MiB target block size: 12 shapes of 10 MiB at most, so 8.
    assert plan(1_000_000, per_shape=10 * MIB, budget_bytes=64 * GIB).rows_per_block == 8


def test_teacher_batches_are_whole_blocks_that_divide_the_shard() -> None:
    assert teacher_rows(8, 16, 64) == 16
    assert teacher_rows(8, 24, 64) == 32  # 24 is no divisor of 64: the next whole-block one
    assert teacher_rows(64, 16, 64) == 64  # a block is bigger than the batch: one block per batch
    assert teacher_rows(16, 16, 48) == 16
    assert teacher_rows(5, 16, 64) == 20  # nothing divides the shard: the batch rounded up to whole blocks


def test_in_flight_bytes_are_shape_outputs_plus_teacher_bundles() -> None:
    # 2 shape actors x 8 rows + 1 teacher actor x 16 rows, each held twice, 1 MiB per shape.
    assert BLOCKS_HELD_PER_ACTOR == 2
    assert held_bytes(8, 2, 1, 16, MIB) == 2 * MIB * (2 * 8 + 16) == plan(200).in_flight_bytes


def test_blocks_shrink_to_fit_the_object_store_budget() -> None:
    # At 64 rows: 2 x (2 x 64 + 64) = 384 MiB held, over a 100 MiB budget, so halve: 32 rows -> 2 x (64 + 32)
    # = 192 MiB, 16 rows -> 2 x (32 + 16) = 96 MiB fits.
    fitted = plan(1_000_000, budget_bytes=100 * MIB)
    assert fitted.rows_per_block == 16 and fitted.in_flight_bytes == 96 * MIB <= fitted.budget_bytes


def test_a_budget_too_small_for_one_shape_per_block_is_refused_naming_the_settings() -> None:
    with pytest.raises(ValueError, match=r"even at one shape per block .* resources.object_store_gib"):
        plan(1000, budget_bytes=10 * MIB)  # 2 x (2 x 1 + 16) = 36 MiB needed
    with pytest.raises(ValueError, match=r"resources.rows_per_block=64: .* over the object-store budget of 100 MiB"):
        plan(1000, rows_per_block=64, budget_bytes=100 * MIB)
    with pytest.raises(ValueError, match="rows_per_block must be >= 0"):
        plan(10, rows_per_block=-1)
