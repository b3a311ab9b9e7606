"""``relight-inspect DATASET -o PAGE.html``: one self-contained HTML page to look at a built dataset.

The page holds a grid of random rows (every image column as an inline JPEG thumbnail, the id, the instruction, the
caption when there is one, and what made the mask and the normals) and charts of the whole dataset as inline SVG:
the light directions on a polar plot, histograms of the key light's colour temperature, the ambient term, the
exposure and the mask coverage, the counts of the segmentation and normals methods, light setups and degradation
types, and the skip reasons of the build report (for a local folder). Nothing on the page is fetched from elsewhere.
A ``compact`` build's ``degraded`` / ``composite`` are regenerated for the shown rows.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

from . import __version__

THUMBNAIL_PX = 192
IMAGE_ORDER = ("input", "mask", "albedo", "degraded", "composite", "normals")
COUNTED_COLUMNS = ("segmentation_method", "normals_method", "degradation_type", "light_setup")
LOADED_SCRIPT = """window.addEventListener('load', () => {
  const images = [...document.images];
  const ok = images.filter(image => image.complete && image.naturalWidth > 0).length;
  document.body.dataset.imagesOk = ok + '/' + images.length;
});"""
"""Marks ``<body data-images-ok="rendered/total">`` once the page has loaded, for people and tests alike."""


class InspectError(RuntimeError):
    """The dataset cannot be inspected; one line for the user."""


def thumbnail_data_uri(image, size: int = THUMBNAIL_PX) -> str:
    """A PIL image as an inline ``data:image/jpeg;base64`` URI of at most ``size`` pixels a side."""
    copy = image.convert("RGB")
    copy.thumbnail((size, size))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_svg(values: list[float], low: float, high: float, bins: int = 20, label: str = "") -> str:
    """An inline SVG bar chart of ``values`` in ``bins`` equal bins over ``[low, high]``."""
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, max(0, int((value - low) / (high - low) * bins)))] += 1
    tallest = max(counts) or 1
    width, height = 300, 120
    bars = "".join(
        f'<rect x="{i * width / bins:.1f}" y="{height - count / tallest * (height - 20):.1f}" '
        f'width="{width / bins - 1:.1f}" height="{count / tallest * (height - 20):.1f}" fill="#4a90d9">'
        f"<title>{low + i * (high - low) / bins:.2f}-{low + (i + 1) * (high - low) / bins:.2f}: {count}</title></rect>"
        for i, count in enumerate(counts))
    return (f'<svg width="{width}" height="{height + 16}" role="img" aria-label="{html.escape(label)}">{bars}'
            f'<text x="0" y="{height + 14}" font-size="11">{low:g}</text>'
            f'<text x="{width}" y="{height + 14}" font-size="11" text-anchor="end">{high:g}</text></svg>')


def polar_svg(directions: list[list[float]], size: int = 260) -> str:
    """The light directions (unit vectors, x right, y up, z towards the camera) as seen from the camera: the angle
    around the centre is the direction in the image plane, the distance from the centre the angle from the viewing
    axis (centre: light from the camera; rim: light from the side, 90 deg)."""
    centre, radius = size / 2, size / 2 - 10
    rings = "".join(f'<circle cx="{centre}" cy="{centre}" r="{radius * f}" fill="none" stroke="#ccc"/>'
                    for f in (1 / 3, 2 / 3, 1))
    dots = []
    for x, y, z in directions:
        tilt = math.degrees(math.acos(max(-1.0, min(1.0, z)))) / 90  # 0 = from the camera, 1 = from the side
        norm = math.hypot(x, y) or 1.0
        px, py = centre + radius * tilt * x / norm, centre - radius * tilt * y / norm
        dots.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="#d9534f" fill-opacity="0.6"/>')
    return (f'<svg width="{size}" height="{size}" role="img" aria-label="light directions">{rings}'
            f'<line x1="{centre}" y1="10" x2="{centre}" y2="{size - 10}" stroke="#eee"/>'
            f'<line x1="10" y1="{centre}" x2="{size - 10}" y2="{centre}" stroke="#eee"/>{"".join(dots)}</svg>')


def counts_table(title: str, counts: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(key))}</td><td>{value}</td></tr>"
                   for key, value in sorted(counts.items(), key=lambda item: -item[1]))
    return f"<h3>{html.escape(title)}</h3><table>{rows or '<tr><td>none</td></tr>'}</table>"


def load_rows(dataset: str, split: str):
    """The split of a local build folder or a Hub dataset id, and the build report and card config when local."""
    from datasets import load_dataset

    folder = Path(dataset)
    report, config = None, None
    if folder.exists():
        if not (folder / "data").is_dir():
            raise InspectError(f"{dataset}: not a dataset folder written by relight-build (no data/ inside)")
        if (folder / "build_report.json").is_file():
            report = json.loads((folder / "build_report.json").read_text())
        if (folder / "README.md").is_file():
            from huggingface_hub import DatasetCard

            config = DatasetCard.load(folder / "README.md").data.to_dict().get("relight_datasets", {}).get("config")
    elif dataset.count("/") != 1 or dataset.startswith((".", "/")):
        raise InspectError(f"{dataset}: no such folder, and not a Hub dataset id (ORG/NAME)")
    try:
        rows = load_dataset(dataset, split=split)
    except (ValueError, FileNotFoundError, OSError) as error:
        raise InspectError(f"{dataset}: cannot load split {split!r} ({str(error).splitlines()[0]})") from None
    missing = [name for name in ("image_id", "input", "mask") if name not in rows.column_names]
    if missing:
        raise InspectError(f"{dataset}: not a relight-datasets build (no {', '.join(missing)} column)")
    return rows, report, config


def render_page(rows, report: dict | None, config, count: int, seed: int, title: str) -> str:
    """The HTML of the page (see the module docstring)."""
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    shown = rows.select(picked)
    images = {name: shown[name] for name in IMAGE_ORDER if name in shown.column_names}
    if "degraded" not in images and "albedo" in images:
        from .api import RegeneratedPairs

        images.update(RegeneratedPairs(config)({name: shown[name] for name in shown.column_names}))
    columns = [name for name in IMAGE_ORDER if name in images]
    cells = []
    for index in range(len(shown)):
        row = shown[index]
        thumbs = "".join(f'<figure><img alt="{name}" src="{thumbnail_data_uri(images[name][index])}">'
                         f"<figcaption>{name}</figcaption></figure>" for name in columns)
        caption = f'<i>{html.escape(str(row["caption"]))}</i><br>' if row.get("caption") else ""
        cells.append(f'<div class="row"><div class="meta"><b>{html.escape(str(row["image_id"]))}</b><br>'
                     f'{html.escape(str(row.get("instruction", "")))}<br>{caption}<small>mask: '
                     f'{html.escape(str(row.get("segmentation_method", "?")))}, normals: '
                     f'{html.escape(str(row.get("normals_method", "?")))}</small></div>{thumbs}</div>')
    scalars = rows.select_columns([name for name in ("light_direction", "ambient", "light_kelvin", "exposure",
                                                     "mask_coverage", *COUNTED_COLUMNS)
                                   if name in rows.column_names])
    charts = []
    if "light_direction" in scalars.column_names:
        charts.append(f"<div><h3>Light directions (centre: from the camera)</h3>{polar_svg(scalars['light_direction'])}"
                      "</div>")
    if "light_kelvin" in scalars.column_names:
        keys = [kelvins[0] for kelvins in scalars["light_kelvin"] if kelvins[0] > 0]
        charts.append(f"<div><h3>key light colour (kelvin)</h3>"
                      f"{histogram_svg(keys, 2000.0, 10000.0, label='key light colour')}</div>")
    for name, low, high in (("ambient", 0.0, 1.0), ("exposure", 0.0, 4.0), ("mask_coverage", 0.0, 1.0)):
        if name in scalars.column_names:
            charts.append(f"<div><h3>{name}</h3>{histogram_svg(scalars[name], low, high, label=name)}</div>")
    tables = "".join(counts_table(name, Counter(scalars[name])) for name in COUNTED_COLUMNS
                     if name in scalars.column_names)
    if report is not None:
        tables += counts_table("skip reasons", report.get("skipped", {}))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 24px; }}
.row {{ display: flex; align-items: flex-start; gap: 6px; margin: 8px 0; border-top: 1px solid #ddd;
        padding-top: 6px; }}
.meta {{ width: 220px; font-size: 13px; }}
figure {{ margin: 0; text-align: center; font-size: 11px; }}
img {{ display: block; max-width: {THUMBNAIL_PX}px; max-height: {THUMBNAIL_PX}px; }}
table {{ border-collapse: collapse; font-size: 13px; }} td {{ border: 1px solid #ddd; padding: 2px 8px; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} rows; {len(shown)} shown at random (seed {seed}); relight-inspect {__version__}</p>
<div class="charts">{"".join(charts)}<div>{tables}</div></div>
<h2>Rows</h2>
{"".join(cells)}
<script>{LOADED_SCRIPT}</script>
</body></html>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relight-inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a folder written by relight-build, or a Hub dataset id (ORG/NAME)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the HTML page to write")
    parser.add_argument("--rows", type=int, default=24, help="random rows to show (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="which rows (default %(default)s)")
    parser.add_argument("--split", default="train", help="split to inspect (default %(default)s)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    try:
        rows, report, config = load_rows(args.dataset, args.split)
        page = render_page(rows, report, config, args.rows, args.seed, f"{args.dataset} ({args.split})")
        args.output.write_text(page, encoding="utf-8")
    except InspectError as error:
        print(f"relight-inspect: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"relight-inspect: error: cannot write {args.output} ({error.strerror or error})", file=sys.stderr)
        return 2
    print(f"relight-inspect: wrote {args.output} ({min(args.rows, len(rows))} of {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
