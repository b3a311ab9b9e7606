"""No banding: large blurs, silhouette normals and the Retinex surround are smooth in value and slope.

Each check has a negative control: the previous way (blur on a coarse grid, then bilinear upsampling) is rebuilt
explicitly here from public ops, and the banding score must flag it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import load_rgb

from relight_datasets.ops.classical_segmentation import segment_person_classical
from relight_datasets.ops.filters import gaussian_blur
from relight_datasets.ops.normals import normals_from_height, normals_from_mask
from relight_datasets.ops.smoothness import banding_score

SIZE = 256


def centred_coordinates(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``y, x`` (``S x S``, pixels) with the origin at the image centre."""
    c = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    return torch.meshgrid(c, c, indexing="ij")


def disc_mask(size: int, radius: float) -> torch.Tensor:
    y, x = centred_coordinates(size)
    return (x**2 + y**2 < radius**2).float()[None, None]


def blur_on_coarse_grid_bilinear(field: torch.Tensor, sigma: float, factor: int) -> torch.Tensor:
    """The banded way: area-downsample by ``factor``, blur there, upsample bilinearly (slope constant per cell)."""
    h, w = field.shape[-2:]
    coarse = F.interpolate(field, size=(h // factor, w // factor), mode="area")
    return F.interpolate(gaussian_blur(coarse, sigma / factor), size=(h, w), mode="bilinear", align_corners=False)


def test_banding_score_is_near_zero_on_smooth_fields_and_high_on_a_staircase():
    y, x = centred_coordinates(SIZE)
    radius = 100.0
    sphere_height = torch.sqrt((radius**2 - x**2 - y**2).clamp_min(0))[None, None]
    cap = disc_mask(SIZE, 0.9 * radius)  # the slope of a full hemisphere diverges at its rim
    gaussian = torch.exp(-(x**2 + y**2) / (2 * 30.0**2))[None, None]
    assert banding_score(sphere_height, cap).item() < 0.01
    assert banding_score(gaussian).item() < 0.01
    assert banding_score(torch.ones(1, 1, 32, 32)).item() == 0.0
    for factor in (4, 8, 16):
        staircase = F.interpolate(F.avg_pool2d(gaussian, factor), size=(SIZE, SIZE), mode="bilinear")
        assert banding_score(staircase).item() > 0.4, factor


def test_large_gaussian_blur_is_smooth_in_value_and_slope():
    disc = disc_mask(SIZE, 70)
    sigma = 40.0
    blurred = gaussian_blur(disc, sigma)
    banded = blur_on_coarse_grid_bilinear(disc, sigma, factor=int(sigma // 3))
    assert banding_score(blurred).item() < 0.01
    assert banding_score(banded).item() > 0.4
    # the slope (what shading sees) too
    assert banding_score(normals_from_height(blurred * 200)).item() < 0.02
    assert banding_score(normals_from_height(banded * 200)).item() > 0.4
    # and it is still the Gaussian of that sigma: the blurred disc's centre equals the analytic value
    centre = blurred[0, 0, SIZE // 2, SIZE // 2].item()
    assert centre == pytest.approx(1 - math.exp(-(70**2) / (2 * sigma**2)), abs=5e-3)


def test_normals_from_mask_are_not_banded_on_a_disc():
    disc = disc_mask(SIZE, 80)
    normals = normals_from_mask(disc, inflation_sigma=0.12, edge_tilt_deg=70)
    assert banding_score(normals, disc).item() < 0.05
    sigma = 0.12 * math.sqrt(disc.sum().item())
    old_normals = normals_from_height(blur_on_coarse_grid_bilinear(disc, sigma, factor=int(sigma // 3)) * 100)
    assert banding_score(old_normals, disc).item() > 0.5


@pytest.fixture(scope="module")
def fixture_person(face_paths) -> tuple[torch.Tensor, torch.Tensor]:
    """The first fixture face at ``SIZE`` px, ``1 x 3 x S x S`` in [0, 1], and its classical person mask."""
    image = load_rgb(face_paths[0], SIZE)
    segmentation = segment_person_classical(image)
    assert segmentation is not None, "no face found in the first fixture"
    rgb = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    mask = (torch.from_numpy(segmentation.mask)[None, None] > 127).float()
    return rgb, mask


def test_normals_from_a_fixture_mask_are_not_banded(fixture_person):
    _, mask = fixture_person
    normals = normals_from_mask(mask)
    assert banding_score(normals, mask).item() < 0.15
    sigma = 0.12 * math.sqrt(mask.sum().item())
    old_normals = normals_from_height(blur_on_coarse_grid_bilinear(mask, sigma, factor=int(sigma // 3)) * 100)
    assert banding_score(old_normals, mask).item() > 0.5


def test_masked_retinex_surround_is_not_banded(fixture_person):
    image, mask = fixture_person
    sigma = 20.0  # the middle Retinex scale (80 px at 1024) at this size
    surround = gaussian_blur(image, sigma, mask)
    assert banding_score(surround, mask).item() < 0.01
    factor = int(sigma // 3)
    weights = blur_on_coarse_grid_bilinear(mask, sigma, factor)
    old_surround = blur_on_coarse_grid_bilinear(image * mask, sigma, factor) / weights.clamp_min(1e-6)
    assert banding_score(old_surround, mask).item() > 0.4
