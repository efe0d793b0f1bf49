"""The training rows of a build as units the workers deal among themselves each epoch (``pipelines.train.epochs``).

Two kinds, chosen by ``cache_data``: a build that fits (auto: under a quarter of the free object store) is
read once, in parallel, by Ray Data into the object store and its blocks are dealt in slices; a bigger one
is dealt by Parquet row groups that each worker reads itself from the build's files (local or any
``pyarrow.fs`` URI), so no row is read twice per epoch and nothing grows with the build on the driver but
the list of row groups. Held-out shapes (``pipelines.build.splits``) are dropped before the deal, in both kinds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipelines.build.splits import drop_holdout, train_filter_kwargs
from pipelines.train.epochs import Unit, split_block


def filter_kwargs(cfg: Any) -> dict[str, Any]:
    """What ``drop_holdout`` needs to drop this run's held-out shapes (by uid hash and by category)."""
    return train_filter_kwargs(cfg)


def holds_out(cfg: Any) -> bool:
    return cfg.holdout_fraction > 0 or bool(cfg.holdout_categories)


def shard_files(data: str) -> tuple[pafs.FileSystem, list[str]]:
    """The build's shard files, sorted, with the filesystem that reads them."""
    fs, root = pafs.FileSystem.from_uri(data) if "://" in data else (pafs.LocalFileSystem(), str(Path(data).resolve()))
    infos = fs.get_file_info(pafs.FileSelector(root.rstrip("/") + "/shards", recursive=True))
    return fs, sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))


def cached_units(cfg: Any) -> list[Unit]:
    """Read the build once into the object store (Ray Data, in the build's order); its blocks as units, whose
    refs keep the blocks alive as long as the caller holds the units."""
    ds = ray.data.read_parquet(os.path.join(cfg.data, "shards"), num_cpus=cfg.data_cpus)
    if holds_out(cfg):
        ds = ds.map_batches(drop_holdout, batch_format="pyarrow", fn_kwargs=filter_kwargs(cfg), num_cpus=cfg.data_cpus)
    ds.context.execution_options.preserve_order = True  # blocks in file order, whatever finished first
    refs = ds.to_arrow_refs()
    counts = ray.get([_num_rows.remote(ref) for ref in refs])
    return [u for ref, n in zip(refs, counts, strict=True) for u in split_block(ref, n)]


def file_units(cfg: Any) -> list[Unit]:
    """Every Parquet row group of the build that holds training rows, with how many it holds."""
    fs, files = shard_files(cfg.data)
    kwargs = filter_kwargs(cfg)
    units = []
    for path in files:
        parquet = pq.ParquetFile(path, filesystem=fs)
        for group in range(parquet.num_row_groups):
            keys = parquet.read_row_group(group, columns=["uid", "category"])
            rows = drop_holdout(keys, **kwargs).num_rows if holds_out(cfg) else keys.num_rows
            if rows:
                units.append(Unit(rows=rows, path=path, row_group=group))
    return units


def load_unit(unit: Unit, data: str, kwargs: dict[str, Any]) -> pa.Table:
    """A unit's training rows, on a worker: a slice of an object-store block, or a filtered row group."""
    if unit.ref is not None:
        return ray.get(unit.ref).slice(unit.start, unit.rows)
    fs = pafs.FileSystem.from_uri(data)[0] if "://" in data else pafs.LocalFileSystem()
    table = pq.ParquetFile(unit.path, filesystem=fs).read_row_group(unit.row_group)
    return drop_holdout(table, **kwargs)  # the table itself when nothing is held out


@ray.remote(num_cpus=0)
def _num_rows(table: pa.Table) -> int:
    return table.num_rows
