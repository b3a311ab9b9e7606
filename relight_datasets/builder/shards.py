"""The dataset's Parquet shards: the kept rows of every chunk, in order, into ``data/<split>-NNNNN-of-NNNNN.parquet``.

A split with no rows gets no shard at all: ``datasets`` cannot load a split whose only shard is empty, so it is left
out of ``data/`` and the card and named in the report instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..transforms.base import SKIP_COLUMN
from .features import features_for

ROW_GROUP_ROWS = 32


class SplitShards:
    """Writes one split's rows into shards of at most about ``max_bytes`` (row groups of ``ROW_GROUP_ROWS``), under
    temporary names; :meth:`finish` renames them ``<split>-NNNNN-of-NNNNN.parquet`` once their number is known."""

    def __init__(self, name: str, data_dir: Path, max_bytes: int, schema: pa.Schema):
        self.name, self.data_dir, self.max_bytes = name, data_dir, max_bytes
        self.schema = schema
        self.paths: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.written = 0
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0

    def _flush(self) -> None:
        if self.pending:
            if self.writer is None:
                self.paths.append(self.data_dir / f".{self.name}-{len(self.paths):05d}.parquet.partial")
                self.writer = pq.ParquetWriter(self.paths[-1], self.schema)
            self.writer.write_table(pa.concat_tables(self.pending).cast(self.schema))
            self.written += self.pending_bytes
            self.pending, self.pending_bytes = [], 0

    def _close_shard(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()
            self.writer, self.written = None, 0

    def add(self, rows: pa.Table) -> None:
        for index in range(len(rows)):
            row = rows.slice(index, 1)
            if self.written + self.pending_bytes and self.written + self.pending_bytes + row.nbytes > self.max_bytes:
                self._close_shard()
            self.pending.append(row)
            self.pending_bytes += row.nbytes
            if len(self.pending) >= ROW_GROUP_ROWS:
                self._flush()

    def finish(self) -> list[str]:
        """The shard names, renamed into place; none for a split that received no row."""
        self._close_shard()
        names = [f"{self.name}-{i:05d}-of-{len(self.paths):05d}.parquet" for i in range(len(self.paths))]
        for path, name in zip(self.paths, names, strict=True):
            os.replace(path, self.data_dir / name)
        return names


def write_shards(chunk_files: list[Path], data_dir: Path, splits: dict[str, float], max_bytes: int,
                 layout: str = "full") -> list[str]:
    """Stream the kept rows of the chunk files, in order, into each split's shards, with the columns of ``layout``
    (:func:`~relight_datasets.builder.features.features_for`); returns the shard names. Memory: one row group at a
    time. Rows are copied (filtered) only when some were skipped or there are several splits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    schema = features_for(layout).arrow_schema
    shards = {name: SplitShards(name, data_dir, max_bytes, schema) for name in splits}
    columns = schema.names
    for path in chunk_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
            table = pa.Table.from_batches([batch])
            is_kept = pc.equal(table.column(SKIP_COLUMN), "")
            kept = table if pc.all(is_kept).as_py() is True else table.filter(is_kept)
            for name, writer in shards.items():
                rows = kept if len(shards) == 1 else kept.filter(pc.equal(kept.column("split"), name))
                writer.add(rows.select(columns))
    return [name for writer in shards.values() for name in writer.finish()]
