"""Contact sheets of a built dataset relit under each preset and each light setup (docs/gallery.md).

Each sheet has one row per image: input | normals | degraded | composite | the input and the composite cropped to
the centre and enlarged 2x, with the row's instruction underneath. The rows are relit from the stored ``albedo``,
``normals``, ``mask`` and ``input`` by :class:`relight_datasets.transforms.RelightBatch` (the build's own relighting
function); ``--stored`` draws the dataset's own ``degraded``/``composite`` instead (e.g. a build of an older version).

    python scripts/build.py --source folder:../shared/fixtures/faces --resolution 512 --layout compact --out /tmp/fx
    python scripts/gallery.py /tmp/fx --out docs/gallery
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from PIL import Image, ImageDraw

from relight_datasets.config import LIGHT_SETUPS, PRESETS, load_config
from relight_datasets.transforms import RelightBatch
from relight_datasets.transforms.on_the_fly import to_tensor

CAPTION_HEIGHT = 30


def _tile(image: torch.Tensor, side: int) -> Image.Image:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array).resize((side, side), Image.Resampling.LANCZOS)


def _crop2x(image: torch.Tensor, side: int) -> Image.Image:
    """The centre half of ``image`` (``3 x H x W``), shown at ``side`` pixels: twice the scale of a full tile."""
    h, w = image.shape[-2:]
    return _tile(image[:, h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2], side)


def sheet(rows: dict, relit: dict, side: int) -> Image.Image:
    """One contact sheet: a row per image (input, normals, degraded, composite, 2x crops) plus its instruction."""
    count = len(rows["input"])
    canvas = Image.new("RGB", (6 * side, count * (side + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    for index in range(count):
        top = index * (side + CAPTION_HEIGHT)
        composite = relit["composite"][index]
        tiles = [_tile(rows["input"][index], side), _tile(rows["normals"][index], side),
                 _tile(relit["degraded"][index], side), _tile(composite, side),
                 _crop2x(rows["input"][index], side), _crop2x(composite, side)]
        for column, tile in enumerate(tiles):
            canvas.paste(tile, (column * side, top))
        text = f"{rows['image_id'][index]}: {relit['instruction'][index]}"
        for line_number, line in enumerate(textwrap.wrap(text, width=6 * side // 6)[:2]):
            draw.text((4, top + side + 2 + 13 * line_number), line, fill="black")
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a built dataset folder")
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--rows", type=int, default=6, help="images per sheet (default %(default)s)")
    parser.add_argument("--side", type=int, default=176, help="tile size in pixels (default %(default)s)")
    parser.add_argument("--stored", metavar="NAME", help="draw the stored degraded/composite as NAME.jpg only")
    parser.add_argument("--environment-maps", help="a folder of .hdr/.exr maps for an environment_map sheet")
    args = parser.parse_args()
    data = load_dataset(args.dataset, split="train").sort("image_id").select(range(args.rows))
    rows = {name: [to_tensor(v) for v in data[name]] for name in ("input", "mask", "albedo", "normals")}
    rows["image_id"] = data["image_id"]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stored:
        stored = {"degraded": [to_tensor(v) for v in data["degraded"]],
                  "composite": [to_tensor(v) for v in data["composite"]], "instruction": data["instruction"]}
        sheet(rows, stored, args.side).save(args.out / f"{args.stored}.jpg", quality=80)
        return
    seed = int(data["seed"][0])
    jobs = [(f"preset-{name}", load_config(name)) for name in PRESETS]
    for setup in LIGHT_SETUPS:
        if setup == "environment_map" and not args.environment_maps:
            continue
        overrides = [f"degradation.light.setups={{{setup}: 1}}"]
        if args.environment_maps:
            overrides.append(f"degradation.light.environment_maps={args.environment_maps}")
        jobs.append((f"setup-{setup}", load_config("full", overrides=overrides)))
    batch = {name: torch.stack(rows[name]) for name in ("input", "mask", "albedo", "normals")}
    for name, config in jobs:
        relit = RelightBatch(config, seed=seed, device="cpu")(batch, image_ids=rows["image_id"])
        sheet(rows, relit, args.side).save(args.out / f"{name}.jpg", quality=80)
        print(f"{args.out / name}.jpg")


if __name__ == "__main__":
    main()
