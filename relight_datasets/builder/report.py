"""The build report (``build_report.json``): chunk stats merged with the source's own skips, the verdict on a build
whose rows mostly failed, and the one-paragraph summary the command line prints."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .features import METHOD_COLUMNS
from .pipeline import PROCESSING_ERROR


def merge_stats(stats: list[dict], source_skips: list[dict]) -> dict:
    """Sum the chunk stats; ``source_skips`` (items the source could not use) count as attempted and skipped."""
    merged: dict = {"attempted": len(source_skips), "processed": 0, "skipped_rows": list(source_skips),
                    "splits": Counter(), "split_bytes": Counter(), "timings": Counter(),
                    "methods": {column: Counter() for column in METHOD_COLUMNS}, "first_error": None,
                    "image_sizes": Counter()}
    for item in stats:
        merged["attempted"] += item["attempted"]
        merged["processed"] += item["processed"]
        merged["skipped_rows"].extend(item["skipped_rows"])
        for column in METHOD_COLUMNS:
            merged["methods"][column].update(item["methods"][column])
        merged["splits"].update(item["splits"])
        merged["split_bytes"].update(item["split_bytes"])
        merged["timings"].update(item["timings"])
        merged["first_error"] = merged["first_error"] or item["first_error"]
        merged["image_sizes"].update(item.get("image_sizes", {}))  # chunks of an older run may lack it
    return merged


def size_summary(sizes: Counter) -> dict:
    """The stored images' sizes: long side (pixels) min / median / max and the five most common ``WxH``."""
    long_sides = sorted(max(int(side) for side in size.split("x")) for size in sizes.elements())
    if not long_sides:
        return {}
    return {"long_side": {"min": long_sides[0], "median": long_sides[len(long_sides) // 2], "max": long_sides[-1]},
            "most_common": [[size, count] for size, count in sizes.most_common(5)]}


def counts_part(merged: dict, splits: dict[str, float]) -> dict:
    """The counting part of a report: attempted, processed, skips by reason (and each skipped id), rows and bytes
    per split, the splits left without rows, methods and the first processing error."""
    return {
        "attempted": merged["attempted"],
        "processed": merged["processed"],
        "skipped": dict(sorted(Counter(r["reason"] for r in merged["skipped_rows"]).items())),
        "skipped_rows": merged["skipped_rows"],
        "splits": {name: merged["splits"].get(name, 0) for name in splits},
        "empty_splits": [name for name in splits if not merged["splits"].get(name)],
        "split_bytes": {name: merged["split_bytes"].get(name, 0) for name in splits},
        "methods": {column: dict(sorted(counts.items())) for column, counts in merged["methods"].items()},
        "first_error": merged["first_error"],
        "image_sizes": size_summary(merged["image_sizes"]),
    }


def build_failure(report: dict, max_error_rate: float) -> str | None:
    """Why the rows must not be published (nothing processed, or more ``processing_error`` rows than
    ``max_error_rate`` of those attempted), naming the first error; None when the build succeeded."""
    errors = report["skipped"].get(PROCESSING_ERROR, 0)
    first = report["first_error"]
    first_text = f"; first error: {first['image_id']}: {first['error']}" if first else ""
    if report["processed"] == 0:
        return f"none of the {report['attempted']} images was processed ({skip_text(report)}{first_text}); " \
               "nothing was written"
    if errors > max_error_rate * report["attempted"]:
        return (f"{errors} of {report['attempted']} images failed with {PROCESSING_ERROR}, more than "
                f"--max-error-rate {max_error_rate:g}{first_text}. Nothing was written; the processed chunks are "
                "kept: the same command with a higher --max-error-rate publishes them")
    return None


def skip_text(report: dict) -> str:
    return "skipped: " + (", ".join(f"{reason} {count}" for reason, count in report["skipped"].items()) or "none")


def sizes_text(report: dict) -> str:
    """The stored images' sizes in words, e.g. ``images 1024x1024`` or ``images 480-1024 px on the long side``."""
    sizes = report.get("image_sizes") or {}
    if not sizes:
        return "no images"
    if len(sizes["most_common"]) == 1:
        return f"images {sizes['most_common'][0][0]}"
    side = sizes["long_side"]
    return f"images {side['min']}-{side['max']} px on the long side (median {side['median']})"


def summary(report: dict, out: Path) -> str:
    """What the command line prints after a build: counts, speed, where the dataset is and how to load it."""
    splits = ", ".join(f"{name} {count}" for name, count in report["splits"].items())
    empty = f"; empty splits left out: {', '.join(report['empty_splits'])}" if report["empty_splits"] else ""
    resumed = f", {report['resumed_rows']} resumed from an earlier run" if report["resumed_rows"] else ""
    if report.get("reused_rows"):
        resumed += f", {report['reused_rows']} reused from the build it extends"
    where = (f"dataset written to {out.resolve()} (load it with datasets.load_dataset({str(out)!r}))"
             if report.get("hub") is None else
             f"dataset uploaded to {report['hub']['repo']} as it was built (load it with datasets.load_dataset("
             f"{report['hub']['repo']!r})); {out.resolve()} keeps its card, preview and report")
    return (f"relight-build: {report['processed']} of {report['attempted']} images processed ({skip_text(report)}; "
            f"splits: {splits}{empty}{resumed}) in {report['wall_seconds']:.1f} s, "
            f"{report['images_per_second']:.2f} images/s on {report['device']}; "
            f"{report['bytes_per_row'] / 1e3:.0f} kB per row ({report['layout']} layout), {sizes_text(report)}\n"
            f"relight-build: {where}")
