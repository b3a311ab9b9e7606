"""Stage 3.5: composite the relit person over the background."""

from __future__ import annotations

from ..ops.color import float_to_uint8, uint8_to_float
from ..ops.composite import background_plate, composite, feathered_alpha
from .base import Stage, group_by_shape, to_uint8_array


class RecombinationStage(Stage):
    """``composite = degraded * alpha + background * (1 - alpha)``, alpha the mask feathered inwards by
    ``recombination.feather_px``; the background is the ``original`` input (default), flat ``gray`` or ``black``.
    In ``original`` mode every pixel outside the mask equals the input exactly."""

    name = "recombination"
    outputs = ("composite",)

    def process(self, batch, rows, outputs, skip, rank):
        cfg = self.config.recombination
        device = self.device(rank)
        images = [to_uint8_array(v) if v is not None else None for v in batch["input"]]
        for (h, w), group in group_by_shape(images, rows).items():
            image = uint8_to_float([images[r] for r in group], device)
            degraded = uint8_to_float([to_uint8_array(batch["degraded"][r]) for r in group], device)
            mask = uint8_to_float([to_uint8_array(batch["mask"][r]) for r in group], device)
            alpha = feathered_alpha(mask, cfg.feather_px * self.scale(h, w))
            result = composite(degraded, background_plate(image, cfg.background), alpha)
            for row, encoded in zip(group, float_to_uint8(result), strict=True):
                outputs["composite"][row] = encoded
