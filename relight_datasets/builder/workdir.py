"""The output folder of a build: its lock, what it already holds, the work folder's manifest and chunk files.

``OUT/.lock`` is held (``flock``) by the one build working in ``OUT``; the kernel frees it when that process dies, so
a lock left by a crashed build is never in the way. ``OUT/.work/`` holds the manifest (what is being built) and the
finished chunks, each a Parquet file plus a stats file recording its size and checksum, both written under a
temporary name and renamed into place: a chunk is complete or absent, and a damaged one is found and redone.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

WORK_DIR = ".work"
MANIFEST = "manifest.json"
REPORT = "build_report.json"
LOCK = ".lock"
DATASET_ENTRIES = ("data", "README.md", "preview.png", REPORT)
"""What a finished build puts in ``OUT``; the report is the mark of a finished build."""


class OutputError(ValueError):
    """The output folder cannot be used as asked (one line, exit code 2)."""


def write_atomic(path: Path, write) -> None:
    """``write(temporary_path)``, then rename into ``path``: readers see the whole file or nothing. The temporary
    file is removed when ``write`` fails (a full disk leaves no partial file behind)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``; None when the file is missing or not a readable JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ------------------------------------------------------------------------------------------------------------- lock


class OutputLock:
    """Exclusive hold on ``OUT`` for one build (``OUT/.lock``, ``flock``), recording who holds it.

    :meth:`acquire` creates ``OUT`` when missing; :meth:`release` removes it again when this build created it and
    it holds nothing but the lock (a build refused by a later check leaves nothing behind)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / LOCK
        self.fd: int | None = None
        self.created_out = False

    def acquire(self) -> None:
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self.created_out = True
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 4096).decode(errors="replace")
            os.close(self.fd)
            self.fd = None
            raise OutputError(f"--out {self.out} is in use by another build ({_describe_holder(holder)}); wait for "
                              "it to finish or use another --out") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created_out and [p.name for p in self.out.iterdir()] == [LOCK]:
            shutil.rmtree(self.out)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


# --------------------------------------------------------------------------------------------------------- identity


def build_identity(source: str, source_fingerprint: str, source_items: int, limit: int | None, chunk_size: int,
                   splits: dict[str, float], config: dict) -> dict:
    """What must match for a re-run to resume (or count as already done) instead of being refused: the settings,
    the resolved config and the exact list of source items (its fingerprint and length)."""
    return {"source": source, "source_fingerprint": source_fingerprint, "source_items": source_items,
            "limit": limit, "chunk_size": chunk_size, "splits": splits, "config": config}


GROWING_KEYS = ("source_fingerprint", "source_items", "limit")
"""What may differ between a finished build and the build that extends it: the source's items, not the settings."""


def grows_only(previous: dict, identity: dict) -> bool:
    """Whether ``identity`` differs from a finished build's ``previous`` identity only in the source's items (a raised
    ``--limit``, files added to a folder), so that the previous rows can be reused."""
    return bool(previous) and all(previous.get(key) == identity.get(key)
                                  for key in identity if key not in GROWING_KEYS)


def _flatten(data: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, object] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def describe_difference(previous: dict, current: dict, previous_ids: list[str] | None = None,
                        current_ids: list[str] | None = None) -> str:
    """What differs between two identities, key by key (config keys dotted, ``old -> new``); a changed source says
    how many items were added and removed when both id lists are known."""
    parts = []
    if previous.get("source_fingerprint") != current.get("source_fingerprint"):
        if previous_ids is not None and current_ids is not None:
            before, now = set(previous_ids), set(current_ids)
            added, removed = len(now - before), len(before - now)
            detail = (f"{added} item(s) added, {removed} removed" if added or removed
                      else "same items, but files changed (size or date)")
        else:
            detail = f"{previous.get('source_items', '?')} items then, {current.get('source_items')} now"
        parts.append(f"the source changed ({detail})")
    old = _flatten({key: value for key, value in previous.items() if not key.startswith("source_")})
    new = _flatten({key: value for key, value in current.items() if not key.startswith("source_")})
    for key in sorted(set(old) | set(new)):
        if old.get(key, "unset") != new.get(key, "unset"):
            parts.append(f"{key}: {old.get(key, 'unset')} -> {new.get(key, 'unset')}")
    return "; ".join(parts) or "unknown settings"


# ------------------------------------------------------------------------------------------------------ out folder


def inspect_out(out: Path, identity: dict, overwrite: bool, source_ids: list[str]) -> str:
    """Read-only look at ``out``: ``"complete"`` (holds this very build), ``"resume"`` (an unfinished run of this
    build), ``"extend"`` (holds a finished build of the same settings over fewer or other source items: an
    incremental build reuses its rows), or ``"fresh"`` (start a new build; with ``overwrite``, one that replaces what
    is there once it is done).
    Anything else raises :class:`OutputError` naming what differs. Unknown files are never a reason to refuse a
    folder that holds a build (``.gitattributes`` of a Hub clone), and are kept."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    if not out.exists():
        return "fresh"
    manifest = read_json(out / WORK_DIR / MANIFEST)
    report = read_json(out / REPORT)
    if report is not None and not overwrite:
        if report.get("identity") == identity:
            return "complete"
        if grows_only(report.get("identity") or {}, identity):
            resuming = manifest is not None and manifest.get("identity") == identity
            return "resume" if resuming else "extend"
        raise OutputError(f"--out {out} holds a finished build with other settings "
                          f"({describe_difference(report.get('identity') or {}, identity)}); use another --out, "
                          "or --overwrite to replace it")
    if manifest is not None:
        if manifest.get("identity") == identity:
            return "resume"
        if not overwrite:
            difference = describe_difference(manifest.get("identity") or {}, identity, manifest.get("source_ids"),
                                             source_ids)
            raise OutputError(f"--out {out} holds an unfinished build with other settings ({difference}); run its "
                              "own command to finish it, use another --out, or --overwrite to start again")
    others = sorted(p.name for p in out.iterdir() if p.name not in (LOCK, WORK_DIR))
    if report is None and others and not overwrite:
        raise OutputError(f"--out {out}: folder is not empty ({', '.join(others[:3])}) and holds no build of this "
                          "tool; pass --overwrite to build into it (unknown files are kept)")
    return "fresh"


def start_work(work: Path, identity: dict, source_ids: list[str], package_version: str, fresh: bool) -> None:
    """Create the work folder (emptied first when ``fresh``) and record what is being built."""
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / MANIFEST, {"identity": identity, "source_ids": source_ids, "package_version": package_version})


def publish(out: Path, staging: Path) -> None:
    """Move the finished dataset from ``staging`` into ``out``, replacing a previous build's entries (the old report
    first, the new one last, so a folder with a report always holds a whole build). Other files in ``out`` stay."""
    trash = staging.parent / "trash"
    trash.mkdir(exist_ok=True)
    for name in (REPORT, *DATASET_ENTRIES[:-1]):
        if (out / name).exists():
            os.replace(out / name, trash / name)
    for name in DATASET_ENTRIES:
        if (staging / name).exists():
            os.replace(staging / name, out / name)


# ----------------------------------------------------------------------------------------------------------- chunks


def chunk_paths(work: Path, index: int) -> tuple[Path, Path]:
    """The Parquet file and the stats file of chunk ``index``."""
    return work / f"chunk-{index:05d}.parquet", work / f"chunk-{index:05d}.json"


def file_digest(path: Path) -> str:
    """BLAKE2b (128 bit) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def chunk_problem(work: Path, index: int) -> str | None:
    """Why finished chunk ``index`` cannot be used (missing, truncated, checksum differs), or None when it is sound."""
    table_path, stats_path = chunk_paths(work, index)
    stats = read_json(stats_path)
    if stats is None or "digest" not in stats:
        return "its stats file is unreadable"
    if not table_path.is_file():
        return "its Parquet file is missing"
    size = table_path.stat().st_size
    if size != stats["bytes"]:
        return f"its Parquet file is truncated ({size} of {stats['bytes']} bytes)"
    if file_digest(table_path) != stats["digest"]:
        return "its Parquet file's checksum differs"
    return None


def drop_damaged_chunks(work: Path, chunks: int, absorbed: set[int] = frozenset()) -> None:
    """Remove every finished chunk that fails :func:`chunk_problem` (one log line each), so that it is redone.
    ``absorbed``: chunks whose rows a streaming upload holds elsewhere (their Parquet files are gone by design)."""
    for index in range(chunks):
        table_path, stats_path = chunk_paths(work, index)
        if index in absorbed and read_json(stats_path) is not None:
            continue
        if stats_path.exists() and (problem := chunk_problem(work, index)):
            logger.warning("chunk %d: %s; redoing it", index, problem)
            stats_path.unlink()
            table_path.unlink(missing_ok=True)


def describe_os_error(error: OSError, what: str) -> str:
    """One line for an I/O failure while ``what`` (e.g. "writing the dataset")."""
    where = f" ({error.filename})" if error.filename else ""
    if error.errno == errno.ENOSPC:
        return f"disk full while {what}{where}; finished chunks are kept: free some space and run the same command"
    return f"{error.strerror or error} while {what}{where}"
