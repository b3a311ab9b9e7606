"""How banded a field is that should be smooth (a height field, normals, a shading or albedo gain).

Banding here is what a coarse grid leaves behind when it is upsampled with a kernel that is not smooth enough: with
bilinear upsampling the slope is constant within each coarse cell and jumps at its edges, so the second difference
of the field is a train of spikes, one per cell. On a smooth field the second difference (the curvature) is itself
smooth and changes little within a few pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .filters import gaussian_blur

BANDING_SMOOTHING_SIGMA = 2.0
"""Sigma (pixels) of the blur that takes a curvature to its smooth part; spikes a few pixels apart are averaged out."""


def _second_differences(field: torch.Tensor, valid: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Second difference ``f[i - 1] - 2 f[i] + f[i + 1]`` along ``dim`` (-1: x, -2: y), zero-padded to the input's
    size, and where it is defined: all three pixels valid. Shapes ``B x C x H x W`` and ``B x 1 x H x W``."""
    n = field.shape[dim]
    centre, before, after = (field.narrow(dim, start, n - 2) for start in (1, 0, 2))
    inside = valid.narrow(dim, 0, n - 2) * valid.narrow(dim, 1, n - 2) * valid.narrow(dim, 2, n - 2)
    padding = (1, 1, 0, 0) if dim == -1 else (0, 0, 1, 1)
    curvature = F.pad((before - 2 * centre + after) * inside, padding)
    return curvature, F.pad(inside, padding)


def banding_score(field: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of a field's curvature energy that is not smooth: 0 for a smooth field, near 1 for a staircase slope.

    ``field``: ``B x C x H x W`` float (any units, e.g. a height field in pixels or unit normals); ``mask``:
    ``B x 1 x H x W``, the pixels to judge (> 0.5), all pixels if None. Along x and along y, the second difference
    ``d2`` is compared with its smooth part ``s`` (a Gaussian of ``BANDING_SMOOTHING_SIGMA`` px, averaged over the
    judged pixels only, so the mask's edge adds nothing); the score is ``sum (d2 - s)^2 / sum d2^2`` per image,
    summed over channels and both directions. Returns ``B`` scores in [0, 1] (0 where the field is flat).

    A field upsampled bilinearly (or with Keys' bicubic) by 4 or more scores about 0.5 (its curvature sits on the
    coarse grid lines); a smooth field sampled finely enough scores below about 0.01. The score judges float fields:
    8-bit quantisation, and float32 rounding where the curvature is tiny, add pixel-scale curvature that counts too.
    """
    if field.dim() != 4:
        raise ValueError(f"banding_score: expected a B x C x H x W field, got shape {tuple(field.shape)}")
    valid = torch.ones_like(field[:, :1]) if mask is None else (mask > 0.5).to(field.dtype)
    rough = torch.zeros(field.shape[0], device=field.device, dtype=field.dtype)
    total = torch.zeros(field.shape[0], device=field.device, dtype=field.dtype)
    for dim in (-1, -2):
        curvature, defined = _second_differences(field, valid, dim)
        smooth = gaussian_blur(curvature, BANDING_SMOOTHING_SIGMA, defined)
        rough += ((curvature - smooth) ** 2 * defined).sum(dim=(1, 2, 3))
        total += (curvature**2 * defined).sum(dim=(1, 2, 3))
    return torch.where(total > 0, rough / total.clamp_min(torch.finfo(field.dtype).tiny), 0.0)
