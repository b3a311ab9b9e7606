"""Turning source rows into Arrow tables: the unit of work of both the resumable build and the ``datasets`` builder.

A chunk's table has every dataset column plus ``split`` and ``skip_reason``; skipped rows keep their id and reason
and have no images. Nothing in here touches the output folder.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, Value

from ..config import BuildConfig
from ..transforms.base import SKIP_COLUMN, resolve_device
from .features import FEATURES, METHOD_COLUMNS
from .pipeline import RelightPipeline
from .splits import assign_split

logger = logging.getLogger(__name__)

CHUNK_FEATURES = Features({**FEATURES, "split": Value("string"), SKIP_COLUMN: Value("string")})
PROCESSING_ERROR = "processing_error"
CPU_BATCH_THREADS = 2
"""Batches in flight at once on a CPU, each thread with its share of torch's threads. One batch at a time leaves
cores idle in serial stretches (Python glue, per-image work on small tensors); two overlap them. Measured on 2 cores
at 512 px: 4.7 s -> 3.8-4.2 s for 48 images through the pipeline."""


@contextmanager
def torch_threads(count: int):
    """Run the block with ``torch.set_num_threads(count)`` (process-wide), restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ChunkProcessor:
    """Runs the pipeline over source rows; models and thread pools are created once and reused for every chunk.
    ``rank``: this process's index among the processes of a multi-device build (picks ``cuda:<rank>``)."""

    def __init__(self, config: BuildConfig, splits: dict[str, float], device: str = "auto", batch_size: int = 8,
                 rank: int | None = None):
        self.config = config
        self.splits = splits
        self.batch_size = batch_size
        self.rank = rank
        self.device = device
        on_cpu = resolve_device(device, rank).type == "cpu"
        self.batch_threads = min(CPU_BATCH_THREADS, torch.get_num_threads()) if on_cpu else 1
        started = time.perf_counter()
        self.pipeline = RelightPipeline(config, device)
        self.pipeline.prepare(rank)  # a model that cannot load fails here, before any row
        self.setup_seconds = time.perf_counter() - started

    def _failed_row(self, batch: dict[str, list], index: int) -> dict[str, list]:
        row = {name: [None] for name in FEATURES}
        row.update(image_id=[batch["image_id"][index]], source=[batch["source"][index]], seed=[self.config.seed])
        row[SKIP_COLUMN] = [PROCESSING_ERROR]
        return row

    def _run(self, batch: dict[str, list]) -> dict[str, list]:
        """The pipeline on a batch; if it raises, row by row, so one bad image costs only its own row."""
        try:
            return self.pipeline(batch, self.rank)
        except Exception:  # noqa: BLE001 - isolate the failing row below, never stop the build
            logger.debug("batch failed, retrying row by row:\n%s", traceback.format_exc())
        rows = []
        for index in range(len(batch["image_id"])):
            single = {name: values[index : index + 1] for name, values in batch.items()}
            try:
                rows.append(self.pipeline(single, self.rank))
            except Exception as error:  # noqa: BLE001
                logger.warning("%s: skipped (%s: %s)", batch["image_id"][index], type(error).__name__, error)
                rows.append(self._failed_row(batch, index))
        return {name: [value for row in rows for value in row[name]] for name in rows[0]}

    def _table(self, batch: dict[str, list]) -> pa.Table:
        out = self._run(batch)
        out["split"] = [assign_split(image_id, self.splits) for image_id in out["image_id"]]
        encoded = CHUNK_FEATURES.encode_batch({name: out[name] for name in CHUNK_FEATURES})
        return pa.Table.from_pydict(encoded, schema=CHUNK_FEATURES.arrow_schema)

    def process(self, rows: Dataset, progress=None) -> pa.Table:
        """``rows``: source rows (``image_id``, ``source``, undecoded ``input``) -> a table of ``CHUNK_FEATURES``.

        On a CPU, :data:`CPU_BATCH_THREADS` batches are processed at once (rows come out in order); on a GPU one."""
        workers = self.batch_threads
        tables, pending = [], deque()

        def collect(future: Future) -> None:
            tables.append(future.result())
            if progress is not None:
                progress.update(tables[-1].num_rows)

        with ThreadPoolExecutor(workers, thread_name_prefix="relight-batch") as executor, \
                torch_threads(max(1, torch.get_num_threads() // workers)):
            for start in range(0, len(rows), self.batch_size):
                pending.append(executor.submit(self._table, rows[start : start + self.batch_size]))
                if len(pending) > workers:  # at most one batch waiting beyond those running
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
        return pa.concat_tables(tables)


def chunk_stats(table: pa.Table) -> dict:
    """Counts for one chunk: attempted, processed, skips (with ids), methods, rows and bytes per split."""
    skip = table.column(SKIP_COLUMN).to_pylist()
    ids = table.column("image_id").to_pylist()
    splits = table.column("split").to_pylist()
    kept = [i for i, reason in enumerate(skip) if not reason]
    # Copies of the image bytes are made only when needed: usually every row is kept and there is one split.
    kept_table = table if len(kept) == len(skip) else table.take(pa.array(kept, type=pa.int64()))
    kept_splits = set(splits[i] for i in kept)
    return {
        "attempted": len(skip),
        "processed": len(kept),
        "skipped_rows": [{"image_id": ids[i], "reason": r} for i, r in enumerate(skip) if r],
        "methods": {c: dict(Counter(kept_table.column(c).to_pylist())) for c in METHOD_COLUMNS},
        "splits": dict(Counter(splits[i] for i in kept)),
        "split_bytes": {name: kept_table.nbytes if len(kept_splits) == 1
                        else kept_table.filter(pc.equal(kept_table.column("split"), name)).nbytes
                        for name in kept_splits},
    }
