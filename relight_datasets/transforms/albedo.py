"""Stage 2: albedo (lighting removed from the person)."""

from __future__ import annotations

import torch

from ..ops.albedo import blend_with_original, lab_albedo, retinex_albedo
from ..relighting import quantize_to_8bit
from ..rng import row_generator, uniform
from .base import DeviceBatch, Stage

ALBEDO_STREAM = "albedo"
"""Name of the per-row random stream the blend ratio is drawn from (:func:`relight_datasets.rng.row_generator`)."""


class AlbedoStage(Stage):
    """Albedo ``3 x H x W``, black outside the mask, by mask-aware multi-scale Retinex (default) or LAB/bilateral,
    with ``albedo_blend_ratio`` ~ U(``albedo.blend_range``) of the original image blended back in."""

    name = "albedo"
    inputs = ("input", "mask")
    outputs = ("albedo", "albedo_method", "albedo_blend_ratio")

    def forward(self, batch: DeviceBatch, rank: int | None) -> dict[str, torch.Tensor | list]:
        cfg = self.config.albedo
        image = batch.images["input"]
        mask = (batch.images["mask"] > 0.5).to(image.dtype)
        scale = self.scale(*image.shape[-2:])
        if cfg.method == "retinex":
            albedo = retinex_albedo(image, mask, [s * scale for s in cfg.retinex_scales], cfg.color_balance_percent,
                                    cfg.retinex_color, cfg.robust_tau, cfg.robust_iterations)
        else:
            albedo = lab_albedo(image, mask, cfg.bilateral_diameter, cfg.bilateral_sigma_color,
                                cfg.bilateral_sigma_space * scale, cfg.color_balance_percent)
        ratios = [uniform(row_generator(self.config.seed, image_id, ALBEDO_STREAM), *cfg.blend_range)
                  for image_id in batch.image_ids]
        ratio = torch.tensor(ratios, device=image.device, dtype=image.dtype)
        blended = blend_with_original(albedo, image * mask, ratio)
        return {"albedo": quantize_to_8bit(blended), "albedo_method": [cfg.method] * len(batch),
                "albedo_blend_ratio": ratios}
