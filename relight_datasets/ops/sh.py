"""Second-order spherical harmonics: environment light as 9 coefficients per colour channel.

Frame as in :mod:`relight_datasets.ops.lighting`: x right, y up, z towards the camera. The basis is the real SH
basis in the order ``Y00, Y1-1 (y), Y10 (z), Y11 (x), Y2-2 (xy), Y2-1 (yz), Y20 (3z^2 - 1), Y21 (xz), Y22 (x^2 -
y^2)``. Radiance ``L(w)`` projects to ``L_k = integral L(w) Y_k(w) dw``; the irradiance of a surface with normal
``n`` is then ``E(n) = sum_k A_l(k) L_k Y_k(n)`` with ``A_0 = pi``, ``A_1 = 2 pi / 3``, ``A_2 = pi / 4``
(Ramamoorthi and Hanrahan, "An efficient representation for irradiance environment maps", SIGGRAPH 2001).
Functions here work with *irradiance* coefficients ``c_k = A_l(k) L_k``, so ``E(n) = sum_k c_k Y_k(n)``: the 27
numbers (``3 x 9``, channel-major) a dataset row stores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SH_COEFFICIENTS = 9
_BAND_OF = (0, 1, 1, 1, 2, 2, 2, 2, 2)
COSINE_LOBE = (math.pi, 2 * math.pi / 3, math.pi / 4)
"""``A_l``: the clamped cosine's SH coefficients per band, which turn radiance into irradiance."""
MIRROR_X_SIGNS = (1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0)
"""Sign of each coefficient under ``x -> -x`` (a horizontally mirrored image)."""


def sh_basis(directions: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The 9 basis functions at unit ``directions`` (x, y, z along ``dim``); the 9 values replace that axis."""
    x, y, z = directions.unbind(dim)
    basis = [
        torch.full_like(x, 0.282095),
        0.488603 * y,
        0.488603 * z,
        0.488603 * x,
        1.092548 * x * y,
        1.092548 * y * z,
        0.315392 * (3 * z * z - 1),
        1.092548 * x * z,
        0.546274 * (x * x - y * y),
    ]
    return torch.stack(basis, dim=dim if dim >= 0 else directions.ndim + dim)


def radiance_to_irradiance(radiance_sh: torch.Tensor) -> torch.Tensor:
    """Radiance coefficients ``... x 9`` -> irradiance coefficients (band-wise times ``A_l``)."""
    lobe = torch.tensor([COSINE_LOBE[band] for band in _BAND_OF], device=radiance_sh.device, dtype=radiance_sh.dtype)
    return radiance_sh * lobe


def directional_irradiance_sh(direction: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """Irradiance coefficients ``3 x 9`` of a distant point light: ``color * max(0, n . direction)`` to second
    order. ``direction``: unit 3-vector towards the light; ``color``: linear RGB (3) times intensity."""
    return color[:, None] * radiance_to_irradiance(sh_basis(direction))[None, :]


def irradiance(coefficients: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """``E(n)``: irradiance coefficients ``B x 3 x 9`` evaluated at unit ``normals`` ``B x 3 x H x W`` ->
    ``B x 3 x H x W`` (linear RGB; the coefficients are cast to the normals' device and dtype)."""
    basis = sh_basis(normals, dim=1)  # B x 9 x H x W
    coefficients = coefficients.to(device=normals.device, dtype=normals.dtype)
    return torch.einsum("bck,bkhw->bchw", coefficients, basis)


def equirect_directions(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit directions (``H x W x 3``, float64, CPU) at the texel centres of an equirectangular map and each
    texel's solid angle (``H x W``). Row 0 looks straight up (+y); column 0 looks at the camera (+z) and columns
    turn towards +x; the solid angles sum to 4 pi."""
    theta = (torch.arange(height, device="cpu", dtype=torch.float64) + 0.5) * (math.pi / height)  # from +y
    phi = (torch.arange(width, device="cpu", dtype=torch.float64) + 0.5) * (2 * math.pi / width)
    sin_t = torch.sin(theta)[:, None]
    directions = torch.stack(
        [sin_t * torch.sin(phi)[None, :], torch.cos(theta)[:, None].expand(height, width),
         sin_t * torch.cos(phi)[None, :]], dim=-1)
    band = (torch.cos(theta - math.pi / (2 * height)) - torch.cos(theta + math.pi / (2 * height)))
    solid_angle = (band * (2 * math.pi / width))[:, None].expand(height, width)
    return directions, solid_angle


def project_radiance(radiance: torch.Tensor, yaw_deg: float = 0.0) -> torch.Tensor:
    """Irradiance coefficients ``3 x 9`` (float64, CPU) of an equirectangular radiance map ``H x W x 3`` (linear,
    layout of :func:`equirect_directions`), turned by ``yaw_deg`` about the vertical axis (the map's column 0 then
    faces ``yaw_deg`` degrees towards +x)."""
    radiance = radiance.to(device="cpu", dtype=torch.float64)
    directions, solid_angle = equirect_directions(radiance.shape[0], radiance.shape[1])
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    x, y, z = directions.unbind(-1)
    turned = torch.stack([c * x + s * z, y, -s * x + c * z], dim=-1)
    weights = sh_basis(turned) * solid_angle[..., None]  # H x W x 9
    return radiance_to_irradiance(torch.einsum("hwc,hwk->ck", radiance, weights))


def fit_irradiance(image_linear: torch.Tensor, albedo_linear: torch.Tensor, normals: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """The irradiance coefficients ``B x 3 x 9`` (float64) that best explain ``image = albedo * E(n)`` over the
    mask, by least squares per channel: an estimate of the light a photo was taken under. Images ``B x 3 x H x W``
    linear, unit ``normals`` ``B x 3 x H x W``, ``mask`` ``B x 1 x H x W`` (pixels where > 0.5 count)."""
    basis = sh_basis(normals.double(), dim=1)  # B x 9 x H x W
    weight = (mask > 0.5).double()
    design = albedo_linear.double()[:, :, None] * basis[:, None]  # B x 3 x 9 x H x W
    gram = torch.einsum("bckhw,bclhw,bxhw->bckl", design, design, weight)
    target = torch.einsum("bckhw,bchw,bxhw->bck", design, image_linear.double(), weight)
    ridge = 1e-6 * torch.eye(SH_COEFFICIENTS, device=gram.device, dtype=gram.dtype)
    return torch.linalg.solve(gram + ridge, target)


def dominant_direction(coefficients: torch.Tensor) -> torch.Tensor:
    """Unit direction (3) the light of irradiance coefficients ``3 x 9`` comes from most: the luminance-weighted
    first band, ``(Y11, Y1-1, Y10)`` as ``(x, y, z)``; +z when the band is empty."""
    luma = torch.tensor((0.2126, 0.7152, 0.0722), device=coefficients.device, dtype=coefficients.dtype)
    band = luma @ coefficients[:, 1:4]
    vector = torch.stack([band[2], band[0], band[1]])
    length = vector.norm()
    if length < 1e-9:
        return torch.tensor((0.0, 0.0, 1.0), device=coefficients.device, dtype=coefficients.dtype)
    return vector / length


def irradiance_table(coefficients: torch.Tensor, size: int = 65) -> torch.Tensor:
    """``E(n)`` of irradiance coefficients ``B x 3 x 9`` split as ``T(n_x, n_y) + n_z U(n_x, n_y)`` (every basis
    function is a polynomial in x and y plus z times one, since ``z^2 = 1 - x^2 - y^2``) and tabulated:
    ``B x 6 x size x size`` (T's three channels, then U's), column ``j`` at ``n_x = -1 + 2 j / (size - 1)`` and row
    ``i`` at ``n_y`` likewise. Both parts are smooth, so bilinear reads of the table are accurate to about 1e-4 of
    the light; evaluated on the coefficients' device and dtype."""
    axis = torch.linspace(-1.0, 1.0, size, device=coefficients.device, dtype=coefficients.dtype)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    one = torch.ones_like(x)
    flat = torch.stack([0.282095 * one, 0.488603 * y, 0 * one, 0.488603 * x, 1.092548 * x * y, 0 * one,
                        0.315392 * (2 - 3 * x * x - 3 * y * y), 0 * one, 0.546274 * (x * x - y * y)])
    linear_in_z = torch.stack([0 * one, 0 * one, 0.488603 * one, 0 * one, 0 * one, 1.092548 * y, 0 * one,
                               1.092548 * x, 0 * one])
    return torch.cat([torch.einsum("bck,khw->bchw", coefficients, flat),
                      torch.einsum("bck,khw->bchw", coefficients, linear_in_z)], dim=1)


def irradiance_lookup(table: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """``E(n)`` at unit ``normals`` (``B x 3 x H x W``) from an :func:`irradiance_table` -> ``B x 3 x H x W``: one
    bilinear read of six channels per pixel instead of nine basis functions."""
    grid = normals[:, :2].permute(0, 2, 3, 1).to(table.dtype)
    parts = F.grid_sample(table, grid, mode="bilinear", padding_mode="border", align_corners=True).to(normals.dtype)
    return torch.addcmul(parts[:, :3], parts[:, 3:], normals[:, 2:3])
