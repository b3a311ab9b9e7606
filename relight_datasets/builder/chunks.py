"""Turning source rows into Arrow tables: the unit of work of both the resumable build and the ``datasets`` builder.

A chunk's table has every dataset column plus ``split`` and ``skip_reason``; skipped rows keep their id and reason
and have no images. Nothing in here touches the output folder.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
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


class RowCache:
    """The rows of the build an incremental build extends: its published shards in ``data_dir`` (read memory-mapped
    on first use in each process, rows copied out only when asked for) and the ids it skipped, with their reasons
    (``processing_error`` rows are not passed in: they are tried again). A row depends only on its image and the
    config, so a kept row is reused as it is. Picklable: a spawned worker opens the shards itself."""

    def __init__(self, data_dir: Path, skipped: dict[str, str]):
        self.data_dir, self.skipped = data_dir, skipped
        self._opened: tuple[int, pa.Table | None, dict[str, int]] | None = None

    def __getstate__(self) -> dict:
        return {"data_dir": self.data_dir, "skipped": self.skipped, "_opened": None}

    def _index(self) -> tuple[pa.Table | None, dict[str, int]]:
        if self._opened is None or self._opened[0] != os.getpid():
            shards = sorted(self.data_dir.glob("*.parquet"))
            table = pa.concat_tables([pq.read_table(path, memory_map=True) for path in shards]) if shards else None
            ids = {} if table is None else {image_id: row for row, image_id in
                                            enumerate(table.column("image_id").to_pylist())}
            self._opened = (os.getpid(), table, ids)
        return self._opened[1], self._opened[2]

    def rows(self, image_ids: list[str]) -> list[dict | None]:
        """Per id, the previous build's row (its stored columns, ``skip_reason`` "" or the skip's reason), or None
        when the id is new."""
        table, index = self._index()
        found = [index.get(image_id) for image_id in image_ids]
        kept = table.take(pa.array([row for row in found if row is not None], type=pa.int64())).to_pylist() \
            if table is not None and any(row is not None for row in found) else []
        taken = iter(kept)
        out = []
        for image_id, row in zip(image_ids, found, strict=True):
            if row is not None:
                out.append({**next(taken), SKIP_COLUMN: ""})
            elif image_id in self.skipped:
                out.append({"image_id": image_id, SKIP_COLUMN: self.skipped[image_id]})
            else:
                out.append(None)
        return out


class ChunkProcessor:
    """Runs the pipeline over source rows; models and thread pools are created once and reused for every chunk.
    ``rank``: this process's index among the processes of a multi-device build (picks ``cuda:<rank>``)."""

    def __init__(self, config: BuildConfig, splits: dict[str, float], device: str = "auto", batch_size: int = 8,
                 rank: int | None = None, cache: RowCache | None = None):
        self.config = config
        self.cache = cache
        self.reused = 0
        """Kept rows taken from :attr:`cache` so far (batches run on two threads: counted under a lock)."""
        self._count_lock = threading.Lock()
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

    def _run_new(self, batch: dict[str, list]) -> dict[str, list]:
        """:meth:`_run` on the rows the cache does not hold; the others are taken from the cache."""
        cached = self.cache.rows(list(batch["image_id"])) if self.cache is not None else [None] * len(batch["image_id"])
        new = [index for index, row in enumerate(cached) if row is None]
        computed = self._run({name: [values[i] for i in new] for name, values in batch.items()}) if new else {}
        with self._count_lock:
            self.reused += sum(1 for row in cached if row is not None and not row[SKIP_COLUMN])
        position = {index: order for order, index in enumerate(new)}
        columns = [*FEATURES, SKIP_COLUMN]
        seed = self.config.seed
        return {name: [computed[name][position[index]] if row is None else
                       row.get(name, {"source": batch["source"][index], "seed": seed}.get(name))
                       for index, row in enumerate(cached)] for name in columns}

    def _table(self, batch: dict[str, list]) -> pa.Table:
        out = self._run_new(batch)
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
