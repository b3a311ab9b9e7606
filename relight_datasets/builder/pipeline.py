"""The whole per-batch pipeline: decode -> segment -> normals -> albedo -> relight -> caption -> encode. One object, one
``Dataset.map`` pass.

Images cross between host and device twice: each decoded input is copied to the device once (uint8), rows of one
size are grouped once, every stage works on device tensors (each stored image column rounded to the 8-bit grid on
the device, so later stages consume exactly what is stored), and each stored image but ``input`` (already on the
host) is copied back once, as uint8, to be encoded."""

from __future__ import annotations

import io
import logging
import time
from functools import cache, partial

import numpy as np
import torch
from PIL import Image

from ..config import BuildConfig
from ..transforms import AlbedoStage, CaptionStage, LoadStage, NormalsStage, RelightStage, SegmentationStage
from ..transforms.base import (
    SKIP_COLUMN,
    TIMING_LOCK,
    DeviceBatch,
    ThreadPool,
    download_images,
    group_by_shape,
    skip_reasons,
)
from ..transforms.load import ImageSkip
from .features import FEATURES, IMAGE_COLUMNS, REGENERATED_COLUMNS

logger = logging.getLogger(__name__)

PROCESSING_ERROR = "processing_error"
"""Skip reason of a row on which a stage raised."""
LOSSLESS_COLUMNS = ("mask", "normals")
"""Always PNG: they are data (a mask, a vector field), not photographs."""


COMPACT_NORMALS_LEVEL = 3
"""zlib level of a compact build's normals (at 512 px: 110 kB against fpng's 141 kB, 16 ms against 2 ms)."""


@cache
def fpng_encoder():
    """``fpng.from_ndarray`` (``H x W x 3`` uint8 -> PNG bytes), or a clear error when the package is missing."""
    try:
        import fpng
    except ImportError as error:
        raise RuntimeError("output.png_codec=fpng needs the fpng package (`pip install fpng`); "
                           "or set output.png_codec=zlib") from error
    return fpng.from_ndarray


def encode_image(array: np.ndarray | None, image_format: str = "png", quality: int = 95,
                 compress_level: int = 1, png_codec: str = "zlib") -> dict | None:
    """uint8 ``H x W x 3`` (RGB) or ``H x W`` (mode L) -> ``{"bytes": ..., "path": None}`` for ``datasets.Image``;
    ``image_format`` png (lossless), webp or jpeg (``quality`` 1-100). PNGs are written by zlib at
    ``compress_level``, or for RGB with ``png_codec="fpng"`` by fpng (about 10x faster, files about 17 % larger;
    it writes RGB/RGBA only, so masks stay zlib). None stays None (a skipped row)."""
    if array is None:
        return None
    if image_format == "png" and png_codec == "fpng" and array.ndim == 3:
        return {"bytes": fpng_encoder()(np.ascontiguousarray(array)), "path": None}
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if image_format == "png":
        image.save(buffer, format="PNG", compress_level=compress_level)
    elif image_format == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=4)
    else:
        image.save(buffer, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return {"bytes": buffer.getvalue(), "path": None}


class RelightPipeline:
    """Callable for ``Dataset.map(pipeline, batched=True, with_rank=True)``: source rows in, dataset rows out.

    Rows that cannot be processed come out with their ``skip_reason`` set and empty images; the builder counts and
    drops them. ``timings`` accumulates seconds per stage (``decode`` includes the copy to the device, ``encode``
    the copy back) in this process.
    """

    def __init__(self, config: BuildConfig, device: str = "auto", encode_threads: int | None = None):
        self.config = config
        self.loader = LoadStage(config, device)
        self.stages = [self.loader, *(cls(config, device) for cls in (SegmentationStage, NormalsStage, AlbedoStage,
                                                                    RelightStage, CaptionStage))]
        if config.output.png_codec == "fpng":
            fpng_encoder()  # a missing package fails here, before any row is processed
        self.encoder = ThreadPool(encode_threads)
        self.encode_seconds = 0.0

    @property
    def stored_images(self) -> tuple[str, ...]:
        """The image columns this build stores (a ``compact`` layout leaves out :data:`REGENERATED_COLUMNS`, which
        are then neither copied back nor encoded)."""
        dropped = REGENERATED_COLUMNS if self.config.output.layout == "compact" else ()
        return tuple(name for name in IMAGE_COLUMNS if name not in dropped)

    def prepare(self, rank: int | None = None) -> None:
        """Load every stage's models now (once per process and device), so a model that cannot load fails before
        any row is processed."""
        for stage in self.stages:
            stage.prepare(rank)

    @property
    def models(self) -> dict[str, dict]:
        """``{stage name: description}`` of the stages that run a model (or fell back from one)."""
        return {stage.name: info for stage in self.stages if (info := stage.describe())}

    @property
    def timings(self) -> dict[str, float]:
        return {**{stage.name: stage.seconds for stage in self.stages}, "encode": self.encode_seconds}

    def _encode(self, columns: dict[str, list]) -> dict[str, list]:
        """Every image of every column encoded on the thread pool (zlib and the lossy codecs release the GIL): masks
        and normals as PNG, photo columns in ``output.image_format``. A ``compact`` build writes the normals with
        zlib at level :data:`COMPACT_NORMALS_LEVEL` or more, whatever ``output.png_codec``: smooth images that zlib
        stores in about a quarter fewer bytes than fpng, for a few milliseconds more per image."""
        out = self.config.output
        lossless = partial(encode_image, compress_level=out.png_compress_level, png_codec=out.png_codec)
        photo = partial(lossless, image_format=out.image_format, quality=out.image_quality)
        encoders = {name: lossless if name in LOSSLESS_COLUMNS else photo for name in columns}
        if out.layout == "compact" and "normals" in encoders:
            encoders["normals"] = partial(encode_image, png_codec="zlib",
                                          compress_level=max(COMPACT_NORMALS_LEVEL, out.png_compress_level))
        names = list(columns)
        jobs = [(encoders[name], array) for name in names for array in columns[name]]
        encoded = iter(self.encoder.map(lambda job: job[0](job[1]), jobs))
        return {name: [next(encoded) for _ in columns[name]] for name in names}

    def _upload(self, batch: dict[str, list], rank: int | None) -> tuple[list[DeviceBatch], list[str]]:
        """Decode every row not already skipped, and copy each decoded image to the device once, grouped by size.
        Returns the device batches (each with its rows' positions in ``values["row"]``) and the skip reasons."""
        started = time.perf_counter()
        size = len(batch["image_id"])
        skip = skip_reasons(batch, size)
        rows = [row for row in range(size) if not skip[row]]
        decoded: list = [None] * size
        for row, result in zip(rows, self.loader.decode([batch["input"][row] for row in rows]), strict=True):
            if isinstance(result, ImageSkip):
                skip[row] = result.reason
            else:
                decoded[row] = result
        device = self.loader.device(rank)
        shapes = [None if array is None else array.shape for array in decoded]
        groups = [DeviceBatch.upload([str(batch["image_id"][row]) for row in group], [decoded[row] for row in group],
                                     device).add({"row": group})
                  for group in group_by_shape(shapes, [row for row in rows if decoded[row] is not None]).values()]
        with TIMING_LOCK:
            self.loader.seconds += time.perf_counter() - started
        return groups, skip

    def _run_stages(self, group: DeviceBatch, skip: list[str], rank: int | None) -> DeviceBatch:
        """Every stage after decoding on one device batch; rows a stage drops get their reason in ``skip``."""
        for stage in self.stages[1:]:
            outputs = stage.timed_forward(group, rank)
            reasons = outputs.pop(SKIP_COLUMN, None)
            group = group.add(outputs)
            if reasons is not None and any(reasons):
                for row, reason in zip(group.values["row"], reasons, strict=True):
                    skip[row] = reason
                group = group.select([index for index, reason in enumerate(reasons) if not reason])
                if not len(group):
                    break
        return group

    def __call__(self, batch: dict[str, list], rank: int | None = None) -> dict[str, list]:
        groups, skip = self._upload(batch, rank)
        size = len(skip)
        rows = {name: [None] * size for name in FEATURES}
        rows.update(image_id=list(batch["image_id"]), source=list(batch["source"]), seed=[self.config.seed] * size)
        with torch.inference_mode():
            for group in groups:
                group = self._run_stages(group, skip, rank)
                if not len(group):
                    continue
                started = time.perf_counter()
                # the inputs are on the host already; every other image column comes back once, as uint8
                stored = {name: group.host_input if name == "input" else download_images(group.images[name])
                          for name in self.stored_images}
                encoded = self._encode(stored)
                for column, values in [*encoded.items(), *group.values.items()]:
                    if column in rows:
                        for row, value in zip(group.values["row"], values, strict=True):
                            rows[column][row] = value
                with TIMING_LOCK:
                    self.encode_seconds += time.perf_counter() - started
        rows[SKIP_COLUMN] = skip
        return rows


def run_isolating_failures(pipeline: RelightPipeline, batch: dict[str, list],
                           rank: int | None = None) -> tuple[dict[str, list], dict[str, str]]:
    """``pipeline(batch, rank)``; if it raises, row by row, so one image that breaks a stage costs only its own row
    (``skip_reason = "processing_error"``, no images). Returns the columns and ``{image_id: "ErrorType: message"}``
    of the rows that failed. Only ``Exception`` is caught: an interrupt is never turned into failed rows."""
    try:
        return pipeline(batch, rank), {}
    except Exception:  # noqa: BLE001 - isolate the failing row below
        logger.debug("batch failed, retrying row by row", exc_info=True)
    rows, errors = [], {}
    for index in range(len(batch["image_id"])):
        try:
            rows.append(pipeline({name: values[index : index + 1] for name, values in batch.items()}, rank))
        except Exception as error:  # noqa: BLE001 - recorded as a skipped row, with its reason logged
            image_id = batch["image_id"][index]
            logger.warning("%s: skipped (%s: %s)", image_id, type(error).__name__, error)
            errors[image_id] = f"{type(error).__name__}: {error}"
            failed = {name: [None] for name in FEATURES}
            failed.update(image_id=[image_id], source=[batch["source"][index]], seed=[pipeline.config.seed])
            failed[SKIP_COLUMN] = [PROCESSING_ERROR]
            rows.append(failed)
    return {name: [value for row in rows for value in row[name]] for name in rows[0]}, errors
