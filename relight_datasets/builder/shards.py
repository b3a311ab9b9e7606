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


def rows_per_shard(rows: int, min_shards: int) -> int:
    """Rows in each shard so that ``rows`` make at least ``min(min_shards, rows)`` shards of near-equal size."""
    return max(1, -(-rows // max(1, min(min_shards, rows))))


class SplitShards:
    """Writes one split's rows into shards of at most ``max_rows`` rows and about ``max_bytes`` (row groups of
    ``ROW_GROUP_ROWS``), under temporary names; :meth:`finish` renames them ``<split>-NNNNN-of-NNNNN.parquet`` once
    their number is known."""

    def __init__(self, name: str, data_dir: Path, max_bytes: int, schema: pa.Schema, max_rows: int):
        self.name, self.data_dir, self.max_bytes, self.max_rows = name, data_dir, max_bytes, max_rows
        self.schema = schema
        self.paths: list[Path] = []
        self.rows: list[int] = []
        self.writer: pq.ParquetWriter | None = None
        self.written = 0
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0

    def _flush(self) -> None:
        if self.pending:
            if self.writer is None:
                self.paths.append(self.data_dir / f".{self.name}-{len(self.paths):05d}.parquet.partial")
                self.rows.append(0)
                self.writer = pq.ParquetWriter(self.paths[-1], self.schema)
            self.writer.write_table(pa.concat_tables(self.pending).cast(self.schema))
            self.rows[-1] += len(self.pending)
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
            in_shard = (self.rows[-1] if self.writer is not None else 0) + len(self.pending)
            too_big = self.written + self.pending_bytes + row.nbytes > self.max_bytes
            if in_shard and (in_shard >= self.max_rows or too_big):
                self._close_shard()
            self.pending.append(row)
            self.pending_bytes += row.nbytes
            if len(self.pending) >= ROW_GROUP_ROWS:
                self._flush()

    def finish(self) -> list[dict]:
        """``{"name", "rows", "bytes"}`` of each shard, renamed into place; none for a split that received no row."""
        self._close_shard()
        names = [f"{self.name}-{i:05d}-of-{len(self.paths):05d}.parquet" for i in range(len(self.paths))]
        for path, name in zip(self.paths, names, strict=True):
            os.replace(path, self.data_dir / name)
        return [{"name": name, "rows": rows, "bytes": (self.data_dir / name).stat().st_size}
                for name, rows in zip(names, self.rows, strict=True)]


def write_shards(chunk_files: list[Path], data_dir: Path, split_rows: dict[str, int], max_bytes: int,
                 layout: str = "full", min_shards: int = 1) -> list[dict]:
    """Stream the kept rows of the chunk files, in order, into each split's shards, with the columns of ``layout``
    (:func:`~relight_datasets.builder.features.features_for`). ``split_rows``: the kept rows of each split; each
    split gets at least ``min(min_shards, rows)`` shards of near-equal row counts (so that every ``DataLoader``
    worker of a streaming reader has a shard to read), more when ``max_bytes`` asks. Returns ``{"name", "rows",
    "bytes"}`` per shard. Memory: one row group at a time. Rows are copied (filtered) only when some were skipped
    or there are several splits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    schema = features_for(layout).arrow_schema
    shards = {name: SplitShards(name, data_dir, max_bytes, schema, rows_per_shard(rows, min_shards))
              for name, rows in split_rows.items()}
    columns = schema.names
    for path in chunk_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
            table = pa.Table.from_batches([batch])
            is_kept = pc.equal(table.column(SKIP_COLUMN), "")
            kept = table if pc.all(is_kept).as_py() is True else table.filter(is_kept)
            for name, writer in shards.items():
                rows = kept if len(shards) == 1 else kept.filter(pc.equal(kept.column("split"), name))
                writer.add(rows.select(columns))
    return [shard for writer in shards.values() for shard in writer.finish()]
