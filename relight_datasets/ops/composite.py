"""Alpha compositing of a relit person over a background."""

from __future__ import annotations

import torch

from .filters import gaussian_blur

BACKGROUND_GRAY = 128 / 255


def feathered_alpha(mask: torch.Tensor, feather_px: float) -> torch.Tensor:
    """Soft alpha ``B x 1 x H x W`` from a binary mask: Gaussian-feathered *inwards* only, so alpha is exactly 0
    wherever the mask is 0 and rises to 1 within a few ``feather_px`` of the edge."""
    binary = (mask > 0.5).to(mask.dtype)
    if feather_px <= 0:
        return binary
    return (gaussian_blur(binary, feather_px) * 2 - 1).clamp(0, 1) * binary


def background_plate(image: torch.Tensor, mode: str) -> torch.Tensor:
    """The background to composite over: the ``original`` image, flat ``gray`` (128/255) or ``black``."""
    if mode == "original":
        return image
    if mode == "gray":
        return torch.full_like(image, BACKGROUND_GRAY)
    if mode == "black":
        return torch.zeros_like(image)
    raise ValueError(f"unknown background mode {mode!r} (valid: original, gray, black)")


def composite(foreground: torch.Tensor, background: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``foreground * alpha + background * (1 - alpha)``; images ``B x 3 x H x W``, alpha ``B x 1 x H x W``.
    One fused ``lerp``, exact at both ends: where alpha is 0 the background is returned bit for bit, where it is 1
    the foreground."""
    return torch.lerp(background, foreground, alpha)
