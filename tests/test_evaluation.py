"""The evaluation's metrics against ground truth, its synthetic scenes, and one small run of scripts/evaluate.py."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import textured_albedo

from relight_datasets.evaluation import (
    analytic_shape,
    angular_error_deg,
    banding_score,
    boundary_f_score,
    boundary_tolerance_px,
    bump_shading,
    mask_iou,
    masked_mean_and_percentile,
    person_alpha,
    scale_invariant_local_mse,
)

ROOT = Path(__file__).resolve().parents[1]


def disc_mask(size: int, radius: float, shift_px: int = 0) -> torch.Tensor:
    """``1 x 1 x S x S`` 0/1 disc of ``radius`` pixels centred on the frame, moved right by ``shift_px``."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    y, x = torch.meshgrid(coords, coords - shift_px, indexing="ij")
    return ((x**2 + y**2) < radius**2).float()[None, None]


def test_si_lmse_is_zero_for_the_truth_and_for_any_scale_of_it_and_positive_for_a_wrong_estimate():
    truth = textured_albedo(64)
    mask = disc_mask(64, 28)
    assert scale_invariant_local_mse(truth, truth, mask).item() < 1e-12
    assert scale_invariant_local_mse(0.4 * truth, truth, mask).item() < 1e-12
    shading = torch.linspace(0.3, 1.0, 64).view(1, 1, 1, 64)  # varies inside every window
    assert scale_invariant_local_mse(truth * shading, truth, mask).item() < 1e-2
    wrong = textured_albedo(64, seed=1)
    assert scale_invariant_local_mse(wrong, truth, mask).item() > 0.01
    assert scale_invariant_local_mse(torch.zeros_like(truth), truth, mask).item() == pytest.approx(1.0)


def test_si_lmse_scale_is_local_smooth_shading_costs_less_in_small_windows():
    truth = textured_albedo(64)
    shading = torch.linspace(0.2, 1.0, 64).view(1, 1, 1, 64)
    mask = torch.ones(1, 1, 64, 64)
    errors = [scale_invariant_local_mse(truth * shading, truth, mask, window_fraction=fraction).item()
              for fraction in (1 / 16, 1 / 8, 1 / 2, 1)]
    assert errors == sorted(errors) and errors[0] < errors[-1] / 10


def test_si_lmse_ignores_pixels_outside_the_mask():
    truth = textured_albedo(64)
    mask = disc_mask(64, 20)
    garbage_outside = torch.where(mask > 0.5, truth, torch.rand(1, 3, 64, 64))
    assert scale_invariant_local_mse(garbage_outside, truth, mask).item() < 1e-12


def test_angular_error_is_zero_for_exact_normals_and_equals_a_known_rotation():
    shape = analytic_shape("sphere", 64)
    exact = angular_error_deg(shape.normals, shape.normals)
    assert exact.abs().max().item() < 1e-3
    angle = math.radians(17.0)
    # each normal turned by 17 degrees about an axis perpendicular to it
    off_axis = torch.tensor([1.0, 2.0, -3.0]).view(1, 3, 1, 1).expand_as(shape.normals)
    perpendicular = torch.nn.functional.normalize(torch.linalg.cross(shape.normals, off_axis, dim=1), dim=1)
    rotated = math.cos(angle) * shape.normals + math.sin(angle) * perpendicular
    mean, p95 = masked_mean_and_percentile(angular_error_deg(rotated, shape.normals), shape.mask)
    assert mean.item() == pytest.approx(17.0, abs=1e-2)
    assert p95.item() == pytest.approx(17.0, abs=1e-2)


def test_analytic_shapes_have_unit_normals_that_match_their_height_field():
    for name in ("sphere", "ellipsoid"):
        shape = analytic_shape(name, 128)
        assert torch.allclose(shape.normals.norm(dim=1), torch.ones(1, 128, 128), atol=1e-5)
        # finite differences of the height (y up) give the same normals away from the rim
        dz_dx = torch.gradient(shape.height[0, 0], dim=1)[0]
        dz_dy_up = -torch.gradient(shape.height[0, 0], dim=0)[0]
        from_height = torch.stack([-dz_dx, -dz_dy_up, torch.ones_like(dz_dx)])[None]
        core = (shape.normals[:, 2:3] > 0.7).float() * shape.mask
        mean, _ = masked_mean_and_percentile(angular_error_deg(from_height, shape.normals), core)
        assert mean.item() < 0.5, name


def test_iou_and_boundary_f_are_one_for_identical_masks_and_drop_with_a_shift():
    truth = disc_mask(128, 40)
    assert mask_iou(truth, truth).item() == 1.0
    assert boundary_f_score(truth, truth, 2).item() == 1.0
    within = boundary_f_score(disc_mask(128, 40, shift_px=2), truth, 2).item()
    beyond = boundary_f_score(disc_mask(128, 40, shift_px=8), truth, 2).item()
    assert within > 0.95 and beyond < 0.5
    ious = [mask_iou(disc_mask(128, 40, shift_px=shift), truth).item() for shift in (2, 8, 20)]
    assert 1.0 > ious[0] > ious[1] > ious[2] > 0.0
    # IoU of two equal discs of radius r shifted by d: lens area over union area
    r, d = 40.0, 20.0
    lens = 2 * r * r * math.acos(d / (2 * r)) - d / 2 * math.sqrt(4 * r * r - d * d)
    assert ious[2] == pytest.approx(lens / (2 * math.pi * r * r - lens), abs=0.01)
    assert boundary_f_score(torch.zeros_like(truth), truth, 2).item() == 0.0


def test_boundary_tolerance_is_one_percent_of_the_diagonal():
    assert boundary_tolerance_px(512, 512) == 7
    assert boundary_tolerance_px(16, 16) == 1


def test_banding_is_near_zero_on_smooth_fields_and_high_on_a_staircase():
    size = 128
    coords = torch.arange(size, dtype=torch.float64) - size / 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    gaussian = torch.exp(-(x**2 + y**2) / (2 * 25.0**2))[None, None]
    staircase = (torch.floor((x + y) / 8) / 32)[None, None]  # piecewise constant, steps of 8 px
    everywhere = torch.ones(1, 1, size, size)
    assert banding_score(gaussian, everywhere).item() < 0.01
    assert banding_score(torch.round(gaussian * 255) / 255, everywhere).item() < 0.05  # stored at 8 bits
    assert banding_score(staircase, everywhere).item() > 1.5
    # a smooth field made of the staircase's linear interpolation is smooth again
    assert banding_score((x + y)[None, None] / 256, everywhere).item() < 1e-6


def test_person_alpha_is_a_feathered_head_and_shoulders_silhouette():
    alpha = person_alpha(128, feather_px=2.0)
    hard = alpha > 0.5
    assert 0.4 < hard.float().mean().item() < 0.75
    assert hard[0, 0, 60, 64] and hard[0, 0, -1, 5] and not hard[0, 0, 5, 5]  # head, shoulders, background corner
    assert ((alpha > 0.05) & (alpha < 0.95)).any()  # a soft edge


def test_bump_shading_is_smooth_and_in_range():
    shading = bump_shading(128, elevation_deg=40, azimuth_deg=180, ambient=0.4)
    assert shading.shape == (1, 1, 128, 128)
    assert 0.4 - 1e-6 <= shading.min().item() and shading.max().item() <= 1.0
    assert shading.max().item() - shading.min().item() > 0.3  # it varies at face scale
    assert banding_score(shading, torch.ones_like(shading), quantum=0.0).item() < 0.05


@pytest.mark.slow
def test_evaluate_script_on_two_fixtures_writes_the_numbers(faces_dir, tmp_path):
    output = tmp_path / "quality.md"
    notes = "<!-- notes below are kept when scripts/evaluate.py rewrites this file -->\nhand-written history\n"
    output.write_text("# stale numbers\n\n" + notes)
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--faces", str(faces_dir),
                             "--limit", "2", "--size", "128", "--output", str(output)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    document = output.read_text()
    assert "scripts/evaluate.py" in document and "2 faces at 128 px" in document
    assert document.endswith(notes) and "stale numbers" not in document

    def row(label: str) -> list[float]:
        line = next(line for line in document.splitlines() if line.startswith(f"| {label}"))
        return [float(cell) for cell in re.findall(r"\| ([0-9.]+)", line)]

    build, nothing = row("albedo si-LMSE, build")[0], row("albedo si-LMSE, doing nothing")[0]
    assert 0 < build < 0.1 and 0 < nothing < 0.1
    for segmenter in ("mediapipe", "classical"):
        assert 0 < row(f"mask IoU, {segmenter}")[0] <= 1 and 0 <= row(f"mask boundary F, {segmenter}")[0] <= 1
    assert row("banding of exact sphere normals")[0] < 0.1
    for path in ("face_mesh", "mask_inflation", "depth"):
        shapes = next(line for line in document.splitlines() if line.startswith(f"| {path} "))
        assert len(re.findall(r"[0-9.]+ / [0-9.]+", shapes)) == 3
