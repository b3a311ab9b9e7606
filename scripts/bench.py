#!/usr/bin/env python
"""Benchmark the build: per-stage and end-to-end images/s, optionally next to the seed's per-image reference.

Both run on the same images (copied from --images, cycled to -n, resized to --resolution squared), in one run:

    python scripts/bench.py -n 24 --resolution 1024 --reference ../shared/bench/seed_reference.py --json bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from relight_datasets import __version__
from relight_datasets.builder.build import BuildOptions, build_dataset
from relight_datasets.builder.card import describe_model
from relight_datasets.cli import add_model_arguments, as_overrides, model_overrides
from relight_datasets.config import load_config

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "faces"
STAGES = ("model_load", "decode", "segmentation", "normals", "albedo", "relight", "caption", "encode", "write")


def prepare_images(source: Path, count: int, resolution: int, target: Path) -> list[Path]:
    """``count`` images from ``source`` (cycled), resized to ``resolution`` squared, saved as PNG in ``target``."""
    paths = sorted(p for p in source.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not paths:
        sys.exit(f"bench: no images in {source}")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(count):
        image = Image.open(paths[index % len(paths)]).convert("RGB").resize((resolution, resolution), Image.BICUBIC)
        path = target / f"{index:05d}.png"
        image.save(path, compress_level=1)
        written.append(path)
    return written


def run_reference(script: Path, images: Path, resolution: int, work: Path) -> float:
    """Images/s of the seed's per-image reference on ``images`` (its own printed figure)."""
    result = subprocess.run(
        [sys.executable, str(script), "--images", str(images), "--out", str(work / "reference-out"),
         "--size", str(resolution)], capture_output=True, text=True, check=True,
    )
    match = re.search(r"\(([\d.]+) img/s\)", result.stdout)
    if not match:
        sys.exit(f"bench: could not read the reference's output: {result.stdout[-500:]}")
    return float(match.group(1))


class GpuUtilisation:
    """Context manager sampling ``torch.cuda.utilization()`` (percent of time a kernel ran, via NVML) every
    ``interval`` seconds on each visible GPU; ``mean`` is None without CUDA or NVML."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.samples, self.mean = interval, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(sum(torch.cuda.utilization(i) for i in range(torch.cuda.device_count()))
                                / torch.cuda.device_count())

    def __enter__(self):
        try:
            available = torch.cuda.is_available() and torch.cuda.utilization(0) >= 0
        except Exception:  # noqa: BLE001 - NVML (pynvml) missing: no figure rather than no benchmark
            available = False
        if available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.samples:
            self.mean = round(sum(self.samples) / len(self.samples), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of portraits (default: fixtures)")
    parser.add_argument("-n", "--num-images", type=int, default=24)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-processes", type=int, default=1, help="worker processes (one per GPU)")
    parser.add_argument("--preset", default="mvp")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--reference", type=Path, default=None, help="path to seed_reference.py to run alongside")
    parser.add_argument("--json", type=Path, default=None, help="also save the results here")
    add_model_arguments(parser)
    args = parser.parse_args()

    config = load_config(args.preset, overrides=[*args.overrides, f"resolution={args.resolution}",
                                                 *as_overrides(model_overrides(args))])
    with tempfile.TemporaryDirectory(prefix="relight-bench-") as tmp:
        work = Path(tmp)
        prepare_images(args.images, args.num_images, args.resolution, work / "images")
        started = time.perf_counter()
        with GpuUtilisation() as gpu:
            report = build_dataset(
                BuildOptions(source=f"folder:{work / 'images'}", out=work / "dataset", batch_size=args.batch_size,
                             device=args.device, progress=False, num_processes=args.num_processes), config)
        wall = time.perf_counter() - started
        reference = run_reference(args.reference, work / "images", args.resolution, work) if args.reference else None

    n = report["attempted"]
    dtypes = sorted({info["dtype"] for info in report["models"].values() if "dtype" in info})
    dtype = "/".join(dtypes) or "float32 (no models)"
    methods = ", ".join(f"{stage}: {describe_model(info)}" for stage, info in report["models"].items())
    results = {
        "images": n, "processed": report["processed"], "resolution": args.resolution, "batch_size": args.batch_size,
        "device": report["device"], "dtype": dtype, "models": report["models"], "preset": args.preset,
        "threads": torch.get_num_threads(), "processes": report["processes"],
        "batch_threads": report["batch_threads"], "gpu_busy_percent": gpu.mean,
        "versions": {"relight_datasets": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "stage_seconds": {k: report["timings"].get(k, 0.0) for k in STAGES},
        "end_to_end_seconds": round(wall, 3),
        "end_to_end_images_per_second": round(n / wall, 3),
        "reference_images_per_second": reference,
        "speedup_vs_reference": round(n / wall / reference, 2) if reference else None,
    }
    print(f"relight-datasets {__version__} | torch {torch.__version__} | device {results['device']} | {dtype} | "
          f"batch {args.batch_size} | {n} images at {args.resolution}x{args.resolution} | {results['threads']} threads")
    print(f"models: {methods} | processes {results['processes']} | batch threads {results['batch_threads']}"
          + (f" | GPU busy {gpu.mean:.0f} % of the time (mean over GPUs)" if gpu.mean is not None else ""))
    # Stage seconds are summed over processes and batch threads, which run at the same time: they can add up to more
    # than the wall time, so each stage's share is of their sum, and its images/s is that of one thread or process.
    total = sum(results["stage_seconds"].values()) or 1.0
    print(f"{'stage':<16}{'seconds':>10}{'images/s':>12}{'share':>9}")
    for stage, seconds in results["stage_seconds"].items():
        rate = f"{n / seconds:.2f}" if seconds > 0 and stage != "model_load" else "-"  # once per process
        print(f"{stage:<16}{seconds:>10.2f}{rate:>12}{seconds / total:>8.0%}")
    print(f"{'end to end':<16}{wall:>10.2f}{n / wall:>12.2f}")
    if reference:
        print(f"{'seed reference':<16}{n / reference:>10.2f}{reference:>12.2f}")
        print(f"speed-up vs the seed reference (images/s ratio): {results['speedup_vs_reference']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
