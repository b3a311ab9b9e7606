"""Build a Hub-layout dataset folder from a source: the orchestrator behind ``scripts/build.py``.

Output folder::

    README.md                         dataset card (YAML metadata: features, version, config, fingerprint)
    data/train-00000-of-00001.parquet rows (images PNG-encoded inside the Parquet)
    preview.png                       contact sheet of the first rows
    build_report.json                 counts, skip reasons, methods, timings, version, fingerprint
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, Features, Value

from .. import __version__
from ..config import BuildConfig
from ..transforms.base import SKIP_COLUMN
from .card import build_card
from .features import FEATURES, METHOD_COLUMNS
from .pipeline import RelightPipeline
from .preview import contact_sheet
from .sources import open_source

SPLIT = "train"
TARGET_SHARD_BYTES = 500 * 1024 * 1024
WORK_DIR = ".work"
MAPPED_FEATURES = Features({**FEATURES, SKIP_COLUMN: Value("string")})


class OutputError(ValueError):
    """The output folder cannot be used (e.g. it holds a previous build and --overwrite was not given)."""


@dataclass
class BuildOptions:
    source: str
    out: Path
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"--out {out}: folder is not empty; pass --overwrite to replace it")
        for name in ("data", WORK_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("README.md", "preview.png", "build_report.json"):
            (out / name).unlink(missing_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)


def _write_shards(rows: Dataset, data_dir: Path) -> list[str]:
    """Parquet shards named ``<split>-NNNNN-of-NNNNN.parquet`` near ``TARGET_SHARD_BYTES`` each."""
    num_shards = max(1, math.ceil(rows.data.nbytes / TARGET_SHARD_BYTES)) if len(rows) else 1
    names = []
    for index in range(num_shards):
        name = f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"
        shard = rows.shard(num_shards, index, contiguous=True)
        tmp = data_dir / f".{name}.tmp"
        shard.to_parquet(str(tmp))
        tmp.rename(data_dir / name)
        names.append(name)
    return names


def build_dataset(options: BuildOptions, config: BuildConfig) -> dict:
    """Run the pipeline over the source and write the dataset folder; returns the build report (also saved)."""
    started = time.perf_counter()
    out = Path(options.out)
    _prepare_out(out, options.overwrite)
    work = out / WORK_DIR
    work.mkdir(exist_ok=True)
    if not options.progress:
        datasets.disable_progress_bars()

    source = open_source(options.source, options.limit, cache_dir=work / "source")
    pipeline = RelightPipeline(config, options.device)
    mapped = source.map(
        pipeline,
        batched=True,
        batch_size=options.batch_size,
        with_rank=True,
        features=MAPPED_FEATURES,
        remove_columns=["input"],
        cache_file_name=str(work / "rows.arrow"),
        writer_batch_size=max(options.batch_size, 16),
        new_fingerprint=f"relight-{config.fingerprint()}-{len(source)}",
        desc="Relighting",
    )
    reasons = mapped[SKIP_COLUMN]
    kept_indices = [i for i, reason in enumerate(reasons) if not reason]
    skipped_rows = [{"image_id": image_id, "reason": reason}
                    for image_id, reason in zip(mapped["image_id"], reasons, strict=True) if reason]
    rows = mapped.select(kept_indices).remove_columns([SKIP_COLUMN])

    write_started = time.perf_counter()
    shards = _write_shards(rows, out / "data")
    write_seconds = time.perf_counter() - write_started

    preview_rows = [rows[i] for i in range(min(config.output.preview_rows, len(rows)))]
    if preview_rows:
        contact_sheet(preview_rows).save(out / "preview.png")

    wall = time.perf_counter() - started
    report = {
        "attempted": len(source),
        "processed": len(rows),
        "skipped": dict(sorted(Counter(r["reason"] for r in skipped_rows).items())),
        "skipped_rows": skipped_rows,
        "splits": {SPLIT: len(rows)},
        "split_bytes": {SPLIT: rows.data.nbytes},
        "methods": {column: dict(sorted(Counter(rows[column]).items())) for column in METHOD_COLUMNS},
        "timings": {**{k: round(v, 3) for k, v in pipeline.timings.items()}, "write": round(write_seconds, 3)},
        "wall_seconds": round(wall, 3),
        "images_per_second": round(len(source) / wall, 3) if wall > 0 else None,
        "version": config.output.dataset_version,
        "package_version": __version__,
        "config_fingerprint": config.fingerprint(),
        "source": options.source,
        "models": {},
        "device": str(pipeline.stages[0].device(None)),
        "batch_size": options.batch_size,
        "shards": [f"data/{name}" for name in shards],
    }
    build_card(config, report).save(out / "README.md")
    (out / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    del mapped, rows, source
    shutil.rmtree(work, ignore_errors=True)
    return report
