"""Who processes which chunk: one process, processes spawned by the build itself (``--num-processes``), or the
processes of ``accelerate launch`` / torchrun. Either way process ``index`` of ``count`` takes every ``count``-th
unfinished chunk, writes it into the work folder, and only the main process (which holds the output lock) writes
the dataset once all are done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq

from ..config import BuildConfig
from .chunks import ChunkProcessor, RowCache, chunk_stats
from .shards import ROW_GROUP_ROWS
from .signals import BuildInterrupted, StopSignals
from .workdir import chunk_paths, file_digest, write_atomic, write_json

BARRIER_TIMEOUT = timedelta(hours=24)
SOURCE_ROWS = "source-rows"
"""The usable source rows, saved in the work folder for the other processes of a multi-process build."""
WORKER_JOIN_SECONDS = 120


class WorkerFailed(RuntimeError):
    """A worker process of a ``--num-processes`` build died (its traceback is on stderr); finished chunks are kept."""


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


@dataclass(frozen=True)
class ChunkJob:
    """What every process needs to process its chunks (picklable: it travels to spawned workers)."""

    config: BuildConfig
    splits: dict[str, float]
    device: str
    batch_size: int
    chunk_size: int
    work: Path
    cache: RowCache | None = None
    """An incremental build's previous rows (see :class:`~relight_datasets.builder.chunks.RowCache`)."""

    def processor(self, rank: Rank) -> ChunkProcessor:
        """The models of this process, loaded (a model that cannot load fails here)."""
        return ChunkProcessor(self.config, self.splits, self.device, self.batch_size, rank=rank.device_index,
                              cache=self.cache)


class Progress:
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


def process_chunks(job: ChunkJob, processor: ChunkProcessor, rows, rank: Rank, stop: StopSignals,
                   progress=None, on_chunk: Callable[[], None] | None = None) -> None:
    """Process this rank's unfinished chunks of ``rows`` (every ``rank.count``-th, from ``rank.index``) into the
    work folder. Each chunk's stats record its Parquet file's size and checksum; ``on_chunk()`` runs after each
    chunk is stored (the streaming upload's turn)."""
    chunks = -(-len(rows) // job.chunk_size)
    mine = [i for i in range(rank.index, chunks, rank.count) if not chunk_paths(job.work, i)[1].is_file()]
    if progress is not None:
        progress = Progress(progress, job.work, set(mine))
    for index in mine:
        stop.check()
        table_path, stats_path = chunk_paths(job.work, index)
        before, reused = dict(processor.pipeline.timings), processor.reused
        chunk = rows.select(range(index * job.chunk_size, min(len(rows), (index + 1) * job.chunk_size)))
        table = processor.process(chunk, progress, stop.check)
        stats = chunk_stats(table, processor.errors)
        stats["timings"] = {k: v - before.get(k, 0.0) for k, v in processor.pipeline.timings.items()}
        stats["reused"] = processor.reused - reused  # rows taken from the build this one extends
        write_atomic(table_path, lambda tmp, t=table: pq.write_table(t, tmp, row_group_size=ROW_GROUP_ROWS))
        stats.update(bytes=table_path.stat().st_size, digest=file_digest(table_path))
        write_json(stats_path, stats)
        if on_chunk is not None:
            on_chunk()


def _spawned_worker(job: ChunkJob, index: int, count: int) -> None:
    """Entry point of a process started by :func:`run_spawned` (spawn start method). Exits with 128 + signal when
    stopped by SIGINT/SIGTERM (no traceback; the main process reports the interruption)."""
    import sys

    import torch
    from datasets import load_from_disk

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
    rank = Rank(index, count, index)
    with StopSignals(announce=False) as stop:
        try:
            process_chunks(job, job.processor(rank), load_from_disk(str(job.work / SOURCE_ROWS)), rank, stop)
        except BuildInterrupted as interrupted:
            sys.exit(interrupted.exit_code)


def run_spawned(job: ChunkJob, processor: ChunkProcessor, rows, count: int, stop: StopSignals, progress,
                on_chunk: Callable[[], None] | None = None) -> None:
    """Rank 0 here (with ``processor``), ranks 1..count-1 in spawned processes reading the rows saved in the work
    folder; ``on_chunk()`` after each chunk of rank 0 and every half second while the others finish. Raises
    :class:`WorkerFailed` if a worker fails, :class:`BuildInterrupted` if this process was stopped
    (the workers are stopped too)."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_spawned_worker, args=(job, index, count), daemon=True)
               for index in range(1, count)]
    for worker in workers:
        worker.start()
    try:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // count))
        process_chunks(job, processor, rows, Rank(0, count, 0), stop, progress, on_chunk)
        for worker in workers:
            while worker.is_alive() and stop.signum is None:
                worker.join(0.5)
                if on_chunk is not None:
                    on_chunk()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()  # SIGTERM: the worker finishes its batches in flight and exits
                worker.join(WORKER_JOIN_SECONDS)
    stop.check()
    failed = [index for index, worker in enumerate(workers, 1) if worker.exitcode != 0]
    if failed:
        raise WorkerFailed(f"worker process(es) {failed} failed (see above); finished chunks are kept, re-run the "
                           "same command to resume")
