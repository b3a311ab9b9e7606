"""Shadows from geometry: a height field from the normals, the shadows it casts, and its ambient occlusion.

Everything here works on ``B x 1 x h x w`` height fields in pixels of their own grid (the relighting works at a
reduced size, :data:`relight_datasets.relighting.SHADOW_WORKING_SIZE`), heights growing towards the camera. Light
directions are unit vectors towards the light in the frame of :mod:`relight_datasets.ops.lighting` (x right, y up,
z towards the camera), so a light's elevation above the image plane is ``asin(z)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .filters import gaussian_blur

MIN_NORMAL_Z = 0.2
"""Normals are treated as facing the camera at least this much when turned into slopes (slope at most 4.9)."""


def height_from_normals(normals: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The height field (``B x 1 x H x W``, pixels) whose normals best match unit ``normals`` (``B x 3 x H x W``)
    inside ``mask`` (``B x 1 x H x W``, soft weights in [0, 1]), flat outside it; least squares in the Fourier domain
    (Frankot and Chellappa, 1988) over the mirrored field, so the image border needs no periodicity. The height's
    zero is arbitrary. Computed in float32 (or float64 for float64 input)."""
    work = normals.float() if normals.dtype != torch.float64 else normals
    weight = mask.to(work.dtype)
    nz = work[:, 2:3].clamp_min(MIN_NORMAL_Z)
    dz_dx = -work[:, 0:1] / nz * weight
    dz_drow = work[:, 1:2] / nz * weight  # rows grow downwards, y upwards
    height, width = normals.shape[-2:]
    p = torch.cat([dz_dx, -dz_dx.flip(-1)], dim=-1)
    p = torch.cat([p, p.flip(-2)], dim=-2)
    q = torch.cat([dz_drow, dz_drow.flip(-1)], dim=-1)
    q = torch.cat([q, -q.flip(-2)], dim=-2)
    wx = 2 * math.pi * torch.fft.rfftfreq(2 * width, device=work.device, dtype=work.dtype)
    wy = 2 * math.pi * torch.fft.fftfreq(2 * height, device=work.device, dtype=work.dtype)[:, None]
    denominator = wx**2 + wy**2
    denominator[0, 0] = 1.0
    rows = []
    for row in range(p.shape[0]):  # one image at a time: a batched FFT's rounding depends on the batch size
        spectrum = (-1j * wx * torch.fft.rfft2(p[row]) - 1j * wy * torch.fft.rfft2(q[row])) / denominator
        spectrum[..., 0, 0] = 0
        rows.append(torch.fft.irfft2(spectrum, s=(2 * height, 2 * width))[..., :height, :width])
    return torch.stack(rows).to(normals.dtype)


def _rotation_grid(rows: int, cols: int, src_rows: int, src_cols: int, cos: torch.Tensor,
                   sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    """``grid_sample`` grid (``B x rows x cols x 2``, align_corners=True) that reads a ``src_rows x src_cols``
    image so that the output's +column axis points along ``(cos, sin)`` (per batch row, in column/row units) of the
    source; with ``inverse`` the same rotation is undone (source = the rotated canvas)."""
    device, dtype = cos.device, cos.dtype
    r = torch.arange(rows, device=device, dtype=dtype)[:, None] - (rows - 1) / 2
    c = torch.arange(cols, device=device, dtype=dtype)[None, :] - (cols - 1) / 2
    cos, sin = cos.view(-1, 1, 1), sin.view(-1, 1, 1)
    if inverse:
        src_c, src_r = c * cos + r * sin, -c * sin + r * cos
    else:
        src_c, src_r = c * cos - r * sin, c * sin + r * cos
    gx = src_c / max((src_cols - 1) / 2, 1e-9)
    gy = src_r / max((src_rows - 1) / 2, 1e-9)
    return torch.stack([gx, gy], dim=-1)


def _canvas_side(diagonal: float, parity_of: int) -> int:
    side = math.ceil(diagonal) + 2
    return side + (side - parity_of) % 2  # same parity: pixel centres of an axis-aligned turn fall on pixel centres


def cast_shadows(height: torch.Tensor, directions: torch.Tensor, radius_deg: torch.Tensor,
                 samples: int = 8) -> torch.Tensor:
    """Visibility (``B x 1 x h x w`` in [0, 1]) of a distant light of angular radius ``radius_deg`` (``B``) from
    unit ``directions`` (``B x 3``) over the height field ``height`` (``B x 1 x h x w``, pixels).

    A point is lit by a direction when no point of the field towards the light rises above the ray:
    ``max_{s > 0} h(p + s d) - s tan(elevation) <= h(p)`` along the light's direction ``d`` in the image, found
    exactly with one running maximum per row after turning the field so that its rows run away from the light.
    The light's disc is sampled at ``samples`` elevations (chord-weighted), so the penumbra widens in proportion to
    the occluder's distance. Lights at the camera (no direction in the image) or behind the image plane give 1.
    """
    batch, _, rows, cols = height.shape
    work = height.float() if height.dtype != torch.float64 else height
    directions = directions.to(device=work.device, dtype=work.dtype)
    across = torch.hypot(directions[:, 0], directions[:, 1])
    casting = (across > 1e-4) & (directions[:, 2] > 0)
    # the turned field's rows run away from the light (rows of the image grow downwards, y upwards)
    cos = torch.where(casting, -directions[:, 0] / across.clamp_min(1e-4), 1.0)
    sin = torch.where(casting, directions[:, 1] / across.clamp_min(1e-4), 0.0)
    diagonal = math.hypot(rows, cols)
    side_r, side_c = _canvas_side(diagonal, rows), _canvas_side(diagonal, cols)
    grid = _rotation_grid(side_r, side_c, rows, cols, cos, sin, inverse=False)
    turned = F.grid_sample(work, grid, mode="bilinear", padding_mode="border", align_corners=True)
    elevation = torch.atan2(directions[:, 2], across)
    u = (torch.arange(samples, device=work.device, dtype=work.dtype) + 0.5) / samples * 2 - 1
    chord = torch.sqrt(1 - u**2)
    radius = torch.deg2rad(radius_deg.to(device=work.device, dtype=work.dtype))
    sample_elevation = (elevation[:, None] + radius[:, None] * u[None, :]).clamp(1e-3, math.pi / 2 - 1e-3)
    slope = torch.tan(sample_elevation).view(batch, samples, 1, 1)
    column = torch.arange(side_c, device=work.device, dtype=work.dtype)
    raised = turned + slope * column  # B x K x R x C: height plus the ray's climb back to column 0
    ahead = raised.cummax(-1).values  # the highest occluder between the light and each column (itself included)
    ahead = torch.cat([torch.full_like(ahead[..., :1], -torch.inf), ahead[..., :-1]], dim=-1)
    lit = (ahead <= raised + 1e-4).to(work.dtype)
    visibility = (lit * (chord / chord.sum()).view(1, samples, 1, 1)).sum(dim=1, keepdim=True)
    back = _rotation_grid(rows, cols, side_r, side_c, cos, sin, inverse=True)
    visibility = F.grid_sample(visibility, back, mode="bilinear", padding_mode="border", align_corners=True)
    visibility = torch.where(casting.view(-1, 1, 1, 1), visibility, torch.ones_like(visibility))
    return visibility.clamp(0, 1).to(height.dtype)


def ambient_occlusion(height: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Ambient occlusion (``B x 1 x h x w``, 1 = open sky) of a height field in pixels: at each scale ``sigma``
    (pixels), how far the point lies below its Gaussian-weighted neighbourhood, as a mean slope ``x``, occluding
    ``sin(atan(x / 2))`` of the sky; averaged over the scales. A plane (tilted or not) is 1 away from the border;
    a crease or a hollow is darker the deeper and narrower it is."""
    occlusion = torch.zeros_like(height)
    for sigma in sigmas:
        below = (gaussian_blur(height, sigma) - height).clamp_min(0) / (2 * sigma)
        occlusion += below * torch.rsqrt(1 + below * below)
    return 1 - occlusion / len(sigmas)


def displace(image: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``image`` (``B x C x h x w``) read at each pixel plus ``shift`` (``B x 2 x h x w``: columns, rows),
    bilinearly, edges repeated."""
    batch, _, rows, cols = image.shape
    r = torch.arange(rows, device=image.device, dtype=image.dtype).view(1, rows, 1)
    c = torch.arange(cols, device=image.device, dtype=image.dtype).view(1, 1, cols)
    gx = (c + shift[:, 0]) / max((cols - 1) / 2, 1e-9) - 1
    gy = (r + shift[:, 1]) / max((rows - 1) / 2, 1e-9) - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
