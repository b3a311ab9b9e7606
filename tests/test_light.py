"""The light model with known answers: spherical harmonics, colour temperature, cast shadows, ambient occlusion,
shadow patterns that block the key light only, specular placement, exposure, environment maps, and relighting in
linear light under an estimate of a photo's own light."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from relight_datasets.api import relight as relight_images
from relight_datasets.config import ConfigError, load_config
from relight_datasets.ops import environments, sh
from relight_datasets.ops.color import kelvin_to_rgb, linear_to_srgb, planckian_xy, srgb_to_linear
from relight_datasets.ops.normals import decode_normals, encode_normals, normals_from_height
from relight_datasets.ops.shadows import ambient_occlusion, cast_shadows, height_from_normals
from relight_datasets.relighting import (
    LABEL_SHAPES,
    DrawnLight,
    Light,
    ShadowPattern,
    Specular,
    draw_light,
    relight,
    relit_foreground,
)
from relight_datasets.rng import row_generator
from relight_datasets.transforms.on_the_fly import to_tensor
from tests.conftest import sphere_normals, textured_albedo

F64 = {"device": "cpu", "dtype": torch.float64}


def directions_grid(rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    return sh.equirect_directions(rows, 2 * rows)


# ---------------------------------------------------------------------------------------------------------------------
# Spherical harmonics


def test_constant_environment_gives_constant_irradiance():
    """Unit radiance from every direction gives irradiance pi on every surface, whichever way it faces."""
    coefficients = sh.project_radiance(torch.ones(64, 128, 3, **F64))
    generator = torch.Generator(device="cpu").manual_seed(0)
    normals = torch.nn.functional.normalize(torch.randn(1, 3, 16, 16, generator=generator, **F64), dim=1)
    irradiance = sh.irradiance(coefficients[None], normals)
    assert torch.allclose(irradiance, torch.full_like(irradiance, math.pi), rtol=2e-3)


@pytest.mark.parametrize("direction", [(0.0, 0.0, 1.0), (0.3, 0.5, 0.81), (-1.0, 0.0, 0.0)])
def test_sh_of_a_directional_light_matches_the_clamped_cosine_to_second_order(direction):
    """The second-order SH of one directional light against ``max(0, n . l)`` over the sphere: the error is the
    known truncation error of the clamped cosine (Ramamoorthi and Hanrahan 2001): mean 3.07 % and at most 9.4 % of
    the peak irradiance, whatever the direction."""
    light = torch.nn.functional.normalize(torch.tensor(direction, **F64), dim=0)
    coefficients = sh.directional_irradiance_sh(light, torch.ones(3, **F64))
    directions, solid_angle = directions_grid()
    approximation = sh.sh_basis(directions) @ coefficients[0]
    error = (approximation - (directions @ light).clamp_min(0)).abs()
    mean_error = float((error * solid_angle).sum() / solid_angle.sum())
    assert mean_error == pytest.approx(0.0307, abs=5e-4)
    assert float(error.max()) == pytest.approx(0.0937, abs=1e-3)


def test_sh_projection_of_a_small_bright_source_points_at_it():
    radiance = torch.full((32, 64, 3), 0.01, **F64)
    radiance[8, 16] = 50.0  # one texel well above the horizon, towards +x
    dominant = sh.dominant_direction(sh.project_radiance(radiance))
    expected = sh.equirect_directions(32, 64)[0][8, 16]
    assert float(dominant @ expected) > 0.99


def test_irradiance_table_lookup_matches_direct_evaluation():
    coefficients = sh.project_radiance(environments.clear_sky((0.4, 0.6, 0.69), 12000.0, 0.2, 5000.0))[None]
    normals, _ = sphere_normals(64)
    normals = normals.double()
    exact = sh.irradiance(coefficients, normals)
    looked_up = sh.irradiance_lookup(sh.irradiance_table(coefficients), normals)
    assert (looked_up - exact).abs().max() < 1e-3 * exact.abs().max()
    assert (exact.amax() - exact.amin()) > 0.3 * exact.abs().max()  # a light that varies across the sphere


def test_fitting_the_irradiance_of_a_rendered_scene_recovers_its_coefficients():
    normals, mask = sphere_normals(96)
    normals = normals.double()
    truth = sh.project_radiance(environments.indoor((0.7, 0.3, 0.65), 6500.0, 3500.0, [(0.0, 0.8, 0.6)], 2900.0))
    albedo = textured_albedo(96).double()
    image = albedo * sh.irradiance(truth[None], normals)
    fitted = sh.fit_irradiance(image, albedo, normals, mask)
    assert torch.allclose(fitted[0], truth, atol=1e-6 * float(truth.abs().max()))


# ---------------------------------------------------------------------------------------------------------------------
# Colour temperature


def test_6500_kelvin_is_neutral_white_and_other_temperatures_are_tinted():
    white = kelvin_to_rgb(6500.0)
    assert max(white) - min(white) < 2e-3
    assert sum(c * w for c, w in zip(white, (0.2126, 0.7152, 0.0722), strict=True)) == pytest.approx(1.0)
    tungsten, daylight, sky = kelvin_to_rgb(3200.0), kelvin_to_rgb(5600.0), kelvin_to_rgb(10000.0)
    assert tungsten[0] > daylight[0] > white[0] > sky[0]  # warmer is redder
    assert tungsten[2] < daylight[2] < white[2] < sky[2]  # cooler is bluer
    green = kelvin_to_rgb(6500.0, tint=0.1)
    assert green[1] > max(green[0], green[2])


def test_planckian_locus_matches_published_chromaticities():
    """CIE illuminant A is a 2856 K black body at (0.44757, 0.40745); a 6500 K black body sits at (0.3135, 0.3237)."""
    assert planckian_xy(2856.0) == pytest.approx((0.44757, 0.40745), abs=1e-3)
    assert planckian_xy(6500.0) == pytest.approx((0.3135, 0.3237), abs=1e-3)


def test_srgb_transfer_round_trips():
    values = torch.linspace(0, 1, 1001, **F64)
    assert torch.allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-9)
    assert float(srgb_to_linear(torch.tensor(0.5, **F64))) == pytest.approx(0.21404, abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Height field, cast shadows, occlusion


def test_height_from_normals_recovers_a_bump():
    size = 96
    y, x = torch.meshgrid(torch.arange(size, **F64), torch.arange(size, **F64), indexing="ij")
    height = 20.0 * torch.exp(-((x - 40) ** 2 + (y - 55) ** 2) / (2 * 12.0**2))
    normals = normals_from_height(height[None, None])
    recovered = height_from_normals(normals, torch.ones(1, 1, size, size, **F64))[0, 0]
    recovered = recovered - recovered.mean() + height.mean()
    assert (recovered - height).abs().max() < 0.05 * float(height.max())


@pytest.mark.parametrize("elevation", [25.0, 40.0, 60.0])
@pytest.mark.parametrize("axis", ["from_left", "from_above"])
def test_a_step_casts_its_shadow_exactly_where_geometry_says(elevation, axis):
    """A wall of height 20 px ending at column 39, lit from the left at ``elevation``: the ground behind it is dark up
    to ``39 + 20 / tan(elevation)`` and lit after. The same turned by 90 degrees (light from above)."""
    size, edge, tall = 128, 40, 20.0
    height = torch.zeros(1, 1, size, size, **F64)
    height[..., :edge] = tall
    e = math.radians(elevation)
    direction = torch.tensor([[-math.cos(e), 0.0, math.sin(e)]], **F64)
    if axis == "from_above":
        height = height.transpose(-1, -2).contiguous()  # the wall now ends at row 39, the light comes from above
        direction = torch.tensor([[0.0, math.cos(e), math.sin(e)]], **F64)
    visibility = cast_shadows(height, direction, torch.tensor([0.05], **F64))[0, 0]
    profile = visibility[64] if axis == "from_left" else visibility[:, 64]
    boundary = edge - 1 + tall / math.tan(e)
    positions = torch.arange(size, **F64)
    behind = (positions >= edge) & (positions < boundary - 1)
    beyond = positions > boundary + 1
    assert float(profile[behind].max()) < 0.05 and float(profile[beyond].min()) > 0.95
    assert float(profile[:edge].min()) > 0.95  # the top of the wall is lit


def test_the_penumbra_widens_with_the_occluders_distance():
    size = 160
    height = torch.zeros(1, 1, size, size, **F64)
    height[..., :30] = 40.0
    direction = torch.tensor([[-math.cos(math.radians(45)), 0.0, math.sin(math.radians(45))]], **F64)
    visibility = cast_shadows(height, direction, torch.tensor([6.0], **F64))[0, 0, 80]

    def width_of_penumbra(profile: torch.Tensor) -> int:
        return int(((profile > 0.05) & (profile < 0.95)).sum())

    lower = height.clone()
    lower[..., :30] = 15.0
    near = cast_shadows(lower, direction, torch.tensor([6.0], **F64))[0, 0, 80]
    assert width_of_penumbra(visibility) > 2 * width_of_penumbra(near) >= 2


def test_lights_at_the_camera_or_behind_cast_no_shadow():
    height = torch.rand(2, 1, 32, 32, generator=torch.Generator(device="cpu").manual_seed(1), **F64) * 10
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.6, 0.0, -0.8]], **F64)
    assert torch.equal(cast_shadows(height, directions, torch.tensor([1.0, 1.0], **F64)),
                       torch.ones_like(height))


def test_ambient_occlusion_of_a_plane_is_one_and_lower_inside_a_crease():
    size = 256
    y, x = torch.meshgrid(torch.arange(size, **F64), torch.arange(size, **F64), indexing="ij")
    sigmas = (2.0, 6.0, 16.0)  # reach 4 sigma: the centre 64 x 64 sees no border
    plane = ambient_occlusion((0.4 * x - 0.3 * y)[None, None], sigmas)[0, 0, 96:160, 96:160]
    assert torch.allclose(plane, torch.ones_like(plane), atol=1e-9)
    shallow = ambient_occlusion((0.5 * (x - 128).abs())[None, None], sigmas)[0, 0, 128]
    deep = ambient_occlusion((2.0 * (x - 128).abs())[None, None], sigmas)[0, 0, 128]
    assert float(shallow[128]) < 0.9 and float(deep[128]) < float(shallow[128])
    assert float(shallow[128]) < float(shallow[120]) < float(shallow[100])  # darkest at the bottom of the crease


# ---------------------------------------------------------------------------------------------------------------------
# The relighting function


def flat_scene(size: int = 64):
    """A camera-facing plane of grey albedo filling the frame: ``(albedo, encoded normals, mask, image)``."""
    normals = torch.zeros(1, 3, size, size)
    normals[:, 2] = 1
    mask = torch.ones(1, 1, size, size)
    albedo = torch.full((1, 3, size, size), 0.5)
    return albedo, encode_normals(normals), mask, torch.full((1, 3, size, size), 0.5)


def drawn(setup: str, ambient: float, lights: tuple, environment_rgb=(1.0, 1.0, 1.0), **extra) -> DrawnLight:
    """A DrawnLight whose environment is a constant radiance of ``environment_rgb`` scaled to ``ambient``."""
    radiance = torch.ones(32, 64, 3, **F64) * torch.tensor(environment_rgb, **F64)
    coefficients = sh.project_radiance(radiance)
    facing = float(torch.tensor((0.2126, 0.7152, 0.0722), **F64) @ (coefficients @ sh.sh_basis(
        torch.tensor((0.0, 0.0, 1.0), **F64))))
    return DrawnLight("soft_shading", setup, ambient, lights,
                      tuple((coefficients * (ambient / facing)).flatten().tolist()), {}, **extra)


def config_without_shadows():
    return load_config("full", overrides=["degradation.light.cast_shadows=false", "degradation.light.occlusion=0"])


def test_relighting_under_the_photos_own_light_is_the_identity():
    """A photo rendered in linear light from a known albedo and normals: fit its light (27 coefficients) and relight
    with it; the relit person is the photo again (8-bit rounding aside) and the exposure is 1."""
    normals, mask = sphere_normals(96)
    albedo = textured_albedo(96)
    truth = sh.project_radiance(environments.clear_sky((0.5, 0.6, 0.62), 11000.0, 0.25, 5000.0))
    truth = truth * (0.8 / float((truth @ sh.sh_basis(torch.tensor((0.0, 0.0, 1.0), **F64))).max()))
    linear_photo = srgb_to_linear(albedo) * sh.irradiance(truth[None], normals).float()
    photo = linear_to_srgb(linear_photo.clamp(0, 1))
    fitted = sh.fit_irradiance(srgb_to_linear(photo).double(), srgb_to_linear(albedo).double(), normals.double(),
                               mask)
    light = DrawnLight("soft_shading", "environment_map", 1.0, (), tuple(fitted[0].flatten().tolist()), {})
    degraded, _, labels = relight(albedo * mask, encode_normals(normals), mask, photo, [light],
                                  config_without_shadows(), quantize=False)
    inside = mask.expand_as(photo) > 0
    assert labels[0]["exposure"] == pytest.approx(1.0, abs=2e-3)
    assert (degraded - photo)[inside].abs().max() < 2 / 255


def test_the_fitted_light_of_a_real_photo_explains_it_better_than_a_uniform_light(face_paths):
    """On real faces the build's albedo and normals cannot explain every pixel; still, relit in linear light under
    its own fitted 27 coefficients each photo comes closer to itself than under the best uniform light."""
    rows = relight_images([str(path) for path in face_paths[:3]], resolution=192, num_proc=1)
    errors = []
    for row in rows:
        image, mask, albedo, normals = (to_tensor(row[name])[None] for name in ("input", "mask", "albedo", "normals"))
        fitted = sh.fit_irradiance(srgb_to_linear(image), srgb_to_linear(albedo), decode_normals(normals), mask)
        uniform = torch.zeros_like(fitted)
        uniform[..., 0] = fitted[..., 0]  # the same mean light, no direction
        inside = (mask > 0.5).expand_as(image)
        error = []
        for coefficients in (fitted, uniform):
            light = DrawnLight("soft_shading", "environment_map", 1.0, (), tuple(coefficients[0].flatten().tolist()),
                               {})
            degraded, _, _ = relight(albedo, normals, mask, image, [light], config_without_shadows(), quantize=False)
            error.append(float((degraded - image)[inside].abs().mean()))
        assert error[0] < error[1]
        errors.append(error[0])
    assert sum(errors) / len(errors) < 0.06


def test_exposure_keeps_the_persons_mean_luminance():
    albedo, normals, mask, _ = flat_scene()
    photo = torch.full_like(albedo, 0.6)
    key = Light("key", 40.0, 120.0, 3200.0, 0.0, 0.7, 2.0)
    radiance, records = relit_foreground(srgb_to_linear(albedo), torch.nn.functional.normalize(normals * 2 - 1, dim=1),
                                         mask, photo, [drawn("single", 0.3, (key,))], config_without_shadows())
    luma = torch.tensor((0.2126, 0.7152, 0.0722)).view(1, 3, 1, 1)
    assert float((radiance * luma).sum(1).mean()) == pytest.approx(float(srgb_to_linear(torch.tensor(0.6))), rel=1e-3)
    assert records[0]["exposure"] > 1  # the grey albedo under this light is darker than the photo


def test_a_shadow_pattern_blocks_the_key_light_only():
    """A warm key and a blue sky on a grey plane, a fully opaque blind on the key: inside the blind's shadow only the
    blue sky light remains (its colour shows), outside both add up."""
    albedo, normals, mask, image = flat_scene(96)
    albedo, image = albedo * 0.5, image * 0.5  # dark enough that nothing clips
    key = Light("key", 60.0, 90.0, 3000.0, 0.0, 0.7, 0.27)
    generator = row_generator(0, "blinds", "pattern")
    pattern = ShadowPattern("venetian_blinds", 1, 1.0, 1.0, generator.get_state().numpy().tobytes())
    light = drawn("outdoor", 0.3, (key,), environment_rgb=kelvin_to_rgb(15000.0), pattern=pattern)
    degraded, _, labels = relight(albedo, normals, mask, image, [light], config_without_shadows(), quantize=False)
    linear = srgb_to_linear(degraded)[0].reshape(3, -1)
    brightness = linear.sum(0)
    shadowed, lit = linear[:, brightness <= brightness.quantile(0.1)], linear[:, brightness >= brightness.quantile(0.9)]
    assert float(linear.max()) < 1
    sky_rgb, key_rgb = torch.tensor(kelvin_to_rgb(15000.0)), torch.tensor(kelvin_to_rgb(3000.0))
    shade_colour = shadowed.mean(1) / shadowed.mean(1).sum()
    assert torch.allclose(shade_colour, sky_rgb / sky_rgb.sum(), atol=0.01)  # pure sky light in the shadow
    mixed = 0.3 * sky_rgb + 0.7 * math.sin(math.radians(60.0)) * key_rgb
    assert torch.allclose(lit.mean(1) / lit.mean(1).sum(), mixed / mixed.sum(), atol=0.02)
    assert labels[0]["shadow_pattern"] == "venetian_blinds"


def test_the_specular_highlight_sits_where_the_geometry_reflects_the_light():
    normals, mask = sphere_normals(128)
    direction = torch.tensor(Light("key", 45.0, 135.0, 6500.0, 0.0, 0.5, 0.5).direction)
    light = drawn("single", 0.5, (Light("key", 45.0, 135.0, 6500.0, 0.0, 0.5, 0.5),))
    with_highlight = DrawnLight(**{**light.__dict__, "specular": Specular(0.8, 60.0)})
    albedo = torch.full((1, 3, 128, 128), 0.3) * mask
    config = config_without_shadows()
    plain, _, _ = relight(albedo, encode_normals(normals), mask, albedo, [light], config, quantize=False)
    shiny, _, labels = relight(albedo, encode_normals(normals), mask, albedo, [with_highlight], config, quantize=False)
    gain = (shiny - plain).sum(1)[0]
    peak = divmod(int(gain.argmax()), 128)
    mirror_normal = torch.nn.functional.normalize(direction + torch.tensor([0.0, 0.0, 1.0]), dim=0)
    assert float(normals[0, :, peak[0], peak[1]] @ mirror_normal) > 0.995
    assert labels[0]["specular_intensity"] == pytest.approx(0.8)


def test_every_label_has_its_declared_shape():
    config = load_config("full")
    albedo, normals, mask, image = flat_scene(32)
    lights = [draw_light(config, row_generator(0, f"row{i}", "degradation")) for i in range(12)]
    setups = {light.setup for light in lights}
    assert len(setups) >= 3
    _, _, labels = relight(albedo.expand(12, -1, -1, -1), normals.expand(12, -1, -1, -1),
                           mask.expand(12, -1, -1, -1), image.expand(12, -1, -1, -1), lights, config)
    for row in labels:
        assert set(row) == set(LABEL_SHAPES)
        for name, shape in LABEL_SHAPES.items():
            if shape is None:
                assert isinstance(row[name], str)
            else:
                assert np.asarray(row[name], dtype=np.float64).shape == shape, name
        count = sum(1 for intensity in row["light_intensities"] if intensity > 0)
        assert count == {"single": 1, "two_point": 2, "three_point": 3, "outdoor": 1, "indoor": 1,
                         "overcast": 0}[row["light_setup"]]
        assert np.isfinite(row["sh_irradiance"]).all()


# ---------------------------------------------------------------------------------------------------------------------
# Environment maps from files


def write_hdr(path, bright_texel: tuple[int, int]) -> None:
    radiance = np.full((32, 64, 3), 0.05, np.float32)
    radiance[bright_texel] = (400.0, 300.0, 200.0)  # a warm sun
    assert cv2.imwrite(str(path), radiance[..., ::-1].copy())


def test_environment_maps_from_a_folder_light_the_scene(tmp_path):
    write_hdr(tmp_path / "sunset.hdr", (6, 10))
    config = load_config("full", overrides=["degradation.light.setups={environment_map: 1}",
                                            f"degradation.light.environment_maps={tmp_path}"])
    light = draw_light(config, row_generator(0, "a", "degradation"))
    assert light.setup == "environment_map" and light.environment["file"] == "sunset.hdr"
    sun_height = float(sh.equirect_directions(32, 64)[0][6, 10][1])
    assert light.direction[1] == pytest.approx(sun_height, abs=0.1)  # yaw turns the map, never its elevation
    coefficients = torch.tensor(light.environment_sh).view(3, 9)
    assert coefficients[0, 0] > coefficients[2, 0]  # warm


def test_openexr_maps_are_read_too(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCV_IO_ENABLE_OPENEXR", "1")  # OpenCV writes EXR only when asked to
    radiance = np.full((16, 32, 3), 0.5, np.float32)
    radiance[3, 5] = (20.0, 10.0, 5.0)
    assert cv2.imwrite(str(tmp_path / "studio.exr"), radiance)
    write_hdr(tmp_path / "sunset.hdr", (6, 10))
    assert [p.name for p in environments.environment_maps_in(tmp_path)] == ["studio.exr", "sunset.hdr"]
    loaded = environments.load_environment_map(str(tmp_path / "studio.exr"))
    assert loaded.shape == (environments.MAP_HEIGHT, environments.MAP_WIDTH, 3)
    # area averaging keeps the energy: the mean radiance is the file's (BGR in the file, RGB here)
    expected = radiance[..., ::-1].reshape(-1, 3).mean(0)
    assert loaded.reshape(-1, 3).mean(0).numpy() == pytest.approx(expected, rel=1e-4)


def test_environment_map_problems_are_one_line_config_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no .hdr or .exr files"):
        load_config("full", overrides=["degradation.light.setups={environment_map: 1}",
                                       f"degradation.light.environment_maps={empty}"])
    with pytest.raises(ConfigError, match="needs a folder"):
        load_config("full", overrides=["degradation.light.setups={environment_map: 1}"])
    (tmp_path / "broken.hdr").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.hdr"):
        environments.load_environment_map(str(tmp_path / "broken.hdr"))


def test_a_rows_light_does_not_depend_on_the_rest_of_its_batch(face_paths):
    """Rows relit together or one by one are equal bit for bit (a batched FFT would round differently)."""
    config = load_config("full")
    rows = relight_images([str(path) for path in face_paths[:4]], resolution=96, num_proc=1)
    stack = {name: torch.stack([to_tensor(row[name]) for row in rows]) for name in ("input", "mask", "albedo",
                                                                                   "normals")}
    lights = [draw_light(config, row_generator(0, f"r{i}", "degradation")) for i in range(4)]
    together, _, labels = relight(stack["albedo"], stack["normals"], stack["mask"], stack["input"], lights, config)
    for i in range(4):
        alone, _, label = relight(stack["albedo"][i:i + 1], stack["normals"][i:i + 1], stack["mask"][i:i + 1],
                                  stack["input"][i:i + 1], lights[i:i + 1], config)
        assert torch.equal(alone[0], together[i]) and label[0] == labels[i]
