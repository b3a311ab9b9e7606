"""Stages 3, 3.5 and 4 in one: the person under a new light, composited over the background, and the labels that
describe the light (:func:`relight_datasets.relighting.relight`)."""

from __future__ import annotations

import torch

from ..relighting import DEGRADATION_STREAM, LABEL_COLUMNS, draw_light, relight
from ..rng import row_generator
from .base import DeviceBatch, Stage


class RelightStage(Stage):
    """``degraded`` (the albedo relit, black outside the mask) and ``composite`` (it over the background), both
    ``3 x H x W`` on the 8-bit grid, and the lighting labels (:data:`~relight_datasets.relighting.LABEL_SHAPES`:
    setup, each light's direction, colour and intensity, the SH irradiance, exposure, ..., and the instruction).
    Each row's light is drawn from its own ``(seed, image_id, "degradation")`` stream."""

    name = "relight"
    inputs = ("input", "mask", "albedo", "normals")
    outputs = ("degraded", "composite", *LABEL_COLUMNS)

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        lights = [draw_light(self.config, row_generator(self.config.seed, image_id, DEGRADATION_STREAM))
                  for image_id in batch.image_ids]
        images = batch.images
        degraded, result, labels = relight(images["albedo"], images["normals"], images["mask"], images["input"], lights,
                                           self.config, quantize=True)
        return {"degraded": degraded, "composite": result,
                **{name: [label[name] for label in labels] for name in LABEL_COLUMNS}}
