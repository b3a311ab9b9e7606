import pytest
import torch

from relight_datasets.ops.albedo import (
    bilateral_filter,
    blend_with_original,
    lab_albedo,
    multi_scale_retinex,
    retinex_albedo,
    robust_surround,
    stretch_to_unit,
)
from relight_datasets.ops.color import lab_to_rgb, rgb_to_lab
from relight_datasets.ops.filters import gaussian_blur
from relight_datasets.ops.lighting import lambertian_shading, light_direction
from tests.conftest import sphere_normals, textured_albedo


def affine_invariant_error(estimate: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> float:
    """RMS error after the best per-channel gain and offset (least squares over the mask), relative to the truth's
    spread: 0 = perfect up to an affine map, about 1 = no better than a constant."""
    errors = []
    inside = mask[0, 0] > 0.5
    for c in range(truth.shape[1]):
        x, y = estimate[0, c][inside].double(), truth[0, c][inside].double()
        design = torch.stack([x, torch.ones_like(x)], dim=1)
        solution = torch.linalg.lstsq(design, y[:, None]).solution
        residual = y - (design @ solution)[:, 0]
        errors.append((residual.pow(2).mean().sqrt() / y.std()).item())
    return sum(errors) / len(errors)


SIZE = 256
SCALES = [s * SIZE / 1024 for s in (15, 80, 250)]  # the seed's scales, sized for this image as the pipeline does


def rendered_scene(size=SIZE, shading="gradient"):
    """image = albedo * smooth shading over a disc; black outside (the seed's foreground).

    ``gradient``: a log-linear light fall-off (light from the upper left); ``sphere``: Lambertian shading of a
    large sphere. Both vary slowly compared with the Retinex scales, which is what Retinex assumes."""
    _, mask = sphere_normals(size, radius_fraction=0.45)
    albedo = textured_albedo(size) * mask
    if shading == "gradient":
        light = gradient_light(size)
    else:
        light = lambertian_shading(sphere_normals(size, 1.2)[0], [light_direction(35, 150)], [0.3])
    return (albedo * light).clamp(0, 1), albedo, mask


def gradient_light(size=SIZE):
    """``1 x 1 x S x S`` log-linear light fall-off from the upper left (from 1 down to about 0.25)."""
    coords = (torch.arange(size) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return torch.exp(-1.4 * (0.6 * x + 0.8 * y))[None, None]


@pytest.mark.parametrize("shading", ["gradient", "sphere"])
def test_retinex_recovers_albedo_much_better_than_the_input(shading):
    image, albedo, mask = rendered_scene(shading=shading)
    estimate = retinex_albedo(image, mask, scales=SCALES, color_balance_percent=1.0)
    err_estimate = affine_invariant_error(estimate, albedo, mask)
    err_input = affine_invariant_error(image, albedo, mask)
    assert err_estimate < 0.5 * err_input, (err_estimate, err_input)
    assert err_estimate < 0.35
    assert estimate.min() >= 0 and estimate.max() <= 1
    assert torch.all(estimate[mask.expand_as(estimate) == 0] == 0)


@pytest.mark.parametrize("color", ["luminance", "channels"])
def test_both_colour_modes_recover_the_albedo(color):
    image, albedo, mask = rendered_scene()
    estimate = retinex_albedo(image, mask, scales=SCALES, color_balance_percent=1.0, color=color)
    assert affine_invariant_error(estimate, albedo, mask) < 0.5 * affine_invariant_error(image, albedo, mask)


def test_luminance_mode_keeps_skin_tone_and_hue_where_channels_mode_evens_them_out():
    _, _, mask = rendered_scene()
    tones = {"dark": torch.tensor([0.30, 0.18, 0.12]), "light": torch.tensor([0.85, 0.66, 0.55])}
    medians = {}
    for name, colour in tones.items():
        person = (textured_albedo(SIZE) - 0.6) * 0.3 + 1.0  # +-7.5 % texture around 1
        truth = (person * colour.view(1, 3, 1, 1)).clamp(0, 1) * mask
        rendered = (truth * gradient_light()).clamp(0, 1)
        inside = mask[0, 0] > 0
        for color in ("luminance", "channels"):
            estimate = retinex_albedo(rendered, mask, SCALES, 1.0, color=color)
            medians[name, color] = estimate[0][:, inside].median(dim=1).values
    dark, light = medians["dark", "luminance"], medians["light", "luminance"]
    assert dark.mean() < 0.6 * light.mean()  # dark stays dark, light stays light
    for name in tones:  # hue: channel ratios of the recovered albedo match the truth's
        ratio = medians[name, "luminance"] / medians[name, "luminance"][0]
        assert torch.allclose(ratio, tones[name] / tones[name][0], atol=0.06)
    # the seed's per-channel mode stretches every channel to [0, 1]: both tones end up alike
    assert abs(medians["dark", "channels"].mean() - medians["light", "channels"].mean()) < 0.15


def test_mask_aware_retinex_beats_plain_retinex_near_the_mask_edge():
    image, albedo, mask = rendered_scene()
    band = mask * (1 - (gaussian_blur(mask, 12) > 0.999).float())  # inside the mask, within ~40 px of its edge
    aware = stretch_to_unit(multi_scale_retinex(image, mask, SCALES), mask, 1.0)
    plain = stretch_to_unit(multi_scale_retinex(image, None, SCALES), mask, 1.0)
    err_aware = affine_invariant_error(aware, albedo, band)
    err_plain = affine_invariant_error(plain, albedo, band)
    assert band.sum() > 500
    assert err_aware < 0.8 * err_plain, (err_aware, err_plain)


def test_retinex_does_not_depend_on_background_content():
    image, _, mask = rendered_scene(96)
    noisy_background = image + (1 - mask) * torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    a = retinex_albedo(image, mask, [15, 80], 1.0)
    b = retinex_albedo(noisy_background.clamp(0, 1), mask, [15, 80], 1.0)
    assert torch.allclose(a, b, atol=1e-5)


def test_lab_roundtrip():
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=2e-4)


def test_lab_albedo_flattens_shading_on_uniform_regions_and_keeps_their_colour():
    size = 96
    albedo = torch.empty(1, 3, size, size)
    albedo[..., : size // 2] = torch.tensor([0.75, 0.55, 0.45]).view(1, 3, 1, 1)  # skin-like
    albedo[..., size // 2 :] = torch.tensor([0.25, 0.2, 0.2]).view(1, 3, 1, 1)  # dark hair-like
    y = ((torch.arange(size) + 0.5) / size).view(1, 1, size, 1)
    image = albedo * (1.0 - 0.6 * y)  # light from above, fading downwards
    mask = torch.ones(1, 1, size, size)
    estimate = lab_albedo(image, mask, diameter=9, sigma_color=75, sigma_space=75, color_balance_percent=1.0)
    rows = slice(8, size - 8)  # away from the image border
    for cols in (slice(4, size // 2 - 8), slice(size // 2 + 8, size - 4)):
        assert estimate[..., rows, cols].std(dim=2).mean() < 0.35 * image[..., rows, cols].std(dim=2).mean()
    # L* is normalised locally (large-scale lightness differences are lost: why Retinex is the default), but the
    # chroma of each region is kept: warm on the left, near-neutral on the right
    left = estimate[0, :, rows, 10:30].mean(dim=(1, 2))
    right = estimate[0, :, rows, size - 30 : size - 10].mean(dim=(1, 2))
    assert left[0] - left[2] > 0.15
    assert abs(right[0] - right[2]) < 0.1


def test_bilateral_filter_preserves_a_step_edge_and_smooths_noise():
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 1.0
    noisy = step + 0.05 * torch.randn(step.shape, generator=torch.Generator().manual_seed(3))
    out = bilateral_filter(noisy, diameter=7, sigma_color=0.2, sigma_space=3)
    assert (out[..., 4:12].std() < noisy[..., 4:12].std() * 0.6)
    assert out[..., :, 14].mean() < 0.1 and out[..., :, 17].mean() > 0.9


def test_blend_with_original_ratio():
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    out = blend_with_original(a, b, torch.tensor([0.15, 0.25]))
    assert torch.allclose(out[0], torch.full((3, 4, 4), 0.15)) and torch.allclose(out[1], torch.full((3, 4, 4), 0.25))


def test_the_robust_surround_follows_the_light_across_a_material_edge():
    # Two materials (dark hair 0.15 on the left, skin 0.7 on the right) under a smooth left-to-right light ramp: the
    # true surround of skin is skin x light. The plain Gaussian mean straddles the edge (Retinex's halo); the robust
    # one keeps to each side's material.
    size, sigma = 128, 20.0
    x = torch.linspace(0, 1, size, device="cpu", dtype=torch.float32).view(1, 1, 1, size).expand(1, 1, size, size)
    light = 0.5 + 0.4 * x
    albedo = torch.where(x < 0.5, torch.tensor(0.15, device="cpu", dtype=torch.float32),
                         torch.tensor(0.7, device="cpu", dtype=torch.float32))
    image, mask = albedo * light, torch.ones_like(light)
    skin_near_edge = (x >= 0.5) & (x < 0.5 + 2 * sigma / size)
    truth = (0.7 * light)[skin_near_edge]
    plain = gaussian_blur(image, sigma, mask)[skin_near_edge]
    robust = robust_surround(image, mask, sigma, tau=0.3, iterations=3)[skin_near_edge]
    plain_error, robust_error = ((plain - truth) / truth).abs().max(), ((robust - truth) / truth).abs().max()
    assert plain_error > 0.2
    assert robust_error < plain_error / 3
