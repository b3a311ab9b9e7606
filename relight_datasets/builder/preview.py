"""Contact sheet: input | mask | albedo | degraded | composite for the first rows of a dataset."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from .features import FEATURES, REGENERATED_COLUMNS

PREVIEW_COLUMNS = ("input", "mask", "albedo", "degraded", "composite")


def contact_sheet(rows: list[dict], tile: int = 192, columns: tuple[str, ...] = PREVIEW_COLUMNS) -> Image.Image:
    """One row of ``tile``-pixel thumbnails per dataset row (PIL images in ``row[column]``), with a header line."""
    header = 18
    sheet = Image.new("RGB", (tile * len(columns), header + tile * max(1, len(rows))), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((c * tile + 6, 3), name, fill=(230, 230, 230))
    for r, row in enumerate(rows):
        for c, name in enumerate(columns):
            thumb = row[name].convert("RGB")
            thumb.thumbnail((tile, tile))
            x = c * tile + (tile - thumb.width) // 2
            y = header + r * tile + (tile - thumb.height) // 2
            sheet.paste(thumb, (x, y))
    return sheet


def write_preview(folder: Path, split: str, count: int, config=None) -> None:
    """``folder/preview.png``: the contact sheet of the first ``count`` rows of ``split`` (its shards in
    ``folder/data``); nothing when ``count`` is 0 or the split has no rows. The rows of a ``compact`` build have
    their ``degraded`` and ``composite`` regenerated for the sheet (``config``: the build's)."""
    if count == 0:
        return
    shards = sorted((folder / "data").glob(f"{split}-*.parquet"))
    if not shards:
        return
    stored = set(pq.ParquetFile(shards[0]).schema_arrow.names)
    regenerate = [name for name in REGENERATED_COLUMNS if name not in stored]
    columns = [name for name in FEATURES if name in stored and (name in PREVIEW_COLUMNS or regenerate)]
    batches = (batch for path in shards for batch in pq.ParquetFile(path).iter_batches(batch_size=count,
                                                                                       columns=columns))
    rows = list(islice((row for batch in batches for row in batch.to_pylist()), count))
    if not rows:
        return
    decoded = {name: FEATURES.decode_column([row[name] for row in rows], name) for name in columns}
    if regenerate:
        from ..api import RegeneratedPairs

        decoded.update(RegeneratedPairs(config)(decoded))
    contact_sheet([{name: decoded[name][index] for name in PREVIEW_COLUMNS} for index in range(len(rows))]).save(
        folder / "preview.png", compress_level=1)
