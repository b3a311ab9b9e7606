"""Light directions and shading models.

Coordinates: x to the right, y up, z towards the camera (the viewer looks along -z). Normals use the same frame.
A light at elevation ``e`` and azimuth ``a`` (degrees) has direction
``(cos e cos a, cos e sin a, sin e)``: elevation 90 is frontal, 0 grazing; azimuth 0 is from the right, 90 from
above, 180 from the left.
"""

from __future__ import annotations

import math

import torch

VIEW_DIRECTION = (0.0, 0.0, 1.0)


def light_direction(elevation_deg: float, azimuth_deg: float) -> tuple[float, float, float]:
    """Unit vector pointing from the surface towards the light."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return (math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e))


def _per_image_vectors(vectors: torch.Tensor | list, like: torch.Tensor) -> torch.Tensor:
    """``B x 3`` light directions (tensor or nested list) -> ``B x 3 x 1 x 1`` on ``like``'s device and dtype."""
    return torch.as_tensor(vectors, dtype=like.dtype, device=like.device).view(-1, 3, 1, 1)


def lambertian_shading(normals: torch.Tensor, light: torch.Tensor | list, ambient: torch.Tensor | list) -> torch.Tensor:
    """``ambient + (1 - ambient) * max(0, N . L)``.

    ``normals``: ``B x 3 x H x W`` unit vectors; ``light``: ``B x 3`` unit vectors; ``ambient``: ``B`` floats in
    [0, 1]. Returns ``B x 1 x H x W`` in [0, 1].
    """
    ambient_t = torch.as_tensor(ambient, dtype=normals.dtype, device=normals.device).view(-1, 1, 1, 1)
    n_dot_l = (normals * _per_image_vectors(light, normals)).sum(dim=1, keepdim=True).clamp_min(0)
    return (ambient_t + (1 - ambient_t) * n_dot_l).clamp(0, 1)


def phong_specular(
    normals: torch.Tensor, light: torch.Tensor | list, intensity: torch.Tensor | list, shininess: torch.Tensor | list
) -> torch.Tensor:
    """Phong highlight ``intensity * max(0, R . V) ** shininess`` with ``R = 2 (N . L) N - L`` and the viewer on +z.

    Zero where the surface faces away from the light. Shapes as in :func:`lambertian_shading`; ``intensity`` and
    ``shininess``: ``B`` floats. Returns ``B x 1 x H x W``.
    """
    l_vec = _per_image_vectors(light, normals)
    n_dot_l = (normals * l_vec).sum(dim=1, keepdim=True)
    reflected = 2 * n_dot_l * normals - l_vec
    r_dot_v = reflected[:, 2:3].clamp_min(0)  # V = (0, 0, 1)
    shininess_t = torch.as_tensor(shininess, dtype=normals.dtype, device=normals.device).view(-1, 1, 1, 1)
    intensity_t = torch.as_tensor(intensity, dtype=normals.dtype, device=normals.device).view(-1, 1, 1, 1)
    return intensity_t * r_dot_v.pow(shininess_t) * (n_dot_l > 0)


def describe_direction(elevation_deg: float, azimuth_deg: float) -> str:
    """Where a light comes from, in words: e.g. ``"the upper left"``, ``"the front, slightly from the right"``."""
    sectors = ["the right", "the upper right", "above", "the upper left", "the left", "the lower left", "below",
               "the lower right"]
    side = sectors[int(((azimuth_deg % 360) + 22.5) // 45) % 8]
    if elevation_deg >= 65:
        return f"the front, slightly from {side}"
    if elevation_deg <= 25:
        return f"{side}, at a grazing angle"
    return side
