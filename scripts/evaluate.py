#!/usr/bin/env python
"""Score the build's albedo, normals, masks and banding against ground truth (see relight_datasets.evaluation), print
the tables and write them, with the command and date, to docs/quality.md:

    HF_HUB_OFFLINE=1 python scripts/evaluate.py --size 512
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from relight_datasets import __version__
from relight_datasets.config import load_config
from relight_datasets.evaluation import (
    BUMP_SIGMA_FRACTION,
    BUMP_TILT_DEG,
    LMSE_WINDOW_FRACTION,
    SHAPES,
    evaluate_albedo,
    evaluate_banding,
    evaluate_masks,
    evaluate_normals,
)
from relight_datasets.transforms.base import resolve_device, uint8_to_unit, upload_images

DEFAULT_FACES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "quality.md"
DEFAULT_OVERRIDES = ("segmentation.method=mediapipe", "normals.method=face_mesh")
"""The offline build: the shipped MediaPipe models, what every machine without the Hub's models runs."""
NOTES_MARKER = "<!-- notes below are kept when scripts/evaluate.py rewrites this file -->"
COMPARED_SEGMENTER = "classical"
"""Also scored on the mask scenes, for comparison: the weight-free Haar + GrabCut segmenter."""


def load_faces(folder: Path, size: int, limit: int | None, device: torch.device) -> tuple[list[str], torch.Tensor]:
    """Names and ``B x 3 x S x S`` float images (Lanczos-resized to ``size``) of the PNGs in ``folder``, sorted."""
    paths = sorted(folder.glob("*.png"))[:limit]
    if not paths:
        sys.exit(f"evaluate: no PNG images in {folder}")
    arrays = [np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
              for path in paths]
    return [path.stem for path in paths], uint8_to_unit(upload_images(arrays, device))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def results_markdown(names: list[str], albedo: dict, normals: dict, masks: dict[str, dict], banding: dict) -> str:
    """The numbers as markdown: a summary, then per-shape and per-fixture tables. ``masks``: per segmenter, the
    first one being the build's."""
    build_lmse, nothing_lmse = albedo["build"].tolist(), albedo["nothing"].tolist()
    segmenter = next(iter(masks))
    iou, boundary_f = masks[segmenter]["iou"].tolist(), masks[segmenter]["boundary_f"].tolist()
    band = banding["fixtures"].tolist()
    mask_rows = []
    for method, scores in masks.items():
        mask_rows += [[f"mask IoU, {method} (higher is better)", *_stats(scores["iou"].tolist(), worst=min)],
                      [f"mask boundary F, {method}, {scores['tolerance_px']} px tolerance",
                       *_stats(scores["boundary_f"].tolist(), worst=min)]]
    summary = markdown_table(["measure", "mean", "median", "worst"], [
        ["albedo si-LMSE, build (lower is better)", *_stats(build_lmse, worst=max)],
        ["albedo si-LMSE, doing nothing (albedo = input)", *_stats(nothing_lmse, worst=max)],
        *mask_rows,
        ["banding of stored normals (0 = smooth)", *_stats(band, worst=max)],
        ["banding of exact sphere normals at 8 bits (floor)", f"{banding['smooth_8bit'].item():.3f}", "", ""],
    ])
    shapes = markdown_table(
        ["normals path", *(f"{shape} mean / p95 (deg)" for shape in SHAPES)],
        [[path, *(f"{normals[path][shape][0]:.1f} / {normals[path][shape][1]:.1f}" for shape in SHAPES)]
         for path in normals])
    fixtures = markdown_table(
        ["fixture", "albedo si-LMSE build", "doing nothing", f"mask IoU {segmenter}", "boundary F", "banding"],
        [[name, f"{b:.4f}", f"{n:.4f}", f"{i:.3f}", f"{f:.3f}", f"{s:.3f}"]
         for name, b, n, i, f, s in zip(names, build_lmse, nothing_lmse, iou, boundary_f, band, strict=True)])
    return f"{summary}\n\nNormals on analytic shapes:\n\n{shapes}\n\nPer fixture:\n\n{fixtures}\n"


def _stats(values: list[float], worst) -> list[str]:
    """Mean, median and worst of ``values`` (NaN, a skipped row, ignored) as strings with 4 significant digits."""
    kept = [v for v in values if v == v]
    if not kept:
        return ["n/a"] * 3
    return [f"{v:.4g}" for v in (float(np.mean(kept)), float(np.median(kept)), worst(kept))]


EXPLANATION = """\
## What each number means

All scenes are built from the fixture faces, resized to the evaluation size, so the truth is known exactly. The
stages run with the build's config (the `mvp` preset with the overrides above, pixel sizes scaled to the image as
in a build) through their `Dataset.map` entry point, and their 8-bit outputs are scored, as stored in a dataset.

- **Albedo si-LMSE** (scale-invariant local MSE; Grosse et al., ICCV 2009, the MIT intrinsic-images benchmark).
  Scene: the face is the true albedo `A`; the input is `A x S` stored at 8 bits, where `S` is white Lambertian
  shading of a Gaussian bump (width {bump:.2f} of the image side, centred on the head, steepest tilt {tilt:.0f} deg)
  under a light drawn per image (elevation U(20, 70) deg, azimuth U(0, 360) deg, ambient U(0.3, 0.6), seed 0); the
  mask is the head-and-shoulders silhouette below. Square windows of side 1/{windows:.0f} of the image, every half
  window; in each window and colour channel the estimate gets its own best scale `alpha`; si-LMSE =
  `sum (mask (A - alpha estimate))^2 / sum (mask A)^2` over windows and channels (0 = exact up to a local scale,
  1 = as bad as predicting zero). "Doing nothing" scores the input itself as the albedo. The shading must vary
  inside a window for the metric to see it: with a frame-sized ellipsoid instead of a face-sized bump, doing
  nothing scores about 0.0005 and the build looks worse than doing nothing.
- **Normals angular error**: the angle between estimated and exact normals, in degrees, inside each shape's
  silhouette (sphere of radius 0.4 S; ellipsoid 0.28 x 0.40 x 0.25 S; a box 0.5 x 0.6 S raised 0.15 S: flat top,
  depth step at its edge); mean and 95th percentile. `face_mesh` is the face-mesh renderer (area-weighted vertex
  normals, interpolated in z-buffered triangles) on a mesh of points on the exact surface about as dense as the
  face mesh (577 points on the ellipsoids, the face mesh has 468): what the build does with a face mesh that lies on
  the face. `mask_inflation` is the normals stage's weight-free path given
  the silhouette only (a box comes out as a bulge); `depth` is `normals_from_depth` on the exact height (what the
  depth path does with a perfect depth map: its fixed relief, `normals.depth_relief` x the long side, decides the
  tilt, so curved shapes of another relief come out too steep or too flat).
- **Mask IoU and boundary F** (contour accuracy F of Perazzi et al., CVPR 2016, DAVIS). Scene: each face cut out
  with a known alpha (head ellipse, neck, shoulders reaching the bottom edge, feathered by 1 % of the side) and
  pasted onto a photo without people that scikit-image ships (coffee, rocket, two motorcycles, a cat, grass,
  bricks, gravel; in turn). The fixtures' own regions cannot serve as backgrounds: they are tight face crops, so
  any region of one may hold hair, shoulders or another person. Truth:
  alpha > 0.5. Boundary pixels match when the other mask's boundary lies within the tolerance (1 % of the image
  diagonal, a disc); F = 2 P R / (P + R). A row the segmenter skips scores an empty mask.
- **Banding**: along rows and columns, `sum shrink(f[i+1] - 2 f[i] + f[i-1])^2 / sum (f[i+1] - f[i])^2` over the
  mask's interior (off the image's outermost pixels), summed over the RGB channels of the stored normals image;
  `shrink` takes one 8-bit step off each second difference, so the steps of a smooth field stored at 8 bits do not
  count. A smooth field scores about 0 (the floor row: exact sphere normals stored at 8 bits); a staircase
  (piecewise-constant slopes: a height field blurred on a coarse grid and upsampled) up to 2. The fixtures' rows
  come from the build's segmentation and normals stages on the real faces.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=DEFAULT_FACES, help="folder of face PNGs (the fixtures)")
    parser.add_argument("--size", type=int, default=512, help="evaluation image side in pixels (default %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N faces")
    parser.add_argument("--preset", default="mvp", help="config preset (default %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help=f"config override, repeatable (default: {' '.join(DEFAULT_OVERRIDES)})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file to write")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit: must be at least 1")
    overrides = args.overrides or list(DEFAULT_OVERRIDES)
    config = load_config(args.preset, overrides=overrides)
    device = resolve_device(args.device)
    started = time.perf_counter()
    names, faces = load_faces(args.faces, args.size, args.limit, device)
    masks = {config.segmentation.method: evaluate_masks(faces, config)}
    if config.segmentation.method != COMPARED_SEGMENTER:
        compared = replace(config, segmentation=replace(config.segmentation, method=COMPARED_SEGMENTER))
        masks[COMPARED_SEGMENTER] = evaluate_masks(faces, compared)
    results = results_markdown(names, evaluate_albedo(faces, config), evaluate_normals(config, args.size, device),
                               masks, evaluate_banding(faces, config))
    seconds = time.perf_counter() - started
    print(results)
    command = shlex.join(["python", "scripts/evaluate.py", *(sys.argv[1:] if argv is None else argv)])
    document = (f"# Quality on ground truth\n\nCommand: `HF_HUB_OFFLINE=1 {command}`  \n"
                f"Date: {datetime.date.today().isoformat()}, relight-datasets {__version__}, {len(names)} faces at "
                f"{args.size} px, device {device}, {seconds:.0f} s.  \n"
                f"Config: preset `{args.preset}` with {', '.join(f'`{o}`' for o in overrides)}.\n\n"
                f"{results}\n"
                + EXPLANATION.format(bump=BUMP_SIGMA_FRACTION, tilt=BUMP_TILT_DEG, windows=1 / LMSE_WINDOW_FRACTION))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    previous = args.output.read_text() if args.output.is_file() else ""
    if NOTES_MARKER in previous:  # hand-written notes (history, what the pictures show) survive a rerun
        document += "\n" + previous[previous.index(NOTES_MARKER):]
    args.output.write_text(document)
    print(f"wrote {args.output} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
