"""Command line: ``relight-build`` / ``python scripts/build.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import PRESETS, ConfigError, load_config
from .transforms.normals import NORMAL_ESTIMATORS
from .transforms.segmentation import SEGMENTERS

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relight-build",
        description="Turn portrait photos into a Hugging Face dataset of relighting pairs "
        "(input / mask / albedo / degraded / composite / normals).",
    )
    parser.add_argument("--source", required=True,
                        help="folder:PATH, csv:PATH (column image_path), hf:REPO_ID[:SPLIT], ffhq, or a directory")
    parser.add_argument("--limit", type=int, default=None, help="process at most this many images")
    parser.add_argument("--out", type=Path, default=Path("./relight-pairs"), help="output folder (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    parser.add_argument("--preset", choices=PRESETS, default="mvp", help="config preset (default %(default)s)")
    parser.add_argument("--config", type=Path, default=None, help="YAML file merged over the preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set degradation.soft_shading.ambient=[0.5,0.8] "
                        "(repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="global random seed (config: seed)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="long side of the images, in pixels (config: resolution, default 1024)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    parser.add_argument("--segmenter", choices=SEGMENTERS, default=None, help="config: segmentation.method")
    parser.add_argument("--normals", choices=NORMAL_ESTIMATORS, default=None, help="config: normals.method")
    parser.add_argument("--background", choices=("original", "gray", "black"), default=None,
                        help="background behind the relit person (config: recombination.background)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """Dedicated flags become config overrides (applied after --set, so the flag wins)."""
    pairs = {"seed": args.seed, "resolution": args.resolution, "segmentation.method": args.segmenter,
             "normals.method": args.normals, "recombination.background": args.background}
    return [f"{key}={value}" for key, value in pairs.items() if value is not None]


def _fail(message: str) -> int:
    print(f"relight-build: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        config = load_config(args.preset, args.config, [*args.overrides, *_flag_overrides(args)])
    except ConfigError as error:
        return _fail(str(error))

    import torch

    from .builder.build import BuildOptions, OutputError, build_dataset
    from .builder.sources import SourceError

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    options = BuildOptions(source=args.source, out=args.out, limit=args.limit, batch_size=args.batch_size,
                           device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    try:
        report = build_dataset(options, config)
    except (SourceError, OutputError) as error:
        return _fail(str(error))
    skipped = ", ".join(f"{reason} {count}" for reason, count in report["skipped"].items()) or "none"
    print(
        f"relight-build: {report['processed']} of {report['attempted']} images processed "
        f"(skipped: {skipped}) in {report['wall_seconds']:.1f} s, {report['images_per_second']:.2f} images/s "
        f"on {report['device']}\n"
        f"relight-build: dataset written to {args.out.resolve()} "
        f"(load it with datasets.load_dataset({str(args.out)!r}))"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
