"""``--push-to-hub`` while building: shards are committed to the Hub as soon as their rows are finished, so local disk
holds a bounded part of the dataset instead of all of it.

How (bookkeeping in the main process, commits in one uploader thread):

- each finished chunk is *absorbed*: its kept rows are copied, per split, into
  ``.work/stream/pieces/<split>-CCCCC.parquet`` (each row with its ordinal among the split's source rows) and the
  chunk's Parquet file is deleted (its stats stay);
- the shard plan is fixed once the first kept rows are known: a split of ``N`` source rows gets shards of ``P`` source
  rows, ``P`` from ``--min-shards`` (:func:`~.shards.rows_per_shard`) and from ``--max-shard-size`` at the bytes per
  row seen so far. Shard ``k`` holds the kept rows of ordinals ``[kP, (k+1)P)``, so its name
  ``<split>-KKKKK-of-NNNNN.parquet`` is known before its rows are; a shard whose rows were all skipped is not written
  (its number is missing from ``data/``, which ``datasets`` does not mind);
- a shard is written once every chunk holding its source rows is absorbed and the split's earlier shards are written,
  then committed on its own (:func:`~.hub.create_commit`: retried with backoff); while :data:`PENDING` shards wait
  for their commit, processing waits;
- after a commit the shard is recorded as done in ``.work/stream/record.json`` (written atomically), its file is
  deleted, and so are the pieces that no unfinished shard needs;
- the card, preview and report go up in a final commit, which also deletes the ``data/`` files of the branch that are
  not this build's (an earlier version's shards), and that commit is tagged.

Local disk, in Parquet: per split, the pieces of the shard being gathered (fewer than ``P`` rows plus one chunk's rows
of that split); at most :data:`PENDING` shards waiting for their commit, each held twice (its file and its pieces);
the chunk just finished and its copy being absorbed (and the chunks other processes finished meanwhile); the first
``output.preview_rows`` rows of each split, for the preview. So about ``(splits + 2 * PENDING) * --max-shard-size``
plus ``(processes + 2) * --chunk-size`` rows.

Resuming: the record names the target (repo, branch, shard settings), the plan, the absorbed chunks and the finished
shards. The same command again keeps all of it: absorbed chunks are not processed again (a chunk whose needed pieces
are missing is), finished shards are neither written nor committed again, an unfinished one is rewritten from its
pieces and committed. Another target (repo, branch, ``--max-shard-size``, ``--min-shards``) starts the upload over:
the chunks already absorbed are processed again.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import BuildConfig
from ..transforms.base import SKIP_COLUMN
from .features import features_for
from .hub import PushError, PushOptions, commit_message, create_commit, first_line, prepare_repo, tag_version
from .preview import write_preview
from .shards import ROW_GROUP_ROWS, rows_per_shard
from .workdir import REPORT, chunk_paths, read_json, write_atomic, write_json

logger = logging.getLogger(__name__)

STREAM_DIR = "stream"
RECORD = "record.json"
PENDING = 2
"""Shards written and waiting for their commit (one committing, one queued) before processing waits."""
ORDINAL = "ordinal"
FINAL_FILES = ("README.md", "preview.png", REPORT)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` of ``split``: the kept rows of the split's source ordinals ``[first, stop)``,
    found in the pieces of ``chunks``."""

    split: str
    index: int
    count: int
    first: int
    stop: int
    chunks: range

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}-of-{self.count:05d}.parquet"


class Record:
    """``record.json``: the upload's target, the plan (source rows per shard, per split), the absorbed chunks and the
    finished shards (``name -> {"rows", "bytes"}``; 0 rows: nothing was committed). Saved atomically after every
    change; changed by the main and the uploader thread, under a lock. ``new``: nothing usable was recorded."""

    def __init__(self, path: Path, target: dict, fresh: bool):
        data = None if fresh else read_json(path)
        if data is not None and data.get("target") != target:
            logger.info("the upload recorded in %s went to %s; starting the upload over", path.parent,
                        data.get("target"))
            data = None
        self.path, self.target, self.new = path, target, data is None
        self.plan: dict[str, int] | None = data["plan"] if data else None
        self.absorbed: set[int] = set(data["absorbed"]) if data else set()
        self.done: dict[str, dict] = dict(data["done"]) if data else {}
        self.lock = threading.Lock()

    def save(self) -> None:
        with self.lock:
            self._save()

    def _save(self) -> None:
        write_json(self.path, {"target": self.target, "plan": self.plan, "absorbed": sorted(self.absorbed),
                               "done": self.done})

    def update(self, change: Callable[[Record], None]) -> None:
        """``change(self)`` and save, under the lock."""
        with self.lock:
            change(self)
            self._save()

    def is_done(self, name: str) -> bool:
        with self.lock:
            return name in self.done


class RowGroupWriter:
    """A Parquet file written in row groups of :data:`~.shards.ROW_GROUP_ROWS` rows from tables of any length
    (cast to ``schema``); an empty file still has the schema. ``rows``: rows written."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.writer, self.schema = pq.ParquetWriter(path, schema), schema
        self.pending: list[pa.Table] = []
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if len(table):
            self.pending.append(table)
            self.rows += len(table)
            self._flush(whole_groups=True)

    def _flush(self, whole_groups: bool) -> None:
        table = pa.concat_tables(self.pending).cast(self.schema) if self.pending else None
        if table is None or (whole_groups and len(table) < ROW_GROUP_ROWS):
            return
        cut = len(table) // ROW_GROUP_ROWS * ROW_GROUP_ROWS if whole_groups else len(table)
        self.writer.write_table(table.slice(0, cut), row_group_size=ROW_GROUP_ROWS)
        self.pending = [table.slice(cut)] if cut < len(table) else []

    def __enter__(self) -> RowGroupWriter:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self._flush(whole_groups=False)
        finally:
            self.writer.close()


class StreamUpload:
    """The streaming upload of one build (see the module notes). ``splits``: their names; ``labels``: the split of
    each source row, in order; ``max_bytes``: the shards' target size; ``fresh``: a new work folder (nothing recorded
    counts); ``check_stop``: raises when the build must stop (called while waiting for a commit). Use as a context
    manager: leaving it waits for the commit in progress and drops the queued ones."""

    def __init__(self, work: Path, push: PushOptions, splits: list[str], labels: list[str], chunk_size: int,
                 max_bytes: int, min_shards: int, config: BuildConfig, fresh: bool, check_stop: Callable[[], None]):
        from huggingface_hub import HfApi

        self.work, self.folder, self.push, self.config = work, work / STREAM_DIR, push, config
        self.chunk_size, self.max_bytes, self.min_shards = chunk_size, max_bytes, min_shards
        self.check_stop, self.api = check_stop, HfApi()
        self.chunks = -(-len(labels) // chunk_size)
        self.positions: dict[str, list[int]] = {split: [] for split in splits}
        self.ordinal: list[int] = []
        for position, label in enumerate(labels):
            self.ordinal.append(len(self.positions[label]))
            self.positions[label].append(position)
        self.schema = features_for(config.output.layout).arrow_schema
        target = {"repo": push.repo_id, "revision": push.revision, "max_shard_bytes": max_bytes,
                  "min_shards": min_shards}
        self.record = Record(self.folder / RECORD, target, fresh)
        self.shards = self._plan_shards() if self.record.plan else None
        self.pending: dict[Future, Shard] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.tagged = False
        self.write_seconds = 0.0
        """Seconds spent writing pieces and shards."""
        if not fresh:
            self._check_pieces()

    @property
    def absorbed(self) -> set[int]:
        """The chunks whose rows are in the pieces (their Parquet files are gone; their stats are sound)."""
        return self.record.absorbed

    # ------------------------------------------------------------------------------------------------ setting up

    def prepare(self) -> None:
        """Create the repo and branch if missing; refuse an already tagged version (see :func:`~.hub.prepare_repo`).
        Raises :class:`PushError` in one line."""
        try:
            self.tagged = prepare_repo(self.api, self.push, self.config.output.dataset_version)
        except PushError:
            raise
        except Exception as error:  # noqa: BLE001 - network, auth or server: one line
            raise PushError(f"--push-to-hub {self.push.repo_id}: preparing the repo failed ({first_line(error)})") \
                from None

    def __enter__(self) -> StreamUpload:
        """Create the stream folder (emptied when nothing recorded counts; shards an earlier run left are rewritten
        when needed) and start the uploader thread."""
        shutil.rmtree(self.folder if self.record.new else self.folder / "data", ignore_errors=True)
        for sub in ("pieces", "data", "preview/data"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.record.save()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="relight-upload")
        return self

    def __exit__(self, *exc) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _plan_shards(self) -> list[Shard]:
        shards = []
        for split, per_shard in self.record.plan.items():
            positions = self.positions[split]
            count = -(-len(positions) // per_shard)
            for index in range(count):
                first, stop = index * per_shard, min(len(positions), (index + 1) * per_shard)
                chunks = range(positions[first] // self.chunk_size, positions[stop - 1] // self.chunk_size + 1)
                shards.append(Shard(split, index, count, first, stop, chunks))
        return shards

    def _fix_plan(self) -> None:
        """Fix the plan once some absorbed chunk kept rows (their mean stored bytes size the shards), or once every
        chunk is absorbed."""
        stats = [read_json(chunk_paths(self.work, chunk)[1]) for chunk in sorted(self.record.absorbed)]
        kept = sum(item["processed"] for item in stats)
        if not kept and len(stats) < self.chunks:
            return
        row_bytes = sum(sum(item["split_bytes"].values()) for item in stats) / max(1, kept)
        by_bytes = max(1, int(self.max_bytes // row_bytes)) if row_bytes else None
        plan = {split: min(rows_per_shard(len(positions), self.min_shards), by_bytes or max(1, len(positions)))
                for split, positions in self.positions.items()}
        self.record.update(lambda record: setattr(record, "plan", plan))
        self.shards = self._plan_shards()
        logger.info("uploading %d shard(s) to %s as their rows finish", len(self.shards), self.push.repo_id)

    def _piece(self, split: str, chunk: int) -> Path:
        return self.folder / "pieces" / f"{split}-{chunk:05d}.parquet"

    def _needed(self, split: str, chunk: int) -> bool:
        """Whether an unfinished shard takes rows from the piece (every piece is, before the plan is fixed)."""
        if self.shards is None:
            return True
        return any(shard.split == split and chunk in shard.chunks and not self.record.is_done(shard.name)
                   for shard in self.shards)

    def _check_pieces(self) -> None:
        """Forget the absorbed chunks whose needed pieces are missing; such a chunk whose Parquet file is gone is
        processed again (one log line)."""
        for chunk in sorted(self.record.absorbed):
            if all(self._piece(split, chunk).is_file() for split in self.positions if self._needed(split, chunk)):
                continue
            self.record.update(lambda record, c=chunk: record.absorbed.discard(c))
            table_path, stats_path = chunk_paths(self.work, chunk)
            if not table_path.is_file():
                logger.warning("chunk %d: its rows waiting for upload are missing; redoing it", chunk)
                stats_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------------- streaming

    def step(self) -> None:
        """Absorb the finished chunks, write each shard whose rows are all there and hand it to the uploader (waiting
        while :data:`PENDING` wait), delete the pieces no unfinished shard needs. Raises :class:`PushError` when a
        commit failed."""
        self._collect(block=False)
        started = time.perf_counter()
        for chunk in range(self.chunks):
            if chunk not in self.record.absorbed and chunk_paths(self.work, chunk)[1].is_file():
                self._absorb(chunk)
        self.write_seconds += time.perf_counter() - started
        if self.shards is None:
            self._fix_plan()
        for shard in self._ready():
            while len(self.pending) >= PENDING:
                self._collect(block=True)
                self.check_stop()
            self._write_and_submit(shard)
        self._drop_pieces()

    def _absorb(self, chunk: int) -> None:
        """Copy the chunk's kept rows into one piece per split, record it, delete the chunk's Parquet file."""
        table_path = chunk_paths(self.work, chunk)[0]
        for split in self.positions:
            write_atomic(self._piece(split, chunk), lambda tmp, s=split: self._write_piece(table_path, chunk, s, tmp))
        self.record.update(lambda record: record.absorbed.add(chunk))
        table_path.unlink()

    def _write_piece(self, table_path: Path, chunk: int, split: str, path: Path) -> None:
        schema = self.schema.append(pa.field(ORDINAL, pa.int64()))
        position = chunk * self.chunk_size
        with RowGroupWriter(path, schema) as writer:
            for batch in pq.ParquetFile(table_path).iter_batches(batch_size=ROW_GROUP_ROWS):
                table = pa.Table.from_batches([batch])
                ordinals = pa.array(self.ordinal[position : position + len(table)], pa.int64())
                position += len(table)
                keep = pc.and_(pc.equal(table.column(SKIP_COLUMN), ""), pc.equal(table.column("split"), split))
                writer.add(table.select(self.schema.names).append_column(ORDINAL, ordinals).filter(keep))

    def _ready(self):
        """The shards to write now, per split in order: not yet handed over, every chunk of theirs absorbed."""
        with self.record.lock:
            handed = set(self.record.done) | {shard.name for shard in self.pending.values()}
        for split in self.positions:
            for shard in (shard for shard in self.shards or () if shard.split == split):
                if shard.name in handed:
                    continue
                if not set(shard.chunks) <= self.record.absorbed:
                    break
                yield shard

    def _write_and_submit(self, shard: Shard) -> None:
        started = time.perf_counter()
        path = self.folder / "data" / shard.name
        write_atomic(path, lambda tmp: self._write_shard(shard, tmp))
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows:
            self._keep_preview_rows(shard.split, path)
            self.pending[self.executor.submit(self._commit, shard, path, rows)] = shard
        else:  # every row of the shard was skipped: nothing to commit
            path.unlink()
            self.record.update(lambda record: record.done.update({shard.name: {"rows": 0, "bytes": 0}}))
        self.write_seconds += time.perf_counter() - started

    def _write_shard(self, shard: Shard, path: Path) -> None:
        with RowGroupWriter(path, self.schema) as writer:
            for chunk in shard.chunks:
                for batch in pq.ParquetFile(self._piece(shard.split, chunk)).iter_batches(batch_size=ROW_GROUP_ROWS):
                    table = pa.Table.from_batches([batch])
                    ordinal = table.column(ORDINAL)
                    inside = pc.and_(pc.greater_equal(ordinal, shard.first), pc.less(ordinal, shard.stop))
                    writer.add(table.filter(inside).drop_columns([ORDINAL]))

    def _keep_preview_rows(self, split: str, shard_path: Path) -> None:
        """Keep the split's first ``output.preview_rows`` rows for the preview (its shards leave the disk)."""
        count = self.config.output.preview_rows
        path = self.folder / "preview" / "data" / f"{split}-preview.parquet"
        kept = pq.read_table(path) if path.is_file() else None
        if count == 0 or (kept is not None and len(kept) >= count):
            return
        first = next(pq.ParquetFile(shard_path).iter_batches(batch_size=count))
        new = pa.Table.from_batches([first])
        if kept is not None:  # a shard written again after a crash adds nothing twice
            new = new.filter(pc.invert(pc.is_in(new.column("image_id"), kept.column("image_id"))))
            new = pa.concat_tables([kept, new.cast(kept.schema)])
        write_atomic(path, lambda tmp: pq.write_table(new.slice(0, count), tmp))

    def _commit(self, shard: Shard, path: Path, rows: int) -> None:
        """Uploader thread: commit one shard, record it, delete its file."""
        from huggingface_hub import CommitOperationAdd

        size = path.stat().st_size
        name = f"data/{shard.name}"
        create_commit(self.api, self.push, [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))],
                      f"{name}: {rows} rows (dataset version {self.config.output.dataset_version}, config "
                      f"{self.config.fingerprint()})", name)
        self.record.update(lambda record: record.done.update({shard.name: {"rows": rows, "bytes": size}}))
        path.unlink()
        with self.record.lock:
            done = len(self.record.done)
        logger.info("committed %s (%d rows, %.1f MB); %d of %d shards done", name, rows, size / 1e6, done,
                    len(self.shards))

    def _collect(self, block: bool) -> None:
        """Take the finished commits (waiting for one when ``block``) and delete the pieces they no longer need;
        raise the first failure."""
        if not self.pending:
            return
        finished, _ = wait(self.pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in finished:
            del self.pending[future]
            future.result()
        self._drop_pieces()

    def _drop_pieces(self) -> None:
        for piece in (self.folder / "pieces").glob("*.parquet"):
            split, chunk = piece.stem.rsplit("-", 1)
            if int(chunk) in self.record.absorbed and not self._needed(split, int(chunk)):
                piece.unlink()

    # ---------------------------------------------------------------------------------------------------- finish

    def upload_shards(self) -> list[dict]:
        """Absorb and commit what is left (every chunk is finished) and wait for all commits. Returns ``{"name",
        "rows", "bytes"}`` of each committed shard, in order."""
        self.step()
        while self.pending:
            self._collect(block=True)
        self._drop_pieces()
        return [{"name": shard.name, **self.record.done[shard.name]} for shard in self.shards
                if self.record.done[shard.name]["rows"]]

    def write_preview(self, folder: Path, split: str) -> None:
        """``folder/preview.png`` from the rows kept by :meth:`_keep_preview_rows`."""
        write_preview(self.folder / "preview", split, self.config.output.preview_rows, self.config)
        if (self.folder / "preview" / "preview.png").is_file():
            (self.folder / "preview" / "preview.png").replace(folder / "preview.png")

    def commit_final(self, staging: Path, report: dict) -> str:
        """Commit the card, preview and report of ``staging`` (deleting the branch's other ``data/`` files) and tag
        it with the dataset version. Returns the commit URL."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ours = {f"data/{name}" for name, info in self.record.done.items() if info["rows"]}
        try:
            files = self.api.list_repo_files(self.push.repo_id, repo_type="dataset", revision=self.push.revision)
        except Exception as error:  # noqa: BLE001 - network, auth or server: one line
            raise PushError(f"listing the files of {self.push.repo_id} failed ({first_line(error)}); run the same "
                            "command to resume") from None
        stale = sorted(name for name in files if name.startswith("data/") and name not in ours)
        if stale:
            logger.info("removing %d data file(s) of another build from %s", len(stale), self.push.repo_id)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staging / name))
                      for name in FINAL_FILES if (staging / name).is_file()]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        commit = create_commit(self.api, self.push, operations, commit_message(report), "the card and report")
        try:
            tag_version(self.api, self.push, report, commit.oid, self.tagged)
        except Exception as error:  # noqa: BLE001 - network, auth or server: one line
            raise PushError(f"tagging {self.push.repo_id} failed ({first_line(error)}); run the same command with "
                            "--force-push to tag it") from None
        return commit.commit_url
