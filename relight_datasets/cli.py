"""Command line: ``relight-build`` / ``python scripts/build.py``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path

from . import __version__
from .config import PRESETS, ConfigError, load_config
from .transforms.albedo import ALBEDO_METHODS
from .transforms.caption import CAPTIONERS
from .transforms.normals import NORMAL_ESTIMATORS
from .transforms.segmentation import SEGMENTERS

EXIT_USAGE = 2
EXIT_FAILED = 1


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags choosing the model-backed stages (shared with ``scripts/bench.py``); see :func:`model_overrides`."""
    parser.add_argument("--segmenter", choices=SEGMENTERS, default=None,
                        help="auto tries sam3, then sam2, then mediapipe (shipped, offline), then classical; the "
                        "others force one and fail (exit 2) when its model cannot load (config: "
                        "segmentation.method, default auto)")
    parser.add_argument("--sam3-model", default=None, metavar="ID_OR_DIR",
                        help="SAM3 checkpoint, Hub id or local folder (config: segmentation.sam3_model, default "
                        "facebook/sam3)")
    parser.add_argument("--sam2-model", default=None, metavar="ID_OR_DIR",
                        help="SAM2 checkpoint (config: segmentation.sam2_model, default facebook/sam2.1-hiera-large)")
    parser.add_argument("--detector-model", default=None, metavar="ID_OR_DIR",
                        help="zero-shot detector giving SAM2 its person boxes; '' uses the face-prior box (config: "
                        "segmentation.detector_model, default IDEA-Research/grounding-dino-tiny)")
    parser.add_argument("--normals", choices=NORMAL_ESTIMATORS, default=None,
                        help="auto: faces from the shipped face mesh, the rest from depth when its model loads, "
                        "else from the mask; face_mesh: face mesh over mask normals; depth / classical: only depth / "
                        "mask normals; marigold: face mesh over Marigold normals, needs diffusers (config: "
                        "normals.method, default auto)")
    parser.add_argument("--depth-model", default=None, metavar="ID_OR_DIR",
                        help="depth checkpoint for AutoModelForDepthEstimation (config: normals.depth_model, default "
                        "depth-anything/Depth-Anything-V2-Small-hf)")
    parser.add_argument("--normals-model", default=None, metavar="ID_OR_DIR",
                        help="MarigoldNormalsPipeline checkpoint for --normals marigold (config: "
                        "normals.normals_model, default prs-eth/marigold-normals-v1-1)")
    parser.add_argument("--albedo", choices=ALBEDO_METHODS, default=None,
                        help="retinex / lab: weight-free; intrinsic: an intrinsic-image model (Marigold, needs "
                        "diffusers), exit 2 when it cannot load; auto: intrinsic when its model loads, else retinex "
                        "(config: albedo.method, default retinex)")
    parser.add_argument("--albedo-model", default=None, metavar="ID_OR_DIR",
                        help="MarigoldIntrinsicsPipeline checkpoint (config: albedo.intrinsic_model, default "
                        "prs-eth/marigold-iid-appearance-v1-1)")
    parser.add_argument("--caption", choices=CAPTIONERS, default=None,
                        help="none: an empty caption column; vlm: a vision-language model describes each composite "
                        "(the person, the scene, the light), and fails (exit 2) when its model cannot load (config: "
                        "caption.method, default none)")
    parser.add_argument("--caption-model", default=None, metavar="ID_OR_DIR",
                        help="VLM for --caption vlm, any AutoModelForImageTextToText checkpoint with a chat template "
                        "(config: caption.model, default Qwen/Qwen2.5-VL-3B-Instruct)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default=None,
                        help="model weights and activations; auto = bfloat16 on CUDA, float32 on CPU (config: dtype)")


def model_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Config keys set by :func:`add_model_arguments` flags (None: flag not given)."""
    return {"dtype": args.dtype, "segmentation.method": args.segmenter, "segmentation.sam3_model": args.sam3_model,
            "segmentation.sam2_model": args.sam2_model, "segmentation.detector_model": args.detector_model,
            "normals.method": args.normals, "normals.depth_model": args.depth_model,
            "normals.normals_model": args.normals_model, "albedo.method": args.albedo,
            "albedo.intrinsic_model": args.albedo_model, "caption.method": args.caption,
            "caption.model": args.caption_model}


def as_overrides(pairs: dict[str, object]) -> list[str]:
    """``{key: value}`` -> ``["key=value", ...]`` for the values that are set. Values are written as JSON (which
    YAML reads back unchanged), so ids and paths stay strings whatever they look like."""
    return [f"{key}={json.dumps(value)}" for key, value in pairs.items() if value is not None]


EXAMPLES = """examples:
  relight-build --source folder:./portraits --limit 8 --resolution 512        offline, the shipped models
  relight-build --source ffhq --limit 12000 --push-to-hub ORG/relight-pairs   real models on GPUs, uploaded
  relight-build --source folder:./portraits --layout compact --min-shards 32  half the bytes, 32 shards
  relight-build --source csv:list.csv --segmenter classical --normals classical   weight-free, fastest
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relight-build",
        description="Turn portrait photos into a Hugging Face dataset of relighting pairs "
        "(input / mask / albedo / degraded / composite / normals).",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    source = parser.add_argument_group("source and output")
    source.add_argument("--source", required=True,
                        help="folder:PATH, csv:PATH (column image_path), hf:REPO_ID[:SPLIT], ffhq, or a directory")
    source.add_argument("--limit", type=int, default=None, help="process at most this many images")
    source.add_argument("--out", type=Path, default=Path("./relight-pairs"), help="output folder (default %(default)s)")
    source.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    source.add_argument("--splits", default="train=1",
                        help="split fractions by a stable hash of image_id, e.g. train=0.9,validation=0.05,test=0.05 "
                        "(default: all train)")
    recipe = parser.add_argument_group("what the pipeline does")
    recipe.add_argument("--preset", choices=PRESETS, default="mvp", help="config preset (default %(default)s)")
    recipe.add_argument("--config", type=Path, default=None, help="YAML file merged over the preset")
    recipe.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set degradation.soft_shading.ambient=[0.5,0.8] "
                        "(repeatable)")
    recipe.add_argument("--seed", type=int, default=None, help="global random seed (config: seed)")
    recipe.add_argument("--resolution", type=int, default=None,
                        help="long side of the images, in pixels (config: resolution, default 1024)")
    recipe.add_argument("--background", choices=("original", "gray", "black"), default=None,
                        help="background behind the relit person (config: recombination.background)")
    add_model_arguments(parser.add_argument_group("models (each stage: what runs, what it falls back to)"))
    engine = parser.add_argument_group("performance")
    engine.add_argument("--batch-size", type=int, default=8, help="images per batch (default %(default)s)")
    engine.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    engine.add_argument("--num-processes", type=int, default=None,
                        help="worker processes, one per GPU (default: every visible GPU when --device is auto or "
                        "cuda, else 1); not with accelerate launch, which starts its own")
    engine.add_argument("--chunk-size", type=int, default=256,
                        help="rows per resumable unit of work (default %(default)s)")
    stored = parser.add_argument_group("stored files")
    stored.add_argument("--image-format", choices=("png", "webp", "jpeg"), default=None,
                        help="encoding of the photo columns; mask and normals stay PNG (config: output.image_format)")
    stored.add_argument("--png-codec", choices=("fpng", "zlib"), default=None,
                        help="PNG writer: fpng (default; about 10x faster, files about 17%% larger) or zlib "
                        "(config: output.png_codec; output.png_compress_level sets the zlib level)")
    stored.add_argument("--image-quality", type=int, default=None,
                        help="webp/jpeg quality 1-100 (config: output.image_quality, default 95)")
    stored.add_argument("--layout", choices=("full", "compact"), default=None,
                        help="full stores every image column; compact leaves out degraded and composite (about half "
                        "the bytes), which relight_datasets.regenerate_pairs remakes bit for bit (config: "
                        "output.layout, default full)")
    stored.add_argument("--max-shard-size", default="500MB", help="target Parquet shard size (default %(default)s)")
    stored.add_argument("--min-shards", type=int, default=8, metavar="N",
                        help="at least N shards per split (fewer only for fewer rows), so that every DataLoader "
                        "worker of a streaming reader has shards to read (default %(default)s)")
    remote = parser.add_argument_group("Hugging Face Hub")
    remote.add_argument("--push-to-hub", metavar="ORG/NAME", default=None,
                        help="upload the dataset to this Hub dataset repo while building (each shard in its own "
                        "commit once its rows are done, so local disk holds only a few) and tag the final commit with "
                        "the dataset version")
    remote.add_argument("--private", action="store_true", help="create the Hub repo as private")
    remote.add_argument("--license", default=None, metavar="ID",
                        help="the dataset's licence as a Hub licence id (e.g. cc-by-4.0); default: the source's when "
                        "known (FFHQ: cc-by-nc-sa-4.0), else unknown (config: output.license)")
    remote.add_argument("--revision", default=None, help="Hub branch to push to (created if missing)")
    remote.add_argument("--force-push", action="store_true", help="push even if the dataset version is already tagged")
    notify = parser.add_argument_group("failures and messages")
    notify.add_argument("--max-error-rate", type=float, default=0.01, metavar="FRACTION",
                        help="fail (exit 1, nothing published) when more than this share of the attempted images "
                        "fail with processing_error (default %(default)s)")
    notify.add_argument("--quiet", action="store_true", help="no progress bar")
    notify.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    return parser


def parse_size(text: str) -> int:
    """``"500MB"``, ``"2GiB"``, ``"750k"`` or plain bytes -> bytes (K/M/G are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"--max-shard-size {text!r}: expected a size like 500MB or 2GB")
    value = float(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")
    if value < 1024:
        raise ValueError(f"--max-shard-size {text!r}: must be at least 1KB")
    return int(value)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """Dedicated flags become config overrides (applied after --set, so the flag wins)."""
    return as_overrides({"seed": args.seed, "resolution": args.resolution, **model_overrides(args),
                         "recombination.background": args.background, "output.image_format": args.image_format,
                         "output.png_codec": args.png_codec, "output.image_quality": args.image_quality,
                         "output.layout": args.layout, "output.license": args.license})


def _fail(message: str) -> int:
    print(f"relight-build: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _exit_code(error: Exception) -> int | None:
    """Exit code of an error the user can act on (2: the command or its surroundings, 1: the build ran and failed),
    None for anything else (a bug: its traceback is shown)."""
    from .builder.build import BuildFailed, OutputError, WorkerFailed
    from .builder.hub import PushError
    from .builder.sources import SourceError
    from .builder.splits import SplitError
    from .models.loading import ModelUnavailable

    if isinstance(error, ConfigError | SplitError | SourceError | OutputError | PushError | ModelUnavailable | OSError):
        return EXIT_USAGE
    if isinstance(error, BuildFailed | WorkerFailed):
        return EXIT_FAILED
    return None


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}{f' ({error.filename})' if error.filename else ''}"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code: 0 done, 1 the build failed (nothing published, or a worker died),
    2 the command cannot run as given (one line on stderr, its traceback under ``--debug``), 130/143 interrupted."""
    args = build_parser().parse_args(argv)
    from .builder.signals import INTERRUPTED_MESSAGE, BuildInterrupted

    try:
        return _run(args)
    except BrokenPipeError:  # the summary was piped into e.g. `head`, which closed early: not a build failure
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter from failing again at exit
        return 0
    except BuildInterrupted as interrupted:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the build started or during the push
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:
        code = _exit_code(error)
        if code is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"relight-build: error: {_describe(error)}", file=sys.stderr)
        return code


def console_main() -> None:
    """Entry point of ``relight-build`` and ``scripts/build.py``: :func:`main`, then exit with its code. After an
    interrupt (the work in progress is saved by then) the process ends with ``os._exit`` once the streams are
    flushed: Python's own teardown puts the default SIGINT handler back, so a second Ctrl-C landing there would kill
    the process by the signal instead of exiting with 130."""
    code = main()
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _load_config(args: argparse.Namespace):
    try:
        return load_config(args.preset, args.config, [*args.overrides, *_flag_overrides(args)])
    except UnicodeDecodeError:
        raise ConfigError(f"--config {args.config}: not a UTF-8 text file (expected YAML)") from None


def _run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        return _fail(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.chunk_size < 1:
        return _fail(f"--chunk-size must be at least 1, got {args.chunk_size}")
    if not 0 <= args.max_error_rate <= 1:
        return _fail(f"--max-error-rate must be between 0 and 1, got {args.max_error_rate}")
    if args.min_shards < 1:
        return _fail(f"--min-shards must be at least 1, got {args.min_shards}")
    from .builder.splits import parse_splits

    config = _load_config(args)
    splits = parse_splits(args.splits)
    try:
        max_shard_bytes = parse_size(args.max_shard_size)
    except ValueError as error:
        return _fail(str(error))

    import torch

    from .builder.build import BuildOptions, build_dataset
    from .builder.hub import PushOptions, check_push_target
    from .builder.report import summary

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return _fail(f"--device {args.device}: CUDA is not available on this machine (use --device cpu)")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    processes = args.num_processes
    if processes is not None and (processes < 1 or (launched and processes > 1)):
        return _fail(f"--num-processes {processes}: must be at least 1, and 1 under accelerate launch")
    if processes is None:
        gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") and not launched else 0
        processes = max(1, gpus)
    if args.push_to_hub:
        check_push_target(args.push_to_hub)
    logging.basicConfig(format="relight-build: %(message)s", level=logging.WARNING)
    logging.getLogger("relight_datasets").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.quiet:
        import datasets
        from transformers.utils import logging as transformers_logging

        from .models.loading import disable_diffusers_progress_bars

        transformers_logging.disable_progress_bar()  # "Loading weights" bars
        disable_diffusers_progress_bars()  # "Loading pipeline components" bars
        datasets.disable_progress_bars()  # "Saving the dataset" of a multi-process build
    options = BuildOptions(source=args.source, out=args.out, limit=args.limit, batch_size=args.batch_size,
                           device=args.device, overwrite=args.overwrite, progress=not args.quiet,
                           chunk_size=args.chunk_size, splits=splits, max_shard_bytes=max_shard_bytes,
                           num_processes=processes, max_error_rate=args.max_error_rate, min_shards=args.min_shards,
                           hub_repo=args.push_to_hub,
                           push=PushOptions(args.push_to_hub, args.private, args.revision, args.force_push)
                           if args.push_to_hub else None)
    report = build_dataset(options, config)
    if report is None:  # a non-main process of a multi-process launch: the main process reports
        return 0
    if report.get("already_complete"):
        print(f"relight-build: {args.out} already holds this build ({report['processed']} rows, config "
              f"{report['config_fingerprint']}); nothing to do (--overwrite rebuilds it)")
    else:
        print(summary(report, args.out))
    if args.push_to_hub:
        print(f"relight-build: {_push_finished(args, report)}")
    return 0


def _push_finished(args: argparse.Namespace, report: dict) -> str:
    """The line saying where the build was pushed: by the streaming upload, or for a build that was already complete,
    by uploading its folder; one whose shards went to the Hub as it ran keeps none to upload again."""
    from .builder.hub import PushError, push_to_hub

    tag = f"tag v{report['version']}"
    if report.get("commit_url"):
        return f"pushed to {report['commit_url']} ({tag})"
    streamed = report.get("hub")
    if streamed is None:
        url = push_to_hub(args.out, args.push_to_hub, private=args.private, revision=args.revision,
                          allow_existing_version=args.force_push)
        return f"pushed to {url} ({tag})"
    target = streamed["repo"] + (f" (branch {streamed['revision']})" if streamed["revision"] else "")
    if streamed != {"repo": args.push_to_hub, "revision": args.revision}:
        raise PushError(f"{args.out}: this build was uploaded to {target} as it ran and keeps no shards to push "
                        "elsewhere; --overwrite rebuilds it")
    return f"already pushed to {target} ({tag}) as it was built; nothing to push"

if __name__ == "__main__":
    sys.exit(main())
