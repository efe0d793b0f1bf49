"""The files of a build under its output path or URI (local or object storage via ``pyarrow.fs``).

Layout (docs/dataset.md): ``shards/part-<hash>.parquet`` (rows of ``pipelines.build.schema.SCHEMA``),
``failures/part-<hash>.parquet`` (``FAILURES_SCHEMA``), ``manifest.json`` and ``_work/`` (the
listing of the current run). A shard's name is a hash of the uids of its batch, and it appears
whole or not at all (written to a temporary name, then renamed; object stores publish whole
objects), so a killed job leaves no partial shard and a re-run skips exactly the uids written.
A shape is in a shard, in a failures file, or in neither (then the next run builds it); a run that
retries failures removes their rows before it builds them again (``drop_failures``), which keeps it so.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines.build.manifest import Manifest, read_manifest, write_manifest
from pipelines.build.schema import FAILURES_SCHEMA, parquet_write_options, rows_to_table
from pipelines.build.uids import UidSet, uid_keys

SHARDS, FAILURES, WORK, MANIFEST = "shards", "failures", "_work", "manifest.json"


class BuildStore:
    def __init__(self, output: str) -> None:
        self.output = output
        if "://" in output:
            self.fs, self.root = pafs.FileSystem.from_uri(output)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(output)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _files(self, folder: str) -> list[str]:
        selector = pafs.FileSelector(self.path(folder), allow_not_found=True)
        return sorted(
            info.path
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(".parquet")
            and not info.base_name.startswith(".")
        )

    def shard_files(self) -> list[str]:
        return self._files(SHARDS)

    def failure_files(self) -> list[str]:
        return self._files(FAILURES)

    def done_uids(self) -> UidSet:
        """uids already written as rows or as failures: a re-run skips them."""
        return self.shard_uids() | UidSet.of(row["uid"] for row in self.failure_rows())

    def shard_uids(self) -> UidSet:
        """uids written as rows, as digests (16 bytes a shape in the driver)."""
        keys = [
            uid_keys(pq.read_table(path, columns=["uid"], filesystem=self.fs).column("uid").to_pylist())
            for path in self.shard_files()
        ]
        return UidSet(np.concatenate(keys) if keys else None)

    def read_failures(self, path: str) -> pa.Table:
        """One failures file as ``FAILURES_SCHEMA``; a column added since it was written (``transient``) is null."""
        return pq.read_table(path, filesystem=self.fs, schema=FAILURES_SCHEMA)

    def failure_rows(self) -> list[dict[str, Any]]:
        """Every recorded failure, one dict of ``FAILURES_SCHEMA`` columns per shape."""
        return [row for path in self.failure_files() for row in self.read_failures(path).to_pylist()]

    def drop_failures(self, uids: set[str]) -> int:
        """Remove the failure rows of ``uids``, shapes this run builds again; returns how many were removed.

        Each file holding some is rewritten atomically without them (deleted when none are left), so a
        kill midway leaves those shapes in no table and the next run builds them, as any new shape.
        """
        wanted = pa.array(sorted(uids), pa.string())
        removed = 0
        for path in self.failure_files():
            table = self.read_failures(path)
            kept = table.filter(pc.invert(pc.is_in(table.column("uid"), value_set=wanted)))
            if kept.num_rows == table.num_rows:
                continue
            removed += table.num_rows - kept.num_rows
            if kept.num_rows:
                self.write_table(kept, FAILURES, path.rsplit("/", 1)[-1].removesuffix(".parquet"))
            else:
                self.fs.delete_file(path)
        return removed

    def write_table(self, table: pa.Table, folder: str, name: str, **options: Any) -> None:
        """Write ``<folder>/<name>.parquet`` atomically (local: rename of a temporary file)."""
        self.fs.create_dir(self.path(folder), recursive=True)
        final = self.path(folder, f"{name}.parquet")
        if not self.local:  # object stores publish an object whole when its upload completes
            pq.write_table(table, final, filesystem=self.fs, **options)
            return
        tmp = self.path(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(table, tmp, filesystem=self.fs, **options)
        self.fs.move(tmp, final)  # atomic rename within one filesystem

    def write_shard(self, name: str, rows: list[dict[str, Any]], failures: list[dict[str, str]]) -> None:
        # Failures first: if the job dies between the two writes, the re-run retries those shapes.
        if failures:
            self.write_table(pa.Table.from_pylist(failures, schema=FAILURES_SCHEMA), FAILURES, name)
        if rows:
            self.write_table(rows_to_table(rows), SHARDS, name, **parquet_write_options())

    def write_listing(self, rows: Iterable[dict[str, Any]], schema: pa.Schema, chunk: int = 10_000) -> tuple[str, int]:
        """Stream listing rows into one Parquet file of this run; returns its path and row count."""
        self.fs.create_dir(self.path(WORK), recursive=True)
        path = self.path(WORK, f"listing-{uuid.uuid4().hex[:8]}.parquet")
        count, buffer = 0, []
        with pq.ParquetWriter(path, schema, filesystem=self.fs) as writer:
            for row in rows:
                buffer.append(row)
                if len(buffer) >= chunk:
                    writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                    count, buffer = count + len(buffer), []
            if buffer or count == 0:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                count += len(buffer)
        return path, count

    def write_text(self, relative: str, text: str) -> None:
        """Write a small text file (stats, reports) at ``relative`` under the root."""
        folder, _, _ = relative.rpartition("/")
        if folder:
            self.fs.create_dir(self.path(folder), recursive=True)
        with self.fs.open_output_stream(self.path(relative)) as f:
            f.write(text.encode())

    def remove(self, path: str) -> None:
        self.fs.delete_file(path)

    def manifest_path(self) -> str:
        return self.output.rstrip("/") + "/" + MANIFEST

    def write_manifest(self, manifest: Manifest) -> None:
        write_manifest(self.manifest_path(), manifest)

    def read_manifest(self) -> Manifest:
        return read_manifest(self.manifest_path())

    def relative(self, path: str) -> str:
        return path[len(self.root.rstrip("/")) + 1 :]
