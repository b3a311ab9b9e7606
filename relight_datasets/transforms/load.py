"""Stage 0: decode the source image into an RGB uint8 array no larger than the configured resolution."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import Stage, ThreadPool

MIN_SIDE = 32
"""Images whose shorter side, after EXIF rotation and the downscale to the build resolution, is below this many
pixels (or below the resolution, when that is smaller) are skipped as ``too_small``: a 1000x40 banner at resolution 128
would otherwise reach the stages 5 px high."""


class ImageSkip(Exception):
    """An input that cannot be used; ``reason`` is the skip reason recorded in the build report."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency flattened onto white, 16-bit and float data rescaled, CMYK converted."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        gray = np.clip(np.rint(data / peak * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(value, resolution: int) -> np.ndarray:
    """An undecoded image (``{"bytes"|"path"}`` dict, PIL image, bytes or path) -> ``H x W x 3`` uint8 RGB with the
    EXIF orientation applied, the first frame of animations, and the long side at most ``resolution``.
    Raises :class:`ImageSkip` for anything unusable (``too_small``: see ``MIN_SIDE``)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise ImageSkip("missing_image")
    try:
        if isinstance(value, Image.Image):
            image = value
        else:
            image = Image.open(io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value)
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; checked here rather than by turning the warning
        # into an error, because warning filters are process-wide and images are decoded on several threads.
        if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = _to_rgb(image)
    except FileNotFoundError:
        raise ImageSkip("missing_file", str(value)) from None
    except Image.DecompressionBombError:
        raise ImageSkip("decompression_bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageSkip("unreadable_image", f"{type(error).__name__}: {error}") from None
    width, height = rgb.size
    factor = min(1.0, resolution / max(width, height))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if min(size) < min(MIN_SIDE, resolution):
        at = "" if size == rgb.size else f" ({size[0]}x{size[1]} at resolution {resolution})"
        raise ImageSkip("too_small", f"{width}x{height}{at}")
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(rgb)


class LoadStage(Stage):
    """Decodes ``input`` into an RGB uint8 array on the host, one image per core (Pillow's codecs release the GIL);
    unusable files become skipped rows with a named reason. It is the host side of the pipeline: the pipeline copies
    what it decodes to the device (:meth:`DeviceBatch.upload <relight_datasets.transforms.base.DeviceBatch.upload>`),
    and as a ``Dataset.map`` function it returns them as RGB PIL images."""

    name = "decode"
    outputs = ("input",)

    def __init__(self, config, device="cpu"):
        super().__init__(config, device)
        self.pool = ThreadPool()

    def _decode(self, value) -> np.ndarray | ImageSkip:
        try:
            return decode_image(value, self.config.resolution)
        except ImageSkip as problem:
            return problem

    def decode(self, values: list) -> list[np.ndarray | ImageSkip]:
        """Undecoded images -> ``H x W x 3`` uint8 arrays, or the :class:`ImageSkip` saying why not."""
        return self.pool.map(self._decode, values)

    def map_rows(self, batch, rows, outputs, skip, rank):
        for row, result in zip(rows, self.decode([batch["input"][row] for row in rows]), strict=True):
            if isinstance(result, ImageSkip):
                skip[row] = result.reason
            else:
                outputs["input"][row] = Image.fromarray(result)
