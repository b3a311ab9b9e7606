#!/usr/bin/env python
"""Feed a built dataset to a training loop with on-the-fly relighting, and measure the data throughput.

Build a dataset first (any --resolution; the example crops to --size), then iterate it:

    python scripts/build.py --source folder:../shared/fixtures/faces --out ./pairs-512 --resolution 512
    python scripts/train_example.py --data ./pairs-512 --steps 40
    python scripts/train_example.py --data ./pairs-512 --steps 40 --no-relight     # stored pairs, for comparison
    python scripts/train_example.py --data ./pairs-512 --relight-on device         # RelightBatch on the GPU

Every batch holds ``input`` (the photo) and ``composite`` (the same person under new light) as ``B x 3 x H x W``
float tensors, plus ``mask``, ``albedo``, ``normals``, ``degraded`` and the lighting metadata (``instruction``...).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from relight_datasets.relighting import LABEL_SHAPES
from relight_datasets.transforms import Compose, PairedTransform, RelightBatch, RelightOnTheFly
from relight_datasets.transforms.base import resolve_device

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"
COLUMNS = ["image_id", "input", "mask", "albedo", "normals", "degraded", "composite", *LABEL_SHAPES]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("./relight-pairs"),
                        help="a dataset folder written by relight-build (default %(default)s)")
    parser.add_argument("--split", default="train", help="split to iterate (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="default %(default)s")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes (default %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="training crop size in pixels (default %(default)s)")
    parser.add_argument("--steps", type=int, default=40, help="batches to time (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="batches before timing starts (worker start-up, first decode; default %(default)s)")
    parser.add_argument("--no-relight", action="store_true", help="train on the stored pairs (crop and flip only)")
    parser.add_argument("--order", choices=("crop-first", "relight-first"), default="crop-first",
                        help="crop-first relights at --size (cheaper); relight-first relights the stored image "
                        "(default %(default)s)")
    parser.add_argument("--relight-on", choices=("workers", "device"), default="workers",
                        help="relight rows in the DataLoader workers, or collated batches on --device")
    parser.add_argument("--device", default="auto", help="training device: auto, cpu, cuda (default %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="reproducible crops and lighting per (seed, epoch, image_id); without it every access "
                        "draws anew")
    parser.add_argument("--preset", default="mvp",
                        help="config preset when the dataset card records no config (default %(default)s)")
    return parser


def dataset_config(folder: Path, preset: str):
    """The config recorded in the dataset card (so lighting ranges and feathering match the build), else a preset."""
    from huggingface_hub import DatasetCard

    card = folder / "README.md"
    if card.is_file():
        recorded = (DatasetCard.load(card).data.to_dict().get("relight_datasets") or {}).get("config")
        if recorded:
            return recorded
    print(f"train_example: no config in {card}; using the {preset!r} preset", file=sys.stderr)
    return preset


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.data.is_dir():
        source = f"folder:{FIXTURES}" if FIXTURES.is_dir() else "folder:PATH/TO/PORTRAITS"
        print(f"train_example: no dataset at {args.data}. Build one first, e.g.\n\n"
              f"    python scripts/build.py --source {source} --out {args.data} --resolution {args.size}\n",
              file=sys.stderr)
        return 2
    from datasets import load_dataset

    config = dataset_config(args.data, args.preset)
    device = resolve_device(args.device)
    dataset = load_dataset(str(args.data), split=args.split)
    if len(dataset) < args.batch_size:
        print(f"train_example: {len(dataset)} rows, fewer than --batch-size {args.batch_size}", file=sys.stderr)
        return 2

    crop = PairedTransform(args.size, seed=args.seed)
    relight_rows = not args.no_relight and args.relight_on == "workers"
    if relight_rows:
        relighter = RelightOnTheFly(config, seed=args.seed)
        steps = [crop, relighter] if args.order == "crop-first" else [relighter, crop]
    else:
        steps = [crop]
    transform = Compose(steps)
    # relighting regenerates degraded and composite: skip decoding the stored ones
    columns = COLUMNS if args.no_relight else [c for c in COLUMNS if c not in ("degraded", "composite")]
    dataset.set_transform(transform, columns=columns)
    on_device = RelightBatch(config, seed=args.seed, device=device) if (
        not args.no_relight and args.relight_on == "device") else None
    if on_device is not None and device.type == "cpu":
        print("train_example: --relight-on device with a CPU device relights in the main process, competing with "
              "the workers for the cores; on CPU, relighting in the workers is faster", file=sys.stderr)

    # set_epoch reaches running workers (the epoch lives in shared memory), so they can stay up between epochs
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                        pin_memory=device.type == "cuda")

    def batches():
        for epoch in itertools.count():
            transform.set_epoch(epoch)
            if on_device is not None:
                on_device.set_epoch(epoch)
            yield from loader

    seen, trained, checksum = 0, 0, 0.0
    started = time.perf_counter()
    timed_from, timed_seen = None, 0
    for step, batch in enumerate(batches()):
        if step == args.warmup:
            timed_from, timed_seen = time.perf_counter(), seen
        if step == args.warmup + args.steps:
            break
        if on_device is not None:
            batch = on_device(batch)
        source = batch["input"].to(device, non_blocking=True)
        target = batch["composite"].to(device, non_blocking=True)
        # a model would train here: model(source, batch["instruction"]) -> prediction, loss against target
        checksum += float((target - source).abs().mean())
        seen += source.shape[0]
        trained += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    ended = time.perf_counter()
    mode = "stored pairs" if args.no_relight else f"relit on {args.relight_on} ({args.order})"
    rate = (seen - timed_seen) / (ended - timed_from) if timed_from is not None else float("nan")
    print(f"train_example: {mode}, {args.size}px, batch {args.batch_size}, {args.num_workers} workers, "
          f"device {device.type}: {rate:.2f} samples/s over {args.steps} steps after {args.warmup} warm-up "
          f"({seen / (ended - started):.2f} samples/s including start-up; mean |composite - input| "
          f"{checksum / max(1, trained):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
