"""Colour-space conversions and colours of light, for batched float images.

Images are sRGB-encoded in [0, 1] unless a name says ``linear``; light is added and multiplied in linear sRGB
(Rec. 709 primaries, D65 white).
"""

from __future__ import annotations

import torch

# sRGB (D65) -> CIE XYZ
_RGB_TO_XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    device="cpu",
    dtype=torch.float64,
)
_WHITE_D65 = (0.950456, 1.0, 1.088754)


_REC709_LUMA = (0.2126, 0.7152, 0.0722)
WHITE_BALANCE_KELVIN = 6504.0
"""Colour temperature the camera is white-balanced to (D65's): light of this temperature is neutral grey."""


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light (the IEC 61966-2-1 curve), any shape."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light -> sRGB-encoded values (negative values map to 0; values above 1 stay above 1)."""
    return torch.where(x <= 0.0031308, 12.92 * x.clamp_min(0), 1.055 * x.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def planckian_xy(kelvin: float) -> tuple[float, float]:
    """CIE 1931 chromaticity of a black body at ``kelvin`` (1667 to 25000 K), by the cubic-spline approximation of
    Kim et al. (2002, US patent 7024034), within 0.001 of the exact locus."""
    t = min(max(float(kelvin), 1667.0), 25000.0)
    if t <= 4000:
        x = -0.2661239e9 / t**3 - 0.2343589e6 / t**2 + 0.8776956e3 / t + 0.179910
    else:
        x = -3.0258469e9 / t**3 + 2.1070379e6 / t**2 + 0.2226347e3 / t + 0.240390
    if t <= 2222:
        y = -1.1063814 * x**3 - 1.34811020 * x**2 + 2.18555832 * x - 0.20219683
    elif t <= 4000:
        y = -0.9549476 * x**3 - 1.37418593 * x**2 + 2.09137015 * x - 0.16748867
    else:
        y = 3.0817580 * x**3 - 5.87338670 * x**2 + 3.75112997 * x - 0.37001483
    return x, y


def _xy_to_linear_rgb(x: float, y: float) -> tuple[float, float, float]:
    inverse = torch.linalg.inv(_RGB_TO_XYZ)
    xyz = torch.tensor([x / y, 1.0, (1 - x - y) / y], device="cpu", dtype=torch.float64)
    return tuple((inverse @ xyz).tolist())


def kelvin_to_rgb(kelvin: float, tint: float = 0.0) -> tuple[float, float, float]:
    """Linear-sRGB colour of light at ``kelvin`` along the Planckian locus, as a camera white-balanced to
    :data:`WHITE_BALANCE_KELVIN` records it (so 6500 K is neutral, 3200 K orange, 10000 K blue), with Rec. 709
    luminance 1. ``tint`` shifts it towards green (> 0) or magenta (< 0): 0.1 is a light tint."""
    rgb = _xy_to_linear_rgb(*planckian_xy(kelvin))
    white = _xy_to_linear_rgb(*planckian_xy(WHITE_BALANCE_KELVIN))
    balanced = [max(c / w, 0.0) for c, w in zip(rgb, white, strict=True)]
    tinted = [balanced[0] * (1 - tint / 2), balanced[1] * (1 + tint), balanced[2] * (1 - tint / 2)]
    luma = sum(w * c for w, c in zip(_REC709_LUMA, tinted, strict=True))
    return tuple(c / luma for c in tinted)


def kelvin_word(kelvin: float) -> str:
    """How a photographer would call light of ``kelvin``: ``"warm"``, ``"neutral"``, ``"cool"``, ..."""
    if kelvin < 3800:
        return "warm"
    if kelvin < 5000:
        return "slightly warm"
    if kelvin <= 7200:
        return "neutral"
    if kelvin <= 9500:
        return "slightly cool"
    return "cool"


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``B x 3 x H x W`` in [0, 1] -> CIE Lab (L in [0, 100], a/b roughly [-128, 127])."""
    matrix = _RGB_TO_XYZ.to(rgb.device, rgb.dtype)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, srgb_to_linear(rgb))
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
    return linear_to_srgb(linear.clamp(0, 1)).clamp(0, 1)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma of ``B x 3 x H x W`` -> ``B x 1 x H x W``."""
    weights = torch.tensor(_REC709_LUMA, device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)
