"""Turning source rows into Arrow tables: the unit of work of both the resumable build and the ``datasets`` builder.

A chunk's table has every dataset column plus ``split`` and ``skip_reason``; skipped rows keep their id and reason
and have no images. Nothing in here touches the output folder.
"""

from __future__ import annotations

import io
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset, Features, Value
from PIL import Image

from ..config import BuildConfig
from ..transforms.base import SKIP_COLUMN, resolve_device
from .features import FEATURES, METHOD_COLUMNS
from .pipeline import PROCESSING_ERROR, RelightPipeline, run_isolating_failures
from .splits import assign_split

CHUNK_FEATURES = Features({**FEATURES, "split": Value("string"), SKIP_COLUMN: Value("string")})
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
        self.errors: dict[str, str] = {}
        """``image_id -> "ErrorType: message"`` of the rows that became ``processing_error``."""

    def _run(self, batch: dict[str, list]) -> dict[str, list]:
        columns, errors = run_isolating_failures(self.pipeline, batch, self.rank)
        self.errors.update(errors)
        return columns

    def _table(self, batch: dict[str, list]) -> pa.Table:
        out = self._run(batch)
        out["split"] = [assign_split(image_id, self.splits) for image_id in out["image_id"]]
        encoded = CHUNK_FEATURES.encode_batch({name: out[name] for name in CHUNK_FEATURES})
        return pa.Table.from_pydict(encoded, schema=CHUNK_FEATURES.arrow_schema)

    def process(self, rows: Dataset, progress=None, check_stop: Callable[[], None] | None = None) -> pa.Table:
        """``rows``: source rows (``image_id``, ``source``, undecoded ``input``) -> a table of ``CHUNK_FEATURES``.

        On a CPU, :data:`CPU_BATCH_THREADS` batches are processed at once (rows come out in order); on a GPU one.
        ``check_stop`` is called before each batch is started; what it raises ends the call once the batches in
        flight are done (the rows are abandoned, never recorded as failures)."""
        workers = self.batch_threads
        tables, pending = [], deque()

        def collect(future: Future) -> None:
            tables.append(future.result())
            if progress is not None:
                progress.update(tables[-1].num_rows)

        with ThreadPoolExecutor(workers, thread_name_prefix="relight-batch") as executor, \
                torch_threads(max(1, torch.get_num_threads() // workers)):
            for start in range(0, len(rows), self.batch_size):
                if check_stop is not None:
                    check_stop()
                pending.append(executor.submit(self._table, rows[start : start + self.batch_size]))
                if len(pending) > workers:  # at most one batch waiting beyond those running
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
        return pa.concat_tables(tables)


def chunk_stats(table: pa.Table, errors: dict[str, str]) -> dict:
    """Counts for one chunk: attempted, processed, skips (with ids), methods, rows and bytes per split, and the
    first ``processing_error`` of the chunk (``{"image_id", "error"}`` from ``errors``, or None)."""
    skip = table.column(SKIP_COLUMN).to_pylist()
    ids = table.column("image_id").to_pylist()
    splits = table.column("split").to_pylist()
    kept = [i for i, reason in enumerate(skip) if not reason]
    # Copies of the image bytes are made only when needed: usually every row is kept and there is one split.
    kept_table = table if len(kept) == len(skip) else table.take(pa.array(kept, type=pa.int64()))
    kept_splits = set(splits[i] for i in kept)
    failed = [ids[i] for i, reason in enumerate(skip) if reason == PROCESSING_ERROR]
    return {
        "attempted": len(skip),
        "processed": len(kept),
        "skipped_rows": [{"image_id": ids[i], "reason": r} for i, r in enumerate(skip) if r],
        "methods": {c: dict(Counter(kept_table.column(c).to_pylist())) for c in METHOD_COLUMNS},
        "splits": dict(Counter(splits[i] for i in kept)),
        "split_bytes": {name: kept_table.nbytes if len(kept_splits) == 1
                        else kept_table.filter(pc.equal(kept_table.column("split"), name)).nbytes
                        for name in kept_splits},
        "first_error": {"image_id": failed[0], "error": errors.get(failed[0], "unknown")} if failed else None,
        "image_sizes": dict(Counter(stored_size(value) for value in kept_table.column("input").to_pylist())),
    }


def stored_size(image: dict) -> str:
    """``"WxH"`` of a stored image (``{"bytes": ...}``), read from its header only."""
    with Image.open(io.BytesIO(image["bytes"])) as opened:
        return f"{opened.width}x{opened.height}"
