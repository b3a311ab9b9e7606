"""Albedo estimation: remove the lighting from a person's pixels.

Two classical methods, both mask-aware (pixels outside the mask neither contribute to nor receive a value):
- multi-scale Retinex (Jobson et al.): mean over scales of ``log(I + eps) - log(G_sigma * I + eps)``, with the
  Gaussian surround computed as a normalised convolution over the mask, then a per-channel percentile stretch;
- LAB/bilateral: divide CIE L* by its bilateral-filtered version (the illumination), stretch, back to sRGB.
The result is blended with a fraction of the original (the seed keeps 15-25 %) to avoid a washed-out look.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .color import lab_to_rgb, luminance, rgb_to_lab
from .filters import gaussian_blur

RETINEX_EPS = 1.0 / 255.0
"""Offset inside the logarithms: one 8-bit code value, as the seed's ``log10(img + 1)`` on 0-255 data."""

_MAX_QUANTILE_SAMPLES = 1 << 18


def masked_quantiles(values: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel quantiles of ``values`` (``B x C x H x W``) over pixels where ``mask`` (``B x 1 x H x W``)
    is > 0.5. ``q``: 1-D tensor of probabilities. Returns ``B x C x len(q)``. An image with an empty mask uses all
    pixels. Large images are subsampled on a fixed stride (deterministic)."""
    b, c, h, w = values.shape
    stride = max(1, int((h * w / _MAX_QUANTILE_SAMPLES) ** 0.5))
    sampled_values = values[:, :, ::stride, ::stride].reshape(b, c, -1)
    sampled_mask = mask[:, :, ::stride, ::stride].reshape(b, 1, -1) > 0.5
    empty = ~sampled_mask.any(dim=-1, keepdim=True)
    keep = sampled_mask | empty
    masked = torch.where(keep, sampled_values, torch.full_like(sampled_values, float("nan")))
    return torch.nanquantile(masked, q.to(device=values.device, dtype=values.dtype), dim=-1).permute(1, 2, 0)


def stretch_to_unit(values: torch.Tensor, mask: torch.Tensor, percent: float) -> torch.Tensor:
    """Per-channel linear stretch mapping the ``percent`` and ``100 - percent`` percentiles (over the mask) to 0 and 1,
    clipped. ``percent = 0`` is a min/max stretch. ``B x C x H x W`` -> same."""
    q = torch.tensor([percent / 100.0, 1.0 - percent / 100.0], device=values.device, dtype=values.dtype)
    bounds = masked_quantiles(values, mask, q)
    low, high = bounds[..., 0, None, None], bounds[..., 1, None, None]
    return ((values - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


ROBUST_GRID_PX = 8.0
""":func:`robust_surround` works on a grid coarsened so that its sigma spans at least this many grid cells."""


def robust_surround(image: torch.Tensor, mask: torch.Tensor, sigma: float, tau: float,
                    iterations: int) -> torch.Tensor:
    """A Gaussian surround (local mean, ``sigma`` pixels) that rejects other materials: a Welsch M-estimator.

    Starting from the mask-normalised Gaussian mean ``S``, each of ``iterations`` rounds weights every masked pixel by
    ``exp(-(log I - log S)^2 / (2 tau^2))`` and takes the weighted Gaussian mean again. A pixel whose log intensity
    lies much more than ``tau`` from its local mean (hair next to skin, an eye, a lip) hardly counts, so the surround
    follows the gradual light instead of straddling albedo edges (the halo of plain Retinex). The surround is smooth
    at scale ``sigma``, so it is computed on a grid coarsened by ``floor(sigma / ROBUST_GRID_PX)`` (area averages of
    the masked image) and resized back bilinearly. ``image``: ``B x C x H x W`` > 0; ``mask``: ``B x 1 x H x W``.
    Returns ``B x C x H x W``; 0 where no masked pixel is within reach.
    """
    height, width = image.shape[-2:]
    factor = max(1, int(sigma // ROBUST_GRID_PX))
    grid = (max(1, height // factor), max(1, width // factor))
    weights = F.adaptive_avg_pool2d(mask.to(image.dtype), grid) if factor > 1 else mask.to(image.dtype)
    small = (F.adaptive_avg_pool2d(image * mask, grid) / weights.clamp_min(1e-6)) if factor > 1 else image
    small_sigma = sigma / factor
    log_small = torch.log(small.clamp_min(RETINEX_EPS))
    surround = gaussian_blur(small, small_sigma, weights)
    for _ in range(iterations):
        deviation = log_small - torch.log(surround.clamp_min(RETINEX_EPS))
        agreement = torch.exp(deviation.square().sum(dim=1, keepdim=True) / (-2 * tau * tau)) * weights
        refined = gaussian_blur(small, small_sigma, agreement)
        surround = torch.where(refined > 0, refined, surround)
    if factor > 1:
        surround = F.interpolate(surround, size=(height, width), mode="bilinear", align_corners=False)
    return surround


def multi_scale_retinex(
    image: torch.Tensor, mask: torch.Tensor | None, scales: list[float] | tuple[float, ...],
    robust_tau: float = 0.0, robust_iterations: int = 0,
) -> torch.Tensor:
    """Mean over ``scales`` (Gaussian sigmas, pixels) of ``log(I + eps) - log(surround_sigma(I) + eps)``.

    ``image``: ``B x 3 x H x W`` in [0, 1]; ``mask``: ``B x 1 x H x W`` or None (the plain, unmasked Retinex, whose
    surround includes the black background). With ``robust_iterations > 0`` (and a mask) each surround is
    :func:`robust_surround` with ``robust_tau``. Returns the log-domain response (unbounded), same shape.
    """
    log_image = torch.log(image + RETINEX_EPS)
    response = torch.zeros_like(image)
    for sigma in scales:
        if robust_iterations > 0 and mask is not None:
            surround = robust_surround(image, mask, sigma, robust_tau, robust_iterations)
        else:
            surround = gaussian_blur(image, sigma, mask)
        response += log_image - torch.log(surround + RETINEX_EPS)
    return response / len(scales)


def retinex_albedo(
    image: torch.Tensor, mask: torch.Tensor, scales: list[float] | tuple[float, ...], color_balance_percent: float,
    color: str = "luminance", robust_tau: float = 0.0, robust_iterations: int = 0,
) -> torch.Tensor:
    """Mask-aware multi-scale Retinex albedo. ``B x 3 x H x W`` in [0, 1] -> albedo in [0, 1], zero outside the mask.

    ``color="channels"`` is the seed's way: Retinex on R, G and B independently, then a ``color_balance_percent`` %
    per-channel stretch. It greys out colours and maps every person to the same lightness (dark skin comes out
    light). ``color="luminance"`` (default) computes the reflectance ``L / illumination = exp(MSR(L))`` on the
    luminance, rescales it so its median over the mask equals the input's (each person keeps their overall skin
    tone; only the spatial variation of the light is removed), and applies that per-pixel gain to R, G and B
    alike, so hue and saturation are kept. ``color_balance_percent`` is used by ``channels`` only.
    ``robust_tau`` / ``robust_iterations``: the luminance surround rejects other materials (:func:`robust_surround`).
    """
    if color == "channels":
        return stretch_to_unit(multi_scale_retinex(image, mask, scales), mask, color_balance_percent) * mask
    if color != "luminance":
        raise ValueError(f"unknown Retinex colour mode {color!r} (valid: luminance, channels)")
    intensity = luminance(image)
    reflectance = torch.exp(multi_scale_retinex(intensity, mask, scales, robust_tau, robust_iterations))
    median = torch.tensor([0.5], device=image.device, dtype=image.dtype)
    level = masked_quantiles(intensity, mask, median) / masked_quantiles(reflectance, mask, median).clamp_min(1e-6)
    target = reflectance * level[..., None]
    gain = target / intensity.clamp_min(RETINEX_EPS)
    headroom = 1.0 / image.amax(dim=1, keepdim=True).clamp_min(RETINEX_EPS)  # keep every channel <= 1
    # The mask is 0/1, so masking the one-channel gain equals masking the clamped image, at a third of the cost.
    return (image * torch.minimum(gain, headroom).mul_(mask)).clamp_(0, 1)


def _spatial_weight(squared_distance: int, sigma_space: float) -> float:
    """The bilateral filter's spatial weight ``exp(-d^2 / (2 sigma^2))`` as a Python float, evaluated in float32 on
    the CPU (so the weight, and the filter's result, are the same on every device)."""
    exponent = torch.tensor(-squared_distance / (2 * sigma_space**2), device="cpu", dtype=torch.float32)
    return torch.exp(exponent).item()


def bilateral_filter(
    image: torch.Tensor, diameter: int, sigma_color: float, sigma_space: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Edge-preserving bilateral filter of ``B x C x H x W`` (C == 1 typical) over a ``diameter``-wide square window.

    ``sigma_color`` is in the units of ``image``; ``sigma_space`` in pixels. With ``mask``, only masked neighbours
    contribute. Vectorised over the image; loops only over the ``diameter**2`` window offsets.
    """
    radius = diameter // 2
    weights_in = torch.ones_like(image[:, :1]) if mask is None else mask
    padded = F.pad(image, (radius,) * 4, mode="replicate")
    padded_weights = F.pad(weights_in, (radius,) * 4, mode="constant", value=0.0)
    h, w = image.shape[-2:]
    numerator = torch.zeros_like(image)
    denominator = torch.zeros_like(image)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius:
                continue
            neighbour = padded[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            valid = padded_weights[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w]
            spatial = _spatial_weight(dx * dx + dy * dy, sigma_space)
            weight = valid * spatial * torch.exp(-((neighbour - image) ** 2) / (2 * sigma_color**2))
            numerator += weight * neighbour
            denominator += weight
    return numerator / denominator.clamp_min(1e-8)


def lab_albedo(
    image: torch.Tensor, mask: torch.Tensor, diameter: int, sigma_color: float, sigma_space: float,
    color_balance_percent: float,
) -> torch.Tensor:
    """L* divided by its bilateral-smoothed illumination, stretched to [0, 100], recombined with the original a*/b*.

    ``sigma_color`` is in OpenCV's 8-bit L units (0-255), as in the seed. ``B x 3 x H x W`` -> albedo, zero outside
    the mask.
    """
    lab = rgb_to_lab(image)
    lightness = lab[:, :1] * (255.0 / 100.0)
    illumination = bilateral_filter(lightness, diameter, sigma_color, sigma_space, mask)
    ratio = lightness / illumination.clamp_min(1.0)
    lab = torch.cat([stretch_to_unit(ratio, mask, color_balance_percent) * 100.0, lab[:, 1:]], dim=1)
    return lab_to_rgb(lab) * mask


def blend_with_original(albedo: torch.Tensor, image: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``(1 - ratio) * albedo + ratio * image`` per image (one fused ``lerp``); ``ratio``: ``B`` floats in [0, 1]."""
    return torch.lerp(albedo, image, ratio.to(albedo).view(-1, 1, 1, 1)).clamp_(0, 1)
