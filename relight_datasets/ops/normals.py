"""Surface normals: from a depth map, from a silhouette, predicted ones made to face the camera, and their RGB
encoding.

Normals are unit vectors in the camera frame of :mod:`relight_datasets.ops.lighting` (x right, y up, z towards the
camera), shaped ``B x 3 x H x W``.
"""

from __future__ import annotations

import math

import torch

from .filters import gaussian_blur


def unit_vectors(vectors: torch.Tensor) -> torch.Tensor:
    """``B x 3 x H x W`` scaled to unit length per pixel. (An explicit three-term sum: ``F.normalize`` over the
    channel dimension is a strided reduction that is many times slower on CPU.)"""
    squared = vectors[:, 0:1] ** 2 + vectors[:, 1:2] ** 2 + vectors[:, 2:3] ** 2
    return vectors * torch.rsqrt(squared.clamp_min(1e-24))


def _image_gradients(height_field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slopes of ``B x 1 x H x W`` (H, W >= 3) along x (right) and y (down), per pixel: central differences inside,
    second-order one-sided differences on the first and last row and column (exact for a quadratic, like the
    central ones, so the border shows no kink)."""
    if min(height_field.shape[-2:]) < 3:
        raise ValueError(f"normals need a height field of at least 3 x 3 pixels, got {tuple(height_field.shape)}")
    slopes = []
    for dim in (-1, -2):
        n = height_field.shape[dim]
        row = [height_field.narrow(dim, index, 1) for index in (0, 1, 2, n - 3, n - 2, n - 1)]
        slope = torch.empty_like(height_field)
        torch.sub(height_field.narrow(dim, 2, n - 2), height_field.narrow(dim, 0, n - 2),
                  out=slope.narrow(dim, 1, n - 2)).mul_(0.5)
        slope.narrow(dim, 0, 1).copy_((4 * row[1] - 3 * row[0] - row[2]) * 0.5)
        slope.narrow(dim, n - 1, 1).copy_((3 * row[5] - 4 * row[4] + row[3]) * 0.5)
        slopes.append(slope)
    return slopes[0], slopes[1]


def _normals_from_slopes(dz_dx: torch.Tensor, dz_dy_down: torch.Tensor) -> torch.Tensor:
    """Unit normals ``normalize(-dz/dx, +dz/dy_down, 1)`` from two ``B x 1 x H x W`` slopes -> ``B x 3 x H x W``.
    (y is flipped because image rows grow downwards while y points up.) Written into one output tensor, without
    temporaries: large temporaries dominate the time at 1024 px."""
    b, _, h, w = dz_dx.shape
    normals = torch.empty(b, 3, h, w, device=dz_dx.device, dtype=dz_dx.dtype)
    z = torch.mul(dz_dx, dz_dx, out=normals[:, 2:3]).addcmul_(dz_dy_down, dz_dy_down).add_(1).rsqrt_()
    torch.mul(dz_dx, z, out=normals[:, 0:1]).neg_()
    torch.mul(dz_dy_down, z, out=normals[:, 1:2])
    return normals


def normals_from_height(height: torch.Tensor) -> torch.Tensor:
    """Normals of the surface ``z = height(x, y)`` with height in pixels (towards the camera), ``B x 1 x H x W``."""
    return _normals_from_slopes(*_image_gradients(height))


def normals_from_depth(depth: torch.Tensor, larger_is_closer: bool = True, relief: float = 0.5) -> torch.Tensor:
    """Normals from relative depth ``B x 1 x H x W`` in any units (e.g. a depth network's disparity).

    Each map is normalised to [0, 1] by its own 2nd-98th percentile range, then treated as a height field whose
    relief is ``relief`` times the image's long side. The result depends on neither the depth units nor the
    image size. ``larger_is_closer``: True for disparity-like outputs (Depth Anything, DPT), False for metric depth.
    """
    b, _, h, w = depth.shape
    flat = depth.reshape(b, -1).double()
    probabilities = torch.tensor([0.02, 0.98], device=flat.device, dtype=flat.dtype)
    q = torch.quantile(flat[:, :: max(1, flat.shape[1] // 65536)], probabilities, dim=1)
    low, high = q[0].view(b, 1, 1, 1), q[1].view(b, 1, 1, 1)
    unit = ((depth.double() - low) / (high - low).clamp_min(1e-12)).to(depth.dtype)
    if not larger_is_closer:
        unit = 1 - unit
    return normals_from_height(unit * relief * max(h, w))


def normals_from_mask(mask: torch.Tensor, inflation_sigma: float = 0.12, edge_tilt_deg: float = 70.0) -> torch.Tensor:
    """Normals of a silhouette "inflated" into a smooth bulge, so shading follows the person's outline.

    The height field is the mask blurred with sigma ``inflation_sigma * sqrt(mask area)`` pixels (a soft distance
    transform), scaled so the steepest slope (at the silhouette) tilts the normal by ``edge_tilt_deg``. Inside
    the body the surface faces the camera; towards the outline it turns outwards. ``mask``: ``B x 1 x H x W`` in
    [0, 1] -> ``B x 3 x H x W``; outside the mask the normals face the camera.
    """
    area = mask.flatten(1).double().sum(dim=1).clamp_min(1.0)
    sigmas = (inflation_sigma * area.sqrt()).clamp_min(1.0).tolist()
    heights = []
    for index, sigma in enumerate(sigmas):
        bulge = gaussian_blur(mask[index : index + 1], sigma)
        # Peak slope of a blurred step edge is 1 / (sigma sqrt(2 pi)); scale it to tan(edge tilt).
        amplitude = math.tan(math.radians(edge_tilt_deg)) * sigma * math.sqrt(2 * math.pi)
        heights.append(bulge * amplitude)
    dz_dx, dz_dy_down = _image_gradients(torch.cat(heights))
    inside = (mask > 0.5).to(dz_dx.dtype)  # zero slope outside: the normal faces the camera, (0, 0, 1)
    return _normals_from_slopes(dz_dx * inside, dz_dy_down * inside)


def facing_camera(normals: torch.Tensor) -> torch.Tensor:
    """Unit normals ``B x 3 x H x W`` with their z clamped at 0 and renormalised: a surface the camera sees cannot
    face away from it, so a predicted normal that does is folded onto the image plane; the others keep their
    direction."""
    return unit_vectors(torch.cat([normals[:, :2], normals[:, 2:3].clamp_min(0)], dim=1))


def encode_normals(normals: torch.Tensor) -> torch.Tensor:
    """Unit normals ``B x 3 x H x W`` -> RGB in [0, 1] as ``(n + 1) / 2`` (R = x right, G = y up, B = z)."""
    return (normals + 1) * 0.5


def decode_normals(rgb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_normals`, renormalised to unit length (undoes 8-bit quantisation error)."""
    return unit_vectors(rgb * 2 - 1)
