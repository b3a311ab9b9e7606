"""Colour-space conversions and layout helpers for batched float images."""

from __future__ import annotations

import torch

# sRGB (D65) -> CIE XYZ
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    device="cpu",
    dtype=torch.float64,
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


def _linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``B x 3 x H x W`` in [0, 1] -> CIE Lab (L in [0, 100], a/b roughly [-128, 127])."""
    matrix = _RGB_TO_XYZ.to(rgb.device, rgb.dtype)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, _srgb_to_linear(rgb))
    white = torch.tensor(_WHITE_D65, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    t = xyz / white
    delta = 6 / 29
    f = torch.where(t > delta**3, t.clamp_min(1e-12) ** (1 / 3), t / (3 * delta**2) + 4 / 29)
    lightness = 116 * f[:, 1:2] - 16
    a = 500 * (f[:, 0:1] - f[:, 1:2])
    b = 200 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([lightness, a, b], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab ``B x 3 x H x W`` -> sRGB in [0, 1] (clipped)."""
    fy = (lab[:, 0:1] + 16) / 116
    fx = fy + lab[:, 1:2] / 500
    fz = fy - lab[:, 2:3] / 200
    f = torch.cat([fx, fy, fz], dim=1)
    delta = 6 / 29
    t = torch.where(f > delta, f**3, 3 * delta**2 * (f - 4 / 29))
    white = torch.tensor(_WHITE_D65, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    inverse = torch.linalg.inv(_RGB_TO_XYZ).to(lab.device, lab.dtype)
    linear = torch.einsum("ij,bjhw->bihw", inverse, t * white)
    return _linear_to_srgb(linear.clamp(0, 1)).clamp(0, 1)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma of ``B x 3 x H x W`` -> ``B x 1 x H x W``."""
    weights = torch.tensor([0.2126, 0.7152, 0.0722], device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)
