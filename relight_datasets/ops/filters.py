"""Separable Gaussian blurs that stay fast at large sigma (sigma 250 on 1024 x 1024), with a smooth result.

A blur with sigma ``s`` large enough is computed on a coarse grid: the image is zero-padded to a multiple of ``f``
and area-downsampled by ``f``, blurred there as a separable convolution (sigma between ``MIN_WORKING_SIGMA`` and
twice that, in coarse pixels), and brought back to full size by cubic B-spline upsampling. The B-spline is twice
continuously differentiable, so the result has no kinks at the coarse grid lines: its slope and curvature are smooth
(bilinear upsampling would make the slope a staircase, which shows as bands in normals and shading). The box of the
downsampling and the B-spline both add blur, which is subtracted from the coarse sigma, so the total sigma is ``s``.
The work is ``O(H W)`` whatever the sigma. Borders use zero padding with renormalisation, i.e. the result is the
weighted mean over the pixels that exist (and, with a mask, over the pixels inside it).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

MIN_WORKING_SIGMA = 3.0
"""Smallest sigma (pixels) the blur is evaluated at after downsampling; larger means more accurate, slower."""

_SPLINE_REACH = 2
"""Coarse cells on each side of a pixel that a cubic B-spline reaches (its support is 4 cells wide)."""

_SCALE_VARIANCE = 1 / 12 + 4 / 12
"""Variance, in squared coarse cells, added by the area downsampling (one box) and the cubic B-spline (four boxes)."""


@lru_cache(maxsize=64)
def _gaussian_taps(sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """Unnormalised 1-D Gaussian ``exp(-d^2 / (2 sigma^2))`` for ``|d| <= 4 sigma``, computed on the CPU in float64
    (the same taps on every device) and moved to ``device``."""
    radius = max(1, math.ceil(4 * sigma))
    distance = torch.arange(-radius, radius + 1, device="cpu", dtype=torch.float64)
    return torch.exp(-0.5 * (distance / sigma) ** 2).to(device=device, dtype=dtype)


def _cubic_bspline(u: torch.Tensor) -> torch.Tensor:
    """Uniform cubic B-spline of unit spacing (support ``|u| < 2``, integral 1, shifted copies sum to 1)."""
    a = u.abs()
    near = 2 / 3 - a**2 + a**3 / 2
    far = (2 - a).clamp_min(0) ** 3 / 6
    return torch.where(a < 1, near, far)


@lru_cache(maxsize=64)
def _spline_phase_weights(factor: int) -> tuple[tuple[float, ...], ...]:
    """``factor`` rows of ``2 reach + 1`` weights: row ``r`` gives fine pixel ``r`` of a coarse cell from the cubic
    B-spline values of the neighbouring cells ``-reach .. +reach`` (cell centres at ``(factor - 1) / 2``); each row
    sums to 1. Python floats from a float64 CPU computation, so every device and dtype uses the same weights."""
    phase = (torch.arange(factor, device="cpu", dtype=torch.float64) - (factor - 1) / 2) / factor
    cells = torch.arange(-_SPLINE_REACH, _SPLINE_REACH + 1, device="cpu", dtype=torch.float64)
    return tuple(tuple(row) for row in _cubic_bspline(phase[:, None] - cells[None, :]).tolist())


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


def _border_weights(height: int, width: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``1 x 1 x H x W``: the Gaussian weights that fall inside a ``height x width`` image around each pixel (what
    :func:`_blur_sum` of a plane of ones gives), as the outer product of the two 1-D sums; ``like``'s device and
    dtype."""
    taps = _gaussian_taps(sigma, str(like.device), like.dtype)
    radius = (taps.numel() - 1) // 2

    def sums(length: int) -> torch.Tensor:
        ones = torch.ones(1, 1, length, device=like.device, dtype=like.dtype)
        return F.conv1d(ones, taps.view(1, 1, -1), padding=radius).view(length)

    return (sums(height)[:, None] * sums(width)[None, :]).view(1, 1, height, width)


def _spline_upsample(coarse: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Cubic B-spline upsampling by ``factor`` along ``dim`` (-2: H, -1: W) of ``B x C x H x W``, whose ``n + 2
    reach`` cells along ``dim`` are the coarse values with ``reach`` extra cells on each side; ``n factor`` out.

    Fine pixel ``r`` of every cell (its phase) is a weighted sum of the ``2 reach + 1`` shifted coarse planes, written
    straight into its interleaved place: a few multiply-adds per output pixel, no convolution and no transpose.
    """
    n = coarse.shape[dim] - 2 * _SPLINE_REACH
    phase_axis = coarse.dim() + dim + 1
    shape = list(coarse.shape)
    shape[dim] = n
    shape.insert(phase_axis, factor)
    fine = torch.empty(shape, device=coarse.device, dtype=coarse.dtype)
    for phase, weights in enumerate(_spline_phase_weights(factor)):
        target = fine.select(phase_axis, phase)
        terms = [(cell, weight) for cell, weight in enumerate(weights) if weight > 0]
        torch.mul(coarse.narrow(dim, terms[0][0], n), terms[0][1], out=target)
        for cell, weight in terms[1:]:
            target.add_(coarse.narrow(dim, cell, n), alpha=weight)
    del shape[phase_axis]
    shape[dim] = n * factor
    return fine.view(shape)


def _coarse_blur_sum(stacked: torch.Tensor, sigma: float, factor: int) -> torch.Tensor:
    """Unnormalised Gaussian sum of ``stacked`` (``B x C x H x W``) computed on a grid ``factor`` times coarser and
    upsampled by cubic B-spline; same shape out, scaled like :func:`_blur_sum` up to the constant ``factor^2``.
    The coarse cells sum their ``factor x factor`` pixels (a partial cell at the bottom or right edge sums the pixels
    that exist: zero padding)."""
    _, _, h, w = stacked.shape
    coarse = F.avg_pool2d(stacked, factor, ceil_mode=True, divisor_override=factor * factor)
    reach = _SPLINE_REACH
    coarse_sigma = math.sqrt((sigma / factor) ** 2 - _SCALE_VARIANCE)
    coarse = _blur_sum(F.pad(coarse, (reach, reach, reach, reach)), coarse_sigma)
    fine = _spline_upsample(_spline_upsample(coarse, factor, dim=-1), factor, dim=-2)
    return fine[..., :h, :w]


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
    if mask is None and factor == 1:  # the weights' sum is separable: two 1-D sums instead of a blurred plane
        return _blur_sum(image, sigma) / _border_weights(h, w, sigma, image)
    weights = torch.ones_like(image[:, :1]) if mask is None else mask.to(image.dtype)
    stacked = torch.cat([image * weights, weights], dim=1)
    summed = _blur_sum(stacked, sigma) if factor == 1 else _coarse_blur_sum(stacked, sigma, factor)
    numerator, denominator = summed[:, :-1], summed[:, -1:]
    reciprocal = torch.where(denominator > 1e-6, 1 / denominator.clamp_min(1e-6), 0.0)  # one channel
    return numerator * reciprocal


def kernel_size_to_sigma(kernel_size: float) -> float:
    """OpenCV's rule for the sigma of a Gaussian kernel given only its size (``getGaussianKernel`` with sigma <= 0)."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
