"""Stage 3: relight the albedo (the "degraded" image: the person under a new light)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..config import DEGRADATION_TYPES, BuildConfig, PatternConfig
from ..ops.color import float_to_uint8, uint8_to_float
from ..ops.filters import gaussian_blur, kernel_size_to_sigma
from ..ops.lighting import lambertian_shading, light_direction, phong_specular
from ..ops.normals import decode_normals
from ..ops.patterns import render_pattern
from ..rng import choice, randint, row_generator, uniform
from .base import Stage, group_by_shape, to_uint8_array

PATTERN_WORKING_SIZE = 256
"""Long side (pixels) at which shadow patterns are drawn and blurred before upsampling; they are smooth anyway."""


@dataclass
class LightingDraw:
    """Everything drawn for one row's new lighting."""

    degradation_type: str
    elevation_deg: float
    azimuth_deg: float
    ambient: float
    pattern: dict | None = None
    specular: dict | None = None
    exposure: float | None = None
    pattern_generator_state: torch.Tensor | None = field(default=None, repr=False)

    @property
    def light(self) -> tuple[float, float, float]:
        return light_direction(self.elevation_deg, self.azimuth_deg)

    def params(self) -> dict:
        """The ``degradation_params`` record: every drawn value not stored in its own column."""
        return {"elevation_deg": self.elevation_deg, "azimuth_deg": self.azimuth_deg, "exposure": self.exposure,
                "pattern": self.pattern, "specular": self.specular}


def _draw_pattern(generator: torch.Generator, cfg: PatternConfig) -> dict | None:
    if not cfg.families or uniform(generator, 0.0, 1.0) >= cfg.probability:
        return None
    low, high = cfg.blur_kernel_px
    return {
        "family": choice(generator, list(cfg.families)),
        "blur_kernel_px": 2 * randint(generator, math.ceil((low - 1) / 2), math.floor((high - 1) / 2)) + 1,
        "opacity": uniform(generator, *cfg.opacity),
        "softness": cfg.softness,
    }


def draw_lighting(config: BuildConfig, generator: torch.Generator) -> LightingDraw:
    """Draw a degradation type (by the configured weights) and all its parameters from ``generator``."""
    deg = config.degradation
    types = [t for t in DEGRADATION_TYPES if deg.weights.get(t, 0) > 0]
    kind = choice(generator, types, [deg.weights[t] for t in types])
    elevation = uniform(generator, *deg.light.elevation_deg)
    azimuth = uniform(generator, *deg.light.azimuth_deg) % 360
    if kind == "soft_shading":
        draw = LightingDraw(kind, elevation, azimuth, uniform(generator, *deg.soft_shading.ambient))
        draw.pattern = _draw_pattern(generator, deg.soft_shading.pattern)
    elif kind == "hard_shadow":
        draw = LightingDraw(kind, elevation, azimuth, uniform(generator, *deg.hard_shadow.ambient))
        draw.pattern = _draw_pattern(generator, deg.hard_shadow.pattern)
    else:
        draw = LightingDraw(kind, elevation, azimuth, uniform(generator, *deg.specular.ambient))
        draw.specular = {"intensity": uniform(generator, *deg.specular.intensity),
                         "shininess": uniform(generator, *deg.specular.shininess)}
    if draw.pattern is not None:
        draw.pattern_generator_state = generator.get_state()
    return draw


def shadow_factor(draw: LightingDraw, height: int, width: int, reference_resolution: int,
                  device: torch.device) -> torch.Tensor:
    """``1 - opacity * pattern`` (``1 x 1 x H x W``) for a row with a pattern: drawn at most
    ``PATTERN_WORKING_SIZE`` px, blurred with the drawn kernel (given at ``reference_resolution``), upsampled."""
    pattern_cfg = draw.pattern
    generator = torch.Generator().set_state(draw.pattern_generator_state)
    shrink = min(1.0, PATTERN_WORKING_SIZE / max(height, width))
    ph, pw = max(8, round(height * shrink)), max(8, round(width * shrink))
    pattern, render_params = render_pattern(pattern_cfg["family"], ph, pw, generator, device)
    pattern_cfg.update({k: v for k, v in render_params.items() if k != "family"})
    kernel_here = pattern_cfg["blur_kernel_px"] * max(height, width) / reference_resolution
    blurred = gaussian_blur(pattern, kernel_size_to_sigma(kernel_here) * shrink)
    softness = pattern_cfg["softness"]
    pattern = softness * blurred + (1 - softness) * pattern if softness > 0 else blurred
    if (ph, pw) != (height, width):
        pattern = F.interpolate(pattern, size=(height, width), mode="bilinear", align_corners=False)
    return 1 - pattern_cfg["opacity"] * pattern.clamp(0, 1)


MAX_EXPOSURE = 1.6
"""Upper bound of the exposure compensation (reached only when the light barely reaches the person)."""


def relight(albedo: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, draws: list[LightingDraw],
            reference_resolution: int) -> tuple[torch.Tensor, list[float]]:
    """Albedo under the drawn lights: ``albedo * exposure * shading * shadow + specular`` inside the mask, 0 outside.

    ``exposure = 1 / mean(shading over the mask)`` (at most ``MAX_EXPOSURE``) keeps the person's overall brightness
    that of the input, so the pair differs in the direction and shape of the light, not in exposure; shadow
    patterns still darken where they fall. ``albedo``: ``B x 3 x H x W``; ``normals``: unit ``B x 3 x H x W``;
    ``mask``: ``B x 1 x H x W``. Returns the relit images and each image's exposure factor.
    """
    _, _, h, w = albedo.shape
    shading = lambertian_shading(normals, [d.light for d in draws], [d.ambient for d in draws])
    # float64 sums, rounded: a float32 sum over a megapixel depends on how the reduction is split (batch size)
    area = mask.double().sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    lit_area = (shading.double() * mask.double()).sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    exposure = torch.round((area / lit_area).clamp(1.0, MAX_EXPOSURE), decimals=6)
    shading = shading * exposure.to(shading.dtype)
    shadows = [shadow_factor(d, h, w, reference_resolution, albedo.device) if d.pattern else torch.ones_like(mask[:1])
               for d in draws]
    lit = albedo * (shading * torch.cat(shadows))  # the one-channel factors first: one pass over the colour image
    if any(d.specular for d in draws):
        intensity = [d.specular["intensity"] if d.specular else 0.0 for d in draws]
        shininess = [d.specular["shininess"] if d.specular else 1.0 for d in draws]
        lit += phong_specular(normals, [d.light for d in draws], intensity, shininess)
    return lit.clamp_(0, 1).mul_(mask), exposure.flatten().tolist()


class DegradationStage(Stage):
    """Degraded foreground ``H x W x 3`` uint8 (the albedo relit, black outside the mask) and the lighting metadata:
    ``degradation_type``, ``light_direction`` (x right, y up, z to camera), ``ambient`` and ``degradation_params``
    (JSON)."""

    name = "degradation"
    outputs = ("degraded", "degradation_type", "light_direction", "ambient", "degradation_params")

    def process(self, batch, rows, outputs, skip, rank):
        device = self.device(rank)
        albedos = [to_uint8_array(v) if v is not None else None for v in batch["albedo"]]
        draws = {r: draw_lighting(self.config, row_generator(self.config.seed, batch["image_id"][r], self.name))
                 for r in rows}
        for group in group_by_shape(albedos, rows).values():
            albedo = uint8_to_float([albedos[r] for r in group], device)
            normals = decode_normals(uint8_to_float([to_uint8_array(batch["normals"][r]) for r in group], device))
            mask = (uint8_to_float([to_uint8_array(batch["mask"][r]) for r in group], device) > 0.5).float()
            degraded, exposures = relight(albedo, normals, mask, [draws[r] for r in group],
                                          self.config.reference_resolution)
            for row, encoded, exposure in zip(group, float_to_uint8(degraded), exposures, strict=True):
                draw = draws[row]
                draw.exposure = exposure
                outputs["degraded"][row] = encoded
                outputs["degradation_type"][row] = draw.degradation_type
                outputs["light_direction"][row] = list(draw.light)
                outputs["ambient"][row] = draw.ambient
                outputs["degradation_params"][row] = json.dumps(draw.params(), sort_keys=True)
