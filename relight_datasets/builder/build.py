"""Resumable, sharded builds of a Hub-layout dataset folder: the orchestrator behind ``scripts/build.py``.

Work is cut into chunks of ``chunk_size`` source rows. Each finished chunk is written to ``OUT/.work/`` as a Parquet
file and then a stats file, each under a temporary name renamed into place, so a chunk is either complete or absent
(``kill -9`` at any moment loses at most the chunk in progress). Re-running the same command resumes: finished chunks
are skipped and the result is row for row that of an uninterrupted build. Once every chunk is done the rows are
streamed into ``data/<split>-NNNNN-of-NNNNN.parquet`` shards, and the card, preview and report are written.

Output folder::

    README.md                         dataset card (YAML: features, splits, version, config, fingerprint)
    data/<split>-NNNNN-of-NNNNN.parquet
    preview.png                       contact sheet of the first rows
    build_report.json                 counts, skip reasons (with ids), methods, timings, version, fingerprint
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import load_from_disk
from tqdm.auto import tqdm

from .. import __version__
from ..config import BuildConfig
from ..transforms.base import SKIP_COLUMN
from .card import build_card
from .chunks import ChunkProcessor, chunk_stats
from .features import FEATURES, METHOD_COLUMNS
from .preview import PREVIEW_COLUMNS, contact_sheet
from .sources import open_source

WORK_DIR = ".work"
SOURCE_ROWS = "source-rows"
BARRIER_TIMEOUT = timedelta(hours=24)
MANIFEST = "manifest.json"
REPORT = "build_report.json"
ROW_GROUP_ROWS = 32


class OutputError(ValueError):
    """The output folder cannot be used as asked (one line, exit code 2)."""


class WorkerFailed(RuntimeError):
    """A worker process of a ``--num-processes`` build died (its traceback is on stderr); finished chunks are kept."""


@dataclass
class BuildOptions:
    source: str
    out: Path
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    chunk_size: int = 256
    splits: dict[str, float] = field(default_factory=lambda: {"train": 1.0})
    max_shard_bytes: int = 500 * 1024 * 1024
    num_processes: int = 1


@dataclass(frozen=True)
class Rank:
    """This process's place in a multi-process build: ``index`` of ``count`` processes, ``device_index`` picks its
    GPU (the local rank), ``state`` is accelerate's ``PartialState`` when launched by accelerate/torchrun."""

    index: int = 0
    count: int = 1
    device_index: int | None = None
    state: object = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        """Block until every process of the launch gets here (no-op for a single process)."""
        if self.state is not None:
            self.state.wait_for_everyone()


def current_rank(device: str = "auto") -> Rank:
    """The rank of this process: from accelerate's ``PartialState`` under a distributed launch (``WORLD_SIZE`` > 1),
    else rank 0 of 1. Without CUDA (or with ``device="cpu"``) the processes join over gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Rank()
    import torch
    from accelerate import PartialState

    # The barriers wait for the main process to fetch the source and for the slowest process's last chunk: far
    # longer than the process group's default timeout, which would otherwise kill a healthy build.
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available(), timeout=BARRIER_TIMEOUT)
    return Rank(state.process_index, state.num_processes, state.local_process_index, state)


def build_identity(options: BuildOptions, config: BuildConfig) -> dict:
    """What must match for a re-run to resume (or to count as already done) instead of being refused."""
    return {"config_fingerprint": config.fingerprint(), "source": options.source, "limit": options.limit,
            "chunk_size": options.chunk_size, "splits": options.splits}


def _write_atomic(path: Path, write) -> None:
    """``write(temporary_path)``, then rename into ``path``: readers see the whole file or nothing."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def _describe(identity: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in identity.items())


def _prepare_out(out: Path, identity: dict, overwrite: bool) -> str:
    """``"fresh"``, ``"resume"`` or ``"complete"`` for this build in ``out``; refuses anything else."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    if overwrite and out.is_dir():
        for name in ("data", WORK_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("README.md", "preview.png", REPORT):
            (out / name).unlink(missing_ok=True)
    manifest, report = out / WORK_DIR / MANIFEST, out / REPORT
    for path, state in ((manifest, "resume"), (report, "complete")):
        if path.is_file():
            previous = json.loads(path.read_text()).get("identity")
            if previous == identity:
                return state
            raise OutputError(
                f"--out {out} holds a build with other settings ({_describe(previous or {})}); "
                f"this run has {_describe(identity)}. Use another --out, or --overwrite to replace it"
            )
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"--out {out}: folder is not empty and holds no build of this tool; pass --overwrite")
    return "fresh"


def _chunk_paths(work: Path, index: int) -> tuple[Path, Path]:
    return work / f"chunk-{index:05d}.parquet", work / f"chunk-{index:05d}.json"


class _SplitShards:
    """Writes one split's rows into shards of at most about ``max_bytes`` (row groups of ``ROW_GROUP_ROWS``), under
    temporary names; :meth:`finish` renames them ``<split>-NNNNN-of-NNNNN.parquet`` once their number is known."""

    def __init__(self, name: str, data_dir: Path, max_bytes: int):
        self.name, self.data_dir, self.max_bytes = name, data_dir, max_bytes
        self.schema = FEATURES.arrow_schema
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
        self._close_shard()
        if not self.paths:  # an empty split still gets one (empty) shard, so load_dataset lists it
            self.paths.append(self.data_dir / f".{self.name}-00000.parquet.partial")
            pq.write_table(self.schema.empty_table(), self.paths[0])
        names = [f"{self.name}-{i:05d}-of-{len(self.paths):05d}.parquet" for i in range(len(self.paths))]
        for path, name in zip(self.paths, names, strict=True):
            os.replace(path, self.data_dir / name)
        return names


def _write_shards(work: Path, chunks: int, data_dir: Path, splits: dict[str, float], max_bytes: int) -> list[str]:
    """Stream the kept rows of every chunk, in order, into each split's shards. Memory: one row group at a time.
    Rows are copied (filtered) only when some were skipped or there are several splits."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shards = {name: _SplitShards(name, data_dir, max_bytes) for name in splits}
    columns = FEATURES.arrow_schema.names
    for index in range(chunks):
        for batch in pq.ParquetFile(_chunk_paths(work, index)[0]).iter_batches(batch_size=ROW_GROUP_ROWS):
            table = pa.Table.from_batches([batch])
            is_kept = pc.equal(table.column(SKIP_COLUMN), "")
            kept = table if pc.all(is_kept).as_py() is True else table.filter(is_kept)
            for name, writer in shards.items():
                rows = kept if len(shards) == 1 else kept.filter(pc.equal(kept.column("split"), name))
                writer.add(rows.select(columns))
    return [name for writer in shards.values() for name in writer.finish()]


def _preview(out: Path, config: BuildConfig, splits: dict[str, float]) -> None:
    """Contact sheet of the first rows of the first split."""
    if config.output.preview_rows == 0:
        return
    count = config.output.preview_rows
    shards = sorted((out / "data").glob(f"{next(iter(splits))}-*.parquet"))
    batches = (batch for path in shards
               for batch in pq.ParquetFile(path).iter_batches(batch_size=count, columns=list(PREVIEW_COLUMNS)))
    rows = list(islice((row for batch in batches for row in batch.to_pylist()), count))
    if rows:
        decoded = [{name: FEATURES[name].decode_example(row[name]) for name in PREVIEW_COLUMNS} for row in rows]
        contact_sheet(decoded).save(out / "preview.png", compress_level=1)


def _merge_stats(stats: list[dict]) -> dict:
    merged: dict = {"attempted": 0, "processed": 0, "skipped_rows": [], "splits": Counter(), "split_bytes": Counter(),
                    "timings": Counter(), "methods": {column: Counter() for column in METHOD_COLUMNS}}
    for item in stats:
        merged["attempted"] += item["attempted"]
        merged["processed"] += item["processed"]
        merged["skipped_rows"].extend(item["skipped_rows"])
        for column in METHOD_COLUMNS:
            merged["methods"][column].update(item["methods"][column])
        merged["splits"].update(item["splits"])
        merged["split_bytes"].update(item["split_bytes"])
        merged["timings"].update(item["timings"])
    return merged


class _Progress:
    """The progress bar of the main process: its own rows as they finish, other processes' rows as their chunks
    land in the work folder."""

    def __init__(self, bar, work: Path, own: set[int]):
        self.bar, self.work, self.own = bar, work, own
        self.seen = {int(p.stem.split("-")[1]) for p in work.glob("chunk-*.json")}

    def update(self, rows: int) -> None:
        self.bar.update(rows)
        for path in self.work.glob("chunk-*.json"):
            index = int(path.stem.split("-")[1])
            if index not in self.seen and index not in self.own:
                self.seen.add(index)
                self.bar.update(json.loads(path.read_text())["attempted"])


def _process_chunks(options: BuildOptions, config: BuildConfig, work: Path, source, rank: Rank,
                    progress=None) -> ChunkProcessor:
    """Process this rank's unfinished chunks (every ``rank.count``-th, from ``rank.index``) into ``work``."""
    chunks = max(1, math.ceil(len(source) / options.chunk_size))
    mine = [i for i in range(rank.index, chunks, rank.count) if not _chunk_paths(work, i)[1].is_file()]
    processor = ChunkProcessor(config, options.splits, options.device, options.batch_size, rank=rank.device_index)
    if progress is not None:
        progress = _Progress(progress, work, set(mine))
    for index in mine:
        table_path, stats_path = _chunk_paths(work, index)
        before = dict(processor.pipeline.timings)
        rows = source.select(range(index * options.chunk_size, min(len(source), (index + 1) * options.chunk_size)))
        table = processor.process(rows, progress)
        stats = chunk_stats(table)
        stats["timings"] = {k: v - before.get(k, 0.0) for k, v in processor.pipeline.timings.items()}
        _write_atomic(table_path, lambda tmp, t=table: pq.write_table(t, tmp, row_group_size=ROW_GROUP_ROWS))
        _write_json(stats_path, stats)
    return processor


def _spawned_worker(options: BuildOptions, config: BuildConfig, work: Path, index: int, count: int) -> None:
    """Entry point of a process started by :func:`build_dataset` for ``num_processes > 1`` (spawn start method)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
    _process_chunks(options, config, work, load_from_disk(str(work / SOURCE_ROWS)), Rank(index, count, index))


def _run_spawned(options: BuildOptions, config: BuildConfig, work: Path, source, progress) -> ChunkProcessor:
    """Rank 0 here, ranks 1..N-1 in spawned processes; raises if any of them fails."""
    import multiprocessing

    import torch

    count = options.num_processes
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_spawned_worker, args=(options, config, work, index, count), daemon=True)
               for index in range(1, count)]
    for worker in workers:
        worker.start()
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
        processor = _process_chunks(options, config, work, source, Rank(0, count, 0), progress)
        for worker in workers:
            worker.join()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
    failed = [index for index, worker in enumerate(workers, 1) if worker.exitcode != 0]
    if failed:
        raise WorkerFailed(f"worker process(es) {failed} failed (see above); finished chunks are kept, re-run the "
                           "same command to resume")
    return processor


def build_dataset(options: BuildOptions, config: BuildConfig) -> dict | None:
    """Run (or resume) the build and write the dataset folder; returns the build report (also saved).

    Under ``accelerate launch`` (or torchrun) each process takes every N-th chunk on its own device and the main
    process writes the dataset once all are done (other processes return None). ``options.num_processes > 1``
    does the same from a single command by spawning the processes itself. Either way the rows are those of a
    single-process build: each row depends only on its image and the config.
    """
    started = time.perf_counter()
    out = Path(options.out)
    identity = build_identity(options, config)
    rank = current_rank(options.device)
    work = out / WORK_DIR
    if rank.is_main:
        state = _prepare_out(out, identity, options.overwrite)
        if state != "complete":
            work.mkdir(parents=True, exist_ok=True)
            _write_json(work / MANIFEST, {"identity": identity, "package_version": __version__})
            source = open_source(options.source, options.limit, cache_dir=work / "source")
            if rank.count > 1 or options.num_processes > 1:
                source.save_to_disk(str(work / SOURCE_ROWS))
    rank.wait()
    if not rank.is_main:
        state = _prepare_out(out, identity, overwrite=False)
        source = load_from_disk(str(work / SOURCE_ROWS)) if state != "complete" else None
    if state == "complete":
        report = json.loads((out / REPORT).read_text())
        report["already_complete"] = True
        return report if rank.is_main else None

    chunks = max(1, math.ceil(len(source) / options.chunk_size))
    done = [index for index in range(chunks) if _chunk_paths(work, index)[1].is_file()]
    resumed_rows = sum(json.loads(_chunk_paths(work, i)[1].read_text())["attempted"] for i in done)
    with tqdm(total=len(source), initial=resumed_rows, unit="img", desc="Relighting",
              disable=not (options.progress and rank.is_main), dynamic_ncols=True) as bar:
        if options.num_processes > 1 and rank.count == 1:
            processor = _run_spawned(options, config, work, source, bar)
        else:
            processor = _process_chunks(options, config, work, source, rank, bar)
    rank.wait()
    if not rank.is_main:
        return None

    write_started = time.perf_counter()
    shutil.rmtree(out / "data", ignore_errors=True)
    shards = _write_shards(work, chunks, out / "data", options.splits, options.max_shard_bytes)
    write_seconds = time.perf_counter() - write_started
    _preview(out, config, options.splits)

    merged = _merge_stats([json.loads(_chunk_paths(work, i)[1].read_text()) for i in range(chunks)])
    wall = time.perf_counter() - started
    processed_now = len(source) - resumed_rows
    report = {
        "attempted": merged["attempted"],
        "processed": merged["processed"],
        "skipped": dict(sorted(Counter(r["reason"] for r in merged["skipped_rows"]).items())),
        "skipped_rows": merged["skipped_rows"],
        "splits": {name: merged["splits"].get(name, 0) for name in options.splits},
        "split_bytes": {name: merged["split_bytes"].get(name, 0) for name in options.splits},
        "methods": {column: dict(sorted(counts.items())) for column, counts in merged["methods"].items()},
        "timings": {"model_load": round(processor.setup_seconds, 3),
                    **{k: round(v, 3) for k, v in merged["timings"].items()}, "write": round(write_seconds, 3)},
        "wall_seconds": round(wall, 3),
        "images_per_second": round(processed_now / wall, 3) if wall > 0 else None,
        "resumed_rows": resumed_rows,
        "version": config.output.dataset_version,
        "package_version": __version__,
        "config_fingerprint": config.fingerprint(),
        "identity": identity,
        "source": options.source,
        "models": processor.pipeline.models,
        "device": str(processor.pipeline.stages[0].device(rank.device_index)),
        "processes": max(rank.count, options.num_processes),
        "batch_threads": processor.batch_threads,
        "batch_size": options.batch_size,
        "shards": [f"data/{name}" for name in shards],
    }
    build_card(config, report).save(out / "README.md")
    _write_json(out / REPORT, report)
    shutil.rmtree(work, ignore_errors=True)
    return report
