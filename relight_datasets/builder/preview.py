"""Contact sheet: input | mask | albedo | degraded | composite for the first rows of a dataset."""

from __future__ import annotations

from PIL import Image, ImageDraw

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
