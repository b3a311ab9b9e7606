"""The one relighting recipe, shared by the build and the training transforms.

:func:`draw_light` draws a row's new light up front into an immutable :class:`DrawnLight`; :func:`relight` is a pure
batched function that puts the albedo under those lights (``degraded``), composites the result over the background
(``composite``) and describes it (the lighting labels). The build's relight stage and
:class:`~relight_datasets.transforms.RelightOnTheFly` / :class:`~relight_datasets.transforms.RelightBatch` all call
it, so a stored row and its on-the-fly regeneration cannot drift apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import DEGRADATION_TYPES, BuildConfig, PatternConfig
from .ops.composite import background_plate, composite, feathered_alpha
from .ops.filters import gaussian_blur, kernel_size_to_sigma
from .ops.lighting import describe_direction, lambertian_shading, light_direction, phong_specular
from .ops.normals import decode_normals
from .ops.patterns import render_pattern
from .rng import choice, randint, uniform

DEGRADATION_STREAM = "degradation"
"""Name of the per-row random stream the light is drawn from (:func:`relight_datasets.rng.row_generator`)."""
PATTERN_WORKING_SIZE = 256
"""Long side (pixels) at which shadow patterns are drawn and blurred before upsampling; they are smooth anyway."""
MAX_EXPOSURE = 1.6
"""Upper bound of the exposure compensation (reached only when the light barely reaches the person)."""
LABEL_COLUMNS = ("degradation_type", "light_direction", "ambient", "degradation_params", "instruction")
"""The per-row lighting labels :func:`relight` returns, named as the dataset's columns."""

_PATTERN_WORDS = {
    "venetian_blinds": "striped shadows from venetian blinds",
    "window_frame": "the shadow of a window frame",
    "perlin_noise": "mottled shadows",
    "voronoi": "a cellular shadow pattern",
    "lattice": "criss-cross shadows from a lattice",
    "curtain_folds": "soft shadows from curtain folds",
    "fence": "the shadow of a fence",
    "foliage": "dappled shadows from foliage",
    "clouds": "soft cloud shadows",
    "screen": "a fine mesh shadow from a screen",
}


@dataclass(frozen=True)
class ShadowPattern:
    """A drawn shadow pattern: its family, blur kernel (pixels at ``reference_resolution``), opacity and softness.
    The pattern's geometry (rotation, scale, ...) is rendered from ``generator_state``, the row generator's state
    after the draw, so the same record always renders the same pattern."""

    family: str
    blur_kernel_px: int
    opacity: float
    softness: float
    generator_state: bytes = field(repr=False)

    def generator(self) -> torch.Generator:
        """A fresh CPU generator in the recorded state."""
        state = torch.tensor(list(self.generator_state), device="cpu", dtype=torch.uint8)
        return torch.Generator(device="cpu").set_state(state)


@dataclass(frozen=True)
class Specular:
    """A drawn Phong highlight: ``intensity`` in [0, 1] and ``shininess`` (exponent)."""

    intensity: float
    shininess: float


@dataclass(frozen=True)
class DrawnLight:
    """Everything drawn for one row's new lighting (angles in degrees, see :mod:`relight_datasets.ops.lighting`)."""

    degradation_type: str
    elevation_deg: float
    azimuth_deg: float
    ambient: float
    pattern: ShadowPattern | None = None
    specular: Specular | None = None

    @property
    def direction(self) -> tuple[float, float, float]:
        """Unit vector towards the light (x right, y up, z towards the camera)."""
        return light_direction(self.elevation_deg, self.azimuth_deg)


def _draw_pattern(generator: torch.Generator, cfg: PatternConfig) -> tuple[str, int, float] | None:
    """``(family, blur kernel, opacity)``, or None when the row gets no pattern."""
    if not cfg.families or uniform(generator, 0.0, 1.0) >= cfg.probability:
        return None
    low, high = cfg.blur_kernel_px
    family = choice(generator, list(cfg.families))
    kernel = 2 * randint(generator, math.ceil((low - 1) / 2), math.floor((high - 1) / 2)) + 1
    return family, kernel, uniform(generator, *cfg.opacity)


def draw_light(config: BuildConfig, generator: torch.Generator) -> DrawnLight:
    """Draw a degradation type (by the configured weights) and all its parameters from ``generator``."""
    deg = config.degradation
    types = [t for t in DEGRADATION_TYPES if deg.weights.get(t, 0) > 0]
    kind = choice(generator, types, [deg.weights[t] for t in types])
    elevation = uniform(generator, *deg.light.elevation_deg)
    azimuth = uniform(generator, *deg.light.azimuth_deg) % 360
    if kind == "specular":
        ambient = uniform(generator, *deg.specular.ambient)
        specular = Specular(uniform(generator, *deg.specular.intensity), uniform(generator, *deg.specular.shininess))
        return DrawnLight(kind, elevation, azimuth, ambient, specular=specular)
    shading = deg.soft_shading if kind == "soft_shading" else deg.hard_shadow
    ambient = uniform(generator, *shading.ambient)
    drawn = _draw_pattern(generator, shading.pattern)
    if drawn is None:
        return DrawnLight(kind, elevation, azimuth, ambient)
    state = generator.get_state().numpy().tobytes()
    return DrawnLight(kind, elevation, azimuth, ambient, ShadowPattern(*drawn, shading.pattern.softness, state))


def shadow_factor(pattern: ShadowPattern, height: int, width: int, reference_resolution: int,
                  like: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``1 - opacity * pattern`` (``1 x 1 x H x W`` on ``like``'s device and dtype) and the pattern's parameters.

    The pattern is drawn at most ``PATTERN_WORKING_SIZE`` px on the long side, blurred with the drawn kernel
    (given at ``reference_resolution``), mixed with its sharp self by ``softness`` and upsampled bilinearly.
    The parameters are the ``degradation_params["pattern"]`` record: the drawn values and the rendered geometry."""
    shrink = min(1.0, PATTERN_WORKING_SIZE / max(height, width))
    small_h, small_w = max(8, round(height * shrink)), max(8, round(width * shrink))
    sharp, geometry = render_pattern(pattern.family, small_h, small_w, pattern.generator(), like.device)
    params = {"family": pattern.family, "blur_kernel_px": pattern.blur_kernel_px, "opacity": pattern.opacity,
              "softness": pattern.softness, **{k: v for k, v in geometry.items() if k != "family"}}
    # The blend reads the record's softness. The noise families (perlin_noise, clouds) render with a "softness" of
    # their own (their threshold's), which takes the drawn one's place in the record and so in the blend too, as it
    # always has in stored datasets.
    softness = params["softness"]
    kernel_here = pattern.blur_kernel_px * max(height, width) / reference_resolution
    blurred = gaussian_blur(sharp, kernel_size_to_sigma(kernel_here) * shrink)
    mixed = softness * blurred + (1 - softness) * sharp if softness > 0 else blurred
    if (small_h, small_w) != (height, width):
        mixed = F.interpolate(mixed, size=(height, width), mode="bilinear", align_corners=False)
    return (1 - pattern.opacity * mixed.clamp(0, 1)).to(like.dtype), params


def relit_foreground(albedo: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, lights: list[DrawnLight],
                     reference_resolution: int) -> tuple[torch.Tensor, list[float], list[dict | None]]:
    """Albedo under the drawn lights: ``albedo * exposure * shading * shadow + specular`` inside the mask, 0 outside.

    ``exposure = 1 / mean(shading over the mask)`` (at most ``MAX_EXPOSURE``) keeps the person's overall brightness
    that of the input, so the pair differs in the direction and shape of the light, not in exposure; shadow
    patterns still darken where they fall. ``albedo``: ``B x 3 x H x W``; ``normals``: unit ``B x 3 x H x W``;
    ``mask``: binary ``B x 1 x H x W``. Returns the relit images, each image's exposure factor and each image's
    pattern parameters (None without a pattern).
    """
    _, _, height, width = albedo.shape
    directions = [light.direction for light in lights]
    shading = lambertian_shading(normals, directions, [light.ambient for light in lights])
    # float64 sums, rounded: a float32 sum over a megapixel depends on how the reduction is split (batch size)
    area = mask.double().sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    lit_area = (shading.double() * mask.double()).sum(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    exposure = torch.round((area / lit_area).clamp(1.0, MAX_EXPOSURE), decimals=6)
    shading = shading * exposure.to(shading.dtype)
    shadows, patterns = [], []
    for light in lights:
        if light.pattern is None:
            shadows.append(torch.ones_like(mask[:1]))
            patterns.append(None)
        else:
            factor, params = shadow_factor(light.pattern, height, width, reference_resolution, mask)
            shadows.append(factor)
            patterns.append(params)
    lit = albedo * (shading * torch.cat(shadows))  # the one-channel factors first: one pass over the colour image
    if any(light.specular for light in lights):
        intensity = [light.specular.intensity if light.specular else 0.0 for light in lights]
        shininess = [light.specular.shininess if light.specular else 1.0 for light in lights]
        lit += phong_specular(normals, directions, intensity, shininess)
    return lit.clamp_(0, 1).mul_(mask), exposure.flatten().tolist(), patterns


def lighting_instruction(degradation_type: str, light: list[float], ambient: float, params: dict) -> str:
    """E.g. ``"soft light from the upper left, gentle shadows, with soft cloud shadows"``."""
    x, y, z = light
    elevation = math.degrees(math.asin(max(-1.0, min(1.0, z))))
    azimuth = math.degrees(math.atan2(y, x)) % 360
    quality = "soft" if degradation_type == "soft_shading" else "directional"
    shadows = "very gentle shadows" if ambient >= 0.78 else "gentle shadows" if ambient >= 0.6 else "deep shadows"
    text = f"{quality} light from {describe_direction(elevation, azimuth)}, {shadows}"
    pattern = params.get("pattern")
    if pattern:
        text += f", with {_PATTERN_WORDS.get(pattern['family'], 'patterned shadows')}"
    if params.get("specular"):
        text += ", glossy highlights on the skin"
    return text


def light_labels(light: DrawnLight, exposure: float, pattern: dict | None) -> dict:
    """One row's lighting labels (:data:`LABEL_COLUMNS`): ``degradation_params`` is the JSON of every drawn value not
    stored in a column of its own, with the exposure and the rendered pattern."""
    specular = None if light.specular is None else {"intensity": light.specular.intensity,
                                                     "shininess": light.specular.shininess}
    params = {"elevation_deg": light.elevation_deg, "azimuth_deg": light.azimuth_deg, "exposure": exposure,
              "pattern": pattern, "specular": specular}
    direction = list(light.direction)
    return {
        "degradation_type": light.degradation_type,
        "light_direction": direction,
        "ambient": light.ambient,
        "degradation_params": json.dumps(params, sort_keys=True),
        "instruction": lighting_instruction(light.degradation_type, direction, light.ambient, params),
    }


def quantize_to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Round float images in [0, 1] to the 8-bit grid (``round(255 x) / 255``), staying a float tensor: exactly the
    values an 8-bit PNG of them decodes to."""
    return images.clamp(0, 1).mul_(255).round_().div_(255)  # one new tensor, the rest in place


def relight(albedo: torch.Tensor, normals: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
            lights: list[DrawnLight], config: BuildConfig,
            quantize: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Relight a batch: ``(degraded, composite, labels)``.

    ``albedo``, ``normals`` (RGB-encoded, :func:`~relight_datasets.ops.normals.encode_normals`) and ``image``:
    float ``B x 3 x H x W`` in [0, 1]; ``mask``: ``B x 1 x H x W`` (person where > 0.5); all on one device, any
    memory layout. ``lights``: one :class:`DrawnLight` per row. ``degraded`` (``B x 3 x H x W``) is the albedo
    under the light inside the mask and black outside; ``composite`` is ``degraded`` over the background plate
    (``config.recombination``) with the mask feathered inwards by ``feather_px`` (pixel sizes given at
    ``config.reference_resolution``). With ``quantize`` both are rounded to the 8-bit grid as the build stores them
    (``degraded`` before it is composited); where the feathered alpha is 0 the composite is the background plate
    bit for bit. ``labels``: per row, a dict of :data:`LABEL_COLUMNS`.
    """
    albedo, normals, mask, image = (tensor.contiguous() for tensor in (albedo, normals, mask, image))
    binary = (mask > 0.5).to(albedo.dtype)
    degraded, exposures, patterns = relit_foreground(albedo, decode_normals(normals), binary, lights,
                                                     config.reference_resolution)
    if quantize:
        degraded = quantize_to_8bit(degraded)
    scale = max(albedo.shape[-2:]) / config.reference_resolution
    alpha = feathered_alpha(mask, config.recombination.feather_px * scale)
    background = background_plate(image, config.recombination.background)
    result = composite(degraded, background, alpha)
    if quantize:
        result = torch.where(alpha > 0, quantize_to_8bit(result), background)
    labels = [light_labels(light, exposure, pattern)
              for light, exposure, pattern in zip(lights, exposures, patterns, strict=True)]
    return degraded, result, labels
