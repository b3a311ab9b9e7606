import math

import pytest
import torch

from relight_datasets.ops.lighting import describe_direction, lambertian_shading, light_direction, phong_specular
from tests.conftest import sphere_normals


def test_light_direction_is_unit_and_follows_convention():
    assert light_direction(90, 0) == pytest.approx((0, 0, 1), abs=1e-9)
    assert light_direction(0, 0) == pytest.approx((1, 0, 0), abs=1e-9)
    assert light_direction(0, 90) == pytest.approx((0, 1, 0), abs=1e-9)
    for e, a in [(10, 33), (45, 200), (80, 359)]:
        assert math.dist(light_direction(e, a), (0, 0, 0)) == pytest.approx(1.0)


@pytest.mark.parametrize(("elevation", "azimuth", "ambient"), [(30, 135, 0.6), (75, 10, 0.85), (10, 270, 0.0)])
def test_lambertian_shading_of_sphere_matches_analytic(elevation, azimuth, ambient):
    normals, mask = sphere_normals(96)
    light = light_direction(elevation, azimuth)
    shading = lambertian_shading(normals, [light], [ambient])
    # analytic: at pixel centre (x, y) on the unit sphere, N = (x, y, sqrt(1 - x^2 - y^2))
    n = normals[0].double()
    n_dot_l = (n * torch.tensor(light, dtype=torch.float64).view(3, 1, 1)).sum(0)
    expected = ambient + (1 - ambient) * n_dot_l.clamp_min(0)
    inside = mask[0, 0] > 0
    assert shading.shape == (1, 1, 96, 96)
    assert torch.allclose(shading[0, 0][inside].double(), expected[inside], atol=1e-5)
    # the brightest point of the sphere is where the normal equals the light direction
    peak = torch.argmax(torch.where(inside, shading[0, 0], torch.tensor(-1.0)))
    peak_normal = n[:, peak // 96, peak % 96]
    assert torch.dot(peak_normal, torch.tensor(light, dtype=torch.float64)) > 0.99


def test_lambertian_is_per_image():
    normals, _ = sphere_normals(32)
    lights = [light_direction(40, 0), light_direction(40, 180)]
    pair = lambertian_shading(normals.repeat(2, 1, 1, 1), lights, [0.5, 0.7])
    single = lambertian_shading(normals, [light_direction(40, 180)], [0.7])
    assert torch.equal(pair[1:], single)
    assert not torch.equal(pair[0], pair[1])


def test_phong_highlight_sits_at_the_half_way_normal():
    normals, mask = sphere_normals(128)
    light = light_direction(50, 30)
    spec = phong_specular(normals, [light], [0.4], [60.0])
    assert spec.max().item() == pytest.approx(0.4, rel=0.05)
    peak = torch.argmax(spec[0, 0] * mask[0, 0])
    n = normals[0, :, peak // 128, peak % 128].double()
    half = torch.tensor(light, dtype=torch.float64) + torch.tensor([0, 0, 1.0], dtype=torch.float64)
    assert torch.dot(n, half / half.norm()) > 0.995
    # facing away from the light: no highlight
    facing_away = (normals[0].double() * torch.tensor(light, dtype=torch.float64).view(3, 1, 1)).sum(0) < 0
    assert spec[0, 0][facing_away].max() == 0


def test_describe_direction_words():
    assert describe_direction(40, 135) == "the upper left"
    assert describe_direction(40, 0) == "the right"
    assert describe_direction(80, 270).startswith("the front, slightly from below")
    assert describe_direction(15, 180) == "the left, at a grazing angle"
