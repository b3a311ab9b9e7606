import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relight_datasets.ops.composite import BACKGROUND_GRAY, background_plate, composite, feathered_alpha
from relight_datasets.ops.filters import gaussian_blur
from relight_datasets.ops.normals import decode_normals, encode_normals, normals_from_depth, normals_from_mask
from tests.conftest import sphere_normals


def random_scene(seed=0, size=64):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, size, size, generator=g)
    fg = torch.rand(2, 3, size, size, generator=g)
    mask = torch.zeros(2, 1, size, size)
    mask[0, :, 10:50, 20:40] = 1
    mask[1, :, 5:30, 5:60] = 1
    return image, fg, mask


def test_feathered_alpha_is_zero_outside_and_one_deep_inside():
    _, _, mask = random_scene()
    alpha = feathered_alpha(mask, 2.0)
    assert torch.all(alpha[mask == 0] == 0)
    assert torch.all(alpha[0, 0, 20:40, 28:32] > 0.999)
    edge = alpha[0, 0, 30, 20]
    assert 0 < edge < 0.5  # soft at the boundary
    assert torch.equal(feathered_alpha(mask, 0), mask)


def test_composite_equals_input_where_mask_is_zero_exactly():
    image, fg, mask = random_scene()
    alpha = feathered_alpha(mask, 3.0)
    out = composite(fg, image, alpha)
    outside = (mask == 0).expand_as(image)
    assert torch.equal(out[outside], image[outside])
    inside = (alpha == 1).expand_as(image)
    assert torch.equal(out[inside], fg[inside])


@pytest.mark.parametrize(("mode", "value"), [("gray", BACKGROUND_GRAY), ("black", 0.0)])
def test_background_modes(mode, value):
    image, fg, mask = random_scene()
    out = composite(fg, background_plate(image, mode), feathered_alpha(mask, 2.0))
    outside = (mask == 0).expand_as(image)
    assert torch.all(out[outside] == value)
    assert torch.equal(background_plate(image, "original"), image)
    with pytest.raises(ValueError, match="unknown background"):
        background_plate(image, "blue")


def test_normals_from_depth_of_a_sphere_match_analytic_and_ignore_units_and_size():
    truth, mask = sphere_normals(128, radius_fraction=0.4)
    radius_px = 0.4 * 128
    coords = (torch.arange(128, dtype=torch.float64) + 0.5 - 64) / radius_px
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    height = torch.sqrt((1 - x**2 - y**2).clamp_min(0)) * radius_px  # pixels towards the camera
    disparity = height.float()[None, None]
    # relief chosen so that the height field's range (radius_px) is relief * 128 px
    normals = normals_from_depth(disparity, relief=radius_px / 128 / 0.96)
    interior = (x**2 + y**2 < 0.7**2)[None, None].expand(1, 3, 128, 128)
    cos = (normals * truth).sum(1, keepdim=True).expand(1, 3, 128, 128)[interior]
    assert cos.mean() > 0.99
    # units: scaling depth by 1000 changes nothing; metric depth (inverted) with larger_is_closer=False agrees
    assert torch.allclose(normals_from_depth(disparity * 1000, relief=radius_px / 128 / 0.96), normals, atol=1e-4)
    inverted = normals_from_depth(100 - disparity, larger_is_closer=False, relief=radius_px / 128 / 0.96)
    assert torch.allclose(inverted, normals, atol=1e-4)
    # size: the same scene at half resolution gives the same normals (sampled)
    small = normals_from_depth(F.interpolate(disparity, size=(64, 64), mode="area"), relief=radius_px / 128 / 0.96)
    big_sampled = F.interpolate(normals, size=(64, 64), mode="area")
    inner = F.interpolate(interior[:, :1].float(), size=(64, 64)) > 0.5
    assert (small * big_sampled).sum(1, keepdim=True)[inner].mean() > 0.98


def test_normals_from_mask_follow_the_silhouette():
    _, disc = sphere_normals(128, radius_fraction=0.35)
    normals = normals_from_mask(disc, inflation_sigma=0.12, edge_tilt_deg=70)
    assert normals.shape == (1, 3, 128, 128)
    assert torch.allclose(normals.norm(dim=1), torch.ones(1, 128, 128), atol=1e-5)
    centre = normals[0, :, 64, 64]
    assert centre[2] > 0.95
    right, top = normals[0, :, 64, 64 + 42], normals[0, :, 64 - 42, 64]
    assert right[0] > 0.5 and abs(right[1]) < 0.1  # edge on the right tilts right
    assert top[1] > 0.5 and abs(top[0]) < 0.1  # edge at the top tilts up (y up)
    outside = normals[0, :, 2, 2]
    assert torch.allclose(outside, torch.tensor([0.0, 0.0, 1.0]))


def test_normal_encoding_roundtrip_through_uint8():
    truth, _ = sphere_normals(32)
    quantised = torch.round(encode_normals(truth) * 255) / 255
    assert (decode_normals(quantised) * truth).sum(1).min() > 0.9995


@pytest.mark.parametrize("sigma", [2.0, 10.0, 60.0])
def test_gaussian_blur_matches_opencv_in_the_interior(sigma):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.random((200, 200)).astype(np.float32), (0, 0), 2)
    ours = gaussian_blur(torch.from_numpy(image)[None, None], sigma)[0, 0].numpy()
    reference = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    margin = int(min(3 * sigma, 60))
    inner = slice(margin, 200 - margin)
    assert np.abs(ours[inner, inner] - reference[inner, inner]).max() < 5e-3


def test_masked_blur_ignores_pixels_outside_the_mask():
    image = torch.zeros(1, 1, 64, 64)
    image[..., :, 32:] = 1.0  # bright outside
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, :32] = 1.0
    inside = gaussian_blur(image, 20, mask)[..., :, :32]
    assert inside.abs().max() < 1e-6
    plain = gaussian_blur(image, 20)[..., :, :32]
    assert plain.max() > 0.2
