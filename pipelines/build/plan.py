"""How a build's listing is cut into blocks, and how much Ray's object store may hold while it runs.

Ray Data hands an actor pool one block per task, so the block is the unit of work: a listing read as
one block is one task for the whole run, whatever the pool's size. ``plan_blocks`` cuts the listing
into blocks small enough that every shape worker gets several (``TASKS_PER_WORKER``) and shards are
written from the first minutes, and checks that the rendered views and points the pools can hold at
once fit the object-store budget Ray Data enforces with its backpressure, at 100 shapes or 1M.

Sizes are aligned so that no re-blocking stage is needed between the pools: a block's rows divide
the shard's, and the teacher's batch is a whole number of blocks that also divides the shard. Ray
Data then bundles blocks into teacher batches and teacher outputs into shards exactly (one shard per
run may come out short, where the listing's last, partial block lands). No Ray here: the numbers are
planned from the config and checked in unit tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.build.codec import XYZ_DTYPE

# Blocks each shape worker should see at least: a slow block then delays its actor by a fraction of
# the run, and the actors that finish early take the rest.
TASKS_PER_WORKER = 8
# A pool's actor holds about this many blocks of its output at once (one it is producing, one
# waiting for the next stage); the estimate below and the object-store check use it.
BLOCKS_HELD_PER_ACTOR = 2
# Ray Data splits a task's output beyond its target block size (128 MiB by default): keep blocks under it.
MAX_BLOCK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class BlockPlan:
    total: int  # shapes this run builds
    rows_per_block: int  # listing rows per Ray Data block: one shape-worker task
    num_blocks: int
    embed_rows: int  # rows per teacher batch: a whole number of blocks
    bytes_per_shape: int  # the heaviest row in flight: points plus rendered views
    in_flight_bytes: int  # what the shape and teacher pools may hold at once (estimate)
    budget_bytes: int  # Ray Data's object-store budget for this build

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.total} shapes in {self.num_blocks} blocks of <= {self.rows_per_block}, teacher batches of "
            f"{self.embed_rows}; {self.bytes_per_shape / 2**20:.2f} MiB per shape in flight, at most "
            f"~{self.in_flight_bytes / 2**20:.0f} MiB held by the pools, object-store budget "
            f"{self.budget_bytes / 2**20:.0f} MiB"
        )


def bytes_per_shape(num_points: int, num_views: int, image_size: int) -> int:
    """Bytes of one shape between the shape workers and the teacher: point cells and uint8 views."""
    points = num_points * (3 * XYZ_DTYPE.itemsize + 3)  # xyz cells + rgb bytes
    return points + num_views * image_size * image_size * 3


def held_bytes(rows: int, shape_workers: int, embed_workers: int, embed_rows: int, per_shape: int) -> int:
    """Rows of renders the pools can hold: shape actors' output blocks and the teacher's input bundles."""
    return BLOCKS_HELD_PER_ACTOR * per_shape * (shape_workers * rows + embed_workers * embed_rows)


def teacher_rows(rows: int, embed_batch: int, rows_per_shard: int) -> int:
    """The teacher's batch in whole blocks: the smallest multiple of ``rows`` >= ``embed_batch`` that divides
    the shard, else ``embed_batch`` rounded up to whole blocks."""
    for k in range(max(1, math.ceil(embed_batch / rows)), rows_per_shard // rows + 1):
        if rows_per_shard % (k * rows) == 0:
            return k * rows
    return rows * max(1, math.ceil(embed_batch / rows))


def plan_blocks(
    total: int,
    *,
    rows_per_shard: int,
    shape_workers: int,
    embed_workers: int,
    embed_batch: int,
    per_shape: int,
    budget_bytes: int,
    rows_per_block: int = 0,
) -> BlockPlan:
    """Rows per block: ``rows_per_block`` if set, else the largest divisor of ``rows_per_shard`` that
    gives every shape worker ``TASKS_PER_WORKER`` blocks, keeps a block under ``MAX_BLOCK_BYTES`` and
    lets the pools' hold fit the object-store budget.

    ValueError names the setting to change when even one row per block cannot fit.
    """
    if rows_per_block < 0:
        raise ValueError(f"resources.rows_per_block must be >= 0 (0 = automatic), got {rows_per_block}")
    total = max(0, total)

    def held(rows: int) -> int:
        embed_rows = teacher_rows(rows, embed_batch, rows_per_shard)
        return held_bytes(rows, shape_workers, embed_workers, embed_rows, per_shape)

    if rows_per_block:
        rows = rows_per_block
        if held(rows) > budget_bytes:
            raise ValueError(
                f"resources.rows_per_block={rows}: the pools could hold ~{held(rows) / 2**20:.0f} MiB of points and "
                f"views ({per_shape / 2**20:.2f} MiB per shape), over the object-store budget of "
                f"{budget_bytes / 2**20:.0f} MiB: lower it (0 = automatic) or raise resources.object_store_gib"
            )
    else:
        wanted = math.ceil(max(1, total) / (TASKS_PER_WORKER * max(1, shape_workers)))
        wanted = min(wanted, max(1, MAX_BLOCK_BYTES // max(1, per_shape)))
        divisors = [d for d in range(rows_per_shard, 0, -1) if rows_per_shard % d == 0]
        fitting = [d for d in divisors if d <= wanted and held(d) <= budget_bytes]
        if not fitting:
            raise ValueError(
                f"the build's pools could hold ~{held(1) / 2**20:.0f} MiB of points and views even at one shape "
                f"per block ({per_shape / 2**20:.2f} MiB per shape; resources.shape_workers={shape_workers}, "
                f"embed_workers={embed_workers}, embed_batch={embed_batch}), over the object-store budget of "
                f"{budget_bytes / 2**20:.0f} MiB: lower resources.embed_batch or the pools, fewer num_views or a "
                "smaller image_size, or raise resources.object_store_gib"
            )
        rows = fitting[0]
    return BlockPlan(
        total=total,
        rows_per_block=rows,
        num_blocks=math.ceil(total / rows),
        embed_rows=teacher_rows(rows, embed_batch, rows_per_shard),
        bytes_per_shape=per_shape,
        in_flight_bytes=held(rows),
        budget_bytes=budget_bytes,
    )
