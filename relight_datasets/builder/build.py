"""Resumable, sharded builds of a Hub-layout dataset folder: the orchestrator behind ``scripts/build.py``.

Order of a build (main process):

1. checks that create nothing: the source (:func:`check_source`), ``--out`` not a file;
2. the output lock (a second build into the same ``--out`` is refused, naming the holder);
3. the source items and the identity of this build (settings, resolved config, exact item list); what ``--out``
   holds (:func:`~.workdir.inspect_out`: fresh, resume, already complete, or refused naming what differs);
4. the models (a forced model that cannot load stops here), the free disk space; with ``--push-to-hub``, the Hub
   repo (created if missing; an already tagged version is refused);
5. only then the work folder: manifest, damaged chunks dropped (:func:`~.workdir.drop_damaged_chunks`), every
   unfinished chunk processed (:mod:`.launcher`), each stored atomically with its checksum;
6. the verdict (:func:`~.report.build_failure`: nothing processed, or too many processing errors: exit 1, nothing
   published); the shards, preview, card and report assembled in ``.work/staging`` and moved into ``--out``
   (:func:`~.workdir.publish`), so a previous build is replaced only by a complete one.

With ``--push-to-hub`` (``options.push``) the shards are not kept: each is committed to the Hub as soon as its rows
are finished, while later chunks are processed (:mod:`.stream`, which also says how much disk that needs and how it
resumes), and the card, preview and report go up in a final, tagged commit; ``--out`` keeps those three files.

Re-running the same command after a crash, ``kill -9``, a full disk or Ctrl-C resumes: finished chunks are kept and
the result is row for row that of an uninterrupted build. Output folder::

    README.md                         dataset card (YAML: features, splits, version, config, fingerprint)
    data/<split>-NNNNN-of-NNNNN.parquet
    preview.png                       contact sheet of the first rows
    build_report.json                 counts, skip reasons (with ids), methods, timings, version, identity
"""

from __future__ import annotations

import logging
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from .. import __version__
from ..config import BuildConfig
from ..transforms.base import resolve_device
from .card import build_card
from .chunks import RowCache
from .hub import PushOptions
from .launcher import SOURCE_ROWS, ChunkJob, Rank, WorkerFailed, current_rank, process_chunks, run_spawned
from .pipeline import PROCESSING_ERROR
from .preview import write_preview
from .report import build_failure, counts_part, merge_stats
from .shards import write_shards
from .signals import StopSignals
from .sources import SourceRows, check_source, open_source
from .splits import assign_split
from .stream import PENDING, StreamUpload
from .workdir import (
    MANIFEST,
    REPORT,
    WORK_DIR,
    OutputError,
    OutputLock,
    build_identity,
    chunk_paths,
    describe_os_error,
    drop_damaged_chunks,
    grows_only,
    inspect_out,
    publish,
    read_json,
    start_work,
    write_json,
)

logger = logging.getLogger(__name__)

__all__ = ["BuildFailed", "BuildOptions", "OutputError", "WorkerFailed", "build_dataset"]

BYTES_PER_PIXEL = {"png": 2.0, "webp": 0.5, "jpeg": 0.5}
"""A low estimate of one row's stored bytes per pixel of the build resolution (six images; the fixture faces at
128 px take about 7 bytes per pixel in PNG). Chunks and then shards hold every row once each."""


class BuildFailed(RuntimeError):
    """The rows were built but must not be published (nothing processed, too many errors): exit code 1.
    ``report`` holds the counts (also saved in the work folder)."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


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
    min_shards: int = 8
    """Shards per split at least (fewer only when the split has fewer rows), so every DataLoader worker of a
    streaming reader gets some."""
    num_processes: int = 1
    max_error_rate: float = 0.01
    """Largest share of attempted rows that may fail with ``processing_error`` before the build fails."""
    hub_repo: str | None = None
    """The Hub repo the dataset goes to (``--push-to-hub``): the card's snippets and name use it."""
    push: PushOptions | None = None
    """Upload the shards to the Hub while building (:mod:`.stream`); the local folder then keeps the card, preview
    and report only."""


def build_dataset(options: BuildOptions, config: BuildConfig) -> dict | None:
    """Run (or resume) the build and write the dataset folder; returns the build report (also saved).

    Under ``accelerate launch`` (or torchrun) each process takes every N-th chunk on its own device and the main
    process, the only one holding the output lock, writes the dataset once all are done (other processes return
    None). ``options.num_processes > 1`` does the same from a single command by spawning the processes itself.
    Either way the rows are those of a single-process build: each row depends only on its image and the config.

    Raises :class:`OutputError` or ``SourceError`` (before anything is created or deleted), ``ModelUnavailable``,
    :class:`BuildFailed`, :class:`WorkerFailed`, or ``BuildInterrupted`` on SIGINT/SIGTERM (finished chunks kept).
    """
    started = time.perf_counter()
    out = Path(options.out)
    rank = current_rank(options.device)
    job = ChunkJob(config, options.splits, options.device, options.batch_size, options.chunk_size, out / WORK_DIR)
    with StopSignals(announce=rank.is_main) as stop:
        if not rank.is_main:
            _follow(job, rank, stop)
            return None
        check_source(options.source)
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out}: exists and is not a directory")
        try:
            lock = OutputLock(out)
            lock.acquire()
        except OSError as error:
            raise OutputError(f"--out {out}: cannot write there ({error.strerror or error})") from None
        try:
            return _build_locked(options, config, job, rank, stop, started)
        finally:
            lock.release()


def _follow(job: ChunkJob, rank: Rank, stop: StopSignals) -> None:
    """A non-main process of an ``accelerate launch``: its models, then its share of the chunks once the main
    process has prepared the work folder (nothing, when the main process found the build complete)."""
    from datasets import load_from_disk

    processor = job.processor(rank)
    rank.wait()
    if read_json(job.work / MANIFEST) is None:
        return
    process_chunks(job, processor, load_from_disk(str(job.work / SOURCE_ROWS)), rank, stop)
    rank.wait()


def _check_disk_space(out: Path, rows: int, config: BuildConfig, options: BuildOptions) -> None:
    """Refuse a build whose estimated bytes (chunks and shards; a streaming upload's bound) exceed the free space."""
    row_bytes = config.resolution**2 * BYTES_PER_PIXEL[config.output.image_format]
    needed = 2 * rows * row_bytes
    if options.push is not None:
        bound = ((len(options.splits) + 2 * PENDING) * options.max_shard_bytes
                 + (options.num_processes + 2) * options.chunk_size * row_bytes)
        needed = min(needed, bound)
    free = shutil.disk_usage(out).free
    if free < needed:
        raise OutputError(f"--out {out}: about {needed / 1e9:.1f} GB needed for {rows} rows at {config.resolution} "
                          f"px, only {free / 1e9:.1f} GB free; free some space or use another --out")


def _build_locked(options: BuildOptions, config: BuildConfig, job: ChunkJob, rank: Rank, stop: StopSignals,
                  started: float) -> dict:
    out, work = Path(options.out), job.work
    source = open_source(options.source, options.limit)
    rows = source.rows
    source_ids = [*rows["image_id"], *(item["image_id"] for item in source.skipped)]
    identity = build_identity(options.source, source.fingerprint, len(source_ids), options.limit,
                              options.chunk_size, options.splits, config.to_dict())
    state = inspect_out(out, identity, options.overwrite, source_ids)
    if state == "complete":
        shutil.rmtree(work, ignore_errors=True)  # what a crash between publishing and cleaning up left
        rank.wait()
        return {**read_json(out / REPORT), "already_complete": True}

    previous = read_json(out / REPORT) if state in ("extend", "resume") else None
    if previous is not None and previous.get("identity") != identity and grows_only(previous.get("identity"), identity):
        # extending that build (same settings, more or other source items): reuse its rows
        job = replace(job, cache=RowCache(out / "data", {item["image_id"]: item["reason"]
                                                        for item in previous.get("skipped_rows", [])
                                                        if item["reason"] != PROCESSING_ERROR}))
    stream = _stream_upload(options, config, rows["image_id"], state == "resume", stop) if options.push else None
    processor = job.processor(rank)
    chunks = -(-len(rows) // options.chunk_size)
    if state == "resume":
        drop_damaged_chunks(work, chunks, stream.absorbed if stream is not None else frozenset())
    done = [i for i in range(chunks) if chunk_paths(work, i)[1].is_file()] if state == "resume" else []
    resumed_rows = sum(read_json(chunk_paths(work, i)[1])["attempted"] for i in done)
    _check_disk_space(out, len(rows) - resumed_rows, config, options)
    if stream is not None:
        stream.prepare()  # creates the repo: after every check
    try:
        start_work(work, identity, source_ids, __version__, fresh=state in ("fresh", "extend"))
        if rank.count > 1 or options.num_processes > 1:
            rows.save_to_disk(str(work / SOURCE_ROWS))
        rank.wait()
        with stream if stream is not None else nullcontext():
            on_chunk = stream.step if stream is not None else None
            with tqdm(total=len(rows), initial=resumed_rows, unit="img", desc="Relighting",
                      disable=not options.progress, dynamic_ncols=True) as bar:
                if options.num_processes > 1 and rank.count == 1:
                    run_spawned(job, processor, rows, options.num_processes, stop, bar, on_chunk)
                else:
                    process_chunks(job, processor, rows, rank, stop, bar, on_chunk)
            rank.wait()
            stop.check()
            return _finish(options, config, source, identity, processor, rank, chunks, set(done), started, stream)
    except OSError as error:
        raise OutputError(describe_os_error(error, f"writing into {out}")) from error


def _stream_upload(options: BuildOptions, config: BuildConfig, image_ids: list[str], resuming: bool,
                   stop: StopSignals) -> StreamUpload:
    labels = [assign_split(image_id, options.splits) for image_id in image_ids]
    return StreamUpload(Path(options.out) / WORK_DIR, options.push, list(options.splits), labels, options.chunk_size,
                        options.max_shard_bytes, options.min_shards, config, fresh=not resuming,
                        check_stop=stop.check)


def _finish(options: BuildOptions, config: BuildConfig, source: SourceRows, identity: dict, processor, rank: Rank,
            chunks: int, resumed: set[int], started: float, stream: StreamUpload | None) -> dict:
    """Merge the chunk stats, judge the build, and publish the dataset (see the module notes); with ``stream``, the
    shards go to the Hub and the card, preview and report follow them in a final, tagged commit."""
    out, work = Path(options.out), Path(options.out) / WORK_DIR
    stats = [read_json(chunk_paths(work, i)[1]) for i in range(chunks)]
    merged = merge_stats(stats, source.skipped)
    counts = counts_part(merged, options.splits)
    processed_now = sum(item["processed"] - item.get("reused", 0) for i, item in enumerate(stats) if i not in resumed)
    report = {
        **counts,
        "resumed_rows": sum(stats[i]["attempted"] for i in resumed),
        "reused_rows": sum(item.get("reused", 0) for item in stats),
        "version": config.output.dataset_version,
        "package_version": __version__,
        "config_fingerprint": config.fingerprint(),
        "identity": identity,
        "source": options.source,
        "models": processor.pipeline.models,
        "device": str(resolve_device(options.device, rank.device_index)),
        "processes": max(rank.count, options.num_processes),
        "batch_threads": processor.batch_threads,
        "batch_size": options.batch_size,
    }
    long_side = report["image_sizes"].get("long_side")
    if long_side and long_side["max"] < config.resolution:
        logger.warning("the inputs are smaller than --resolution %d: the images keep their own size (long side %d-%d "
                       "px); the card records the real sizes", config.resolution, long_side["min"], long_side["max"])
    failure = build_failure(report, options.max_error_rate)
    if failure:
        write_json(work / REPORT, report)
        raise BuildFailed(f"{failure} (counts in {work / REPORT})", report)

    write_started = time.perf_counter()
    staging = work / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    first_split = next(name for name, count in report["splits"].items() if count)
    if stream is not None:
        shards = stream.upload_shards()
        write_seconds = stream.write_seconds
        stream.write_preview(staging, first_split)
        report["hub"] = {"repo": options.push.repo_id, "revision": options.push.revision}
    else:
        shards = write_shards([chunk_paths(work, i)[0] for i in range(chunks)], staging / "data", report["splits"],
                              options.max_shard_bytes, config.output.layout, options.min_shards)
        write_seconds = time.perf_counter() - write_started
        write_preview(staging, first_split, config.output.preview_rows, config)
    stored_bytes = sum(shard["bytes"] for shard in shards)
    wall = time.perf_counter() - started
    report.update(
        timings={"model_load": round(processor.setup_seconds, 3),
                 **{k: round(v, 3) for k, v in merged["timings"].items()}, "write": round(write_seconds, 3)},
        wall_seconds=round(wall, 3),
        images_per_second=round(processed_now / wall, 3) if wall > 0 else None,
        shards=[{**shard, "name": f"data/{shard['name']}"} for shard in shards],
        layout=config.output.layout,
        bytes_per_row=round(stored_bytes / report["processed"]),
    )
    build_card(config, report, options.hub_repo).save(staging / "README.md")
    write_json(staging / REPORT, report)
    commit_url = stream.commit_final(staging, report) if stream is not None else None
    publish(out, staging)
    shutil.rmtree(work, ignore_errors=True)
    return {**report, "commit_url": commit_url} if commit_url else report
