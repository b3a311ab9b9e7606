"""Stage 2: albedo (lighting removed from the person)."""

from __future__ import annotations

import torch

from ..ops.albedo import blend_with_original, lab_albedo, retinex_albedo
from ..ops.color import float_to_uint8, uint8_to_float
from ..rng import row_generator, uniform
from .base import Stage, group_by_shape, to_uint8_array


class AlbedoStage(Stage):
    """Albedo ``H x W x 3`` uint8, black outside the mask, by mask-aware multi-scale Retinex (default) or LAB/bilateral,
    with ``albedo_blend_ratio`` ~ U(``albedo.blend_range``) of the original image blended back in."""

    name = "albedo"
    outputs = ("albedo", "albedo_method", "albedo_blend_ratio")

    def process(self, batch, rows, outputs, skip, rank):
        cfg = self.config.albedo
        device = self.device(rank)
        images = [to_uint8_array(v) if v is not None else None for v in batch["input"]]
        masks = [to_uint8_array(v) if v is not None else None for v in batch["mask"]]
        for (h, w), group in group_by_shape(images, rows).items():
            image = uint8_to_float([images[r] for r in group], device)
            mask = (uint8_to_float([masks[r] for r in group], device) > 0.5).float()
            scale = self.scale(h, w)
            if cfg.method == "retinex":
                albedo = retinex_albedo(image, mask, [s * scale for s in cfg.retinex_scales], cfg.color_balance_percent,
                                        cfg.retinex_color)
            else:
                albedo = lab_albedo(image, mask, cfg.bilateral_diameter, cfg.bilateral_sigma_color,
                                    cfg.bilateral_sigma_space * scale, cfg.color_balance_percent)
            ratios = [uniform(row_generator(self.config.seed, batch["image_id"][r], self.name), *cfg.blend_range)
                      for r in group]
            blended = blend_with_original(albedo, image * mask, torch.tensor(ratios))
            for row, ratio, encoded in zip(group, ratios, float_to_uint8(blended), strict=True):
                outputs["albedo"][row] = encoded
                outputs["albedo_method"][row] = cfg.method
                outputs["albedo_blend_ratio"][row] = ratio
