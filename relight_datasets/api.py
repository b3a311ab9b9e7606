"""Python API: ``relight(data, ...) -> datasets.Dataset``, the build's stages run through ``Dataset.map``.

The same rows as ``relight-build`` (same config, same ids ⇒ same pixels and metadata), without the output folder:
the result is an ordinary ``datasets.Dataset`` with the build's features, ready for ``push_to_hub``,
``save_to_disk`` or training. :func:`source_rows` and :func:`stage_features` let a caller run the stages one
``Dataset.map`` at a time instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import multiprocess
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageOps

from . import __version__
from .builder.features import FEATURES, REGENERATED_COLUMNS
from .builder.pipeline import RelightPipeline, run_isolating_failures
from .builder.sources import SOURCE_FEATURES
from .cli import as_overrides
from .config import load_config
from .transforms.base import SKIP_COLUMN, Stage

logger = logging.getLogger(__name__)

OUTPUT_FEATURES = Features({**FEATURES, SKIP_COLUMN: Value("string")})
"""What the pipeline's ``Dataset.map`` writes: every dataset column, and ``skip_reason`` ("" for a kept row)."""
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}
"""PIL modes PNG stores losslessly; images in other modes (CMYK, F, ...) are passed on as TIFF."""


def _pil_row(image: Image.Image) -> tuple[str, dict]:
    """A PIL image -> (id, undecoded image). The id is 16 hex digits of the SHA-256 of the mode, size and pixels
    (the same image gets the same id in any list, in any run). The image is stored losslessly with its EXIF
    orientation applied (PNG does not keep the tag)."""
    upright = ImageOps.exif_transpose(image)
    digest = hashlib.sha256(f"{upright.mode} {upright.size}".encode() + upright.tobytes()).hexdigest()
    buffer = io.BytesIO()
    upright.save(buffer, format="PNG" if upright.mode in PNG_MODES else "TIFF")
    return digest[:16], {"bytes": buffer.getvalue(), "path": None}


def _list_rows(items: Sequence, source: str) -> Dataset:
    """Rows for a list of PIL images and/or paths: a path's id is the path as given, an image's id a pixel hash."""
    ids, images = [], []
    for item in items:
        if isinstance(item, Image.Image):
            image_id, image = _pil_row(item)
        elif isinstance(item, (str, os.PathLike)):
            image_id, image = Path(item).as_posix(), {"bytes": None, "path": str(Path(item).resolve())}
        else:
            raise TypeError(f"relight: cannot read an image from a {type(item).__name__} (expected a PIL image or a "
                            "path)")
        ids.append(image_id)
        images.append(image)
    return Dataset.from_dict({"image_id": ids, "source": [source] * len(ids), "input": images},
                             features=SOURCE_FEATURES)


def _dataset_rows(data: Dataset, image_column: str | None, id_column: str | None, source: str) -> Dataset:
    """Rows for a ``datasets.Dataset``: its image column undecoded, ids from ``id_column`` or the row index."""
    images = [name for name, feature in data.features.items() if isinstance(feature, ImageFeature)]
    if image_column is None:
        if not images:
            raise ValueError(f"relight: the dataset has no image column (columns: {', '.join(data.column_names)}); "
                             "cast one with datasets.Image() or pass image_column=")
        image_column = images[0]
    elif image_column not in images:
        raise ValueError(f"relight: image_column {image_column!r} is not a datasets.Image column of the dataset "
                         f"(image columns: {', '.join(images) or 'none'})")
    if id_column is not None and id_column not in data.column_names:
        raise ValueError(f"relight: id_column {id_column!r} is not a column of the dataset "
                         f"(columns: {', '.join(data.column_names)})")
    rows = data.with_format(None).select_columns([image_column] + ([id_column] if id_column else []))
    if id_column is None:
        prefix = f"{data.split}/" if data.split else ""
        rows = rows.add_column("image_id", [f"{prefix}{index}" for index in range(len(rows))])
    else:
        rows = rows.rename_column(id_column, "image_id")
    rows = rows.add_column("source", [source] * len(rows)).rename_column(image_column, "input")
    return rows.select_columns(list(SOURCE_FEATURES)).cast(SOURCE_FEATURES)  # ids as strings, images undecoded


def source_rows(data: Dataset | Sequence[Image.Image | str | os.PathLike], *, image_column: str | None = None,
                id_column: str | None = None, source: str = "python") -> Dataset:
    """The pipeline's input rows: ``image_id`` (string), ``source`` (string) and ``input`` (an undecoded
    ``datasets.Image``: decoding, EXIF rotation and resizing happen in the first stage, so an unreadable image
    becomes a skipped row rather than an error here).

    ``data``: a ``datasets.Dataset`` whose image column is ``image_column`` or else its first ``datasets.Image``
    feature, or a list of PIL images and/or paths. ``image_id``: the values of ``id_column`` as strings; else, for
    a dataset, the row index (``"<split>/<index>"`` when the dataset has a split, as the CLI names the rows of a Hub
    source); for a path, the path as given (relative paths give the ids the CLI gives a folder's files); for a PIL
    image, a hash of its pixels. Each row's random draws derive from its id, so stable ids give stable rows.
    ``source`` fills the ``source`` column (the CLI writes ``folder`` or ``csv`` for a local source, no path).
    """
    if isinstance(data, Dataset):
        rows = _dataset_rows(data, image_column, id_column, source)
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if image_column is not None or id_column is not None:
            raise ValueError("relight: image_column and id_column apply to a datasets.Dataset, not to a list")
        rows = _list_rows(data, source)
    else:
        raise TypeError(f"relight: expected a datasets.Dataset or a list of PIL images or paths, got a "
                        f"{type(data).__name__}")
    if len(rows) == 0:
        raise ValueError("relight: no images to process (the input is empty)")
    return rows


def stage_features(stage: Stage) -> Features:
    """The features of the columns ``stage`` writes: its ``outputs`` typed as in the build's
    :data:`~relight_datasets.builder.features.FEATURES` (images as ``datasets.Image``, so the next stage gets them
    decoded), and ``skip_reason``. Chain the stages with
    ``ds.map(stage, batched=True, with_rank=True, features=Features({**ds.features, **stage_features(stage)}))``.
    """
    return Features({**{name: FEATURES[name] for name in stage.outputs}, SKIP_COLUMN: Value("string")})


class _MapFunction:
    """The pipeline as the function of one ``Dataset.map``. A batch that raises is retried row by row, so one image
    that breaks a stage costs only its own row (``skip_reason = "processing_error"``), as in a CLI build.
    ``torch_threads``: torch's CPU threads in each worker process (None: leave the process's setting)."""

    def __init__(self, pipeline: RelightPipeline, torch_threads: int | None):
        self.pipeline = pipeline
        self.torch_threads = torch_threads

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        if self.torch_threads is not None and torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return run_isolating_failures(self.pipeline, batch, rank)[0]


def _default_num_proc(device: str) -> int:
    """One process per visible GPU when ``device`` is ``auto`` or ``cuda`` and there are several, else 1 (the GPUs
    are counted through NVML where it is available, without initialising CUDA in this process)."""
    gpus = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    return max(1, gpus)


@contextmanager
def spawned_map_workers() -> Iterator[None]:
    """Within the block, ``Dataset.map(num_proc=...)`` spawns its worker processes instead of forking them (it
    uses ``multiprocess``'s default start method, fork on Linux). A forked child of a process that has run torch's
    GNU OpenMP threads hangs in its first parallel region, and one forked after CUDA was initialised cannot use
    CUDA; a spawned child starts clean. The previous start method is restored after."""
    before = multiprocess.get_start_method(allow_none=True)
    multiprocess.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocess.set_start_method(before, force=True)


def _map_fingerprint(rows: Dataset, config_fingerprint: str, device: str) -> str:
    """The ``Dataset.map`` cache key: the input rows, the config, the package version and the device."""
    key = json.dumps([rows._fingerprint, config_fingerprint, __version__, device])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _split_skipped(mapped: Dataset) -> tuple[Dataset, Dataset]:
    """(kept rows with the build's features, skipped rows' ``image_id`` and ``skip_reason``); logs the counts."""
    reasons = list(mapped[SKIP_COLUMN])
    kept = [index for index, reason in enumerate(reasons) if not reason]
    skipped = [index for index, reason in enumerate(reasons) if reason]
    counts = Counter(reasons[index] for index in skipped)
    if counts:
        summary = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
        logger.warning("relight: %d of %d images processed (skipped: %s)", len(kept), len(reasons), summary)
    else:
        logger.info("relight: %d of %d images processed", len(kept), len(reasons))
    pairs = (mapped.select(kept) if skipped else mapped).remove_columns(SKIP_COLUMN)
    return pairs, mapped.select(skipped).select_columns(["image_id", SKIP_COLUMN])


def relight(
    data: Dataset | Sequence[Image.Image | str | os.PathLike],
    *,
    preset: str = "mvp",
    config: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, object] = (),
    seed: int | None = None,
    resolution: int | None = None,
    segmenter: str | None = None,
    normals: str | None = None,
    caption: str | None = None,
    dtype: str | None = None,
    background: str | None = None,
    device: str = "auto",
    num_proc: int | None = None,
    batch_size: int = 8,
    image_column: str | None = None,
    id_column: str | None = None,
    source: str = "python",
    load_from_cache_file: bool | None = None,
    return_skipped: bool = False,
) -> Dataset | tuple[Dataset, Dataset]:
    """Relighting pairs for ``data``, as a ``datasets.Dataset`` with the build's columns and features.

    The rows are those ``relight-build`` writes for the same images, ids and config. Images that cannot be used
    (unreadable, too small, no person found, a stage failed on them) are left out; their counts per reason are
    logged (a warning) and, with ``return_skipped``, returned.

    Args:
        data: a ``datasets.Dataset`` with an image column (any format: numpy, torch ... are read as plain
            values), or a list of PIL images and/or image paths. See :func:`source_rows` for the row ids.
        preset: config preset, ``mvp`` or ``full`` (CLI ``--preset``).
        config: YAML file merged over the preset (CLI ``--config``).
        overrides: config values set last, as ``["dotted.key=YAML value", ...]`` (CLI ``--set``) or as a mapping
            ``{"dotted.key": value}``.
        seed: global random seed (CLI ``--seed``; config ``seed``).
        resolution: long side of the images in pixels; larger images are downscaled (CLI ``--resolution``).
        segmenter: ``auto``, ``sam3``, ``sam2`` or ``classical`` (CLI ``--segmenter``).
        normals: ``auto``, ``depth`` or ``classical`` (CLI ``--normals``).
        caption: ``none`` or ``vlm`` (CLI ``--caption``; the model is ``caption.model``, CLI ``--caption-model``).
        dtype: model dtype, ``auto``, ``float32`` or ``bfloat16`` (CLI ``--dtype``).
        background: ``original``, ``gray`` or ``black`` behind the relit person (CLI ``--background``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` (CLI ``--device``).
        num_proc: worker processes of the ``Dataset.map`` (CLI ``--num-processes``). Default: one per visible GPU
            when ``device`` is ``auto``/``cuda`` and there are several, else 1. With 1 the map runs in this
            process; with more, in spawned processes (see :func:`spawned_map_workers`): process ``rank`` uses
            ``cuda:<rank>`` and loads its models once, on its first batch. On a CPU the cores are shared out.
        batch_size: images per batch (rows do not depend on it).
        image_column: the dataset's image column (default: its first ``datasets.Image`` feature).
        id_column: the dataset's column of row ids (default: the row index; see :func:`source_rows`).
        source: value of the ``source`` column.
        load_from_cache_file: ``Dataset.map``'s switch (default: ``datasets``' caching setting). The cache key is
            the input rows' fingerprint, the config fingerprint, the package version and ``device``, so a
            changed config or a new release never reads stale rows; after editing the package's code in place,
            pass False.
        return_skipped: also return a dataset of the skipped rows' ``image_id`` and ``skip_reason``.

    Returns:
        The relit rows, or ``(rows, skipped)`` with ``return_skipped``.

    Raises:
        ConfigError: an invalid preset, config file or override (one line naming the key).
        ValueError: a dataset without an image column, an empty input, or a bad ``num_proc``/``batch_size``/device.
    """
    if batch_size < 1:
        raise ValueError(f"relight: batch_size must be at least 1, got {batch_size}")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"relight: num_proc must be at least 1, got {num_proc}")
    if device.startswith("cuda") and torch.cuda.device_count() == 0:
        raise ValueError(f"relight: device {device!r}: CUDA is not available on this machine (use device='cpu')")
    settings = list(as_overrides(overrides)) if isinstance(overrides, Mapping) else list(overrides)
    settings += as_overrides({"seed": seed, "resolution": resolution, "segmentation.method": segmenter,
                              "normals.method": normals, "caption.method": caption, "dtype": dtype,
                              "recombination.background": background})
    build_config = load_config(preset, config, settings)
    rows = source_rows(data, image_column=image_column, id_column=id_column, source=source)
    processes = min(num_proc or _default_num_proc(device), len(rows))
    torch_threads = max(1, (os.cpu_count() or 1) // processes) if processes > 1 else None
    with spawned_map_workers() if processes > 1 else nullcontext():
        mapped = rows.map(
            _MapFunction(RelightPipeline(build_config, device), torch_threads),
            batched=True,
            with_rank=True,
            batch_size=batch_size,
            num_proc=processes if processes > 1 else None,
            features=OUTPUT_FEATURES,
            remove_columns=rows.column_names,
            new_fingerprint=_map_fingerprint(rows, build_config.fingerprint(), device),
            load_from_cache_file=load_from_cache_file,
            desc="Relighting",
        )
    pairs, skipped = _split_skipped(mapped)
    if build_config.output.layout == "compact":
        pairs = pairs.remove_columns(list(REGENERATED_COLUMNS))
    return (pairs, skipped) if return_skipped else pairs


def _unit_to_pil(image: torch.Tensor) -> Image.Image:
    """``3 x H x W`` float on the 8-bit grid -> the RGB PIL image it was made from."""
    return Image.fromarray(image.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


class RegeneratedPairs:
    """``Dataset.map`` function of :func:`regenerate_pairs` (picklable: a class, not a closure): a batch of decoded
    rows (all of one build seed) -> its ``degraded`` and ``composite`` as RGB PIL images."""

    def __init__(self, config):
        self.config = config

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        from .transforms import RelightOnTheFly

        seeds = set(batch["seed"])
        if len(seeds) != 1:
            raise ValueError(f"regenerate_pairs: rows of several builds (seeds {sorted(seeds)}) in one batch")
        relit = RelightOnTheFly(self.config, seed=seeds.pop())(batch)
        return {name: [_unit_to_pil(image) for image in relit[name]] for name in REGENERATED_COLUMNS}


def regenerate_pairs(dataset: Dataset, config=None, *, batch_size: int = 16, num_proc: int | None = None) -> Dataset:
    """The rows of a ``compact`` build (``--layout compact``) with ``degraded`` and ``composite`` put back, in the
    column order of a ``full`` build: bit for bit what the full build stores, for PNG builds.

    ``config``: the build's config (the card's ``relight_datasets.config`` dict, a ``BuildConfig`` or a preset name;
    None = the ``mvp`` preset); each row's ``seed`` column gives the build seed. The light of each row is redrawn
    from ``(seed, image_id)`` at epoch 0 by :class:`~relight_datasets.transforms.RelightOnTheFly` (the build's own
    relighting function), from the stored ``albedo``, ``normals``, ``mask`` and ``input``. A full build's rows
    come back with the two columns recomputed (equal to the stored ones)."""
    needed = ("image_id", "seed", "input", "mask", "albedo", "normals")
    missing = [name for name in needed if name not in dataset.features]
    if missing:
        raise ValueError(f"regenerate_pairs: the dataset lacks {', '.join(missing)} (not a relight-datasets build?)")
    if any(name in dataset.features for name in REGENERATED_COLUMNS):
        dataset = dataset.remove_columns([name for name in REGENERATED_COLUMNS if name in dataset.features])
    features = Features({**dataset.features, **{name: ImageFeature() for name in REGENERATED_COLUMNS}})
    regenerated = dataset.map(RegeneratedPairs(config), batched=True, batch_size=batch_size, num_proc=num_proc,
                              features=features, desc="Regenerating degraded / composite")
    order = [name for name in FEATURES if name in regenerated.features]
    return regenerated.select_columns(order + [name for name in regenerated.column_names if name not in order])
