"""Where portraits come from: a folder, a CSV of paths, or a Hub dataset (streamed).

Every source becomes a ``datasets.Dataset`` with columns ``image_id`` (stable across rebuilds), ``source`` and
``input`` (an *undecoded* image: ``{"path": ...}`` or ``{"bytes": ...}``); decoding and resizing happen in the
pipeline's first stage, so unreadable files become recorded skips rather than crashes.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Features, Image, Value

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
DEFAULT_FFHQ_REPO = "bitmind/ffhq"
"""Hub dataset the ``ffhq`` alias streams from; override with the ``RELIGHT_FFHQ_REPO`` environment variable."""

SOURCE_FEATURES = Features({"image_id": Value("string"), "source": Value("string"), "input": Image(decode=False)})


class SourceError(ValueError):
    """A source that cannot be opened; reported as one line, exit code 2."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # folder | csv | hf
    location: str
    split: str | None = None
    text: str = ""


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


def _folder_rows(root: Path, limit: int | None) -> list[tuple[str, str]]:
    if not root.is_dir():
        raise SourceError(f"folder source {root}: no such directory")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SourceError(f"folder source {root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rows = [(p.relative_to(root).as_posix(), str(p.resolve())) for p in paths]
    return rows[:limit] if limit else rows


def _csv_rows(csv_path: Path, limit: int | None) -> list[tuple[str, str]]:
    if not csv_path.is_file():
        raise SourceError(f"csv source {csv_path}: no such file")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if "image_path" not in (reader.fieldnames or []):
            raise SourceError(f"csv source {csv_path}: needs a column named image_path (found {reader.fieldnames})")
        entries = [row["image_path"].strip() for row in reader if (row.get("image_path") or "").strip()]
    if not entries:
        raise SourceError(f"csv source {csv_path}: no rows with an image_path")
    base = csv_path.resolve().parent
    rows = []
    for entry in entries[:limit] if limit else entries:
        path = Path(entry)
        resolved = path if path.is_absolute() else base / path
        image_id = entry if path.is_absolute() else path.as_posix()
        rows.append((image_id, str(resolved)))
    return rows


def _open_hub_stream(spec: SourceSpec, limit: int | None):
    """The streamed Hub split with its first image column cast to undecoded bytes, and that column's name.
    Fails fast (one line) when offline, unreachable, gated or image-less."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise SourceError(f"--source {spec.text}: HF_HUB_OFFLINE is set, so the Hub dataset cannot be streamed")
    from datasets import load_dataset
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(spec.location, timeout=15)
        stream = load_dataset(spec.location, split=spec.split, streaming=True)
    except Exception as error:  # noqa: BLE001 - any failure here means the source is unusable; say why in one line
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SourceError(
            f"--source {spec.text}: cannot stream {spec.location} (split {spec.split}) from the Hugging Face Hub: "
            f"{reason[:200]}. Check the network, the id and your login, or use folder:PATH"
        ) from None
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


def open_source(text: str, limit: int | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """A ``Dataset`` with ``image_id``, ``source`` and undecoded ``input`` for ``--source TEXT``, at most ``limit``
    rows. A Hub source streams only those rows, into an Arrow file under ``cache_dir`` (not into memory)."""
    spec = parse_source(text)
    if spec.kind == "hf":
        stream, column = _open_hub_stream(spec, limit)
        return Dataset.from_generator(
            _hub_examples, features=SOURCE_FEATURES, cache_dir=str(cache_dir) if cache_dir else None,
            gen_kwargs={"stream": stream, "column": column, "split": spec.split, "text": text},
        )
    rows = (_folder_rows if spec.kind == "folder" else _csv_rows)(Path(spec.location), limit)
    return Dataset.from_dict(
        {"image_id": [r[0] for r in rows], "source": [text] * len(rows),
         "input": [{"bytes": None, "path": path} for _, path in rows]},
        features=SOURCE_FEATURES,
    )
