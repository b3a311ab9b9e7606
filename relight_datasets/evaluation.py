"""Quality measured against ground truth: metrics, synthetic scenes with known truth, and the runs that score the
build's albedo, normals, segmentation and banding on them (``scripts/evaluate.py`` writes ``docs/quality.md``).

Metrics (pure functions over batched tensors; every one returns one value per image):

- :func:`scale_invariant_local_mse`: the MIT intrinsic-images benchmark's local MSE (Grosse et al., ICCV 2009);
- :func:`angular_error_deg` with :func:`masked_mean_and_percentile`: per-pixel angle between normals;
- :func:`mask_iou` and :func:`boundary_f_score` (the contour accuracy F of Perazzi et al., CVPR 2016, DAVIS);
- :func:`banding_score`: second- over first-difference energy, near 0 on smooth fields, near 2 on staircases.

Scenes: :func:`person_alpha` (a feathered head, neck and shoulders silhouette), :func:`bump_shading` (a known
smooth Lambertian shading at face scale), :func:`analytic_shape` (sphere, ellipsoid, raised box: height, mask and
exact normals).
Images are ``B x C x H x W`` floats in [0, 1] unless stated otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import BuildConfig
from .ops.face_mesh import rasterize, vertex_normals
from .ops.filters import gaussian_blur
from .ops.lighting import lambertian_shading, light_direction
from .ops.normals import decode_normals, encode_normals, normals_from_depth, unit_vectors
from .relighting import quantize_to_8bit
from .transforms import AlbedoStage, NormalsStage, SegmentationStage
from .transforms.base import to_uint8_array, uint8_to_unit, upload_images

LMSE_WINDOW_FRACTION = 1 / 8
"""si-LMSE window side as a fraction of the image's long side (stride: half a window)."""
BOUNDARY_TOLERANCE_FRACTION = 0.01
"""Boundary F-score tolerance: this fraction of the image diagonal, rounded, at least 1 pixel."""
SHAPES = ("sphere", "ellipsoid", "box")
HEAD_CENTRE = (0.5, 0.45)
"""Centre of the head in an aligned face crop, as fractions of the frame (x right, y down)."""
BUMP_SIGMA_FRACTION = 0.2
"""Width of the shading bump of the albedo scenes, as a fraction of the image side (face scale)."""
BUMP_TILT_DEG = 65.0
"""Steepest normal tilt on the shading bump."""


# ---------------------------------------------------------------------------------------------------------------------
# Metrics


def _window_sums(values: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Sums of ``B x C x H x W`` over ``window``-square windows every ``stride`` pixels, zero-padded at the bottom and
    right so the windows cover every pixel. Returns ``B x C x Wy x Wx``."""
    h, w = values.shape[-2:]
    pad_h = window + math.ceil(max(0, h - window) / stride) * stride - h
    pad_w = window + math.ceil(max(0, w - window) / stride) * stride - w
    padded = F.pad(values, (0, pad_w, 0, pad_h))
    return F.avg_pool2d(padded, window, stride) * (window * window)


def scale_invariant_local_mse(prediction: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor,
                              window_fraction: float = LMSE_WINDOW_FRACTION) -> torch.Tensor:
    """Scale-invariant local MSE (si-LMSE) of Grosse et al., "Ground truth dataset and baseline evaluations for
    intrinsic image algorithms", ICCV 2009 (the MIT intrinsic-images benchmark), inside ``mask``.

    Square windows of side ``k = round(window_fraction * max(H, W))`` every ``k / 2`` pixels. In each window ``w``
    and channel ``c`` the prediction gets its own best scale ``alpha = sum(m t p) / sum(m p p)`` (0 where
    ``sum(m p p) <= 1e-10``), and

        si-LMSE = sum_{w,c} sum(m (t - alpha p)^2) / sum_{w,c} sum(m t^2),

    i.e. the error normalised by that of predicting zero: 0 for a prediction equal to the truth up to one scale per
    window, 1 for zero. ``prediction``, ``truth``: ``B x C x H x W``; ``mask``: ``B x 1 x H x W`` weights in
    [0, 1]. Returns ``B`` values (float64). (The benchmark's images are grey; here each colour channel is scored as
    one more grey image.)
    """
    window = max(2, round(window_fraction * max(truth.shape[-2:])))
    stride = max(1, window // 2)
    p, t, m = (x.to(torch.float64) for x in (prediction, truth, mask))
    truth_energy = _window_sums(m * t * t, window, stride)
    cross = _window_sums(m * t * p, window, stride)
    prediction_energy = _window_sums(m * p * p, window, stride)
    explained = torch.where(prediction_energy > 1e-10, cross * cross / prediction_energy.clamp_min(1e-10), 0.0)
    error = (truth_energy - explained).clamp_min(0).sum(dim=(1, 2, 3))
    return error / truth_energy.sum(dim=(1, 2, 3)).clamp_min(1e-12)


def angular_error_deg(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between normal fields ``B x 3 x H x W`` (any lengths), per pixel: ``B x 1 x H x W``.
    ``atan2(|p x t|, p . t)``, accurate near 0 degrees as well as near 180."""
    p, t = F.normalize(prediction, dim=1), F.normalize(truth, dim=1)
    sine = torch.linalg.cross(p, t, dim=1).norm(dim=1, keepdim=True)
    cosine = (p * t).sum(dim=1, keepdim=True)
    return torch.rad2deg(torch.atan2(sine, cosine))


def masked_mean_and_percentile(values: torch.Tensor, mask: torch.Tensor,
                               percentile: float = 95.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``percentile``-th percentile of ``values`` (``B x 1 x H x W``) over the pixels where ``mask``
    (``B x 1 x H x W``) is > 0.5, per image: two tensors of ``B`` values (NaN for an empty mask)."""
    inside = torch.where(mask > 0.5, values, torch.full_like(values, float("nan"))).flatten(1)
    q = torch.tensor(percentile / 100.0, device=values.device, dtype=values.dtype)
    return inside.nanmean(dim=1), torch.nanquantile(inside, q, dim=1)


def mask_iou(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Intersection over union of binary masks (``B x 1 x H x W``, > 0.5 is inside), per image: ``B`` values; 1 when
    both are empty."""
    p, t = prediction > 0.5, truth > 0.5
    intersection = (p & t).flatten(1).sum(dim=1).to(torch.float64)
    union = (p | t).flatten(1).sum(dim=1).to(torch.float64)
    return torch.where(union > 0, intersection / union.clamp_min(1), 1.0)


def mask_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``B x 1 x H x W``: inside pixels (> 0.5) with a 4-neighbour outside. The image frame is not a
    boundary (a mask touching the border has no contour there)."""
    inside = (mask > 0.5).to(torch.float32)
    cross = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], device=mask.device, dtype=torch.float32)
    # replicate padding: beyond the frame lies a copy of the edge pixel, never an outside neighbour
    outside_neighbours = F.conv2d(F.pad(1 - inside, (1, 1, 1, 1), mode="replicate"), cross.view(1, 1, 3, 3))
    return (inside > 0.5) & (outside_neighbours > 0.5)


def _dilate_disc(binary: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean ``B x 1 x H x W`` dilated by a disc of ``radius`` pixels."""
    offsets = torch.arange(-radius, radius + 1, device=binary.device, dtype=torch.float32)
    disc = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius * radius).to(torch.float32)
    hits = F.conv2d(binary.to(torch.float32), disc.view(1, 1, *disc.shape), padding=radius)
    return hits > 0.5


def boundary_tolerance_px(height: int, width: int, fraction: float = BOUNDARY_TOLERANCE_FRACTION) -> int:
    """The boundary F-score's match distance: ``fraction`` of the image diagonal, rounded, at least 1 pixel."""
    return max(1, round(fraction * math.hypot(height, width)))


def boundary_f_score(prediction: torch.Tensor, truth: torch.Tensor, tolerance_px: int) -> torch.Tensor:
    """Contour accuracy F (Perazzi et al., "A benchmark dataset and evaluation methodology for video object
    segmentation", CVPR 2016): boundary pixels (:func:`mask_boundary`) of each mask count as matched when a boundary
    pixel of the other lies within ``tolerance_px`` (a disc); precision = matched predicted / predicted, recall =
    matched true / true, ``F = 2 P R / (P + R)``. ``B x 1 x H x W`` masks -> ``B`` values; 1 when neither mask has a
    boundary, 0 when only one has."""
    predicted, true = mask_boundary(prediction), mask_boundary(truth)
    count_p = predicted.flatten(1).sum(dim=1).to(torch.float64)
    count_t = true.flatten(1).sum(dim=1).to(torch.float64)
    precision = (predicted & _dilate_disc(true, tolerance_px)).flatten(1).sum(dim=1) / count_p.clamp_min(1)
    recall = (true & _dilate_disc(predicted, tolerance_px)).flatten(1).sum(dim=1) / count_t.clamp_min(1)
    f_score = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    both_empty = (count_p == 0) & (count_t == 0)
    return torch.where(both_empty, 1.0, f_score)


def banding_score(field: torch.Tensor, mask: torch.Tensor, quantum: float = 1 / 255) -> torch.Tensor:
    """How much of a field's variation sits in steps: along rows and columns,

        banding = sum shrink(f[i+1] - 2 f[i] + f[i-1])^2 / sum (f[i+1] - f[i])^2,

    summed over channels, over the pixels whose three taps ``i-1, i, i+1`` are all inside ``mask`` (> 0.5) and off
    the image's outermost rows and columns (so neither the mask's edge nor one-sided differences at the frame
    count). ``shrink(d) = sign(d) max(|d| - quantum, 0)`` ignores second differences of one quantisation step: the
    steps of a smooth field stored at 8 bits. A linear ramp and a smooth field stored at 8 bits score about 0; a
    float field varying over ``L`` pixels about ``1 / L^2``; a staircase of steps much larger than ``quantum``
    (piecewise-constant values, at least 2 pixels apart) close to 2. ``field``: ``B x C x H x W`` in the units of
    ``quantum``; ``mask``: ``B x 1 x H x W``. Returns ``B`` values (float64).
    """
    f = field.to(torch.float64)
    inside = F.pad((mask > 0.5)[..., 1:-1, 1:-1], (1, 1, 1, 1), value=False)
    second_energy = torch.zeros(f.shape[0], device=f.device, dtype=torch.float64)
    first_energy = torch.zeros(f.shape[0], device=f.device, dtype=torch.float64)
    for dim in (-1, -2):
        n = f.shape[dim]
        before, centre, after = (f.narrow(dim, start, n - 2) for start in (0, 1, 2))
        valid = inside.narrow(dim, 0, n - 2) & inside.narrow(dim, 1, n - 2) & inside.narrow(dim, 2, n - 2)
        second = after - 2 * centre + before
        shrunk = second.sign() * (second.abs() - quantum).clamp_min(0)
        second_energy += (shrunk**2 * valid).sum(dim=(1, 2, 3))
        first_energy += ((after - centre) ** 2 * valid).sum(dim=(1, 2, 3))
    return second_energy / first_energy.clamp_min(1e-30)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic scenes


def _pixel_grid(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of a ``size`` square image, in pixels from the centre: ``x`` right, ``y`` up; each
    ``size x size``."""
    coords = torch.arange(size, device=device, dtype=dtype) + 0.5 - size / 2
    y, x = torch.meshgrid(-coords, coords, indexing="ij")
    return x, y


def person_alpha(size: int, feather_px: float, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A head-and-shoulders silhouette for an aligned face crop (FFHQ framing), ``1 x 1 x S x S`` alpha in [0, 1]:
    head ellipse centred at (0.5, 0.45) of the frame with semi-axes (0.34, 0.44), a neck (x 0.38-0.62, from y 0.7
    down) and a shoulders ellipse centred 0.2 below the frame with semi-axes (0.7, 0.33) (it spans the bottom edge,
as shoulders do in such crops); hard edges feathered by
    a Gaussian of ``feather_px`` pixels."""
    device = torch.device(device)
    rows = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size
    v, u = torch.meshgrid(rows, rows, indexing="ij")  # u right, v down, in frame fractions
    head = ((u - HEAD_CENTRE[0]) / 0.34) ** 2 + ((v - HEAD_CENTRE[1]) / 0.44) ** 2 <= 1
    neck = ((u - 0.5).abs() <= 0.12) & (v >= 0.7)
    shoulders = ((u - 0.5) / 0.7) ** 2 + ((v - 1.2) / 0.33) ** 2 <= 1
    hard = (head | neck | shoulders).to(dtype)[None, None]
    return gaussian_blur(hard, feather_px).clamp(0, 1) if feather_px > 0 else hard


def bump_shading(size: int, elevation_deg: float, azimuth_deg: float, ambient: float,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Known smooth shading at the scale of a face, ``1 x 1 x S x S``: ``ambient + (1 - ambient) max(0, N . L)``
    (white light, :func:`~relight_datasets.ops.lighting.lambertian_shading`) on the Gaussian bump
    ``z = A exp(-r^2 / (2 s^2))`` with ``s = BUMP_SIGMA_FRACTION * size``, centred where :func:`person_alpha` puts
    the head, ``A`` such that the steepest normal tilts ``BUMP_TILT_DEG``; lit from ``(elevation_deg,
    azimuth_deg)`` (see :mod:`relight_datasets.ops.lighting`)."""
    x, y = _pixel_grid(size, torch.device(device), dtype)
    y = y + (HEAD_CENTRE[1] - 0.5) * size  # y up: the head centre sits above the frame centre
    sigma = BUMP_SIGMA_FRACTION * size
    amplitude = math.tan(math.radians(BUMP_TILT_DEG)) * sigma * math.sqrt(math.e)  # peak slope A / (s sqrt(e))
    height = amplitude * torch.exp(-(x**2 + y**2) / (2 * sigma**2))
    slope_x, slope_y = -x / sigma**2 * height, -y / sigma**2 * height
    normals = F.normalize(torch.stack([-slope_x, -slope_y, torch.ones_like(height)])[None], dim=1)
    return lambertian_shading(normals, [light_direction(elevation_deg, azimuth_deg)], [ambient])


@dataclass(frozen=True)
class AnalyticShape:
    """A shape with exact geometry, all ``1 x C x S x S``: ``height`` towards the camera in pixels (C = 1),
    ``normals`` unit vectors (C = 3, facing the camera outside the shape), ``mask`` 0/1 (C = 1)."""

    height: torch.Tensor
    normals: torch.Tensor
    mask: torch.Tensor


def analytic_shape(name: str, size: int, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> AnalyticShape:
    """``sphere`` (radius 0.4 S), ``ellipsoid`` (semi-axes 0.28 S across, 0.4 S up, 0.25 S deep) or ``box`` (a block
    0.5 S wide, 0.6 S tall, raised 0.15 S from the background plane: flat top, depth step at its edge), centred."""
    device = torch.device(device)
    x, y = _pixel_grid(size, device, dtype)
    if name in ("sphere", "ellipsoid"):
        a, b, c = (0.4 * size,) * 3 if name == "sphere" else (0.28 * size, 0.4 * size, 0.25 * size)
        inside = (x / a) ** 2 + (y / b) ** 2 < 1
        height = c * (1 - (x / a) ** 2 - (y / b) ** 2).clamp_min(0).sqrt()
        gradient = torch.stack([x / a**2, y / b**2, height / c**2])
    elif name == "box":
        inside = (x.abs() < 0.25 * size) & (y.abs() < 0.3 * size)
        height = inside.to(dtype) * (0.15 * size)
        gradient = torch.stack([torch.zeros_like(x), torch.zeros_like(x), torch.ones_like(x)])
    else:
        raise ValueError(f"unknown shape {name!r} (valid: {', '.join(SHAPES)})")
    facing = torch.tensor([0.0, 0.0, 1.0], device=device, dtype=dtype).view(3, 1, 1)
    normals = torch.where(inside, F.normalize(gradient, dim=0), facing)
    return AnalyticShape(height[None, None], normals[None], inside.to(dtype)[None, None])


@dataclass(frozen=True)
class AnalyticMesh:
    """A triangle mesh on the surface of an :func:`analytic_shape`: ``screen_vertices`` ``V x 3`` (x right, y down in
    pixels, height towards the camera), the same points in the camera frame ``camera_vertices`` (y up), and
    ``triangles`` ``T x 3`` wound so that their cross products face the camera."""

    screen_vertices: torch.Tensor
    camera_vertices: torch.Tensor
    triangles: torch.Tensor


def analytic_mesh(name: str, size: int, rings: int = 12, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> AnalyticMesh:
    """The visible surface of :func:`analytic_shape` ``name`` as a mesh about as dense as the face mesh (``rings``
    rings of ``4 rings`` vertices: 12 gives 577 vertices, the face mesh has 468). Sphere and ellipsoid: points at
    polar angles up to 90 deg from the viewing axis (the last ring on the silhouette) and the pole facing the camera;
    box: its flat top as a ``rings x rings`` grid."""
    device = torch.device(device)
    if name in ("sphere", "ellipsoid"):
        a, b, c = (0.4 * size,) * 3 if name == "sphere" else (0.28 * size, 0.4 * size, 0.25 * size)
        polar = torch.linspace(0, math.pi / 2, rings + 1, device=device, dtype=torch.float64)[1:]
        azimuth = torch.arange(4 * rings, device=device, dtype=torch.float64) * (2 * math.pi / (4 * rings))
        theta, phi = torch.meshgrid(polar, azimuth, indexing="ij")
        ring_points = torch.stack([a * theta.sin() * phi.cos(), b * theta.sin() * phi.sin(), c * theta.cos()], -1)
        pole = torch.tensor([[0.0, 0.0, c]], device=device, dtype=torch.float64)
        camera = torch.cat([pole, ring_points.reshape(-1, 3)])
        count = 4 * rings
        index = torch.arange(rings * count, device=device, dtype=torch.long).reshape(rings, count) + 1
        following = index.roll(-1, dims=1)
        fan = torch.stack([torch.zeros_like(index[0]), index[0], following[0]], dim=1)
        lower = torch.stack([index[:-1], index[1:], following[1:]], dim=-1).reshape(-1, 3)
        upper = torch.stack([index[:-1], following[1:], following[:-1]], dim=-1).reshape(-1, 3)
        triangles = torch.cat([fan, lower, upper])
    elif name == "box":
        xs = torch.linspace(-0.25 * size, 0.25 * size, rings + 1, device=device, dtype=torch.float64)
        ys = torch.linspace(-0.3 * size, 0.3 * size, rings + 1, device=device, dtype=torch.float64)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        camera = torch.stack([grid_x, grid_y, torch.full_like(grid_x, 0.15 * size)], -1).reshape(-1, 3)
        index = torch.arange((rings + 1) ** 2, device=device, dtype=torch.long).reshape(rings + 1, rings + 1)
        lower = torch.stack([index[:-1, :-1], index[:-1, 1:], index[1:, 1:]], dim=-1).reshape(-1, 3)
        upper = torch.stack([index[:-1, :-1], index[1:, 1:], index[1:, :-1]], dim=-1).reshape(-1, 3)
        triangles = torch.cat([lower, upper])
    else:
        raise ValueError(f"unknown shape {name!r} (valid: {', '.join(SHAPES)})")
    corners = camera[triangles]
    facing = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=1)[:, 2]
    triangles = torch.where((facing < 0)[:, None], triangles.flip(1), triangles)
    # The analytic shapes are centred in the frame, with y up: pixel y = size / 2 - y.
    screen = torch.stack([camera[:, 0] + size / 2, size / 2 - camera[:, 1], camera[:, 2]], dim=1)
    return AnalyticMesh(screen.to(dtype), camera.to(dtype), triangles)


# ---------------------------------------------------------------------------------------------------------------------
# Runs of the build's stages on the scenes


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``B x C x H x W`` in [0, 1] -> 8-bit PIL images (``L`` for one channel), as a dataset stores them."""
    uint8 = images.clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return [Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()) for img in uint8]


def _from_column(values: list, device: torch.device) -> torch.Tensor:
    """A stage's output column (PIL images) -> ``B x C x H x W`` float on the 8-bit grid on ``device``."""
    return uint8_to_unit(upload_images([to_uint8_array(value) for value in values], device))


def evaluate_albedo(faces: torch.Tensor, config: BuildConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """si-LMSE of the build's albedo stage, and of doing nothing (albedo = input), on synthetic scenes: each face
    (``B x 3 x S x S``) is the true albedo, multiplied by :func:`bump_shading` under a light drawn per image
    (elevation U(20, 70) deg, azimuth U(0, 360) deg, ambient U(0.3, 0.6); ``seed`` fixes them) and stored at 8 bits;
    the mask is :func:`person_alpha` > 0.5. Returns ``{"build": B values, "nothing": B values}``."""
    batch, _, size, _ = faces.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    draws = torch.rand(batch, 3, generator=generator, device="cpu", dtype=torch.float64).tolist()
    shading = torch.cat([bump_shading(size, 20 + 50 * e, 360 * a, 0.3 + 0.3 * m, faces.device, faces.dtype)
                         for e, a, m in draws])
    mask = (person_alpha(size, 0.0, faces.device, faces.dtype) > 0.5).to(faces.dtype).expand(batch, 1, -1, -1)
    image = quantize_to_8bit(faces * shading)
    stage = AlbedoStage(config, faces.device)
    rows = stage({"image_id": [f"albedo-{index}" for index in range(batch)], "input": _to_pil(image),
                  "mask": _to_pil(mask)})
    albedo = _from_column(rows["albedo"], faces.device)
    return {"build": scale_invariant_local_mse(albedo, faces, mask),
            "nothing": scale_invariant_local_mse(image, faces, mask)}


def evaluate_normals(config: BuildConfig, size: int, device: torch.device | str = "cpu") -> dict[str, dict]:
    """Angular error (degrees, inside each shape's mask) of the build's normal paths on :func:`analytic_shape`:
    ``face_mesh`` (the face-mesh renderer, :func:`~relight_datasets.ops.face_mesh.vertex_normals` and
    :func:`~relight_datasets.ops.face_mesh.rasterize`, on :func:`analytic_mesh`: points on the exact surface, as
    the face mesh gives points on a face), ``mask_inflation`` (the normals stage with ``normals.method =
    classical``, on the shape's silhouette) and ``depth`` (:func:`~relight_datasets.ops.normals.normals_from_depth`
    with the config's relief on the exact height). All stored at 8 bits as the stage stores them. Returns
    ``{path: {shape: (mean, p95)}}``."""
    device = torch.device(device)
    stage = NormalsStage(replace(config, normals=replace(config.normals, method="classical")), device)
    results: dict[str, dict] = {"face_mesh": {}, "mask_inflation": {}, "depth": {}}
    for name in SHAPES:
        shape = analytic_shape(name, size, device)
        mesh = analytic_mesh(name, size, device=device)
        rendered, _, coverage = rasterize(mesh.screen_vertices, mesh.triangles,
                                          vertex_normals(mesh.camera_vertices, mesh.triangles), size, size)
        from_mesh = torch.where(coverage > 0, unit_vectors(rendered[None]), shape.normals)
        rows = stage({"image_id": [name], "input": _to_pil(shape.mask.expand(1, 3, -1, -1)),
                      "mask": _to_pil(shape.mask)})
        inflated = decode_normals(_from_column(rows["normals"], device))
        from_depth = normals_from_depth(shape.height, larger_is_closer=True, relief=config.normals.depth_relief)
        for path, normals in (("face_mesh", from_mesh), ("mask_inflation", inflated), ("depth", from_depth)):
            stored = normals if path == "mask_inflation" else decode_normals(quantize_to_8bit(encode_normals(normals)))
            mean, p95 = masked_mean_and_percentile(angular_error_deg(stored, shape.normals), shape.mask)
            results[path][name] = (mean.item(), p95.item())
    return results


BACKGROUND_PHOTOS = ("coffee.png", "rocket.jpg", "motorcycle_left.png", "chelsea.png", "motorcycle_right.png",
                     "grass.png", "brick.png", "gravel.png")
"""Photos without people that scikit-image ships in ``skimage/data`` (public domain or CC0 by its documentation): the
backgrounds of :func:`synthetic_composites`. The portrait fixtures cannot serve: they are tight face crops whose every
region may hold hair, shoulders or another person."""


def background_photos(count: int, size: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count x 3 x size x size`` backgrounds in [0, 1]: :data:`BACKGROUND_PHOTOS` in turn, each centre-cropped to a
    square and Lanczos-resized (grey photos repeated over the three channels). Needs scikit-image (the ``dev``
    extra)."""
    try:
        import skimage
    except ImportError as error:
        raise RuntimeError("synthetic composites need scikit-image: pip install -e '.[dev]'") from error
    folder = Path(skimage.__file__).parent / "data"
    squares = []
    for name in BACKGROUND_PHOTOS[:count]:
        with Image.open(folder / name) as photo:
            photo = photo.convert("RGB")
            side = min(photo.size)
            left, top = (photo.width - side) // 2, (photo.height - side) // 2
            squares.append(np.asarray(photo.crop((left, top, left + side, top + side))
                                      .resize((size, size), Image.Resampling.LANCZOS)))
    photos = uint8_to_unit(upload_images(squares, torch.device(device))).to(dtype)
    return photos[torch.arange(count, device=photos.device, dtype=torch.long) % len(squares)]


def synthetic_composites(faces: torch.Tensor, feather_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each face (``B x 3 x S x S``) cut out with :func:`person_alpha` and pasted on a photo without people
    (:func:`background_photos`, in turn). Returns the composites (8-bit grid) and the alpha ``B x 1 x S x S``."""
    batch, _, size, _ = faces.shape
    background = background_photos(batch, size, faces.device, faces.dtype)
    alpha = person_alpha(size, feather_px, faces.device, faces.dtype).expand(batch, 1, -1, -1)
    return quantize_to_8bit(faces * alpha + background * (1 - alpha)), alpha


def evaluate_masks(faces: torch.Tensor, config: BuildConfig) -> dict:
    """IoU and boundary F-score (:func:`boundary_tolerance_px`) of the build's segmentation stage on
    :func:`synthetic_composites` (feather: 1 % of the image side), against alpha > 0.5. A row the stage skips (no
    person found) scores an empty mask. Returns ``{"iou": B, "boundary_f": B}`` and the tolerance used."""
    size = faces.shape[-1]
    composites, alpha = synthetic_composites(faces, feather_px=max(1.0, 0.01 * size))
    stage = SegmentationStage(config, faces.device)
    rows = stage({"image_id": [f"mask-{index}" for index in range(len(faces))], "input": _to_pil(composites)})
    empty = Image.fromarray(np.zeros((size, size), dtype=np.uint8))
    masks = _from_column([empty if mask is None else mask for mask in rows["mask"]], faces.device)
    tolerance = boundary_tolerance_px(size, size)
    truth = (alpha > 0.5).to(faces.dtype)
    return {"iou": mask_iou(masks, truth), "boundary_f": boundary_f_score(masks, truth, tolerance),
            "tolerance_px": tolerance}


def evaluate_banding(faces: torch.Tensor, config: BuildConfig) -> dict[str, torch.Tensor]:
    """:func:`banding_score` of the stored normals (8-bit RGB) of the build's segmentation and normals stages on
    the fixture faces, inside each row's mask; and, as the floor of an 8-bit smooth field, of the exact sphere
    normals stored the same way. Returns ``{"fixtures": B values (NaN for a skipped row), "smooth_8bit": 1 value}``."""
    ids = [f"banding-{index}" for index in range(len(faces))]
    segmented = SegmentationStage(config, faces.device)({"image_id": ids, "input": _to_pil(faces)})
    kept = [index for index, reason in enumerate(segmented["skip_reason"]) if not reason]
    scores = torch.full((len(faces),), float("nan"), device=faces.device, dtype=torch.float64)
    if kept:
        rows = NormalsStage(config, faces.device)({"image_id": [ids[i] for i in kept], "input": _to_pil(faces[kept]),
                                                   "mask": [segmented["mask"][i] for i in kept]})
        normals = _from_column(rows["normals"], faces.device)
        masks = _from_column([segmented["mask"][i] for i in kept], faces.device)
        scores[kept] = banding_score(normals, masks)
    sphere = analytic_shape("sphere", faces.shape[-1], faces.device, faces.dtype)
    smooth = banding_score(quantize_to_8bit(encode_normals(sphere.normals)), sphere.mask)
    return {"fixtures": scores, "smooth_8bit": smooth}
