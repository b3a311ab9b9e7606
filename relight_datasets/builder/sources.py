"""Where portraits come from: a folder, a CSV of paths, or a Hub dataset (streamed).

Every source becomes :class:`SourceRows`: a ``datasets.Dataset`` of usable items with columns ``image_id`` (unique,
stable across rebuilds), ``source`` and ``input`` (an *undecoded* image: ``{"path": ...}`` or ``{"bytes": ...}``), the
items seen but unusable with their skip reason, and a fingerprint of the exact ordered item list (what a resumed build
must find unchanged). Decoding and resizing happen in the pipeline's first stage, so unreadable images become recorded
skips rather than crashes.

What counts as an item:

- ``folder:DIR``: every file with an image suffix below ``DIR``, in sorted path order, its id the relative POSIX path.
  Names starting with ``.`` (hidden files, ``.git``/``.hg``/``.svn`` and any other hidden folder) are not walked, and
  linked folders are not followed (so a link back up the tree cannot loop); both are only counted in one log line.
  A link that leads nowhere or in a circle is an item skipped as ``broken_link``. A file name that is not UTF-8 keeps
  its undecodable bytes escaped in the id (``caf\\xe9.png``) and its image travels as bytes.
- ``csv:FILE``: the ``image_path`` column in file order, relative entries taken from the CSV's folder. The id is the
  resolved path (links and ``..`` followed) relative to that folder when inside it, else the resolved absolute path,
  so it does not depend on how an entry is spelt. The CSV is read as UTF-8 (a BOM, as Excel writes, is fine); text
  that is not UTF-8 is read as Windows-1252 (a superset of Latin-1's printable characters) with a warning naming the
  encoding, and anything that is neither is refused.
- For both: one file reached twice (the same entry, a link to it, a ``..`` path, a hard link) is one item; later
  occurrences are skipped as ``duplicate``. An entry that does not exist is skipped as ``missing_file``.
- ``limit`` takes the first N items in that order, skipped ones included, so ``attempted == min(limit, items)``.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path

from datasets import Dataset, Features, Image, Value

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_FFHQ_REPO = "bitmind/ffhq"
"""Hub dataset the ``ffhq`` alias streams from; override with the ``RELIGHT_FFHQ_REPO`` environment variable."""

SOURCE_FEATURES = Features({"image_id": Value("string"), "source": Value("string"), "input": Image(decode=False)})
CSV_ENCODINGS = ("utf-8-sig", "cp1252")
"""Tried in order; the second is announced with a warning."""

logger = logging.getLogger(__name__)


class SourceError(ValueError):
    """A source that cannot be opened; reported as one line, exit code 2."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # folder | csv | hf
    location: str
    split: str | None = None
    text: str = ""


@dataclass(frozen=True)
class SourceRows:
    """What a source holds. ``attempted = len(rows) + len(skipped)``."""

    rows: Dataset
    """Usable items: ``image_id`` (unique), ``source``, ``input`` (undecoded image)."""
    skipped: list[dict]
    """Items seen but unusable, in source order: ``{"image_id": str, "reason": str}``."""
    fingerprint: str
    """Hex digest of the ordered item list (ids, sizes and modification times, or Hub bytes; skips and reasons)."""


def parse_source(text: str) -> SourceSpec:
    """``folder:PATH`` | ``csv:PATH`` | ``hf:REPO_ID[:SPLIT]`` | ``ffhq`` | a bare directory path."""
    if text == "ffhq":
        repo = os.environ.get("RELIGHT_FFHQ_REPO", DEFAULT_FFHQ_REPO)
        return SourceSpec("hf", repo, "train", text)
    kind, _, rest = text.partition(":")
    if kind == "folder" and rest:
        return SourceSpec("folder", rest, None, text)
    if kind == "csv" and rest:
        return SourceSpec("csv", rest, None, text)
    if kind == "hf" and rest:
        repo, _, split = rest.partition(":")
        return SourceSpec("hf", repo, split or "train", text)
    if Path(text).is_dir():
        return SourceSpec("folder", text, None, text)
    raise SourceError(
        f"--source {text!r}: not a directory; expected folder:PATH, csv:PATH, hf:REPO_ID[:SPLIT] or ffhq"
    )


def check_source(text: str) -> None:
    """Raise :class:`SourceError` (one line) unless ``--source TEXT`` can be opened; creates nothing. A folder is
    walked only up to its first image, a CSV is read and parsed, a Hub dataset is looked up (no rows are streamed)."""
    spec = parse_source(text)
    if spec.kind == "hf":
        _check_hub(spec)
    elif spec.kind == "folder":
        _check_folder(Path(spec.location))
        if next(_walk_images(Path(spec.location), _WalkCounts()), None) is None:
            raise _no_images(Path(spec.location))
    else:
        _read_csv(Path(spec.location))


def open_source(text: str, limit: int | None = None, cache_dir: str | Path | None = None) -> SourceRows:
    """The items of ``--source TEXT``, at most the first ``limit`` of them (see the module notes for what an item
    is). A Hub source streams only those rows, into an Arrow file under ``cache_dir`` (not into memory)."""
    spec = parse_source(text)
    if spec.kind == "hf":
        stream, column = _open_hub_stream(spec, limit)
        return _hub_rows(stream, column, spec, cache_dir)
    if spec.kind == "folder":
        items = _folder_items(Path(spec.location))
    else:
        items = _csv_items(Path(spec.location))
    return _file_rows(items[:limit] if limit else items, text)


def _escaped(text: str) -> str:
    """``text`` with the bytes of a non-UTF-8 file name (held as surrogate escapes) written as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass
class _WalkCounts:
    hidden: int = 0
    linked_folders: int = 0


def _check_folder(root: Path) -> None:
    if not root.is_dir():
        raise SourceError(f"folder source {root}: no such directory")
    try:
        os.scandir(root).close()
    except OSError as error:
        raise SourceError(f"folder source {root}: cannot list it ({error.strerror})") from None


def _no_images(root: Path) -> SourceError:
    return SourceError(f"folder source {root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")


def _walk_images(root: Path, counts: _WalkCounts) -> Iterator[tuple[str, ...]]:
    """Relative path parts of each file (or link) with an image suffix below ``root``, in no particular order.
    Hidden entries and linked folders are counted in ``counts``, not entered; a sub-folder that cannot be listed is
    logged and passed over."""
    pending: list[tuple[str, ...]] = [()]
    while pending:
        parts = pending.pop()
        try:
            with os.scandir(root.joinpath(*parts)) as listing:
                entries = list(listing)
        except OSError as error:
            logger.warning("folder source %s: cannot list %s (%s); its files are not part of the build",
                           root, _escaped("/".join(parts)), error.strerror)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                counts.hidden += 1
            elif entry.is_dir(follow_symlinks=False):
                pending.append((*parts, entry.name))
            elif os.path.isdir(entry.path):  # a link to a folder (DirEntry.is_dir would raise on a link loop)
                counts.linked_folders += 1
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                yield (*parts, entry.name)


def _folder_items(root: Path) -> list[tuple[str, str]]:
    """``(image_id, path)`` of every image below ``root`` in sorted path order."""
    _check_folder(root)
    counts = _WalkCounts()
    found = sorted(_walk_images(root, counts))
    ignored = [f"{counts.hidden} hidden (names starting with '.', such as .git)"] if counts.hidden else []
    ignored += [f"{counts.linked_folders} linked folders (not followed)"] if counts.linked_folders else []
    if ignored:
        logger.info("folder source %s: ignored %s", root, " and ".join(ignored))
    if not found:
        raise _no_images(root)
    return [(_escaped("/".join(parts)), os.path.join(root, *parts)) for parts in found]


def _read_csv(csv_path: Path) -> tuple[list[str], str]:
    """The non-empty ``image_path`` cells of ``csv_path`` in file order, and the encoding that read them."""
    if not csv_path.is_file():
        raise SourceError(f"csv source {csv_path}: no such file")
    try:
        data = csv_path.read_bytes()
    except OSError as error:
        raise SourceError(f"csv source {csv_path}: cannot read it ({error.strerror})") from None
    for encoding in CSV_ENCODINGS:
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise SourceError(f"csv source {csv_path}: neither UTF-8 nor Windows-1252 text; save it as UTF-8")
    if "\x00" in text:
        raise SourceError(f"csv source {csv_path}: holds NUL characters, so it is not a text CSV")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "image_path" not in (reader.fieldnames or []):
            found = ", ".join(reader.fieldnames or [])[:120]
            raise SourceError(f"csv source {csv_path}: needs a column named image_path (found: {found or 'nothing'})")
        entries = [row["image_path"].strip() for row in reader if (row.get("image_path") or "").strip()]
    except csv.Error as error:
        raise SourceError(f"csv source {csv_path}: not a readable CSV ({error})") from None
    if not entries:
        raise SourceError(f"csv source {csv_path}: no rows with an image_path")
    return entries, encoding


def _csv_items(csv_path: Path) -> list[tuple[str, str]]:
    """``(image_id, path)`` of every ``image_path`` entry in file order; ids from the resolved paths."""
    entries, encoding = _read_csv(csv_path)
    if encoding != CSV_ENCODINGS[0]:
        logger.warning("csv source %s: not UTF-8, read as %s; save it as UTF-8 to be sure of its paths",
                       csv_path, encoding)
    base = os.path.realpath(csv_path.parent)
    items = []
    for entry in entries:
        path = os.path.join(base, entry)  # an absolute entry replaces base
        resolved = os.path.realpath(path)
        inside = os.path.commonpath([resolved, base]) == base
        image_id = Path(os.path.relpath(resolved, base) if inside else resolved).as_posix()
        items.append((_escaped(image_id), path))
    return items


def _unusable(path: str, error: OSError) -> str:
    """The skip reason for a path whose ``stat`` failed with ``error``."""
    if error.errno == errno.ELOOP or os.path.islink(path):
        return "broken_link"
    return "missing_file" if isinstance(error, FileNotFoundError) else "unreadable_image"


def _image_input(path: str) -> dict:
    """The undecoded image of a regular file: its resolved path, or its bytes when the path is not UTF-8 (Arrow
    strings cannot hold it)."""
    resolved = os.path.realpath(path)
    try:
        resolved.encode("utf-8")
    except UnicodeEncodeError:
        with open(resolved, "rb") as handle:
            return {"bytes": handle.read(), "path": None}
    return {"bytes": None, "path": resolved}


def _file_rows(items: list[tuple[str, str]], text: str) -> SourceRows:
    """Rows, skips and fingerprint of ``(image_id, path)`` items taken in order: the first occurrence of a file (or
    id) is kept, later ones are ``duplicate``; paths that do not lead to a regular file are skipped with a reason."""
    digest = blake2b(digest_size=16)
    seen_files: set[tuple[int, int]] = set()
    seen_ids: set[str] = set()
    rows: dict[str, list] = {"image_id": [], "source": [], "input": []}
    skipped = []
    for image_id, path in items:
        reason = None
        try:
            status = os.stat(path)
        except OSError as error:
            reason = _unusable(path, error)
        else:
            identity = (status.st_dev, status.st_ino)
            if not stat.S_ISREG(status.st_mode):
                reason = "not_a_file"
            elif identity in seen_files or image_id in seen_ids:
                reason = "duplicate"
            else:
                try:
                    image = _image_input(path)
                except OSError as error:
                    reason = _unusable(path, error)
        if reason:
            skipped.append({"image_id": image_id, "reason": reason})
            digest.update(json.dumps([image_id, reason]).encode() + b"\n")
            continue
        seen_files.add(identity)
        seen_ids.add(image_id)
        rows["image_id"].append(image_id)
        rows["source"].append(text.partition(":")[0] if ":" in text else "folder")  # a local path stays private
        rows["input"].append(image)
        digest.update(json.dumps([image_id, status.st_size, status.st_mtime_ns]).encode() + b"\n")
    return SourceRows(Dataset.from_dict(rows, features=SOURCE_FEATURES), skipped, digest.hexdigest())


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_failure(spec: SourceSpec, error: Exception) -> SourceError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return SourceError(
        f"--source {spec.text}: cannot stream {spec.location} (split {spec.split}) from the Hugging Face Hub: "
        f"{reason[:200]}. Check the network, the id and your login, or use folder:PATH"
    )


def _check_hub(spec: SourceSpec) -> None:
    """Fail fast (one line) when the Hub is offline or unreachable, or the dataset is unknown or gated."""
    if _hub_offline():
        raise SourceError(f"--source {spec.text}: HF_HUB_OFFLINE is set, so the Hub dataset cannot be streamed")
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(spec.location, timeout=15)
    except Exception as error:  # noqa: BLE001 - any failure here means the source is unusable; say why in one line
        raise _hub_failure(spec, error) from None


def _open_hub_stream(spec: SourceSpec, limit: int | None):
    """The streamed Hub split with its first image column cast to undecoded bytes, and that column's name.
    Fails fast (one line) when offline, unreachable, gated or image-less."""
    _check_hub(spec)
    from datasets import load_dataset

    try:
        stream = load_dataset(spec.location, split=spec.split, streaming=True)
    except Exception as error:  # noqa: BLE001 - as in _check_hub
        raise _hub_failure(spec, error) from None
    image_columns = [name for name, feature in (stream.features or {}).items() if isinstance(feature, Image)]
    if not image_columns:
        raise SourceError(f"--source {spec.text}: the dataset has no image column ({list(stream.features or {})})")
    stream = stream.cast_column(image_columns[0], Image(decode=False))
    return (stream.take(limit) if limit else stream), image_columns[0]


def _hub_examples(stream, column: str, split: str, text: str):
    for index, row in enumerate(stream):
        image = row[column] or {}
        yield {"image_id": f"{split}/{index}", "source": text,
               "input": {"bytes": image.get("bytes"), "path": image.get("path")}}


def _hub_rows(stream, column: str, spec: SourceSpec, cache_dir: str | Path | None) -> SourceRows:
    """The rows of a streamed split written to an Arrow file, fingerprinted by one pass over their bytes (the
    written file, not the generator, since ``from_generator`` reuses a cached file without running it)."""
    rows = Dataset.from_generator(
        _hub_examples, features=SOURCE_FEATURES, cache_dir=str(cache_dir) if cache_dir else None,
        gen_kwargs={"stream": stream, "column": column, "split": spec.split, "text": spec.text},
    )
    digest = blake2b(digest_size=16)
    for batch in rows.select_columns(["image_id", "input"]).with_format("arrow").iter(batch_size=256):
        for image_id, image in zip(batch["image_id"].to_pylist(), batch["input"].to_pylist(), strict=True):
            data = image["bytes"] or (image["path"] or "").encode()
            digest.update(json.dumps([image_id, len(data), blake2b(data, digest_size=16).hexdigest()]).encode() + b"\n")
    return SourceRows(rows, [], digest.hexdigest())
