"""Separable Gaussian blurs that stay fast at large sigma (sigma 250 on 1024 x 1024).

A blur with sigma ``s`` is computed on a copy area-downsampled by ``f`` (so the blur there has sigma ``s / f``,
between ``MIN_WORKING_SIGMA`` and twice that), as a separable convolution with at most ``8 s / f + 1`` taps, then
upsampled bilinearly: the work is ``O(H W)`` whatever the sigma. Borders use zero padding with renormalisation,
i.e. the result is the weighted mean over the pixels that exist (and, with a mask, over the pixels inside it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

MIN_WORKING_SIGMA = 3.0
"""Smallest sigma (pixels) the blur is evaluated at after downsampling; larger means more accurate, slower."""


@lru_cache(maxsize=64)
def _gaussian_taps(sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Unnormalised 1-D Gaussian ``exp(-d^2 / (2 sigma^2))`` for ``|d| <= 4 sigma``, computed on the CPU in float64
    (the same taps on every device) and moved to ``device``."""
    radius = max(1, math.ceil(4 * sigma))
    distance = torch.arange(-radius, radius + 1, device="cpu", dtype=torch.float64)
    return torch.exp(-0.5 * (distance / sigma) ** 2).to(device=device, dtype=dtype)


def _downsample_factor(sigma: float, height: int, width: int) -> int:
    factor = max(1, int(sigma // MIN_WORKING_SIGMA))
    return max(1, min(factor, height // 8, width // 8))


def _blur_sum(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Unnormalised separable Gaussian sum over zero-padded ``x`` (``B x C x H x W``), as depthwise convolutions
    (every plane its own group: much faster on CPU than one single-channel convolution over a stacked batch)."""
    b, c, h, w = x.shape
    planes = b * c
    taps = _gaussian_taps(sigma, str(x.device), x.dtype)
    radius = (taps.numel() - 1) // 2
    flat = x.reshape(1, planes, h, w)
    flat = F.conv2d(flat, taps.view(1, 1, -1, 1).expand(planes, 1, -1, 1), padding=(radius, 0), groups=planes)
    flat = F.conv2d(flat, taps.view(1, 1, 1, -1).expand(planes, 1, 1, -1), padding=(0, radius), groups=planes)
    return flat.reshape(b, c, h, w)


def gaussian_blur(image: torch.Tensor, sigma: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian blur of ``image`` (``B x C x H x W``), sigma in pixels; same shape out.

    With ``mask`` (``B x 1 x H x W``, 0/1 or soft weights) it is a normalised convolution: each output pixel is the
    Gaussian-weighted mean of the *masked* input pixels, so values outside the mask never leak in. Where no masked
    pixel is within reach the result is 0.
    """
    if sigma <= 0:
        return image.clone()
    _, _, h, w = image.shape
    factor = _downsample_factor(sigma, h, w)
    weights = torch.ones_like(image[:, :1]) if mask is None else mask.to(image.dtype)
    stacked = torch.cat([image * weights, weights], dim=1)
    if factor > 1:
        stacked = F.interpolate(stacked, size=(math.ceil(h / factor), math.ceil(w / factor)), mode="area")
    summed = _blur_sum(stacked, sigma / factor)
    if factor > 1:
        summed = F.interpolate(summed, size=(h, w), mode="bilinear", align_corners=False)
    numerator, denominator = summed[:, :-1], summed[:, -1:]
    reciprocal = torch.where(denominator > 1e-6, 1 / denominator.clamp_min(1e-6), 0.0)  # one channel
    return numerator * reciprocal


def kernel_size_to_sigma(kernel_size: float) -> float:
    """OpenCV's rule for the sigma of a Gaussian kernel given only its size (``getGaussianKernel`` with sigma <= 0)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
